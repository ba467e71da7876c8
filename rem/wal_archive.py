"""The archive of RocksDB's own write-ahead log in S3, and recovery windows over it.

Layout (the whole database's log, tenant folder `_all`, as for whole-database backups), in the
store the database's backups use:

    {prefix}/{db}/backups/wal/_all/manifest.json
    {prefix}/{db}/backups/wal/_all/segments/{first_seq:020}-{last_seq:020}.log.zst
    {prefix}/{db}/backups/wal/_all/pages/{first_seq:020}-{last_seq:020}.json

A segment is one piece of one log file (rem.pitr.Piece: the log's own bytes between two record
boundaries and a table of the batches in them), zstd-compressed, with its SHA-256 in the manifest.
Sequence numbers are RocksDB's. manifest.json is only ever replaced with a conditional write (IfMatch
on the ETag read, IfNoneMatch for the first), so two archivers can neither lose nor double a
segment: the loser of a race deletes the segments its manifest would have added and starts over.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import zstandard
from pydantic import BaseModel, Field

from rem.engine import now_rfc3339, rfc3339_micros
from rem.errors import RemError, UsageError
from rem.pitr import (LogCorruption, LogPins, Piece, check_log_options, format_micros, live_last_sequence, log_name,
                      read_new, split)
from rem.backup.catalog import ALL_TENANTS, BackupMetadata, BackupRecord
from rem.storage import ObjectMissing, ObjectStore, PreconditionFailed

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2


class Segment(BaseModel):
    key: str
    log_number: int
    start_offset: int = Field(description="first byte of the log file this segment holds")
    end_offset: int = Field(description="the byte after its last batch's record")
    first_seq: int
    last_seq: int
    first_timestamp: str = Field(description="time of its first batch")
    last_timestamp: str = Field(description="time of its last batch")
    batches: int
    size_bytes: int
    sha256: str


class BrokenRange(BaseModel):
    """Sequence numbers the engine's logs no longer held when the archiver looked: no window crosses them."""

    first_missing_seq: int
    last_missing_seq: int
    after_timestamp: str | None = Field(description="time of the last archived batch before the gap")
    detected_at: str


class Page(BaseModel):
    """Sealed segments, kept in an object of their own so the manifest rewritten every pass stays small."""

    key: str
    first_seq: int
    last_seq: int
    segments: int


class Retired(BaseModel):
    """A segment a compaction replaced: deleted once no restore that read an older manifest can still want it."""

    key: str
    retired_at: str


class Manifest(BaseModel):
    format_version: int = MANIFEST_VERSION
    db_name: str | None = Field(default=None, description="the database whose log this is")
    last_archived_sequence: int | None = Field(default=None, description="None until the first pass")
    last_archived_timestamp: str | None = None
    confirmed_timestamp: str | None = Field(
        default=None, description="every write made before this instant is archived (the last pass's start)")
    live_last_sequence: int | None = Field(default=None, description="the live database's, at the last pass")
    pages: list[Page] = Field(default_factory=list, description="sealed segments, oldest first")
    wal_segments: list[Segment] = Field(default_factory=list, description="the segments after the pages")
    broken_ranges: list[BrokenRange] = Field(default_factory=list)
    retired: list[Retired] = Field(default_factory=list)


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


