"""Backup steps: snapshot -> describe -> compress and store -> schemas -> metadata (last) -> tags."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata as pkg_metadata
from pathlib import Path

import orjson

import rem
from rem.db import open_db, tools_rocksdb_version
from rem.format import wal_key
from rem.snapshot import Snapshot, take_snapshot, take_tenant_snapshot
from rem.stats import entity_totals, estimate_keys
from rem.tenant import schema_rows
from rem.archive import ArchiveStats, write_archive
from rem.repository import (FileList, IncrementalStats, previous_backup, repository_bytes, store_incremental,
                            unchanged_since)
from tasks.runtime import RunProgress, task
from tasks.storage import backup_store
from rem.identity import DatabaseIdentity
from rem.backups import METADATA, SCHEMAS, BackupMetadata
from rem.storage import cleanup_quietly

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


def describe_snapshot(db_dir: Path) -> SnapshotFacts:
    """Key counts are RocksDB's estimates: counting exactly would read every block while compression
    already uses every core, and a restore proves its copy by bytes, not by counts."""
    with open_db(db_dir, "ro") as db:
        counts = {cf: estimate_keys(db, cf) for cf in db.cf_names if cf != "default"}
        entities, schemas = entity_totals(db, counts["entities"]) if db.has_cf("entities") else (0, 0)
        schema_docs = [orjson.loads(v) for _, v in schema_rows(db)] if db.has_cf("entities") else []
        wal_last = db.latest_wal_seq()
        last_entry = db.get("wal", wal_key(wal_last)) if wal_last else None
        wal_last_ts = orjson.loads(last_entry)["timestamp"] if last_entry else None
    return SnapshotFacts(counts, entities, schemas, wal_last, wal_last_ts,
                         json.dumps(schema_docs, indent=2, sort_keys=True).encode())


def build_metadata(name: str, tenant: str | None, taken_at: datetime, facts: SnapshotFacts,
                   archive: ArchiveStats | IncrementalStats, started: float, level: int, snap: Snapshot,
                   owner: DatabaseIdentity, repository: int | None = None) -> BackupMetadata:
    import hashlib

    return BackupMetadata(
        name=name, kind="tenant" if tenant else "full", tenant_id=tenant,
        timestamp=taken_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        size_bytes=archive.size_bytes, uncompressed_bytes=archive.uncompressed_bytes,
        entity_count=facts.entity_count, schema_count=facts.schema_count, checksum_sha256=archive.sha256,
        rocksdb_version=snap.written_by, tools_rocksdb_version=tools_rocksdb_version(),
        schema_version=hashlib.sha256(facts.schemas_json).hexdigest()[:16], wal_last_seq=facts.wal_last_seq,
        last_sequence=snap.last_sequence, last_sequence_time=snap.last_sequence_time,
        wal_last_timestamp=facts.wal_last_timestamp, column_families=facts.column_families, host=socket.gethostname(),
        db_name=owner.name, db_identity=owner.identity, db_path=owner.path,
        tool_version=f"rem-maintenance {rem.__version__} (rocksdict {pkg_metadata.version('rocksdict')})",
        duration_seconds=round(time.monotonic() - started, 3), compression=f"zstd-{level}", online=snap.live,
        **({"layout": "incremental", "added_bytes": archive.added_bytes, "objects": archive.objects}
           if isinstance(archive, IncrementalStats) else {"files": archive.files}),
        counts="exact" if facts.exact else "estimated", repository_bytes=repository)


# ------------------------------------------------------------------------------- tasks


@task("open-store", retries=0)
def open_store(cfg, upload: bool, segment: str, name: str):
    """The store the backup goes to, checked and its name claimed: a run that fails here shows it here."""
    store = backup_store(cfg, upload)
    store.prepare(segment, name)
    return store


@task("snapshot", retries=2, retry_delay_seconds=5)
def snapshot(db_path: str, tenant: str | None) -> Snapshot:
    """Take a consistent copy of the database (or one tenant) beside it."""
    return take_tenant_snapshot(db_path, tenant) if tenant else take_snapshot(db_path)


@task("describe-snapshot", retries=0)
def describe(snap: Snapshot) -> SnapshotFacts:
    """What the snapshot holds: estimated keys per column family and entities, schemas, last WAL sequence."""
    return describe_snapshot(snap.path / "db")


@task("compress-and-upload", retries=2, retry_delay_seconds=10)
def compress_and_store(snap: Snapshot, store, tenant_segment: str, name: str, level: int) -> ArchiveStats:
    """Stream the snapshot as tar + zstd into the store (chunked, parallel upload for S3)."""
    total = sum(p.stat().st_size for p in (snap.path / "db").rglob("*") if p.is_file())
    progress = RunProgress(f"Compressing and uploading backup {name}", total)
    try:
        with store.archive_writer(tenant_segment, name, snap.path) as sink:
            stats = write_archive(snap.path / "db", sink, level, progress=progress)
        progress.finish()  # the upload is complete only once the writer has closed
        return stats
    except BaseException:
        cleanup_quietly(lambda: store.discard(tenant_segment, name), f"removing the partial backup {name!r}")
        raise


@task("upload-new-ssts", retries=2, retry_delay_seconds=10)
def store_incrementally(snap: Snapshot, store, tenant_segment: str, name: str, level: int, concurrency: int,
                        earlier: FileList | None) -> IncrementalStats:
    """Upload the SSTs the repository lacks, the small files and the file list (an incremental backup)."""
    db_dir = snap.path / "db"
    progress = RunProgress(f"Uploading what backup {name} adds", sum(p.stat().st_size for p in db_dir.iterdir()))
    try:
        stats = store_incremental(db_dir, store, tenant_segment, name, level, concurrency, snap.path, earlier,
                                  progress)
        progress.finish()
        return stats
    except BaseException:
        cleanup_quietly(lambda: store.discard(tenant_segment, name), f"removing the partial backup {name!r}")
        raise


@task("find-previous-backup", retries=2, retry_delay_seconds=5)
def find_previous(store, tenant_segment: str) -> tuple | None:
    """The newest incremental backup of this database and its file list."""
    return previous_backup(store, tenant_segment)


def facts_if_unchanged(store, previous: tuple | None, snap: Snapshot) -> SnapshotFacts | None:
    """When the snapshot holds exactly the previous backup's files, that backup's counts and schemas
    describe it too, and counting every key again (about 1.5 CPU-s per GB) is skipped."""
    if previous is None or not unchanged_since(previous[1], snap.path / "db"):
        return None
    record, m = previous[0], previous[0].metadata
    schemas = store.objects.get(store.key(record.segment, record.folder, SCHEMAS))
    return SnapshotFacts(m.column_families, m.entity_count, m.schema_count, m.wal_last_seq, m.wal_last_timestamp,
                         schemas, m.counts == "exact")


@task("measure-repository", retries=2, retry_delay_seconds=5)
def measure_repository(store) -> int:
    """The bytes the database's backups occupy in the store, this one included."""
    return repository_bytes(store)


@task("store-schemas", retries=3, retry_delay_seconds=5)
def store_schemas(store, tenant_segment: str, name: str, facts: SnapshotFacts) -> None:
    """Write schemas.json beside the archive."""
    store.put_file_bytes(tenant_segment, name, SCHEMAS, facts.schemas_json)


@task("tag-metadata", retries=3, retry_delay_seconds=5)
def store_metadata(store, metadata: BackupMetadata) -> None:
    """Write metadata.json last (the backup becomes visible), then tag the objects."""
    store.put_file_bytes(metadata.tenant_segment, metadata.name, METADATA, metadata.model_dump_json(indent=2).encode())
    store.finish(metadata.tenant_segment, metadata.name,
                 {"rem-backup": metadata.name, "rem-kind": metadata.kind, "rem-tenant": metadata.tenant_segment},
                 metadata.layout)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)

