"""Restoring a backup: the target checked and locked, the extracted copy checked against the
metadata (repaired only when it will not open, kept only when nothing is lost), the atomic swap
into place, and a tenant's rows replaced inside a copy of a live database."""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rocksdict import Options, Rdict

from rem.backup.archive import fsync_tree
from rem.backup.catalog import BackupMetadata
from rem.backup.incremental import SHARED
from rem.db import add_missing_column_families, is_database, open_db
from rem.errors import DatabaseLocked, RemError, UsageError
from rem.format import SCHEMA_TENANT, parse_entity_key
from rem.scratch import quarantine_path, remove_scratch, scratch_dir
from rem.snapshot import copy_rows, physical_copy
from rem.stats import count_keys, entity_totals
from rem.swap import DatabaseLock, SwapFailed, exchange, fsync_dir, move_new
from rem.tenant import schema_rows, tenant_entity_ids, tenant_rows


class RestoreCheckFailed(RemError):
    pass


@dataclass
class CheckReport:
    column_families: dict[str, int]  # keys per column family: counted after a repair, else the metadata's
    entity_count: int
    repaired: bool = False
    dropped: dict[str, int] = field(default_factory=dict)  # keys lost per column family by repair
    missing_column_families: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    lost_files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.dropped or self.missing_column_families or self.missing_files or self.lost_files)


def real_target(target: Path) -> Path:
    """Where a restore really writes: a symbolic link is followed, so the link keeps pointing at the
    restored database instead of being replaced by a directory while the real one stays stale."""
    return Path(os.path.realpath(target))


def check_target(target: Path, overwrite: bool, tenant: str | None, option: str = "--target",
                 can_overwrite: bool = True) -> DatabaseLock:
    """Refuse before any work: a non-empty target without --overwrite, or one a writer holds. The
    target is returned locked with RocksDB's own lock (an absent one claimed first): hold it until
    the swap is durable. option names the flag that chose the target, for the hint."""
    while not os.path.lexists(target):
        claimed = claim_absent_target(target)
        if claimed is not None:
            return claimed
    occupied = not target.is_dir() or any(p.name != "LOCK" for p in target.iterdir())  # a lone LOCK: a claim left
    if occupied and not overwrite:
        if not can_overwrite:
            raise UsageError(f"{target}: not empty; give {option} a new or empty directory")
        what = f"replace tenant {tenant!r} in it" if tenant and is_database(target) else "replace it"
        raise UsageError(f"{target}: not empty; pass --overwrite to {what} (the old data is kept in quarantine "
                         f"until the restored copy verifies) or choose another {option}")
    if occupied and not is_database(target):
        raise UsageError(f"{target}: not empty and not a REM database; refusing to overwrite it")
    try:
        return DatabaseLock(target)
    except DatabaseLocked:
        if occupied:
            raise
        raise UsageError(f"{target}: another restore is putting a database here right now (it holds the path's "
                         "lock); wait for it to finish, or choose another --target") from None


def claim_absent_target(target: Path) -> DatabaseLock | None:
    """An absent target taken before any work: an empty directory holding only RocksDB's LOCK, locked
    by us, renamed into place without replacing anything (RENAME_NOREPLACE). An engine that starts
    there meanwhile is refused by RocksDB's own lock (instead of creating a database the swap would
    throw away), and a second restore finds the path taken. None when the path appeared meanwhile."""
    target.parent.mkdir(parents=True, exist_ok=True)
    placeholder = target.parent / f".rem-claim-{target.name}-{uuid.uuid4().hex[:8]}"
    placeholder.mkdir()
    lock = DatabaseLock(placeholder)
    try:
        move_new(placeholder, target)
    except SwapFailed:  # the target appeared: judge it as an existing one
        lock.release()
        placeholder.rmdir()
        return None
    lock.moved_to(target)
    return lock


def count_database(db_dir: Path) -> tuple[list[str], dict[str, int], int]:
    with open_db(db_dir, "ro") as db:
        counts = {cf: count_keys(db, cf) for cf in db.cf_names if cf != "default"}
        entities = entity_totals(db, counts["entities"])[0] if db.has_cf("entities") else 0
        return list(db.cf_names), counts, entities


def missing_data_files(db_dir: Path, recorded: dict[str, int]) -> list[str]:
    """The SST and blob files the backup recorded that the copy lacks or holds at another size."""
    missing = []
    for name, size in sorted(recorded.items()):
        path = db_dir / name
        if SHARED.match(name) and not (path.is_file() and path.stat().st_size == size):
            missing.append(name)
    return missing


def compare(metadata: BackupMetadata, names: list[str], counts: dict[str, int], entities: int) -> CheckReport:
    report = CheckReport(counts, entities)
    report.missing_column_families = [cf for cf in metadata.column_families if cf not in names]
    if metadata.counts == "exact":  # an estimate proves nothing key by key
        report.dropped = {cf: want - counts.get(cf, 0) for cf, want in metadata.column_families.items()
                          if counts.get(cf, 0) != want}
        if entities != metadata.entity_count:
            report.dropped["entities (count)"] = metadata.entity_count - entities
    return report


