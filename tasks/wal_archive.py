"""Continuous WAL archival to S3 and the planning half of point-in-time recovery.

Layout (the database's whole WAL, tenant segment `_all`, as for whole-database backups):

    {prefix}backups/wal/_all/manifest.json
    {prefix}backups/wal/_all/segments/{first_seq:020}-{last_seq:020}.wal.zst

A segment holds the stored bytes of its entries, one per line, compressed with zstd. WAL entries
never change, so a segment's content is fixed by its sequence range. manifest.json is only ever
replaced with a conditional write (IfMatch on the ETag that was read, IfNoneMatch for the first),
so two archivers running at once can neither lose nor duplicate a segment: the loser of a race
deletes the segments it uploaded that the winner's manifest does not reference, and tries again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import orjson
import zstandard
from pydantic import BaseModel, Field

from rem.db import open_db
from rem.errors import RemError, UsageError
from rem.format import parse_wal_key, wal_key
from tasks.storage import ALL_TENANTS, BackupMetadata, BackupRecord

MANIFEST = "manifest.json"


class Segment(BaseModel):
    key: str
    first_seq: int
    last_seq: int
    first_timestamp: str
    last_timestamp: str
    entries: int
    size_bytes: int
    sha256: str


class BrokenRange(BaseModel):
    """WAL entries the engine trimmed before they were archived: no recovery to a time among them."""

    first_missing_seq: int
    last_missing_seq: int
    after_timestamp: str | None = Field(description="time of the last archived entry before the gap")
    detected_at: str
    healed_by: str | None = Field(default=None, description="full backup that covers the gap, once one exists")


class Manifest(BaseModel):
    format_version: int = 1
    last_archived_sequence: int = 0
    last_archived_timestamp: str | None = None
    base_backup: str | None = Field(default=None, description="newest full backup when the manifest was written")
    wal_segments: list[Segment] = Field(default_factory=list)
    broken_ranges: list[BrokenRange] = Field(default_factory=list)


class WalGap(RemError):
    pass


class SegmentCorrupt(RemError):
    pass


class ManifestConflict(Exception):
    """Another archiver replaced manifest.json since it was read (HTTP 412)."""


def parse_time(value: str) -> datetime:
    """RFC 3339, or 'YYYY-MM-DD HH:MM:SS[.ffffff]' without a zone, which is UTC."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"timestamp {value!r}: use RFC 3339 or 'YYYY-MM-DD HH:MM:SS' (UTC when no zone is given)") \
            from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class WalArchive:
    """Where one database's WAL archive lives in S3."""

    client: object
    bucket: str
    prefix: str = ""
    segment: str = ALL_TENANTS

    @property
    def root(self) -> str:
        prefix = self.prefix.strip("/") + "/" if self.prefix.strip("/") else ""
        return f"{prefix}backups/wal/{self.segment}/"

    def segment_key(self, first: int, last: int) -> str:
        return f"{self.root}segments/{first:020d}-{last:020d}.wal.zst"

    def read_manifest(self) -> tuple[Manifest, str | None]:
        from botocore.exceptions import ClientError

        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self.root + MANIFEST)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return Manifest(), None
            raise
        return Manifest.model_validate_json(reply["Body"].read()), reply["ETag"]

    def write_manifest(self, manifest: Manifest, etag: str | None) -> str:
        from botocore.exceptions import ClientError

        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            reply = self.client.put_object(Bucket=self.bucket, Key=self.root + MANIFEST,
                                           Body=manifest.model_dump_json(indent=2).encode(),
                                           ContentType="application/json", **condition)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (409, 412) or exc.response.get("Error", {}).get("Code") in ("PreconditionFailed",
                                                                                     "ConditionalRequestConflict"):
                raise ManifestConflict() from None
            raise
        return reply["ETag"]

    def put_segment(self, lines: list[bytes], first_ts: str, last_ts: str) -> Segment:
        first, last = orjson.loads(lines[0])["seq"], orjson.loads(lines[-1])["seq"]
        body = zstandard.ZstdCompressor(level=3).compress(b"\n".join(lines) + b"\n")
        digest = hashlib.sha256(body).hexdigest()
        key = self.segment_key(first, last)
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body, Metadata={
            "first-seq": str(first), "last-seq": str(last), "first-timestamp": first_ts,
            "last-timestamp": last_ts, "sha256": digest})
        return Segment(key=key, first_seq=first, last_seq=last, first_timestamp=first_ts, last_timestamp=last_ts,
                       entries=len(lines), size_bytes=len(body), sha256=digest)

    def fetch_segment(self, segment: Segment, dest: Path) -> Path:
        """Download one segment to dest, refusing it unless its SHA-256 and sequence range match."""
        from botocore.exceptions import ClientError

        where = f"WAL segment {segment.first_seq}-{segment.last_seq} ({segment.key})"
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=segment.key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise SegmentCorrupt(f"{where} is missing from the archive; entries {segment.first_seq}-"
                                     f"{segment.last_seq} cannot be replayed") from None
            raise
        if hashlib.sha256(body).hexdigest() != segment.sha256:
            raise SegmentCorrupt(f"{where}: SHA-256 checksum mismatch; entries {segment.first_seq}-"
                                 f"{segment.last_seq} cannot be trusted")
        lines = zstandard.ZstdDecompressor().decompressobj().decompress(body).splitlines()
        seqs = [orjson.loads(line)["seq"] for line in lines]
        if seqs != list(range(segment.first_seq, segment.last_seq + 1)):
            raise SegmentCorrupt(f"{where}: entries are not {segment.first_seq}-{segment.last_seq} in order")
        dest.write_bytes(b"\n".join(lines) + b"\n")
        return dest

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.client.delete_object(Bucket=self.bucket, Key=key)


