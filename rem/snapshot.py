"""A consistent copy of a REM database, taken without writing to it or blocking its writer.

Measured on rocksdict 0.3.29: a checkpoint through a read-only handle holds only flushed SST
files, so a running engine's unflushed (but acknowledged, WAL-logged) writes would be lost. The
read-only handle itself does see them: it replays the writer's WAL when it opens. So:

1. open read-only (sees every write acknowledged before this moment, then stays frozen);
2. checkpoint through it into a sibling directory (hard links: instant, no data copied);
3. if any live WAL file had data, merge-compare the read-only view with the checkpoint,
   column family by column family, and write the difference into the checkpoint.

The same path serves a stopped database (its WAL may hold unflushed writes too), so one
mechanism covers online and offline backups, and the database directory is never written to.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rocksdict import Checkpoint

from rem.db import ROCKSDICT_CONFIG, RemDB, database_rocksdb_version, init_like, lock_is_held, open_db
from rem.scratch import remove_scratch, scratch_dir
from rem.tenant import schema_rows, tenant_entity_ids, tenant_rows

MERGE_BATCH_ROWS = 10_000


@dataclass
class Snapshot:
    path: Path
    live: bool  # a writer held the database while the snapshot was taken
    merged_rows: int  # rows written into the checkpoint that only the WAL held
    cf_names: list[str] = field(default_factory=list)
    written_by: str = "unknown"  # the RocksDB version of the live database's OPTIONS (the engine's)

    def remove(self) -> None:
        remove_scratch(self.path)


def _wal_has_data(db_path: Path) -> bool:
    try:
        return any(p.suffix == ".log" and p.stat().st_size > 0 for p in db_path.iterdir())
    except FileNotFoundError:
        return True


def _merge_diff(source: RemDB, target: RemDB, cf: str) -> int:
    """Make target's cf equal to source's, writing only what differs. Returns rows written."""
    src = source.items(cf)
    dst = target.items(cf)
    s = next(src, None)
    d = next(dst, None)
    with target.batched(MERGE_BATCH_ROWS) as writes:
        while s is not None or d is not None:
            if d is None or (s is not None and s[0] < d[0]):  # only the WAL had it
                writes.put(cf, s[0], s[1])
                s = next(src, None)
            elif s is None or d[0] < s[0]:  # deleted by a write only the WAL had
                writes.delete(cf, d[0])
                d = next(dst, None)
            else:
                if s[1] != d[1]:
                    writes.put(cf, s[0], s[1])
                s, d = next(src, None), next(dst, None)
    return writes.rows


def take_snapshot(db_path: str | os.PathLike) -> Snapshot:
    """A consistent copy of the whole database, beside it, containing every acknowledged write."""
    db_path = Path(db_path)
    live = lock_is_held(db_path)
    needs_merge = _wal_has_data(db_path)  # checked before opening: a later write is not ours to include
    work = scratch_dir(db_path, "snapshot")
    target = work / "db"
    try:
        with open_db(db_path, "ro") as source:
            Checkpoint(source.rdict).create_checkpoint(str(target))
            (target / ROCKSDICT_CONFIG).unlink(missing_ok=True)  # rocksdict's checkpoint adds it
            merged = 0
            if needs_merge:
                with open_db(target, "rw") as copy:
                    for cf in source.cf_names:
                        merged += _merge_diff(source, copy, cf)
                    copy.flush_all()
            return Snapshot(work, live, merged, list(source.cf_names), database_rocksdb_version(db_path))
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
            rows = 0
            for cf in source.cf_names:
                if not copy.has_cf(cf):
                    continue
                rows += copy_rows(copy, cf, tenant_rows(source, tenant, cf, ids))
            rows += copy_rows(copy, "entities", schema_rows(source))
            copy.flush_all()
            return Snapshot(work, live, rows, [n for n in source.cf_names if copy.has_cf(n)],
                            database_rocksdb_version(db_path))
    except BaseException:
        remove_scratch(work)
        raise


def copy_rows(target: RemDB, cf: str, rows: Iterator[tuple[bytes, bytes]]) -> int:
    """Write rows into target's cf in batches; returns how many."""
    with target.batched(MERGE_BATCH_ROWS) as writes:
        for key, value in rows:
            writes.put(cf, key, value)
    return writes.rows