def repair_copy(db_dir: Path, metadata: BackupMetadata) -> CheckReport:
    """Rdict.repair on the extracted copy (never the only one), reporting exactly what it dropped."""
    opts = Options(raw_mode=True)
    Rdict.repair(str(db_dir), opts)
    # Repair rebuilds column families from SST files: an empty one (the engine leaves several
    # empty) disappears, losing nothing; it comes back empty, as the engine's open would make it.
    add_missing_column_families(db_dir, [cf for cf, keys in metadata.column_families.items() if keys == 0])
    names, counts, entities = count_database(db_dir)
    report = compare(metadata, names, counts, entities)
    report.repaired = True
    # Repair archives the logs it converted and the old MANIFEST there; an SST or blob file there is
    # one it could not read: data lost.
    lost = db_dir / "lost"
    report.lost_files = sorted(str(p.relative_to(db_dir)) for p in lost.rglob("*")
                               if p.is_file() and SHARED.match(p.name)) if lost.exists() else []
    return report


def describe_problems(report: CheckReport) -> str:
    parts = []
    if report.missing_files:
        parts.append(f"files missing or of another size than recorded: {', '.join(report.missing_files)}")
    if report.missing_column_families:
        parts.append(f"column families missing: {', '.join(report.missing_column_families)}")
    if report.dropped:
        parts.append("keys missing: " + ", ".join(f"{cf} {n:+d}" for cf, n in report.dropped.items()))
    if report.lost_files:
        parts.append(f"repair moved to lost/: {', '.join(report.lost_files)}")
    return "; ".join(parts)


def check_copy(db_dir: Path, metadata: BackupMetadata, recorded: dict[str, int] | None) -> CheckReport:
    """Every data file the backup recorded is there at its size (their bytes were checked against
    their SHA-256 on the way in), then RocksDB opens the copy: its MANIFEST's files all present, its
    logs replayed record by record under their CRC32C. Only a copy that does not open is repaired,
    and kept only when the repair moved nothing to lost/ (and, for a backup with exact counts, every
    key is still there)."""
    missing = missing_data_files(db_dir, recorded) if recorded else []
    if missing:
        report = CheckReport(metadata.column_families, metadata.entity_count, missing_files=missing)
    else:
        try:
            with open_db(db_dir, "ro") as db:
                names = list(db.cf_names)
        except Exception:  # RocksDB's own error, or no CURRENT file: only then repair
            report = repair_copy(db_dir, metadata)
        else:
            report = CheckReport(metadata.column_families, metadata.entity_count)
            report.missing_column_families = [cf for cf in metadata.column_families if cf not in names]
    if not report.ok:
        copy = "the repaired copy" if report.repaired else "the extracted copy"
        raise RestoreCheckFailed(f"{copy} of backup {metadata.name} does not match its metadata: "
                                 f"{describe_problems(report)}; the target was not touched, try an older backup")
    return report


def swap_into_place(db_dir: Path, target: Path) -> None:
    """Swap the verified copy with the target in one atomic rename, holding RocksDB's lock on the
    copy throughout (the caller holds the target's); the old database waits in quarantine until the
    new one opens in place, then goes (or is swapped back if it does not)."""
    work = db_dir.parent
    target.parent.mkdir(parents=True, exist_ok=True)
    with DatabaseLock(db_dir):
        if not target.exists():
            move_new(db_dir, target)
            quarantine = None
        else:
            exchange(db_dir, target)  # the path never goes missing: a retrying engine cannot create one there
            quarantine = quarantine_path(target)
            db_dir.rename(quarantine)
            fsync_dir(target.parent)
        try:
            open_db(target, "ro").close()  # every key was counted before the swap: opening in place is the check
        except BaseException:
            if quarantine is not None:
                exchange(quarantine, target)
            raise
    remove_scratch(work)
    if quarantine is not None:
        shutil.rmtree(quarantine, ignore_errors=True)


def _live_schema_ids(db) -> set[str]:
    return {parse_entity_key(key).uuid for key, _ in schema_rows(db)}


def _kept(cf: str, key: bytes, keep_ids: set[str]) -> bool:
    """Rows of the live schemas (tenant `default`) that a tenant restore never deletes."""
    if cf == "entities":
        return parse_entity_key(key).uuid in keep_ids
    if cf == "key_index":
        return key.rsplit(b":", 1)[-1].decode() in keep_ids
    return False


def replace_tenant(db_dir: Path, target: Path, tenant: str) -> tuple[Path, dict[str, int]]:
    """A copy of the target (hard links, its lock held by the caller) with one tenant's rows replaced
    by the backup's, built beside it: swapped in whole, a kill leaves the old tenant or the new one.
    Other tenants' rows, the shared WAL and the live schemas (of tenant `default`) stay as they are."""
    work = scratch_dir(target, "tenant-restore")
    try:
        clone = work / "db"
        physical_copy(target, clone)
        written: dict[str, int] = {}
        with open_db(db_dir, "ro") as backup, open_db(clone, "rw") as live:
            keep_ids = _live_schema_ids(live) if tenant == SCHEMA_TENANT else set()
            old_ids = tenant_entity_ids(live, tenant) - keep_ids
            new_ids = tenant_entity_ids(backup, tenant)
            for cf in live.cf_names:
                if cf in ("default", "wal") or not backup.has_cf(cf):
                    continue
                with live.batched() as writes:
                    for key, _ in list(tenant_rows(live, tenant, cf, old_ids)):
                        if not _kept(cf, key, keep_ids):
                            writes.delete(cf, key)
                written[cf] = copy_rows(live, cf, tenant_rows(backup, tenant, cf, new_ids))
            live.flush_all()
        fsync_tree(clone)
        return clone, written
    except BaseException:
        remove_scratch(work)
        raise
