"""restore: download -> verify -> extract -> check/repair -> into place; verify_backup; list; download."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from tasks.runtime import RunProgress, flow, get_logger, publish_report, task
from rem.db import is_database
from rem.backups import BackupRecord, BackupStore, find_backup, list_reachable, read_local_backup
from rem.settings import Settings
from tasks.restore import (build_tenant_replacement, check_target, count_database, put_into_place, real_target,
                           unpacked)
from rem.identity import LEGACY
from rem.reports import restore_report
from rem.repository import ObjectCorrupt, dependents

# The stores (boto3, the log archive) and settings resolution are imported where a flow needs them:
# a restore from a local directory needs neither, and on-call waits for every import it makes.


def find_record(cfg: Settings, name: str, tenant: str | None, from_db: str | None) -> BackupRecord:
    """This database's backup called name, or with from_db another database's (`legacy`: the old layout's)."""
    from tasks.storage import all_stores, other_stores

    return find_backup(all_stores(cfg, from_db=from_db), name, tenant,
                       None if from_db else lambda: other_stores(cfg, databases=True))


@task("download", retries=3, retry_delay_seconds=10)
def download(name: str, output: Path, settings_dict: dict[str, Any] | None, tenant: str | None = None,
             from_db: str | None = None) -> Path:
    """Fetch a backup into output/{name}/ (resuming a partial download)."""
    from flows.backup import resolve_settings

    cfg = resolve_settings(settings_dict)
    record = find_record(cfg, name, tenant, from_db)
    progress = RunProgress(f"Downloading backup {name}", record.metadata.size_bytes)
    try:
        path = record.store.fetch(record, output, progress)
    except ObjectCorrupt as exc:
        raise needed_by(record, exc) from None
    progress.finish()
    return path


def needed_by(record: BackupRecord, exc: ObjectCorrupt) -> ObjectCorrupt:
    """A shared object's fault named with every backup that needs it, and what mends it."""
    users = dependents(record.store, exc.key)
    return ObjectCorrupt(exc.key, f"{str(exc).split(': ', 1)[1]}; backups that need it: {', '.join(users)}; "
                                  "take a new backup: it uploads again every object the store no longer holds as a "
                                  "backup recorded it (size and ETag), if the database still has that SST; where "
                                  "the bytes changed in place with neither, remove "
                                  f"{record.store.objects.url(exc.key)} first")


@flow("download-backup", description="Download a backup from S3 with parallel, resumable ranged GETs.")
def download_backup(name: str, output: str, settings: dict[str, Any] | None = None, tenant: str | None = None,
                    from_db: str | None = None) -> dict[str, Any]:
    dest = download(name, Path(output), settings, tenant, from_db)
    return {"name": name, "path": str(dest)}


@flow("restore", description="Verify, extract and check a backup, then put it in place of the target.")
def restore(source: str, target: str, overwrite: bool = False) -> dict[str, Any]:
    started = time.monotonic()
    source_dir, target_dir = Path(source), real_target(Path(target))
    metadata = read_local_backup(source_dir)
    lock = check_target(target_dir, overwrite, metadata.tenant_id)  # held until the swap is durable
    try:
        with unpacked(source_dir, target_dir) as base:
            report = base.report
            if metadata.tenant_id and is_database(target_dir):
                replacement, written = build_tenant_replacement(base.db_dir, target_dir, metadata.tenant_id)
                mode = "tenant-replaced"
            else:
                replacement, written, mode = base.db_dir, report.column_families, "database"
            put_into_place(replacement, target_dir)
    finally:
        if lock is not None:
            lock.release()
    get_logger().info("restored %s into %s", metadata.name, target_dir)
    result = {"ok": True, "name": metadata.name, "target": str(target_dir), "mode": mode,
              "tenant_id": metadata.tenant_id, "entity_count": report.entity_count,
              "counts": "exact" if report.repaired else metadata.counts, "repaired": report.repaired,
              "column_families": written, "checksum_sha256": metadata.checksum_sha256,
              "seconds": round(time.monotonic() - started, 3)}
    publish_report("restore", restore_report(result, metadata.model_dump()),
                   description=f"Restore of {metadata.name} into {target_dir}")
    return result


def restore_named(name: str, target: str, overwrite: bool, settings: dict[str, Any] | None = None,
                  tenant: str | None = None, from_db: str | None = None) -> dict[str, Any]:
    """Restore a backup found by name: a local store's in place, an S3 one downloaded beside the
    target first (same filesystem, removed afterwards)."""
    beside = real_target(Path(target)).parent
    beside.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".rem-download-", dir=beside) as tmp:
        return restore(str(download(name, Path(tmp), settings, tenant, from_db)), target, overwrite)