# ---------------------------------------------------------------------------------- archival


@dataclass
class PassReport:
    archived_entries: int
    segments: list[str]
    last_archived_sequence: int
    last_archived_timestamp: str | None
    live_latest_sequence: int
    conflicts: int


def archive_pass(db_path: str | Path, archive: WalArchive, max_entries: int = 10_000, max_bytes: int = 16 << 20,
                 newest_backup: BackupMetadata | None = None, max_conflicts: int = 20) -> PassReport:
    """Archive every WAL entry after the manifest's last_archived_sequence, reading the live
    database through a read-only handle (never blocking or writing it)."""
    conflicts = 0
    while True:
        manifest, etag = archive.read_manifest()
        uploaded: list[Segment] = []
        try:
            report = _archive_from(db_path, archive, manifest, etag, uploaded, max_entries, max_bytes, newest_backup)
            report.conflicts = conflicts
            return report
        except ManifestConflict:
            conflicts += 1
            winner, _ = archive.read_manifest()
            referenced = {s.key for s in winner.wal_segments}
            archive.delete([s.key for s in uploaded if s.key not in referenced])
            if conflicts >= max_conflicts:
                raise RemError(f"gave up after {conflicts} conflicting manifest updates; is an archiver stuck?")


def _archive_from(db_path, archive: WalArchive, manifest: Manifest, etag: str | None, uploaded: list[Segment],
                  max_entries: int, max_bytes: int, newest_backup: BackupMetadata | None) -> PassReport:
    start = manifest.last_archived_sequence + 1
    with open_db(db_path, "ro") as db:
        latest = db.latest_wal_seq()
        first_available = db.first_wal_seq()
        if first_available and first_available > start:
            start = _gap(archive, manifest, etag, start, first_available - 1, newest_backup)
        lines: list[bytes] = []
        size = 0
        first_ts = last_ts = None
        expected = start
        for key, value in db.items("wal", start=wal_key(start)):
            seq = parse_wal_key(key)
            if seq != expected:  # a hole inside the live WAL is a gap too: keep what came before it
                _flush(archive, lines, first_ts, last_ts, uploaded)
                manifest, etag = _commit(archive, manifest, etag, uploaded, newest_backup)
                _gap(archive, manifest, etag, expected, seq - 1, newest_backup)
            ts = orjson.loads(value)["timestamp"]
            first_ts = first_ts or ts
            last_ts = ts
            lines.append(value)
            size += len(value)
            expected += 1
            if len(lines) >= max_entries or size >= max_bytes:
                _flush(archive, lines, first_ts, last_ts, uploaded)
                lines, size, first_ts = [], 0, None
        _flush(archive, lines, first_ts, last_ts, uploaded)
    manifest, _ = _commit(archive, manifest, etag, uploaded, newest_backup)
    return PassReport(sum(s.entries for s in uploaded), [s.key for s in uploaded], manifest.last_archived_sequence,
                      manifest.last_archived_timestamp, latest, 0)


def _flush(archive: WalArchive, lines: list[bytes], first_ts, last_ts, uploaded: list[Segment]) -> None:
    if lines:
        uploaded.append(archive.put_segment(lines, first_ts, last_ts))


def _commit(archive: WalArchive, manifest: Manifest, etag: str | None, uploaded: list[Segment],
            newest_backup: BackupMetadata | None) -> tuple[Manifest, str | None]:
    if not uploaded and etag is not None and manifest.base_backup == (newest_backup.name if newest_backup else None):
        return manifest, etag
    updated = manifest.model_copy(deep=True)
    updated.wal_segments.extend(uploaded)
    if uploaded:
        updated.last_archived_sequence = uploaded[-1].last_seq
        updated.last_archived_timestamp = uploaded[-1].last_timestamp
    if newest_backup is not None:
        updated.base_backup = newest_backup.name
    return updated, archive.write_manifest(updated, etag)


def _gap_message(first: int, last: int, after: str | None) -> str:
    return (f"WAL entries {first}-{last} were trimmed by the engine before they were archived; the recovery "
            f"window is broken from {after or 'the start'} until the next full backup: take one now "
            "(`rem backup create --upload`)")


