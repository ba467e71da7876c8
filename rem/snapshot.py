"""A consistent copy of a REM database, taken without writing to it or blocking its writer.

A whole-database snapshot is physical: the database's own files as of one moment, so it keeps the
engine's sequence numbers (a point-in-time base) and costs what its unflushed log costs, not what
the database holds.

1. A linked view of the directory (rem.db.linked_view: a hard link to every file) pins each SST,
   MANIFEST and log: the engine may delete them meanwhile, our links keep them readable.
2. Into a scratch directory beside the database: every SST and blob file hard-linked (RocksDB
   never changes one), CURRENT, IDENTITY and OPTIONS copied, and the MANIFEST and every log copied
   up to their last complete record (rem.rocksdb_log: the engine may be appending to both). The
   logs are copied beside the copy, in the kernel, while step 3 runs.
3. RocksDB checks the copy without its logs: it opens read-only, every SST its version lists must
   be there at the size the MANIFEST records, and an SST no version lists (a compaction's or
   flush's output still being written) is dropped from the copy. A flush or compaction that
   finished between the listing and the MANIFEST copy names a file the view lacks: then it starts
   over. Then the logs join the copy.

The snapshot's last sequence number is the MANIFEST's or its logs' last batch's, whichever is
later. Replaying 61 MB of log in that open cost ten times the rest of the snapshot, and describing
the snapshot replays it anyway, while the upload runs: there RocksDB's replay must reach that
number (rem.backup.create.describe_snapshot), or the backup fails. The database directory is never
written to. A tenant snapshot is logical instead: a new database holding that tenant's rows.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rem.db import RemDB, database_rocksdb_version, init_like, linked_view, lock_is_held, open_db
from rem.engine import now_rfc3339
from rem.errors import DatabaseNotFound
from rem.rocksdb_log import LogRecord, batch_last_sequence, last_record_in_file
from rem.scratch import remove_scratch, scratch_dir
from rem.tenant import schema_rows, tenant_entity_ids, tenant_rows

MERGE_BATCH_ROWS = 10_000


@dataclass
class Snapshot:
    path: Path
    live: bool  # a writer held the database while the snapshot was taken
    written_by: str = "unknown"  # the RocksDB version of the live database's OPTIONS (the engine's)
    last_sequence: int | None = None  # RocksDB's last sequence number in the copy (a physical snapshot's)
    last_sequence_time: str | None = None  # when the copy was complete: every write up to last_sequence was before

    def remove(self) -> None:
        remove_scratch(self.path)


SNAPSHOT_ATTEMPTS = 5


def copy_complete_records(source: Path, target: Path) -> LogRecord | None:
    """A log-format file (a WAL or a MANIFEST) copied up to its last complete record, found from its
    tail and copied in the kernel (a live log may hold tens of MB); that record."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        last = last_record_in_file(src, str(source))
        left = last.end if last else 0
        offset = 0
        while left > 0:
            copied = os.copy_file_range(src.fileno(), dst.fileno(), left, offset)
            if copied == 0:
                raise OSError(f"{source} shrank while it was copied")
            offset += copied
            left -= copied
    return last


def physical_copy(source: Path, target: Path, logs: bool = True) -> None:
    """A database directory's files in target: SSTs and blob files hard-linked (RocksDB never changes
    one), CURRENT, IDENTITY and OPTIONS copied, the MANIFEST and (unless logs is False) every log up
    to their last complete record (a live engine may be appending to both); never LOCK or the info
    logs. From a linked view of a live database, or from a database whose lock we hold."""
    target.mkdir()
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        name, source_file = entry.name, Path(entry.path)
        if name.endswith((".sst", ".blob")):
            os.link(source_file, target / name)
        elif name.startswith("MANIFEST-"):
            copy_complete_records(source_file, target / name)
        elif name in ("CURRENT", "IDENTITY") or name.startswith("OPTIONS-"):
            shutil.copyfile(source_file, target / name)
    if logs:
        copy_logs(source, target)


