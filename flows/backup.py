"""full_backup: snapshot -> compress -> chunked upload -> schemas -> metadata (last) -> tags."""

from __future__ import annotations

import time
from typing import Any

from rem.format import check_tenant
from rem.errors import redact
from rem.reports import backup_failure_report, backup_report, backup_rows, human_bytes
from rem.settings import Settings, load_settings
from rem.tenant import require_tenant
from tasks.backup import (build_metadata, compress_and_store, describe, facts_if_unchanged, find_previous,
                          measure_repository, open_store, snapshot, store_incrementally, store_metadata, store_schemas,
                          utc_now)
from tasks.runtime import current_db, db_label, emit, flow, get_logger, label_run, publish_report, publish_table
from rem.backups import ALL_TENANTS, backup_name, check_name
from rem.storage import cleanup_quietly


def resolve_settings(settings: dict[str, Any] | None, database_block: str | None = None,
                     storage_block: str | None = None, encryption_block: str | None = None) -> Settings:
    """Settings given by the command line, else from the environment and config file; a RemDatabase
    block named by a deployment supplies the database's path, name, backup directory and storage
    block, so every flow of a deployment writes and reads where its backups are."""
    cfg = Settings.model_validate(settings) if settings else load_settings()
    update: dict[str, Any] = {}
    if database_block:
        from pathlib import Path

        from blocks.backup import RemDatabase

        block = RemDatabase.load(database_block)
        if not settings:  # the database's own config file, beside the path the block names
            cfg = load_settings(db_path=Path(block.path))
        update = {"db_path": Path(block.path), "backup_dir": Path(block.backup_dir) if block.backup_dir else None,
                  "db_name": block.db_name, "storage_block": block.storage_block}
    # A block a run names overrides the database block's; a parameter left empty (None) overrides
    # nothing, so a deployment's blocks always win over the worker's environment.
    update.update({k: v for k, v in (("storage_block", storage_block), ("encryption_block", encryption_block))
                   if v is not None})
    cfg = cfg.model_copy(update={k: v for k, v in update.items() if v is not None})
    current_db.set(db_label(cfg))
    label_run(current_db.get())
    return cfg


@flow("full-backup", description="Consistent snapshot of a REM database, compressed and stored with its metadata.")
def full_backup(settings: dict[str, Any] | None = None, tenant: str | None = None, name: str | None = None,
                upload: bool = False, storage_block: str | None = None, encryption_block: str | None = None,
                database_block: str | None = None, archive: bool = False) -> dict[str, Any]:
    """A whole-database backup is incremental (only the SSTs the repository lacks go up) unless
    archive asks for one self-contained rocksdb.tar.zst; a tenant's is always an archive.

    Args:
        settings: Settings as the command line passes them (leave empty in a deployment: the blocks say where).
        tenant: Back up only this tenant (plus the schemas); empty: the whole database.
        name: The backup's name; empty: the snapshot's UTC time.
        upload: Store it in the bucket, not the local backup directory.
        storage_block: A REM Backup Storage block to use instead of the one the database block names.
        encryption_block: A REM Backup Encryption block for the uploads (SSE-S3 or SSE-KMS).
        database_block: The REM Database block of the database (rem-db-{db}): its path, name and storage block.
        archive: One self-contained rocksdb.tar.zst instead of an incremental backup.
    """
    cfg = resolve_settings(settings, database_block, storage_block, encryption_block)
    incremental = tenant is None and not archive
    started = time.monotonic()
    taken_at = utc_now()
    name = check_name(name) if name is not None else backup_name(taken_at)
    segment = check_tenant(tenant) if tenant is not None else ALL_TENANTS
    try:
        if tenant is not None:
            require_tenant(str(cfg.db_path), tenant)
        store = open_store(cfg, upload or bool(cfg.storage_block), segment, name)
        try:
            previous = find_previous(store, segment) if incremental else None
            snap = snapshot(str(cfg.db_path), tenant)
            try:
                known = facts_if_unchanged(store, previous, snap)
                facts = None if known else describe.submit(snap)  # counting keys runs while the upload goes on
                stored = (store_incrementally(snap, store, segment, name, cfg.backup_compression,
                                              cfg.backup_upload_concurrency, previous and previous[1]) if incremental
                          else compress_and_store(snap, store, segment, name, cfg.backup_compression))
                facts = known or facts.result()
                store_schemas(store, segment, name, facts)
                metadata = build_metadata(name, tenant, taken_at, facts, stored, started, cfg.backup_compression, snap,
                                          store.owner, measure_repository(store))
                store_metadata(store, metadata)
            finally:
                snap.remove()
        finally:
            cleanup_quietly(lambda: store.release(segment, name), f"releasing backup name {name!r}")
    except Exception as exc:
        reason = redact(f"{type(exc).__name__}: {exc}")
        emit("rem.backup.failed", cfg, {"name": name, "tenant": tenant, "reason": reason})
        publish_report("backup", backup_failure_report(name, db_label(cfg), tenant, reason),
                       description=f"Backup {name} FAILED: {reason[:200]}")
        raise
    location = store.location(segment, name)
    emit("rem.backup.succeeded", cfg, {"name": name, "tenant": tenant, "location": location,
                                       "size_bytes": metadata.size_bytes, "added_bytes": metadata.added_bytes,
                                       "repository_bytes": metadata.repository_bytes})
    publish_report("backup", backup_report(metadata.model_dump(), location),
                   description=f"Backup {name} of {metadata.db_name} on {metadata.host}: "
                               f"{human_bytes(metadata.uncompressed_bytes)} in {metadata.duration_seconds:.1f} s")

    def recent() -> list[dict]:
        newest = sorted(store.list(), key=lambda r: r.metadata.timestamp, reverse=True)[:10]
        return backup_rows([r.metadata.model_dump() for r in newest], [r.location for r in newest])

    publish_table("recent-backups", recent, description=f"The 10 newest backups of {metadata.db_name} in "
                                                        f"{store.describe()}")
    get_logger().info("backup %s stored at %s (%d bytes)", name, location, metadata.size_bytes)
    return {**metadata.model_dump(), "location": location}
