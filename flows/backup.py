"""full_backup: snapshot -> compress -> chunked upload -> schemas -> metadata (last) -> tags."""

from __future__ import annotations

import time
from typing import Any

from rem.format import check_tenant
from rem.errors import redact
from rem.reports import backup_failure_report, backup_report, backup_rows, human_bytes
from rem.tenant import require_tenant
from rem.backup.create import build_metadata, facts_if_unchanged, utc_now
from rem.storage.encrypted import encryption_of
from rem.backup.layout import new_layout
from runtime.wiring import resolve_settings
from tasks.backup import (find_previous, measure_repository, open_store, snapshot, store_data, store_metadata,
                          snapshot_facts, store_schemas)
from runtime.observe import db_label, get_logger, publish_report, publish_table, send_event
from runtime.orchestration import flow
from rem.backup.catalog import ALL_TENANTS, backup_name, check_name
from rem.storage import cleanup_quietly


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
        encryption_block: A REM Backup Encryption block: rem's own encryption (kms-envelope, key-file) or the bucket's.
        database_block: The REM Database block of the database (rem-db-{db}): its path, name and storage block.
        archive: One self-contained rocksdb.tar.zst instead of an incremental backup.
    """
    cfg = resolve_settings(settings, database_block, storage_block, encryption_block)
    layout = new_layout(tenant, archive)
    started = time.monotonic()
    taken_at = utc_now()
    # a name given is that name; the default, the snapshot's second, takes -2, -3... when a backup
    # made within the same second holds it
    names = [check_name(name)] if name is not None else \
        [backup_name(taken_at)] + [f"{backup_name(taken_at)}-{n}" for n in range(2, 10)]
    name = names[0]
    tenant_folder = check_tenant(tenant) if tenant is not None else ALL_TENANTS
    try:
        if tenant is not None:
            require_tenant(str(cfg.db_path), tenant)
        store, name = open_store(cfg, upload or bool(cfg.storage_block), tenant_folder, names)
        try:
            previous = find_previous(layout, store, tenant_folder)
            snap = snapshot(str(cfg.db_path), tenant)
            try:
                known = facts_if_unchanged(store, previous, snap)
                facts = None if known else snapshot_facts.submit(snap)  # counting keys runs while the upload goes on
                stored = store_data.with_options(name=layout.store_step)(
                    layout, snap, store, tenant_folder, name, cfg.backup_compression, cfg.backup_upload_concurrency,
                    previous)
                facts = known or facts.result()
                store_schemas(store, tenant_folder, name, facts)
                metadata = build_metadata(name, tenant, taken_at, facts, layout, stored, started, cfg.backup_compression,
                                          snap, store.owner, measure_repository(store),
                                          encryption_of(store.objects, store.db))
                store_metadata(store, metadata)
            finally:
                snap.remove()
        finally:
            cleanup_quietly(lambda: store.release(tenant_folder, name), f"releasing backup name {name!r}")
    except Exception as exc:
        reason = redact(f"{type(exc).__name__}: {exc}")
        send_event("rem.backup.failed", cfg, {"name": name, "tenant": tenant, "reason": reason})
        publish_report("backup", backup_failure_report(name, db_label(cfg), tenant, reason),
                       description=f"Backup {name} FAILED: {reason[:200]}")
        raise
    location = store.location(tenant_folder, name)
    send_event("rem.backup.succeeded", cfg, {"name": name, "tenant": tenant, "location": location,
                                       "size_bytes": metadata.size_bytes, "added_bytes": metadata.added_bytes,
                                       "repository_bytes": metadata.repository_bytes})
    publish_report("backup", backup_report(metadata.model_dump(), location),
                   description=f"Backup {name} of {metadata.db_name} on {metadata.host}: "
                               f"{human_bytes(metadata.uncompressed_bytes)} in {metadata.duration_seconds:.1f} s")

    def recent() -> list[dict]:
        newest = store.newest(10)
        return backup_rows([r.metadata.model_dump() for r in newest], [r.location for r in newest])

    publish_table("recent-backups", recent, description=f"The 10 newest backups of {metadata.db_name} in "
                                                        f"{store.url()}")
    get_logger().info("backup %s stored at %s (%d bytes)", name, location, metadata.size_bytes)
    return {**metadata.model_dump(), "location": location}
