"""restore: download -> verify -> extract -> check/repair -> into place; verify_backup; list; download."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from flows.backup import resolve_settings
from tasks.runtime import RunProgress, flow, get_logger, publish_report, task
from rem.db import is_database
from rem.scratch import remove_scratch
from tasks.restore import (build_tenant_replacement, check_restored, check_target, extract, put_into_place, real_target,
                           verify_archive)
from tasks.storage import all_stores, find_backup, list_reachable, read_local_backup


@task("download", retries=3, retry_delay_seconds=10)
def download(name: str, output: Path, settings_dict: dict[str, Any] | None, tenant: str | None = None,
             progress=None) -> Path:
    """Fetch a backup into output/{name}/ (resuming a partial download)."""
    cfg = resolve_settings(settings_dict)
    record = find_backup(all_stores(cfg), name, tenant)
    run_progress = RunProgress(f"Downloading backup {name}", record.metadata.size_bytes)

    def advance(n: int) -> None:
        run_progress(n)
        if progress:
            progress(n)

    path = record.store.fetch(record, output, advance)
    run_progress.finish()
    return path


@flow("download-backup", description="Download a backup from S3 with parallel, resumable ranged GETs.")
def download_backup(name: str, output: str, settings: dict[str, Any] | None = None, tenant: str | None = None,
                    progress=None) -> dict[str, Any]:
    dest = download(name, Path(output), settings, tenant, progress)
    return {"name": name, "path": str(dest)}


@flow("restore", description="Verify, extract and check a backup, then put it in place of the target.")
def restore(source: str, target: str, overwrite: bool = False) -> dict[str, Any]:
    source_dir, target_dir = Path(source), real_target(Path(target))
    metadata = read_local_backup(source_dir)
    lock = check_target(target_dir, overwrite, metadata.tenant_id)  # held until the swap is durable
    try:
        verify_archive(source_dir, metadata)
        extracted = extract(source_dir, target_dir, metadata)
        try:
            report = check_restored(extracted, metadata)
            if metadata.tenant_id and is_database(target_dir):
                replacement, written = build_tenant_replacement(extracted, target_dir, metadata.tenant_id)
                mode = "tenant-replaced"
            else:
                replacement, written, mode = extracted, report.column_families, "database"
            put_into_place(replacement, target_dir)
        finally:
            remove_scratch(extracted.parent)  # this flow's extraction, whichever copy went into place
    finally:
        if lock is not None:
            lock.release()
    get_logger().info("restored %s into %s", metadata.name, target_dir)
    publish_report("restore", f"# Restore of {metadata.name}\n\nInto `{target_dir}` ({mode}): {report.entity_count} "
                              f"entities, checksum `{metadata.checksum_sha256}` verified"
                              + (", repaired with nothing dropped" if report.repaired else ""))
    return {"ok": True, "name": metadata.name, "target": str(target_dir), "mode": mode,
            "tenant_id": metadata.tenant_id, "entity_count": report.entity_count, "repaired": report.repaired,
            "column_families": written, "checksum_sha256": metadata.checksum_sha256}


@flow("verify-backup", description="Checksum and trial restore of a backup into a temporary directory.")
def verify_backup(name: str, settings: dict[str, Any] | None = None, tenant: str | None = None) -> dict[str, Any]:
    cfg = resolve_settings(settings)
    record = find_backup(all_stores(cfg), name, tenant)
    with tempfile.TemporaryDirectory(prefix="rem-verify-") as tmp:
        source = record.store.fetch(record, Path(tmp) / "download")
        metadata = read_local_backup(source)
        verify_archive(source, metadata)
        trial = Path(tmp) / "trial" / "db"
        trial.parent.mkdir()
        db_dir = extract(source, trial, metadata)
        report = check_restored(db_dir, metadata)
    return {"ok": True, "name": name, "location": record.location, "checksum_sha256": metadata.checksum_sha256,
            "entity_count": report.entity_count, "column_families": report.column_families}


def list_backups(settings: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Local and S3 backups merged, newest first, and the stores that could not be read (with why)."""
    cfg = resolve_settings(settings)
    records, unreachable = list_reachable(all_stores(cfg, bounded=True))
    records.sort(key=lambda r: (r.metadata.timestamp, r.name), reverse=True)
    return [{"name": r.name, "tenant_id": r.metadata.tenant_id, "kind": r.metadata.kind,
             "size_bytes": r.metadata.size_bytes, "created": r.metadata.timestamp, "location": r.location,
             "entity_count": r.metadata.entity_count, "wal_last_seq": r.metadata.wal_last_seq} for r in records], unreachable