@flow("verify-backup", description="Checksum and trial restore of a backup into a temporary directory.")
def verify_backup(name: str, settings: dict[str, Any] | None = None, tenant: str | None = None,
                  from_db: str | None = None) -> dict[str, Any]:
    from flows.backup import resolve_settings

    cfg = resolve_settings(settings)
    record = find_record(cfg, name, tenant, from_db)
    with tempfile.TemporaryDirectory(prefix="rem-verify-") as tmp:
        try:
            source = record.store.fetch(record, Path(tmp) / "download")
            with unpacked(source, Path(tmp) / "trial") as base:
                metadata = base.metadata
                _, counts, entities = count_database(base.db_dir)  # exact, where the backup keeps estimates
        except ObjectCorrupt as exc:  # one shared object breaks every backup that names it
            raise needed_by(record, exc) from None
    return {"ok": True, "name": name, "location": record.location, "checksum_sha256": metadata.checksum_sha256,
            "entity_count": entities, "column_families": counts}


def list_backups(settings: dict[str, Any] | None = None, from_db: str | None = None,
                 all_dbs: bool = False, detail: bool = False) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """This database's backups (or from_db's, or with all_dbs every database's), local and S3
    merged, newest first, with the old layout's; and the stores that could not be read (with why)."""
    from flows.backup import resolve_settings
    from tasks.storage import all_stores, database_names, identity, object_stores, other_stores

    cfg = resolve_settings(settings)
    if all_dbs:
        stores = [BackupStore(o, name) for o in object_stores(cfg, bounded=True) for name in database_names(o)]
    else:
        stores = all_stores(cfg, bounded=True, from_db=from_db)
    if not from_db:
        stores += other_stores(cfg)
    records, unreachable = list_reachable(stores)
    records.sort(key=lambda r: (r.metadata.timestamp, r.name), reverse=True)
    legacy = {r.store.describe(): r.store.objects for r in records if r.store.legacy}
    mine = None if all_dbs else identity(cfg).name
    for where, objects in sorted(legacy.items()):
        get_logger().warning("%s holds backups in the old layout (no database level): they are listed as db "
                             "'legacy' and restored with --from-db legacy; to give them to a database, move "
                             "them under %s", where, BackupStore(objects, mine).describe() if mine
                             else objects.url("{db}/backups/full/"))
    return [{"db": r.store.db or LEGACY, "name": r.name, "tenant_id": r.metadata.tenant_id, "kind": r.metadata.kind,
             "size_bytes": r.metadata.size_bytes, "created": r.metadata.timestamp, "location": r.location,
             "entity_count": r.metadata.entity_count, "wal_last_seq": r.metadata.wal_last_seq,
             "layout": r.metadata.layout, "logical_bytes": r.metadata.uncompressed_bytes,
             "added_bytes": r.metadata.added_bytes if r.metadata.layout == "incremental" else r.metadata.size_bytes,
             "repository_bytes": r.metadata.repository_bytes, "duration_seconds": r.metadata.duration_seconds,
             "host": r.metadata.host, "checksum_sha256": r.metadata.checksum_sha256, "status": r.status,
             **(r.metadata.model_dump(exclude={"files"}) if detail else {})} for r in records], unreachable
