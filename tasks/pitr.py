"""Point-in-time recovery steps: fetch the segments, place the logs, let RocksDB recover, check."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rem.change_log import Change, ChangeFilter, base_prior, read_changes
from rem.storage import ObjectStore
from rem.undo import write_values
from rem.db import open_db
from rem.errors import RemError
from rem.rocksdb_manifest import column_family_names
from rem.pitr import LogPins, Piece, Placed, place_logs, replay_plan
from rem.settings import Settings
from rem.scratch import remove_scratch
from rem.snapshot import take_tenant_snapshot
from runtime.orchestration import task
from runtime.progress import RunProgress
from rem.wal_archive import PassReport, Segment, WalArchive, archive_pass


@task("fetch-log-segments", retries=2, retry_delay_seconds=5)
def fetch_segments(archive: WalArchive, segments: list[Segment], dest: Path, concurrency: int = 4) -> list[Piece]:
    """Download and check every needed segment (in parallel) before anything is placed."""
    dest.mkdir(parents=True, exist_ok=True)
    progress = RunProgress(f"Fetching {len(segments)} log segments", sum(s.size_bytes for s in segments))

    def fetch(segment: Segment) -> Piece:
        piece = archive.fetch_segment(segment, dest / f"{segment.first_seq:020d}.piece")
        progress(segment.size_bytes)
        return piece

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        pieces = list(pool.map(fetch, segments))
    progress.finish()
    return pieces


@task("place-logs", retries=0)
def place_archived_logs(db_dir: Path, pieces: list[Piece], base_last: int, target_us: int) -> Placed:
    """Write the archived log files into the restored base, the last one cut at the target."""
    return place_logs(db_dir, pieces, base_last, target_us)


@task("recover", retries=0)
def recover(db_dir: Path, last_sequence: int) -> int:
    """RocksDB's own recovery replays the placed logs and flushes; reopened, the copy must end at
    exactly the last placed sequence number."""
    with open_db(db_dir, "rw") as db:
        db.flush_all()
    with open_db(db_dir, "ro") as db:
        recovered = db.rdict.latest_sequence_number()
    if recovered != last_sequence:
        raise RemError(f"RocksDB recovered through sequence number {recovered}, not {last_sequence}: the placed logs "
                       "were not replayed whole; the target was not touched")
    return recovered


@task("narrow-to-tenant", retries=0)
def narrow_to_tenant(db_dir: Path, tenant: str) -> Path:
    """The recovered whole database narrowed to one tenant's rows (and the schemas)."""
    narrowed = take_tenant_snapshot(db_dir, tenant)
    shutil.rmtree(db_dir)
    (narrowed.path / "db").rename(db_dir)
    remove_scratch(narrowed.path)
    return db_dir


@task("check-segments", retries=0)
def check_pieces(pieces: list[Piece], base_last: int, target_us: int) -> tuple[int, int]:
    """Each segment's log bytes hold the batches its table lists, and they follow the base without
    a gap: the batches a restore to the target would replay, and its last sequence number."""
    for piece in pieces:
        piece.check_bytes(f"log {piece.log_number} bytes {piece.start}-{piece.end}")
    _, batches, last = replay_plan(pieces, base_last, target_us)
    return batches, last


@task("archive-log", retries=2, retry_delay_seconds=10)
def archive_once(cfg: Settings, archive: WalArchive, pins: LogPins) -> PassReport:
    """Ship the log batches written since the last pass."""
    return archive_pass(cfg.db_path, archive, int(cfg.pitr_segment_max_mb * 2**20), pins,
                        page_segments=cfg.pitr_page_segments)


@task("decode-log", retries=0)
def decode_log(pieces: list[Piece], base_dir: Path, base_last: int, start_us: int, end_us: int,
               keep: ChangeFilter) -> list[Change]:
    """Every write in (start, end] as a REM change, told apart from the value before it (the log's, else the base's)."""
    names = column_family_names(base_dir)
    with open_db(base_dir, "ro") as base:
        return read_changes(pieces, names, base_prior(base), base_last, start_us, end_us, keep)


@task("save-undo-record", retries=3, retry_delay_seconds=5)
def save_undo_record(objects: ObjectStore, key: str, body: bytes) -> str:
    """The value before the undo of every key it writes, in the store before anything is written."""
    objects.put(key, body, if_none_match=True)
    return objects.url(key)


@task("apply-undo", retries=0)
def apply_undo(db, writes: list[tuple[str, bytes, bytes | None]]) -> int:
    """Every key's value written in one WriteBatch, synced; the bytes written."""
    return write_values(db, writes)
