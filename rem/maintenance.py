"""Write operations of maintenance: compaction and vacuum. Both need the engine stopped (they open
read-write, which refuses, changing nothing, while another process holds the lock)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

import orjson
from rocksdict import BottommostLevelCompaction, CompactOptions

from rem.db import RemDB
from rem.format import (SCHEMA_ENTITY_TYPE, edge_reverse_key, parse_edge_key, parse_embedding_key, parse_entity_key,
                        parse_index_key, parse_key_index_key)
from rem.stats import sst_size_and_files

@dataclass
class CompactResult:
    cf: str
    size_before: int
    size_after: int
    sst_files_before: int
    sst_files_after: int
    seconds: float


def compaction_bytes(db: RemDB, only_cf: str | None = None) -> int:
    """The SST bytes a compaction of one or every column family rewrites: what its progress counts."""
    return sum(sst_size_and_files(db, name)[0] for name in _compacted(db, only_cf))


def _compacted(db: RemDB, only_cf: str | None) -> list[str]:
    return [only_cf] if only_cf else [n for n in db.cf_names if n != "default"]


def compact(db: RemDB, only_cf: str | None = None,
            progress: Callable[[int], None] | None = None) -> list[CompactResult]:
    """Full manual compaction of one or every column family, measured before and after; progress is
    told of each column family's SST bytes as it is done (RocksDB reports nothing within one)."""
    results = []
    for name in _compacted(db, only_cf):
        db.cf(name)  # unknown names fail here, listing the real ones
        size, files = sst_size_and_files(db, name)
        started = time.perf_counter()
        opts = CompactOptions()
        opts.set_bottommost_level_compaction(BottommostLevelCompaction.force())
        opts.set_exclusive_manual_compaction(True)
        db.cf(name).compact_range(None, None, opts)
        after_size, after_files = sst_size_and_files(db, name)
        results.append(CompactResult(name, size, after_size, files, after_files, time.perf_counter() - started))
        if progress:
            progress(size)
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
           batch_rows: int = 10_000, orphans: bool = False,
           progress: Callable[[int], None] | None = None) -> VacuumReport:
    """Remove entities soft-deleted before cutoff with every row that belongs to them: every key row
    that points at them (the current key's and the old ones an update left), their `indexes` and
    `embeddings` rows, and their edge rows in both edge CFs, unless a live entity of another tenant
    has the same id (ids carry no tenant). With orphans, also the rows whose entity is gone (which
    the engine's hard_delete leaves). Idempotent: an interrupted vacuum is finished by a rerun."""
    report = VacuumReport(cutoff.isoformat().replace("+00:00", "Z"), tenant, dry_run)
    doomed: list[tuple[str, bytes]] = []
    victims: set[tuple[str, str]] = set()
    alive: set[tuple[str, str]] = set()
    for scanned, (key, value) in enumerate(db.items("entities"), 1):
        if progress and scanned % 4096 == 0:
            progress(4096)  # entities scanned: the bulk of a vacuum's reading
        entity = orjson.loads(value)
        owner = parse_entity_key(key)
        if ((tenant is None or owner.tenant == tenant) and entity.get("entity_type") != SCHEMA_ENTITY_TYPE
                and _deleted_before(entity, cutoff)):
            victims.add(owner)
            doomed.append(("entities", key))
        else:
            alive.add(owner)
    report.entities = len(victims)
    live_ids = {uuid for _, uuid in alive}
    victim_ids = {uuid for _, uuid in victims} - live_ids

    def orphan(cf: str, key: bytes) -> None:
        doomed.append((cf, key))
        report.orphans[cf] = report.orphans.get(cf, 0) + 1

    for cf, parse in (("key_index", parse_key_index_key), ("indexes", parse_index_key),
                      ("embeddings", parse_embedding_key)):
        if not db.has_cf(cf):
            continue
        kind = {"key_index": "key", "indexes": "idx", "embeddings": "emb"}[cf]
        for key in db.keys(cf, f"{kind}:{tenant}:".encode() if tenant else b""):
            parsed = parse(key)
            owner = (parsed.tenant, parsed.uuid)
            if owner in victims:
                doomed.append((cf, key))
            elif orphans and owner not in alive:
                orphan(cf, key)
    for key, value in db.items("edges"):
        src, dst, rel = parse_edge_key(key)
        if src in victim_ids or dst in victim_ids:
            doomed.append(("edges", key))
            doomed.append(("edges_reverse", edge_reverse_key(src, dst, rel)))
        elif orphans and not tenant and (src not in live_ids or dst not in live_ids):
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


def parse_age(text: str) -> timedelta:
    """'30d', '12h', '45m', '90s' -> a timedelta: finite, not negative (a cutoff in the future would
    remove entities soft-deleted a moment ago), and one a date can go back by."""
    import math

    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
    try:
        number = float(text[:-1])
        if not math.isfinite(number) or number < 0:
            raise ValueError(text)
        age = timedelta(**{units[text[-1]]: number})
        datetime.now(timezone.utc) - age  # noqa: B018 - raises OverflowError past year 1
        return age
    except (KeyError, ValueError, IndexError, OverflowError):
        from rem.errors import UsageError

        raise UsageError(f"--older-than {text!r}: use a number of at least 0 and d, h, m or s (30d, 12h), "
                         "no more than about 700,000 days") from None