def micros(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def clock_us() -> int:
    return time.time_ns() // 1000


@dataclass
class WalArchive:
    """Where one database's log archive lives: {db}/backups/wal/_all/ in an ObjectStore."""

    objects: ObjectStore
    db: str | None  # None: the layout before databases had a level (read with --from-db legacy)
    tenant_folder: str = ALL_TENANTS

    @property
    def root(self) -> str:
        return f"{self.db}/backups/wal/{self.tenant_folder}/" if self.db else f"backups/wal/{self.tenant_folder}/"

    def url(self) -> str:
        return self.objects.url(self.root)

    def segment_key(self, first: int, last: int) -> str:
        return f"{self.root}segments/{first:020d}-{last:020d}.log.zst"

    def put_page(self, segments: list[Segment]) -> Page:
        first, last = segments[0].first_seq, segments[-1].last_seq
        key = f"{self.root}pages/{first:020d}-{last:020d}.json"
        self.objects.put(key, orjson.dumps([s.model_dump() for s in segments]))
        return Page(key=key, first_seq=first, last_seq=last, segments=len(segments))

    def read_page(self, page: Page) -> list[Segment]:
        try:
            segments = [Segment.model_validate(s) for s in orjson.loads(self.objects.get(page.key))]
        except (ValueError, TypeError) as exc:  # orjson's and pydantic's errors name no object
            raise SegmentCorrupt(f"{self.objects.url(page.key)}: not a readable page of the log archive "
                                 f"({str(exc).splitlines()[0]}); the segments it lists cannot be found until it is "
                                 "restored (an earlier version, with bucket versioning)") from None
        if len(segments) != page.segments or (segments and (segments[0].first_seq, segments[-1].last_seq) !=
                                              (page.first_seq, page.last_seq)):
            raise SegmentCorrupt(f"{page.key} does not hold the {page.segments} segments the manifest says")
        return segments

    def all_segments(self, manifest: "Manifest") -> list[Segment]:
        """Every segment: the sealed pages' (read from the store) and the manifest's own."""
        return [s for page in manifest.pages for s in self.read_page(page)] + manifest.wal_segments

    def read_manifest(self) -> tuple[Manifest, str | None]:
        try:
            body, etag = self.objects.get_with_etag(self.root + MANIFEST)
        except ObjectMissing:
            return Manifest(db_name=self.db), None
        try:
            manifest = Manifest.model_validate_json(body)
        except ValueError as exc:
            raise SegmentCorrupt(f"{self.objects.url(self.root + MANIFEST)}: not a readable log-archive manifest "
                                 f"({str(exc).splitlines()[0]}); restore its earlier version (bucket versioning), or "
                                 "move the archive aside and take a full backup to start a new one") from None
        if manifest.format_version != MANIFEST_VERSION:
            where = self.objects.url(self.root)
            raise UsageError(f"{where}{MANIFEST} is a format {manifest.format_version} archive (the engine's logical "
                             f"wal column family), which RocksDB's own log replaces: move it aside (aws s3 mv "
                             f"--recursive {where} {where.rstrip('/')}-v1/) and take a full backup")
        if self.db is not None and manifest.db_name not in (None, self.db):
            raise UsageError(f"{self.objects.url(self.root + MANIFEST)} is the log archive of database "
                             f"{manifest.db_name!r}, found under {self.db!r}; rem did not write it there")
        return manifest, etag

    def write_manifest(self, manifest: Manifest, etag: str | None) -> str:
        manifest.db_name = manifest.db_name or self.db
        try:
            return self.objects.put(self.root + MANIFEST, manifest.model_dump_json(indent=2).encode(),
                                    if_match=etag, if_none_match=etag is None)
        except PreconditionFailed:
            raise ManifestConflict() from None

    def put_segment(self, piece: Piece) -> Segment:
        body = zstandard.ZstdCompressor(level=3).compress(piece.encode())
        digest = hashlib.sha256(body).hexdigest()
        first, last = piece.first_sequence, piece.last_sequence
        key = self.segment_key(first, last)
        times = piece.batches["time_us"]
        self.objects.put(key, body, metadata={
            "log-number": str(piece.log_number), "first-seq": str(first), "last-seq": str(last), "sha256": digest})
        return Segment(key=key, log_number=piece.log_number, start_offset=piece.start, end_offset=piece.end,
                       first_seq=first, last_seq=last, first_timestamp=format_micros(int(times[0])),
                       last_timestamp=format_micros(int(times[-1])), batches=len(piece.batches),
                       size_bytes=len(body), sha256=digest)

    def fetch_segment(self, segment: Segment, dest: Path) -> Piece:
        """Download one segment to dest, refusing it unless its SHA-256, its log bytes and its place
        (log, offsets, sequence numbers) are what the manifest says."""
        where = f"log segment {segment.first_seq}-{segment.last_seq} ({segment.key})"
        try:
            body = self.objects.get(segment.key)
        except ObjectMissing:
            raise SegmentCorrupt(f"{where} is missing from the archive; sequence numbers {segment.first_seq}-"
                                 f"{segment.last_seq} cannot be replayed") from None
        if hashlib.sha256(body).hexdigest() != segment.sha256:
            raise SegmentCorrupt(f"{where}: SHA-256 checksum mismatch; sequence numbers {segment.first_seq}-"
                                 f"{segment.last_seq} cannot be trusted")
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        dest.write_bytes(raw)
        try:
            piece = Piece.decode(raw, where, dest)
        except (LogCorruption, ValueError, KeyError) as exc:
            raise SegmentCorrupt(f"{where}: {exc}") from None
        place = (piece.log_number, piece.start, piece.end, piece.first_sequence, piece.last_sequence)
        if place != (segment.log_number, segment.start_offset, segment.end_offset, segment.first_seq,
                     segment.last_seq):
            raise SegmentCorrupt(f"{where}: holds log {piece.log_number} bytes {piece.start}-{piece.end}, sequence "
                                 f"numbers {piece.first_sequence}-{piece.last_sequence}, not what the manifest says")
        return piece

    def delete(self, keys: list[str]) -> None:
        self.objects.delete(keys)


# ---------------------------------------------------------------------------------- archival


@dataclass
class PassReport:
    archived_batches: int
    segments: list[str]
    last_archived_sequence: int | None
    last_archived_timestamp: str | None
    confirmed_timestamp: str | None
    live_last_sequence: int | None
    new_gaps: list[BrokenRange] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    conflicts: int = 0

    @property
    def lag_batches(self) -> int:
        if self.live_last_sequence is None or self.last_archived_sequence is None:
            return 0
        return max(0, self.live_last_sequence - self.last_archived_sequence)


def archive_pass(db_path: str | Path, archive: WalArchive, max_bytes: int = 16 << 20, pins: LogPins | None = None,
                 max_conflicts: int = 20, page_segments: int = 500) -> PassReport:
    """Pin the database's new logs, ship every complete batch after the archive's last one, and
    release the pins of logs shipped to their end. With `pins` the caller holds their lock (the
    follower); otherwise this pass takes it, and fails at once if another archiver holds it."""
    own = pins is None
    pins = pins or LogPins(db_path)
    if own:
        check_log_options(db_path)
        pins.lock()
    try:
        conflicts = 0
        while True:
            manifest, etag = archive.read_manifest()
            uploaded: list[Segment] = []
            try:
                report = _archive_from(pins, archive, manifest, etag, uploaded, max_bytes, page_segments)
                report.conflicts = conflicts
                return report
            except ManifestConflict:
                conflicts += 1
                winner, _ = archive.read_manifest()
                referenced = {s.key for s in winner.wal_segments}
                archive.delete([s.key for s in uploaded if s.key not in referenced])
                if conflicts >= max_conflicts:
                    raise RemError(f"gave up after {conflicts} conflicting manifest updates; is an archiver "
                                   "stuck?") from None
    finally:
        if own:
            pins.unlock()


def _archive_from(pins: LogPins, archive: WalArchive, manifest: Manifest, etag: str | None, uploaded: list[Segment],
                  max_bytes: int, page_segments: int) -> PassReport:
    started = clock_us()  # everything written before this is in a log we are about to read
    pins.pin_new()
    live = pins.live()
    live_last = None
    if not live or _size(live[max(live)]) == 0:  # the newest log is empty: only RocksDB knows its last sequence
        live_last = pins.live_last_sequence()
        pins.pin_new()  # logs created while it looked
    expected = None if manifest.last_archived_sequence is None else manifest.last_archived_sequence + 1
    position = (manifest.wal_segments[-1].log_number, manifest.wal_segments[-1].end_offset) \
        if manifest.wal_segments else None
    previous = rfc3339_micros(manifest.last_archived_timestamp) if manifest.last_archived_timestamp else None
    gaps: list[BrokenRange] = []
    finished: list[int] = []
    shipped: list[Piece] = []
    pinned = pins.pinned()
    newest = max([n for n, _ in pinned] + list(live), default=0)
    for number, path in pinned:
        if position and number < position[0]:
            finished.append(number)  # shipped to its end in an earlier pass
            continue
        start = position[1] if position and number == position[0] else 0
        found = read_new(path, number, start, expected, clock_us, previous)
        for first, last in found.gaps:
            gaps.append(BrokenRange(first_missing_seq=first, last_missing_seq=last, detected_at=now_rfc3339(),
                                    after_timestamp=format_micros(previous) if previous else None))
        if found.piece is not None:
            shipped.append(found.piece)
            for part in split(found.piece, max_bytes):
                uploaded.append(archive.put_segment(part))
            previous = int(found.piece.batches["time_us"][-1])
        expected = found.next_sequence
        if number < newest:  # a newer log exists: the engine writes no more into this one
            finished.append(number)
    archived_last = None if expected is None else expected - 1
    if live_last is not None:
        if archived_last is None:
            archived_last = live_last  # a new archive starts at the live database's present
        elif live_last > archived_last:  # logs deleted while the newest one was empty
            gaps.append(BrokenRange(first_missing_seq=archived_last + 1, last_missing_seq=live_last,
                                    after_timestamp=format_micros(previous) if previous else None,
                                    detected_at=now_rfc3339()))
            archived_last = live_last
    updated = manifest.model_copy(deep=True)
    due = [r.key for r in manifest.retired if (started - rfc3339_micros(r.retired_at)) / 1e6 > RETIRE_SECONDS]
    updated.retired = [r for r in manifest.retired if r.key not in due]
    updated.wal_segments.extend(uploaded)
    updated.broken_ranges.extend(gaps)
    updated.last_archived_sequence = archived_last
    if previous is not None:
        updated.last_archived_timestamp = format_micros(previous)
    updated.confirmed_timestamp = format_micros(started)
    updated.live_last_sequence = live_last if live_last is not None else archived_last
    archive.write_manifest(updated, etag)
    archive.delete(due)
    for piece in shipped:
        pins.record_shipped(piece.log_number, piece.batches)
    for number in finished:
        compact_log(pins, archive, number, max_bytes)
        pins.release(number)
    if len(updated.wal_segments) >= page_segments:  # else nothing to seal: spare the manifest's GET
        seal_pages(archive, min((n for n, _ in pins.pinned()), default=None), page_segments)
    return PassReport(sum(s.batches for s in uploaded), [s.key for s in uploaded], updated.last_archived_sequence,
                      updated.last_archived_timestamp, updated.confirmed_timestamp, updated.live_last_sequence,
                      gaps, finished)


RETIRE_SECONDS = 3600  # far longer than any restore takes to fetch the segments its manifest named


def compact_log(pins: LogPins, archive: WalArchive, number: int, max_bytes: int) -> int:
    """Replace a finished log's segments (one per pass: with a follower, one a second) by as few as
    max_bytes allows, cut from the pinned log and the batch times recorded when they were shipped.
    The replaced objects are retired, not deleted; any doubt (the record of shipped batches does not
    match, another archiver wrote the manifest) leaves the segments as they are. Returns the number
    of segments replaced."""
    manifest, etag = archive.read_manifest()
    old = [s for s in manifest.wal_segments if s.log_number == number]
    if len(old) < 2:
        return 0
    table = pins.shipped(number)
    rows = table[(table["sequence"] >= old[0].first_seq) & (table["sequence"] <= old[-1].last_seq)]
    if len(rows) != sum(s.batches for s in old) or any(a.end_offset != b.start_offset for a, b in zip(old, old[1:])):
        return 0
    with open(pins.dir / log_name(number), "rb") as f:
        f.seek(old[0].start_offset)
        data = f.read(old[-1].end_offset - old[0].start_offset)
    parts = list(split(Piece(number, old[0].start_offset, data, rows.copy()), max_bytes))
    if len(parts) >= len(old):
        return 0
    new = [archive.put_segment(part) for part in parts]
    kept = {s.key for s in new}
    updated = manifest.model_copy(deep=True)
    updated.wal_segments = sorted([s for s in manifest.wal_segments if s.log_number != number] + new,
                                  key=lambda s: s.first_seq)
    updated.retired += [Retired(key=s.key, retired_at=now_rfc3339()) for s in old if s.key not in kept]
    try:
        archive.write_manifest(updated, etag)
    except ManifestConflict:
        archive.delete([k for k in kept if k not in {s.key for s in old}])
        return 0
    return len(old)


def seal_pages(archive: WalArchive, oldest_pinned: int | None, page_segments: int) -> int:
    """Move the oldest page_segments segments of logs no longer pinned (shipped, compacted,
    released: they never change again) out of the manifest into a page object. Returns how many."""
    manifest, etag = archive.read_manifest()
    settled = 0
    for segment in manifest.wal_segments:
        if oldest_pinned is not None and segment.log_number >= oldest_pinned:
            break
        settled += 1
    if settled < page_segments:
        return 0
    chunk = manifest.wal_segments[:page_segments]
    page = archive.put_page(chunk)
    updated = manifest.model_copy(deep=True)
    updated.pages.append(page)
    updated.wal_segments = manifest.wal_segments[page_segments:]
    try:
        archive.write_manifest(updated, etag)
    except ManifestConflict:
        archive.delete([page.key])
        return 0
    return len(chunk)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def gap_message(gap: BrokenRange) -> str:
    return (f"sequence numbers {gap.first_missing_seq}-{gap.last_missing_seq} were gone from the database's logs "
            f"before they were archived; the recovery window is broken after {gap.after_timestamp or 'the start'} "
            "until the next full backup: take one now (`rem backup create --upload`)")


# ------------------------------------------------------------------------- recovery windows


@dataclass
class RecoveryWindow:
    record: BackupRecord  # the base backup
    start: str  # the instant the base backup stands for
    end: str  # the last instant reachable from it without a gap
    last_seq: int
    segments: list[Segment]
    broken_after: BrokenRange | None  # the gap that ends this window, if one does

    @property
    def base(self) -> BackupMetadata:
        return self.record.metadata


def base_instant(meta: BackupMetadata) -> str:
    return meta.last_sequence_time or meta.timestamp


def is_base(meta: BackupMetadata) -> bool:
    """A physical whole-database backup: it knows RocksDB's last sequence number."""
    return meta.tenant_folder == ALL_TENANTS and meta.last_sequence is not None


def window_for(record: BackupRecord, manifest: Manifest, all_segments: list[Segment]) -> RecoveryWindow:
    base = record.metadata
    expected = base.last_sequence + 1
    start = base_instant(base)
    end, segments = start, []
    for segment in sorted(all_segments, key=lambda s: s.first_seq):
        if segment.last_seq < expected:
            continue
        if segment.first_seq > expected:
            break
        segments.append(segment)
        expected = segment.last_seq + 1
        end = segment.last_timestamp
    broken = next((b for b in manifest.broken_ranges if b.first_missing_seq <= expected <= b.last_missing_seq), None)
    later = [s.first_seq for s in all_segments if s.first_seq > expected]
    if broken is None and later and not segments:  # the archive starts after this base: nothing joins them
        broken = BrokenRange(first_missing_seq=expected, last_missing_seq=min(later) - 1, after_timestamp=start,
                             detected_at=manifest.confirmed_timestamp or start)
    archive_end = manifest.last_archived_sequence
    if broken is None and archive_end is not None and expected > archive_end and manifest.confirmed_timestamp:
        end = manifest.confirmed_timestamp  # caught up: the window reaches the last pass's look
    if parse_time(end) < parse_time(start):
        end = start
    return RecoveryWindow(record, start, end, expected - 1, segments, broken)


def recovery_windows(records, manifest: Manifest, all_segments: list[Segment]) -> list[RecoveryWindow]:
    """One window per base backup, newest first."""
    windows = [window_for(r, manifest, all_segments) for r in records if is_base(r.metadata)]
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


def segments_to_fetch(window: RecoveryWindow, target: datetime) -> list[Segment]:
    """The window's segments up to the first that starts after the target (the prefix ends in it)."""
    wanted = []
    for segment in window.segments:
        if parse_time(segment.first_timestamp) > target:
            break
        wanted.append(segment)
    return wanted


def archive_status(db_path, manifest: Manifest) -> dict:
    """How far the archive is behind the live database, in batches and in seconds."""
    live = live_last_sequence(db_path)
    archived = manifest.last_archived_sequence
    lag_batches = max(0, live - archived) if archived is not None else None
    if lag_batches == 0 and manifest.confirmed_timestamp:
        lag_seconds = 0.0
    elif manifest.confirmed_timestamp:
        lag_seconds = (datetime.now(timezone.utc) - parse_time(manifest.confirmed_timestamp)).total_seconds()
    else:
        lag_seconds = None
    return {"live_last_sequence": live, "last_archived_sequence": archived,
            "last_archived_timestamp": manifest.last_archived_timestamp,
            "confirmed_timestamp": manifest.confirmed_timestamp, "lag_batches": lag_batches,
            "lag_seconds": lag_seconds,
            "segments": sum(p.segments for p in manifest.pages) + len(manifest.wal_segments),
            "failures": len(manifest.broken_ranges),
            "broken_ranges": [b.model_dump() for b in manifest.broken_ranges]}


@dataclass
class RestorePlan:
    """What a restore to a time starts from: the base backup's recovery window that holds the target,
    and the segments it fetches from the archive."""

    archive: WalArchive
    window: RecoveryWindow
    segments: list[Segment]


def confirmed_base(window: RecoveryWindow) -> RecoveryWindow:
    """The window, once its base's metadata.json says what the listing did (a listing may come from
    the catalog file, a cache: what a restore starts from is read again)."""
    now = window.record.store.confirmed(window.record)
    if now is None or now.metadata != window.base:
        raise RemError(f"base backup {window.base.name} ({window.record.location}) was deleted or changed while the "
                       "restore was planned; run the command again")
    return window


def restore_plan(stores: list, archive: WalArchive, target: datetime) -> RestorePlan:
    manifest, _ = archive.read_manifest()
    records = [r for s in stores for r in s.list()]
    window = confirmed_base(choose_window(recovery_windows(records, manifest, archive.all_segments(manifest)),
                                          target))
    return RestorePlan(archive, window, segments_to_fetch(window, target))


def recovery_points(stores: list, archive: WalArchive) -> list[dict[str, Any]]:
    """BASE BACKUP, RECOVERY WINDOW and what breaks it, for every full backup in the stores."""
    manifest, _ = archive.read_manifest()
    records = [r for s in stores for r in s.list()]
    rows = []
    for w in recovery_windows(records, manifest, archive.all_segments(manifest)):
        rows.append({"base_backup": w.base.name, "base_location": w.record.location,
                     "base_last_sequence": w.base.last_sequence, "window_start": w.start, "window_end": w.end,
                     "window_last_sequence": w.last_seq, "archived_through": manifest.last_archived_sequence,
                     "broken": None if w.broken_after is None else
                     f"sequence numbers {w.broken_after.first_missing_seq}-{w.broken_after.last_missing_seq} "
                     f"missing after {w.broken_after.after_timestamp or 'the start'}"})
    return rows


def archive_report(archive: WalArchive, db_path: Path, enabled: bool) -> dict[str, Any]:
    """`rem pitr status`: the live database's last sequence number, the archive's, the lag, gaps."""
    manifest, _ = archive.read_manifest()
    return {"enabled": enabled, "db_name": archive.db, "archive": archive.url(),
            "manifest": archive.objects.url(archive.root + "manifest.json"), **archive_status(db_path, manifest)}


def log_plan(stores: list, archive: WalArchive, start: datetime, end: datetime) -> RestorePlan:
    """The base backup and the segments that hold every write in (start, end]: the newest base at or
    before start whose recovery window reaches end. A range outside the archive, or across a gap,
    is refused with the windows there are."""
    if end <= start:
        raise UsageError(f"--to {end.isoformat()} is not after --from {start.isoformat()}")
    manifest, _ = archive.read_manifest()
    records = [r for s in stores for r in s.list()]
    window = confirmed_base(choose_window(recovery_windows(records, manifest, archive.all_segments(manifest)), start))
    if end > parse_time(window.end):
        gap = window.broken_after
        why = (f"sequence numbers {gap.first_missing_seq}-{gap.last_missing_seq} are missing from the archive "
               f"after {gap.after_timestamp or window.start}" if gap is not None else
               f"the archive holds writes through {window.end}")
        raise UsageError(f"--to {end.isoformat().replace('+00:00', 'Z')} is past what the archive can show from "
                         f"base {window.base.name}: {why}; give an earlier --to")
    return RestorePlan(archive, window, segments_to_fetch(window, end))
