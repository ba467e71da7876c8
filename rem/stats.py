"""Database statistics: exact counts by scanning, sizes from RocksDB properties."""

from __future__ import annotations

import configparser
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from rem.db import RemDB
from rem.format import CF_NAMES, SCHEMA_ENTITY_TYPE, SCHEMA_TENANT, entity_prefix
from rem.tenant import schema_rows


@dataclass
class CFStats:
    keys: int
    size_bytes: int
    sst_files: int
    compression: str
    level_sizes: dict[str, int] = field(default_factory=dict)  # SST bytes per level, levels that hold any
    compression_ratio: float | None = None  # raw key + value bytes over data-block bytes


@dataclass
class SchemaStats:
    live: int = 0
    soft_deleted: int = 0
    bytes: int = 0  # stored entity JSON
    with_embedding: int = 0  # live entities with a vector (inline or in the embeddings CF)

    @property
    def embedding_coverage(self) -> float | None:
        return round(self.with_embedding / self.live, 4) if self.live else None


@dataclass
class DBStats:
    path: str
    entities_live: int
    entities_soft_deleted: int
    schemas: int
    embeddings: int
    edges: int
    disk_usage_bytes: int
    wal_entries: int
    wal_size_bytes: int
    wal_latest_seq: int
    column_families: dict[str, CFStats] = field(default_factory=dict)
    schemas_detail: dict[str, SchemaStats] = field(default_factory=dict)

    @property
    def entities_total(self) -> int:
        return self.entities_live + self.entities_soft_deleted

    def to_dict(self) -> dict:
        data = asdict(self)
        data["entities_total"] = self.entities_total
        for name, detail in self.schemas_detail.items():
            data["schemas_detail"][name]["embedding_coverage"] = detail.embedding_coverage
        return data


