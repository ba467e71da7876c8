"""The backups as `rem backup list` shows them: every store's, merged newest first, with the stores
that could not be read and where the old layout's backups are."""

from __future__ import annotations

from typing import Any

from rem.backup.catalog import BackupStore, list_reachable
from rem.backup.layout import layout_of
from rem.identity import LEGACY


def list_backups(stores: list[BackupStore], mine: str | None, detail: bool = False
                 ) -> tuple[list[dict[str, Any]], dict[str, str], list[str]]:
    """One row per backup, newest first; the stores that could not be listed (with why); and a note
    for each store holding backups in the old layout (mine: the database they could be given to)."""
    records, unreachable = list_reachable(stores)
    records.sort(key=lambda r: (r.metadata.timestamp, r.name), reverse=True)
    legacy = {r.store.url(): r.store.objects for r in records if r.store.legacy}
    notes = [f"{where} holds backups in the old layout (no database level): they are listed as db 'legacy' and "
             "restored with --from-db legacy; to give them to a database, move them under "
             + (BackupStore(objects, mine).url() if mine else objects.url("{db}/backups/full/"))
             for where, objects in sorted(legacy.items())]
    rows = [{"db": r.store.db or LEGACY, "name": r.name, "tenant_id": r.metadata.tenant_id, "kind": r.metadata.kind,
             "size_bytes": r.metadata.size_bytes, "created": r.metadata.timestamp, "location": r.location,
             "entity_count": r.metadata.entity_count, "wal_last_seq": r.metadata.wal_last_seq,
             "layout": r.metadata.layout, "logical_bytes": r.metadata.uncompressed_bytes,
             "added_bytes": layout_of(r.metadata).added_bytes(r.metadata),
             "repository_bytes": r.metadata.repository_bytes, "duration_seconds": r.metadata.duration_seconds,
             "host": r.metadata.host, "checksum_sha256": r.metadata.checksum_sha256, "status": r.status,
             "kept": r.metadata.kept, "keep_until": r.metadata.keep_until, "annotations": r.metadata.annotations,
             **(r.metadata.model_dump(exclude={"files"}) if detail else {})} for r in records]
    return rows, unreachable, notes