def _gap(archive: WalArchive, manifest: Manifest, etag: str | None, start: int, last_missing: int,
         newest_backup: BackupMetadata | None) -> int:
    """Record the gap; resume only when a full backup already covers every missing entry."""
    known = any(b.first_missing_seq == start for b in manifest.broken_ranges)
    if newest_backup is not None and newest_backup.wal_last_seq >= last_missing:
        updated = manifest.model_copy(deep=True)
        if not known:
            updated.broken_ranges.append(BrokenRange(first_missing_seq=start, last_missing_seq=last_missing,
                                                     after_timestamp=manifest.last_archived_timestamp,
                                                     detected_at=now_rfc3339(), healed_by=newest_backup.name))
        else:
            for broken in updated.broken_ranges:
                if broken.first_missing_seq == start:
                    broken.healed_by = newest_backup.name
        updated.last_archived_sequence = newest_backup.wal_last_seq
        updated.last_archived_timestamp = newest_backup.wal_last_timestamp
        archive.write_manifest(updated, etag)
        raise ManifestConflict()  # start again from the manifest just written
    if not known:
        updated = manifest.model_copy(deep=True)
        updated.broken_ranges.append(BrokenRange(first_missing_seq=start, last_missing_seq=last_missing,
                                                 after_timestamp=manifest.last_archived_timestamp,
                                                 detected_at=now_rfc3339()))
        archive.write_manifest(updated, etag)
    raise WalGap(_gap_message(start, last_missing, manifest.last_archived_timestamp))


# ------------------------------------------------------------------------- recovery windows


@dataclass
class RecoveryWindow:
    record: BackupRecord  # the base backup
    start: str  # the instant the base backup stands for
    end: str  # the last archived instant reachable from it without a gap
    last_seq: int
    segments: list[Segment]
    broken_after: BrokenRange | None  # the gap that ends this window, if one does

    @property
    def base(self) -> BackupMetadata:
        return self.record.metadata


def base_instant(meta: BackupMetadata) -> str:
    return meta.wal_last_timestamp or meta.timestamp


def window_for(record: BackupRecord, manifest: Manifest) -> RecoveryWindow:
    base = record.metadata
    expected = base.wal_last_seq + 1
    end, segments = base_instant(base), []
    for segment in sorted(manifest.wal_segments, key=lambda s: s.first_seq):
        if segment.last_seq < expected:
            continue
        if segment.first_seq > expected:
            break
        segments.append(segment)
        expected = segment.last_seq + 1
        end = segment.last_timestamp
    broken = next((b for b in manifest.broken_ranges if b.first_missing_seq == expected), None)
    return RecoveryWindow(record, base_instant(base), end, expected - 1, segments, broken)


def recovery_windows(records, manifest: Manifest, tenant: str | None = None) -> list[RecoveryWindow]:
    """One window per usable base backup (whole-database backups, and the tenant's own), newest first."""
    segments = {ALL_TENANTS} | ({tenant} if tenant else set())
    windows = [window_for(r, manifest) for r in records if r.metadata.tenant_segment in segments]
    return sorted(windows, key=lambda w: parse_time(w.start), reverse=True)


def choose_window(windows: list[RecoveryWindow], target: datetime) -> RecoveryWindow:
    """The newest base at or before the target whose window reaches it."""
    for window in windows:
        if parse_time(window.start) <= target <= parse_time(window.end):
            return window
    if not windows:
        raise UsageError("no full backup to start from: take one with `rem backup create --upload`")
    spans = "; ".join(f"{w.start} to {w.end} (base {w.base.name})" for w in sorted(windows, key=lambda w: w.start))
    raise UsageError(f"{target.isoformat().replace('+00:00', 'Z')} is outside the recovery window: {spans}")


def segments_to_replay(window: RecoveryWindow, target: datetime) -> list[Segment]:
    return [s for s in window.segments if parse_time(s.first_timestamp) <= target]


def read_entries(paths: list[Path]):
    """The stored bytes of every entry in the downloaded segments, in order."""
    for path in paths:
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    yield line.rstrip(b"\n")



def archive_status(db_path, manifest: Manifest) -> dict:
    """How far the archive is behind the live WAL, in entries and in seconds."""
    with open_db(db_path, "ro") as db:
        latest = db.latest_wal_seq()
        raw = db.get("wal", wal_key(latest)) if latest else None
    latest_ts = orjson.loads(raw)["timestamp"] if raw else None
    lag_entries = max(0, latest - manifest.last_archived_sequence)
    if lag_entries == 0:
        lag_seconds = 0.0
    elif manifest.last_archived_timestamp:
        lag_seconds = (datetime.now(timezone.utc) - parse_time(manifest.last_archived_timestamp)).total_seconds()
    else:
        lag_seconds = None
    return {"live_latest_seq": latest, "live_latest_timestamp": latest_ts,
            "last_archived_sequence": manifest.last_archived_sequence,
            "last_archived_timestamp": manifest.last_archived_timestamp, "lag_entries": lag_entries,
            "lag_seconds": lag_seconds, "segments": len(manifest.wal_segments),
            "failures": len(manifest.broken_ranges),
            "broken_ranges": [b.model_dump() for b in manifest.broken_ranges if not b.healed_by]}
