"""A backup's description: what a snapshot holds, and the metadata.json that makes it a backup."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata as pkg_metadata
from typing import Any

import orjson

import rem
from rem.backup.catalog import SCHEMAS, BackupMetadata, BackupStore
from rem.backup.incremental import PreviousBackup, unchanged_since
from rem.backup.layout import Layout
from rem.db import open_db, tools_rocksdb_version
from rem.errors import RemError
from rem.format import wal_key
from rem.identity import DatabaseIdentity
from rem.snapshot import Snapshot
from rem.stats import entity_totals, estimate_keys
from rem.tenant import schema_rows


@dataclass
class SnapshotFacts:
    """What a snapshot holds, read from the snapshot itself (so metadata describes the bytes stored)."""

    column_families: dict[str, int]  # RocksDB's estimate of the keys (exact when reused from an exact count)
    entity_count: int
    schema_count: int
    wal_last_seq: int
    wal_last_timestamp: str | None
    schemas_json: bytes
    exact: bool = False


class LogReplayStopped(RemError):
    """RocksDB's replay of a snapshot's logs stopped before their last write."""


def describe_snapshot(snap: Snapshot) -> SnapshotFacts:
    """Key counts are RocksDB's estimates: counting exactly would read every block while compression
    already uses every core, and a restore proves its copy by bytes, not by counts.

    This open replays a whole-database snapshot's logs, the one replay a backup makes of them: it
    must reach the snapshot's last sequence number, which point-in-time recovery takes the backup to
    hold. It stops short only at a damaged record before a log's end."""
    with open_db(snap.path / "db", "ro") as db:
        replayed = db.rdict.latest_sequence_number()
        if snap.last_sequence is not None and replayed != snap.last_sequence:
            raise LogReplayStopped(
                f"RocksDB replays the database's log only up to sequence {replayed:,}, not to its last write "
                f"{snap.last_sequence:,}: a damaged record in it, and the engine loses the writes after it when it "
                "restarts; this backup is not made: check the disk, then back up again once the engine has flushed")
        counts = {cf: estimate_keys(db, cf) for cf in db.cf_names if cf != "default"}
        entities, schemas = entity_totals(db, counts["entities"]) if db.has_cf("entities") else (0, 0)
        schema_docs = [orjson.loads(v) for _, v in schema_rows(db)] if db.has_cf("entities") else []
        wal_last = db.latest_wal_seq()
        last_entry = db.get("wal", wal_key(wal_last)) if wal_last else None
        wal_last_ts = orjson.loads(last_entry)["timestamp"] if last_entry else None
    return SnapshotFacts(counts, entities, schemas, wal_last, wal_last_ts,
                         json.dumps(schema_docs, indent=2, sort_keys=True).encode())


def build_metadata(name: str, tenant: str | None, taken_at: datetime, facts: SnapshotFacts, layout: Layout,
                   stored: Any, started: float, level: int, snap: Snapshot, owner: DatabaseIdentity,
                   repository: int | None = None, encryption: dict[str, str] | None = None) -> BackupMetadata:
    """metadata.json of a stored backup: stored is what the layout's store returned."""
    return BackupMetadata(
        name=name, kind="tenant" if tenant else "full", tenant_id=tenant,
        timestamp=taken_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        size_bytes=stored.size_bytes, uncompressed_bytes=stored.uncompressed_bytes,
        entity_count=facts.entity_count, schema_count=facts.schema_count, checksum_sha256=stored.sha256,
        rocksdb_version=snap.written_by, tools_rocksdb_version=tools_rocksdb_version(),
        schema_version=hashlib.sha256(facts.schemas_json).hexdigest()[:16], wal_last_seq=facts.wal_last_seq,
        last_sequence=snap.last_sequence, last_sequence_time=snap.last_sequence_time,
        wal_last_timestamp=facts.wal_last_timestamp, column_families=facts.column_families, host=socket.gethostname(),
        db_name=owner.name, db_identity=owner.identity, db_path=owner.path,
        tool_version=f"rem-maintenance {rem.__version__} (rocksdict {pkg_metadata.version('rocksdict')})",
        duration_seconds=round(time.monotonic() - started, 3), compression=f"zstd-{level}", online=snap.live,
        **layout.metadata_fields(stored),
        counts="exact" if facts.exact else "estimated", repository_bytes=repository, encryption=encryption)


def facts_if_unchanged(store: BackupStore, previous: PreviousBackup | None, snap: Snapshot) -> SnapshotFacts | None:
    """When the snapshot holds exactly the previous backup's files, that backup's counts and schemas
    describe it too, and counting every key again (about 1.5 CPU-s per GB) is skipped, as long as that
    backup's logs replayed to the sequence number this snapshot finds in them."""
    if previous is None or previous.record.metadata.last_sequence != snap.last_sequence \
            or not unchanged_since(previous.files, snap.path / "db"):
        return None
    record, m = previous.record, previous.record.metadata
    schemas = store.objects.get(store.key(record.tenant_folder, record.folder, SCHEMAS))
    return SnapshotFacts(m.column_families, m.entity_count, m.schema_count, m.wal_last_seq, m.wal_last_timestamp,
                         schemas, m.counts == "exact")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