def copy_logs(source: Path, target: Path) -> int | None:
    """Every log of a database directory, up to its last complete record, into the directory target;
    the last sequence number of their complete batches (None: they hold none)."""
    lasts = [batch_last_sequence(copy_complete_records(log, target / log.name)) for log in source.glob("*.log")]
    return max((last for last in lasts if last is not None), default=None)


class SnapshotRace(Exception):
    """The engine moved on between the listing and the copy."""


def _checked(target: Path) -> int:
    """Open the copy read-only: its last sequence number (with no logs in it, the MANIFEST's). Every
    SST its version lists must be in it at the size the MANIFEST records, and every other SST goes: a
    compaction or flush still writing its output has a file in the directory that no version names
    yet, and that file keeps growing."""
    try:
        copy = open_db(target, "ro")
    except Exception as exc:  # RocksDB's own error: the copy's MANIFEST names a file it lacks
        raise SnapshotRace(str(exc)) from exc
    with copy:
        live = {f["name"].lstrip("/"): f["size"] for f in copy.rdict.live_files()}
        last_sequence = copy.rdict.latest_sequence_number()
    missing = sorted(name for name in live if not (target / name).exists())
    if missing:
        raise SnapshotRace(f"the copy names {', '.join(missing[:3])}, created after the listing")
    for path in target.glob("*.sst"):
        if path.name not in live:
            path.unlink()  # our hard link only: the database's own file is untouched
        elif path.stat().st_size != live[path.name]:
            raise SnapshotRace(f"{path.name} holds {path.stat().st_size} bytes, its version records "
                               f"{live[path.name]}")
    return last_sequence


def take_snapshot(db_path: str | os.PathLike) -> Snapshot:
    """A consistent physical copy of the whole database, beside it, with every acknowledged write."""
    db_path = Path(db_path)
    if not (db_path / "CURRENT").is_file():
        raise DatabaseNotFound(str(db_path))
    live = lock_is_held(db_path)
    work = scratch_dir(db_path, "snapshot")
    target, logs = work / "db", work / "logs"
    try:
        for attempt in range(SNAPSHOT_ATTEMPTS):
            view = linked_view(db_path)
            try:
                physical_copy(view, target, logs=False)
                logs.mkdir()
                with ThreadPoolExecutor(1) as pool:  # the kernel copies the logs while RocksDB checks the rest
                    copying = pool.submit(copy_logs, view, logs)
                    last_sequence = _checked(target)
                    last_sequence = max(last_sequence, copying.result() or 0)
                copied_at = now_rfc3339()
                for log in logs.iterdir():
                    log.rename(target / log.name)
                logs.rmdir()
                return Snapshot(work, live, database_rocksdb_version(db_path), last_sequence, copied_at)
            except (SnapshotRace, FileNotFoundError):  # only a race with the engine is worth another try
                shutil.rmtree(target, ignore_errors=True)
                shutil.rmtree(logs, ignore_errors=True)
                if attempt == SNAPSHOT_ATTEMPTS - 1:
                    raise
            finally:
                remove_scratch(view)
        raise AssertionError("unreachable: the last attempt returns or raises")
    except BaseException:
        remove_scratch(work)
        raise


def take_tenant_snapshot(db_path: str | os.PathLike, tenant: str) -> Snapshot:
    """A new database beside the source holding only one tenant's rows (plus the schemas)."""
    db_path = Path(db_path)
    live = lock_is_held(db_path)
    work = scratch_dir(db_path, "tenant-snapshot")
    try:
        with open_db(db_path, "ro") as source, init_like(source, work / "db") as copy:
            ids = tenant_entity_ids(source, tenant)
            for cf in source.cf_names:
                if copy.has_cf(cf):
                    copy_rows(copy, cf, tenant_rows(source, tenant, cf, ids))
            copy_rows(copy, "entities", schema_rows(source))
            copy.flush_all()
            return Snapshot(work, live, database_rocksdb_version(db_path))
    except BaseException:
        remove_scratch(work)
        raise


def copy_rows(target: RemDB, cf: str, rows: Iterator[tuple[bytes, bytes]]) -> int:
    """Write rows into target's cf in batches; returns how many."""
    with target.batched(MERGE_BATCH_ROWS) as writes:
        for key, value in rows:
            writes.put(cf, key, value)
    return writes.rows

