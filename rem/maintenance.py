"""Write operations of maintenance: compaction and vacuum. Both need the engine stopped (they open
read-write, which refuses, changing nothing, while another process holds the lock)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime

import orjson
from rocksdict import BottommostLevelCompaction, CompactOptions

from rem.db import RemDB
from rem.format import (SCHEMA_ENTITY_TYPE, edge_reverse_key, embedding_key, entity_prefix, parse_edge_key,
                        parse_embedding_key, parse_entity_key, parse_index_key, parse_key_index_key)
from rem.stats import sst_size_and_files
from rem.writer import derived_rows, load_schemas

@dataclass
class CompactResult:
    cf: str
    size_before: int
    size_after: int
    sst_files_before: int
    sst_files_after: int
    seconds: float


def compact(db: RemDB, only_cf: str | None = None) -> list[CompactResult]:
    """Full manual compaction of one or every column family, measured before and after."""
    names = [only_cf] if only_cf else [n for n in db.cf_names if n != "default"]
    results = []
    for name in names:
        db.cf(name)  # unknown names fail here, listing the real ones
        size, files = sst_size_and_files(db, name)
        started = time.perf_counter()
        opts = CompactOptions()
        opts.set_bottommost_level_compaction(BottommostLevelCompaction.force())
        opts.set_exclusive_manual_compaction(True)
        db.cf(name).compact_range(None, None, opts)
        after_size, after_files = sst_size_and_files(db, name)
        results.append(CompactResult(name, size, after_size, files, after_files, time.perf_counter() - started))
    return results


@dataclass
class VacuumReport:
    cutoff: str
    tenant: str | None
    dry_run: bool
    entities: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # rows removed (or to remove) per column family
    orphans: dict[str, int] = field(default_factory=dict)  # of which orphans, per column family
    bytes_before: int = 0
    bytes_after: int = 0

    @property
    def bytes_reclaimed(self) -> int:
        return max(0, self.bytes_before - self.bytes_after)

    def to_dict(self) -> dict:
        return {**asdict(self), "bytes_reclaimed": self.bytes_reclaimed}


def _deleted_before(entity: dict, cutoff: datetime) -> bool:
    deleted = entity.get("deleted_at")
    return deleted is not None and datetime.fromisoformat(deleted.replace("Z", "+00:00")) < cutoff


def vacuum(db: RemDB, cutoff: datetime, tenant: str | None = None, dry_run: bool = False,
           batch_rows: int = 10_000) -> VacuumReport:
    """Remove entities soft-deleted before cutoff with every row that belongs to them, and orphans
    (index, embedding and edge rows whose entity no longer exists). Idempotent: an interrupted
    vacuum is finished by running it again."""
    report = VacuumReport(cutoff.isoformat().replace("+00:00", "Z"), tenant, dry_run)
    schemas = load_schemas(db)
    doomed: list[tuple[str, bytes]] = []
    victims: set[str] = set()
    alive: set[str] = set()
    for key, value in db.items("entities", entity_prefix(tenant) if tenant else b""):
        entity = orjson.loads(value)
        t, uuid = parse_entity_key(key)
        if entity.get("entity_type") != SCHEMA_ENTITY_TYPE and _deleted_before(entity, cutoff):
            victims.add(uuid)
            doomed.append(("entities", key))
            doomed.extend((cf, k) for cf, k, _ in derived_rows(schemas, t, entity))
            doomed.append(("embeddings", embedding_key(t, uuid)))
        else:
            alive.add(uuid)
    if tenant:  # entities of other tenants are alive too: an edge may point at them
        alive |= {parse_entity_key(k).uuid for k in db.keys("entities") if not k.startswith(entity_prefix(tenant))}
    report.entities = len(victims)

    def orphan(cf: str, key: bytes) -> None:
        doomed.append((cf, key))
        report.orphans[cf] = report.orphans.get(cf, 0) + 1

    for cf, parse in (("key_index", parse_key_index_key), ("indexes", parse_index_key),
                      ("embeddings", parse_embedding_key)):
        kind = {"key_index": "key", "indexes": "idx", "embeddings": "emb"}[cf]
        for key in db.keys(cf, f"{kind}:{tenant}:".encode() if tenant else b""):
            uuid = parse(key).uuid
            if uuid not in alive and uuid not in victims:
                orphan(cf, key)
    for key, value in db.items("edges"):
        src, dst, rel = parse_edge_key(key)
        if src in victims or dst in victims:
            doomed.append(("edges", key))
            doomed.append(("edges_reverse", edge_reverse_key(src, dst, rel)))
        elif (src not in alive or dst not in alive) and not tenant:
            orphan("edges", key)
            orphan("edges_reverse", edge_reverse_key(src, dst, rel))

    unique = sorted(set(doomed))
    existing = [(cf, key) for cf, key in unique if db.get(cf, key) is not None]
    for cf, _ in existing:
        report.rows[cf] = report.rows.get(cf, 0) + 1
    affected = sorted(report.rows)
    report.bytes_before = sum(sst_size_and_files(db, cf)[0] for cf in affected)
    if dry_run or not existing:
        report.bytes_after = report.bytes_before
        return report
    with db.batched(batch_rows) as writes:
        for cf, key in existing:
            writes.delete(cf, key)
    db.flush_all()
    for cf in affected:  # reclaimed bytes are only real once the tombstones are compacted away
        compact(db, cf)
    report.bytes_after = sum(sst_size_and_files(db, cf)[0] for cf in affected)
    return report

