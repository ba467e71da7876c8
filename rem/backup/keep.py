"""Kept and annotated backups (WAL-G's permanent backups, pgBackRest's annotations): a kept backup
is never deleted by prune, with everything it needs (its shared SSTs are named by its file list; as
a kept base it holds back the log segments after it), and S3 lifecycle expiry spares its objects
(tagged rem-keep=yes). Both live in the backup's metadata.json, rewritten conditionally."""

from __future__ import annotations

import re
from datetime import datetime, timezone

from rem.backup.catalog import BackupMetadata, BackupRecord, backup_tags
from rem.backup.layout import layout_of
from rem.errors import UsageError

ANNOTATION_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
ANNOTATION_VALUE_MAX = 256


def kept_now(metadata: BackupMetadata, now: datetime | None = None) -> bool:
    if not metadata.kept:
        return False
    if metadata.keep_until is None:
        return True
    return datetime.fromisoformat(metadata.keep_until.replace("Z", "+00:00")) > (now or datetime.now(timezone.utc))


def keep_reason(metadata: BackupMetadata) -> str:
    return f"kept until {metadata.keep_until}" if metadata.keep_until else "kept"


def parse_until(value: str) -> str:
    """A date or time in the future, as RFC 3339 UTC."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--until {value!r}: not a date; give one as 2027-06-30 or 2027-06-30T12:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    if moment <= datetime.now(timezone.utc):
        raise UsageError(f"--until {value}: that is in the past; give a later date, or --release to stop keeping it")
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def set_keep(record: BackupRecord, until: str | None, release: bool = False) -> BackupMetadata:
    """Keep the backup (up to until, else for good), or with release stop keeping it."""
    if release and until:
        raise UsageError("--release and --until together: give one")
    updated = record.store.update_metadata(record, kept=not release, keep_until=None if release else
                                           (parse_until(until) if until else None))
    layout = layout_of(updated)
    record.store.finish(record.tenant_folder, record.folder, backup_tags(updated), layout.data_file,
                        layout.record_files)
    return updated


def parse_annotations(pairs: list[str]) -> dict[str, str | None]:
    """key=value pairs; key= (nothing after =) removes the key."""
    found: dict[str, str | None] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not ANNOTATION_KEY.match(key):
            raise UsageError(f"{pair!r}: give key=value (a key of letters, digits, _ . : -, up to 64), or key= to "
                             "remove one")
        if len(value) > ANNOTATION_VALUE_MAX:
            raise UsageError(f"{key}: a value of {len(value)} characters; at most {ANNOTATION_VALUE_MAX}")
        found[key] = value or None
    if not found:
        raise UsageError("nothing to annotate: give key=value pairs")
    return found


def annotate(record: BackupRecord, pairs: list[str]) -> BackupMetadata:
    changes = parse_annotations(pairs)
    merged = {**record.metadata.annotations, **{k: v for k, v in changes.items() if v is not None}}
    for key in (k for k, v in changes.items() if v is None):
        merged.pop(key, None)
    return record.store.update_metadata(record, annotations=merged)
