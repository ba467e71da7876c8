"""restore: download -> verify -> extract -> check/repair -> into place; verify_backup; list; download."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from rem.backup.catalog import read_local_backup
from rem.backup.incremental import ObjectCorrupt, kept_in, needed_by
from rem.backup.layout import fetch, file_list, layout_of
from rem.backup.restore import check_target, count_database, real_target
from rem.db import is_database
from rem.errors import UsageError
from rem.reports import restore_report
from runtime.observe import get_logger, publish_report
from runtime.orchestration import flow
from tasks.restore import build_tenant_replacement, download, put_into_place, unpacked

# The stores (boto3, the log archive) and settings resolution are imported where a flow needs them:
# a restore from a local directory needs neither, and on-call waits for every import it makes.


@flow("download-backup", description="Download a backup from S3 with parallel, resumable ranged GETs.")
def download_backup(name: str, output: str, settings: dict[str, Any] | None = None, tenant: str | None = None,
                    from_db: str | None = None) -> dict[str, Any]:
    dest = download(name, Path(output), settings, tenant, from_db, self_contained=True)
    return {"name": name, "path": str(dest)}


@flow("restore", description="Verify, extract and check a backup, then put it in place of the target.")
def restore(source: str, target: str, overwrite: bool = False, delta: bool = False) -> dict[str, Any]:
    """Args:
        delta: Keep the target's files that match the backup's (size and SHA-256) instead of writing them
            again (incremental backups of the whole database; implies overwrite)."""
    started = time.monotonic()
    source_dir, target_dir = Path(source), real_target(Path(target))
    metadata = read_local_backup(source_dir)
    keep_from = delta_source(metadata, target_dir) if delta else None
    lock = check_target(target_dir, overwrite or delta, metadata.tenant_id)  # held until the swap is durable
    try:
        kept = kept_in(file_list(source_dir), keep_from) if keep_from else {}  # before the swap replaces the target
        delta_result = {"kept_files": len(kept), "kept_bytes": sum(p.stat().st_size for p in kept.values())}
        with unpacked(source_dir, target_dir, keep_from=keep_from) as base:
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
              "seconds": round(time.monotonic() - started, 3),
              **({"delta": delta_result} if delta else {})}
    publish_report("restore", restore_report(result, metadata.model_dump()),
                   description=f"Restore of {metadata.name} into {target_dir}")
    return result


def restore_named(name: str, target: str, overwrite: bool, settings: dict[str, Any] | None = None,
                  tenant: str | None = None, from_db: str | None = None, delta: bool = False) -> dict[str, Any]:
    """Restore a backup found by name: a local store's in place, an S3 one downloaded beside the
    target first (same filesystem, removed afterwards); with delta, without the shared files the
    target already holds byte for byte."""
    target_dir = real_target(Path(target))
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".rem-download-", dir=target_dir.parent) as tmp:
        fetched = download(name, Path(tmp), settings, tenant, from_db, target_dir if delta else None)
        return restore(str(fetched), target, overwrite, delta)


def delta_source(metadata, target: Path) -> Path | None:
    """The database a delta restore keeps files from: the target, for a whole-database incremental
    backup (an archive is one stream, a tenant's backup replaces only the tenant's rows)."""
    if metadata.tenant_id is not None or not layout_of(metadata).keeps_files:
        raise UsageError(f"--delta restores whole-database incremental backups; {metadata.name} is "
                         f"{'a tenant backup' if metadata.tenant_id else 'an archive'}: restore it without --delta")
    return target if is_database(target) else None


@flow("verify-backup", description="Checksum and trial restore of a backup into a temporary directory.")
def verify_backup(name: str, settings: dict[str, Any] | None = None, tenant: str | None = None,
                  from_db: str | None = None) -> dict[str, Any]:
    from runtime.wiring import find_record, resolve_settings

    record = find_record(resolve_settings(settings), name, tenant, from_db)
    with tempfile.TemporaryDirectory(prefix="rem-verify-") as tmp:
        try:
            source = fetch(record, Path(tmp) / "download")
            with unpacked(source, Path(tmp) / "trial") as base:
                metadata = base.metadata
                _, counts, entities = count_database(base.db_dir)  # exact, where the backup keeps estimates
        except ObjectCorrupt as exc:  # one shared object breaks every backup that names it
            raise needed_by(record, exc) from None
    return {"ok": True, "name": name, "location": record.location, "checksum_sha256": metadata.checksum_sha256,
            "entity_count": entities, "column_families": counts}
