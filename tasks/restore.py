"""Restore steps: verify the checksum -> extract safely beside the target -> check against the
metadata (repairing only the extracted copy, only when it will not open) -> put into place."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rem.backup import restore
from rem.backup.catalog import BackupMetadata, read_local_backup
from rem.backup.incremental import ObjectCorrupt, needed_by
from rem.backup.layout import fetch, layout_of
from rem.backup.restore import CheckReport
from rem.scratch import remove_scratch, scratch_dir
from runtime.orchestration import task
from runtime.progress import RunProgress


@task("download", retries=3, retry_delay_seconds=10)
def download(name: str, output: Path, settings_dict: dict[str, Any] | None, tenant: str | None = None,
             from_db: str | None = None, keep_from: Path | None = None, self_contained: bool = False) -> Path:
    """Fetch a backup into output/{name}/ (resuming a partial download; with keep_from, none of the
    shared files that database already holds byte for byte; self_contained for another process)."""
    from runtime.wiring import find_record, resolve_settings  # boto3: only for a backup found by name

    record = find_record(resolve_settings(settings_dict), name, tenant, from_db)
    progress = RunProgress(f"Downloading backup {name}", record.metadata.size_bytes)
    try:
        path = fetch(record, output, progress, keep_from, self_contained)
    except ObjectCorrupt as exc:
        raise needed_by(record, exc) from None
    progress.finish()
    return path


@task("verify-checksum", retries=0)
def verify_archive(source: Path, metadata: BackupMetadata, while_extracting: bool = False) -> None:
    """The backup's records against metadata.json, and its data unless while_extracting: a restore
    checks the archive, and each shared object, in the pass that extracts it into scratch (a mismatch
    removes the scratch), so the target is touched only after every byte matched."""
    layout_of(metadata).verify(source, metadata, while_extracting)


@task("extract", retries=1, retry_delay_seconds=2)
def extract(source: Path, beside: Path, metadata: BackupMetadata, keep_from: Path | None = None) -> Path:
    """Safe, bounded, checksummed extraction into a new directory beside the target; returns the database directory."""
    work = scratch_dir(beside, "restore")
    progress = RunProgress(f"Restoring backup {metadata.name}", metadata.uncompressed_bytes)
    try:
        db_dir = layout_of(metadata).extract(source, work, metadata, progress, keep_from)
        progress.finish()
        return db_dir
    except BaseException:
        remove_scratch(work)
        raise


@task("check-and-repair", retries=0)
def check_restored(db_dir: Path, metadata: BackupMetadata, recorded: dict[str, int] | None) -> CheckReport:
    """Every recorded data file at its size, then RocksDB's own open (repairing only a copy that will not open)."""
    return restore.check_copy(db_dir, metadata, recorded)


@task("put-into-place", retries=0)
def put_into_place(db_dir: Path, target: Path) -> None:
    """Swap the verified copy with the target in one atomic rename; the old one waits in quarantine."""
    restore.swap_into_place(db_dir, target)


@task("replace-tenant", retries=0)
def build_tenant_replacement(db_dir: Path, target: Path, tenant: str) -> tuple[Path, dict[str, int]]:
    """A copy of the target with one tenant's rows replaced by the backup's, built beside it."""
    return restore.replace_tenant(db_dir, target, tenant)


@dataclass
class Unpacked:
    metadata: BackupMetadata
    db_dir: Path
    report: CheckReport | None


@contextmanager
def unpacked(source: Path, beside: Path, check: bool = True, keep_from: Path | None = None) -> Iterator[Unpacked]:
    """A backup directory checked and extracted into scratch beside `beside`: every byte against its
    SHA-256, every recorded file present, opened by RocksDB (and repaired only when nothing is lost).
    The one pipeline restore, backup verify, PITR and drills share; the scratch is removed when the
    block ends, whatever went into place."""
    metadata = read_local_backup(source)
    verify_archive(source, metadata, while_extracting=True)
    db_dir = extract(source, beside, metadata, keep_from)
    try:
        yield Unpacked(metadata, db_dir,
                       check_restored(db_dir, metadata, layout_of(metadata).recorded_files(source, metadata))
                       if check else None)
    finally:
        remove_scratch(db_dir.parent)