def directory_size(path: str | os.PathLike) -> int:
    """Bytes of every file below path (what `du` would count, without block rounding)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # a live engine may delete a file between listing and stat
                pass
    return total


def cf_compression(path: Path) -> dict[str, str]:
    """Each column family's configured compression, from the engine's newest OPTIONS file."""
    options = sorted(path.glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))
    if not options:
        return {}
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read(options[-1])
    found = {}
    for section in parser.sections():
        if section.startswith('CFOptions "'):
            name = section[len('CFOptions "'):-1]
            raw = parser[section].get("compression", "unknown").strip()
            found[name] = {"kNoCompression": "none", "kLZ4Compression": "lz4", "kLZ4HCCompression": "lz4hc",
                           "kZSTD": "zstd", "kSnappyCompression": "snappy", "kZlibCompression": "zlib"}.get(raw, raw)
    return found


def count_keys(db: RemDB, cf: str) -> int:
    return sum(1 for _ in db.keys(cf))


def estimate_keys(db: RemDB, cf: str) -> int:
    """RocksDB's own estimate of a column family's keys (rocksdb.estimate-num-keys): free, where an
    exact count reads and decompresses every block (about 1.5 CPU-s per GB). It counts an overwritten
    key once per version not yet compacted away, so it is exact for a compacted column family."""
    return db.cf(cf).property_int_value("rocksdb.estimate-num-keys") or 0


def sst_size_and_files(db: RemDB, cf: str, levels: int = 7) -> tuple[int, int]:
    """(bytes of SST files, number of SST files) of one column family, from RocksDB properties."""
    handle = db.cf(cf)
    files = sum(handle.property_int_value(f"rocksdb.num-files-at-level{n}") or 0 for n in range(levels))
    return handle.property_int_value("rocksdb.total-sst-files-size") or 0, files


def _table_properties(db: RemDB, cf: str, level: int | None = None) -> dict[str, str]:
    name = "rocksdb.aggregated-table-properties" + (f"-at-level{level}" if level is not None else "")
    text = db.cf(cf).property_value(name) or ""
    return dict(part.strip().split("=", 1) for part in text.split(";") if "=" in part)


def level_sizes(db: RemDB, cf: str, levels: int = 7) -> dict[str, int]:
    """Estimated SST bytes per level, for the levels that hold files."""
    sizes = {}
    for level in range(levels):
        if db.cf(cf).property_int_value(f"rocksdb.num-files-at-level{level}"):
            sizes[f"L{level}"] = int(_table_properties(db, cf, level).get("(estimated) table size", 0))
    return sizes


def cf_stats(db: RemDB, cf: str, compression: dict[str, str]) -> CFStats:
    size, files = sst_size_and_files(db, cf)
    props = _table_properties(db, cf)
    raw = int(props.get("raw key size", 0)) + int(props.get("raw value size", 0))
    stored = int(props.get("data block size", 0))
    return CFStats(keys=count_keys(db, cf), size_bytes=size, sst_files=files, compression=compression.get(cf, "unknown"),
                   level_sizes=level_sizes(db, cf), compression_ratio=round(raw / stored, 3) if stored else None)


def entity_counts(db: RemDB, per_schema: dict[str, SchemaStats] | None = None,
                  progress: Callable[[int], None] | None = None) -> tuple[int, int, int]:
    """(live entities, soft-deleted entities, live schemas); schema entities are not counted as entities.
    With per_schema, also fills counts, bytes and embedding coverage per entity type."""
    live = deleted = schemas = 0
    schema_prefix = entity_prefix(SCHEMA_TENANT)
    has_embeddings = db.has_cf("embeddings")
    for scanned, (key, value) in enumerate(db.items("entities"), 1):
        if progress and scanned % 4096 == 0:
            progress(4096)
        entity = orjson.loads(value)
        if key.startswith(schema_prefix) and entity.get("entity_type") == SCHEMA_ENTITY_TYPE:
            schemas += entity.get("deleted_at") is None
            continue
        is_live = entity.get("deleted_at") is None
        live += is_live
        deleted += not is_live
        if per_schema is not None:
            detail = per_schema.setdefault(entity.get("entity_type", "?"), SchemaStats())
            detail.bytes += len(value)
            if is_live:
                detail.live += 1
                inline = isinstance((entity.get("properties") or {}).get("embedding"), list)
                if inline or (has_embeddings and db.get("embeddings", b"emb:" + key[7:]) is not None):
                    detail.with_embedding += 1
            else:
                detail.soft_deleted += 1
    return live, deleted, schemas


def entity_totals(db: RemDB, entity_keys: int | None = None) -> tuple[int, int]:
    """(entities, live schemas) counting keys only: just the default tenant's values are parsed,
    to tell schema entities apart. Backup metadata and restore checks use it on whole databases.
    entity_keys: the entities CF's key count when the caller has it already."""
    total = entity_keys if entity_keys is not None else count_keys(db, "entities")
    states = [orjson.loads(value).get("deleted_at") is None for _, value in schema_rows(db)]
    return total - len(states), sum(states)


def collect_stats(db: RemDB, only_cf: str | None = None, progress: Callable[[int], None] | None = None) -> DBStats:
    """Statistics of an open database; with only_cf, the per-CF table holds that one column family.
    progress is told of the entities scanned (about estimate_keys of `entities` in all)."""
    compression = cf_compression(db.path)
    known_first = [n for n in CF_NAMES if db.has_cf(n)] + [n for n in db.cf_names if n not in CF_NAMES and n != "default"]
    names = [only_cf] if only_cf else known_first
    if only_cf:
        db.cf(only_cf)  # raises with the list of real column families when unknown
    per_cf = {name: cf_stats(db, name, compression) for name in names}
    per_schema: dict[str, SchemaStats] = {}
    live, deleted, schemas = entity_counts(db, per_schema, progress) if db.has_cf("entities") else (0, 0, 0)

    def keys_of(cf: str) -> int:
        return per_cf[cf].keys if cf in per_cf else (count_keys(db, cf) if db.has_cf(cf) else 0)

    wal_size = per_cf["wal"].size_bytes if "wal" in per_cf else (
        db.cf("wal").property_int_value("rocksdb.total-sst-files-size") or 0 if db.has_cf("wal") else 0)
    return DBStats(
        path=str(db.path),
        entities_live=live,
        entities_soft_deleted=deleted,
        schemas=schemas,
        embeddings=keys_of("embeddings"),
        edges=keys_of("edges"),
        disk_usage_bytes=directory_size(db.path),
        wal_entries=keys_of("wal"),
        wal_size_bytes=wal_size,
        wal_latest_seq=db.latest_wal_seq(),
        column_families=per_cf,
        schemas_detail=dict(sorted(per_schema.items())),
    )
