"""A realistic, deterministic sample REM database: same seed, same bytes."""

from __future__ import annotations

import bisect
import collections
import gc
import itertools
import multiprocessing
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from rocksdict import WriteOptions

from rem.db import init_db
from rem.engine import entity_id, key_field_for, rfc3339_tail
from rem.format import SchemaInfo, edge_key, edge_reverse_key, encode_edge, encode_wal_op, wal_entry_json, wal_key
from rem.writer import OpApplier, RemWriter, inline_edges

TENANT_NAMES = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka"]
WORDS = (
    "backup restore replica shard tenant vector index graph edge schema query latency throughput "
    "cluster region failover snapshot archive compaction vacuum tombstone bloom filter cache memory "
    "disk network packet retry timeout budget quota billing invoice customer contract renewal "
    "roadmap milestone release feature bug incident postmortem alert pager oncall runbook deploy "
    "rollback canary metric dashboard trace span log event stream batch window join partition"
).split()
BASE_TIME = datetime(2025, 10, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class SampleSchema:
    short_name: str
    weight: float
    key_field: str | None
    indexed_fields: tuple[str, ...]
    properties: dict
    inline_embedding: bool = False


SCHEMAS = [
    SampleSchema("articles", 0.35, "uri", ("category", "status"), {
        "uri": {"type": "string"}, "title": {"type": "string"}, "content": {"type": "string"},
        "category": {"type": "string"}, "status": {"type": "string", "enum": ["draft", "published", "archived"]},
        "word_count": {"type": "integer"}, "published_at": {"type": "string", "format": "date-time"},
        "tags": {"type": "array", "items": {"type": "string"}},
    }),
    SampleSchema("people", 0.2, "email", ("team",), {
        "email": {"type": "string"}, "name": {"type": "string"}, "team": {"type": "string"},
        "active": {"type": "boolean"}, "score": {"type": "number"},
    }),
    SampleSchema("projects", 0.1, "name", ("status",), {
        "name": {"type": "string"}, "description": {"type": "string"},
        "status": {"type": "string", "enum": ["planned", "active", "done"]}, "budget": {"type": "number"},
        "owner": {"type": "object", "properties": {"email": {"type": "string"}, "team": {"type": "string"}}},
    }),
    SampleSchema("tickets", 0.25, "ticket_id", ("priority", "status"), {
        "ticket_id": {"type": "string"}, "summary": {"type": "string"}, "priority": {"type": "integer"},
        "status": {"type": "string", "enum": ["open", "pending", "closed"]},
        "opened_at": {"type": "string", "format": "date-time"},
    }),
    SampleSchema("notes", 0.1, None, (), {
        "text": {"type": "string"}, "embedding": {"type": "array", "items": {"type": "number"}},
    }, inline_embedding=True),
]


def _uuid4(rng: random.Random) -> str:
    """A version-4 UUID string from rng (uuid.UUID itself cost a tenth of init's time)."""
    h = "%032x" % rng.getrandbits(128)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def tenant_names(count: int) -> list[str]:
    return [TENANT_NAMES[i] if i < len(TENANT_NAMES) else f"tenant-{i:03d}" for i in range(count)]


def json_schema(schema: SampleSchema) -> dict:
    """The JSON Schema a service registers for a sample table (Pydantic's shape, as percolate-rocks reads it)."""
    properties = {**schema.properties, "embedding": {"type": "array", "items": {"type": "number"}}}
    extra = {"name": f"sample.{schema.short_name.capitalize()}", "key_field": schema.key_field,
             "indexed_fields": list(schema.indexed_fields), "embedding_fields": [EMBEDDED_FIELD[schema.short_name]],
             "embedding_provider": "default", "category": "user"}
    return {"title": schema.short_name.capitalize(), "version": "1.0.0", "description": f"Sample {schema.short_name}",
            "type": "object", "properties": properties,
            "required": [schema.key_field] if schema.key_field else [], "json_schema_extra": extra}


EMBEDDED_FIELD = {"articles": "content", "people": "name", "projects": "description", "tickets": "summary",
                  "notes": "text"}


class _Clock:
    """Rising timestamps in chrono's to_rfc3339 form ('+00:00', 0/3/6 fractional digits here),
    several writes per second, deterministic.

    Batch b's writes fall in [b, b+1) * batch_size seconds after BASE_TIME: at most a few writes per
    entity at most 0.4 s apart, so batches made in parallel still give one rising sequence.
    """

    def __init__(self, rng: random.Random, start_micros: int):
        self.rng = rng
        self.micros = start_micros
        self._second = None
        self._prefix = ""

    def tick(self) -> str:
        self.micros += 1_000 + int(self.rng.random() * 399_000)
        second, micros = divmod(self.micros, 1_000_000)
        if second != self._second:
            self._second = second
            self._prefix = (BASE_TIME + timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%S")
        return self._prefix + rfc3339_tail(micros * 1000)


class _Texts:
    """Random sentences drawn from a pool made once per batch: word-by-word generation dominated init."""

    def __init__(self, rng: random.Random, pool_size: int = 256):
        self.rng = rng
        self.pools = {n: [" ".join(rng.choices(WORDS, k=n)) for _ in range(pool_size)] for n in (2, 6, 10, 25, 30, 60)}

    def __call__(self, words: int) -> str:
        return self.pools[words][self.rng.getrandbits(8)]


def _properties(schema: SampleSchema, i: int, tenant: str, rng: random.Random, text: _Texts, ts: str) -> dict:
    name = schema.short_name
    if name == "articles":
        return {"uri": f"https://{tenant}.example/articles/{i}", "title": text(6).title(),
                "content": text(60), "category": rng.choice(WORDS[:12]),
                "status": rng.choice(["draft", "published", "archived"]), "word_count": rng.randint(50, 5000),
                "published_at": ts, "tags": rng.sample(WORDS, 3)}
    if name == "people":
        return {"email": f"person{i}@{tenant}.example", "name": text(2).title(),
                "team": rng.choice(["storage", "search", "platform", "growth"]), "active": rng.random() < 0.9,
                "score": round(rng.random() * 100, 3)}
    if name == "projects":
        return {"name": f"{tenant}-project-{i}", "description": text(25),
                "status": rng.choice(["planned", "active", "done"]), "budget": round(rng.random() * 1e6, 2),
                "owner": {"email": f"person{rng.randint(0, i)}@{tenant}.example", "team": "platform"}}
    if name == "tickets":
        return {"ticket_id": f"{tenant.upper()}-{i}", "summary": text(10), "priority": rng.randint(1, 4),
                "status": rng.choice(["open", "pending", "closed"]), "opened_at": ts}
    return {"text": text(30)}


SOFT_DELETE_RATE = 0.0527  # ~5% of all entities end soft-deleted (a few picks land on one already deleted)
UPDATE_RATE = 0.03
HARD_DELETE_RATE = 0.005
KEY_CHANGE_SHARE = 0.2  # of updates: the key changes (the engine keeps the old key row and writes none)
SYSTEM_RATE = 0.02  # entities of the built-in resources, sessions and messages schemas
INLINE_EDGE_RATE = 0.3
ADD_EDGE_RATE = 0.1  # edges written by add_edge: the edge column families only


@dataclass(frozen=True)
class _BatchJob:
    seed: int
    index: int
    start: int
    count: int
    batch_size: int
    tenants: tuple[str, ...]
    embedding_dim: int
    primary: bool


@dataclass
class _BatchRows:
    rows: list[tuple[str, bytes, bytes | None]]
    wal: list[tuple[str, bytes]]  # (timestamp, op JSON) in write order; sequence numbers come later
    live_per_tenant: dict[str, int]
    soft_deleted: int
    hard_deleted: int
    updates: int


def _system_properties(kind: str, i: int, tenant: str, text: _Texts, ts: str) -> dict:
    if kind == "resources":
        return {"uri": f"https://{tenant}.example/docs/{i}", "name": f"doc-{i}", "content": text(30),
                "chunk_ordinal": 0, "content_type": "text/plain"}
    if kind == "sessions":
        return {"session_id": f"s-{tenant}-{i}", "tenant_id": tenant, "message_count": 0, "created_at": ts}
    return {"message_id": f"m-{tenant}-{i}", "session_id": f"s-{tenant}-{i}", "tenant_id": tenant, "role": "user",
            "content": text(10), "timestamp": ts}


def _make_batch(job: _BatchJob) -> _BatchRows:
    """Entities [start, start+count) and the engine's other writes among them, as rows.

    Everything comes from (seed, batch index), so the result is the same in any process and order.
    """
    rng = random.Random(job.seed * 1_000_003 + job.index)
    np_rng = np.random.default_rng([job.seed, job.index])
    clock = _Clock(rng, job.index * job.batch_size * 1_000_000)
    text = _Texts(rng)
    applier = OpApplier(None, dict(SCHEMA_INFOS))
    cum_weights = list(itertools.accumulate(s.weight for s in SCHEMAS))
    total_weight = cum_weights[-1] + 0.0
    # Room for the entities that make up for hard deletes (a batch stores exactly `count`).
    spare = job.count // 20 + 10
    vectors = np.round(np_rng.standard_normal((job.count + spare, job.embedding_dim),
                                              dtype=np.float32).astype(np.float64), 6)
    recent: dict[str, list[str]] = {t: [] for t in job.tenants}
    made: list[tuple[str, str]] = []
    deleted: set[tuple[str, str]] = set()
    gone: set[tuple[str, str]] = set()
    wal: list[tuple[str, bytes]] = []
    updates = 0

    def log(ts: str, op: dict) -> None:
        if job.primary:  # replication/wal.rs: a primary logs inserts, updates and soft deletes only
            wal.append((ts, encode_wal_op(op)))

    j = -1
    while len(made) - len(gone) < job.count and j + 1 < job.count + spare:
        j += 1
        i = job.start + j if j < job.count else 10**9 + job.start + j  # keys stay unique across batches
        tenant = job.tenants[rng.randrange(len(job.tenants))]
        ts = clock.tick()
        pool = recent[tenant]
        if rng.random() < SYSTEM_RATE:
            table = rng.choice(("resources", "sessions", "messages"))
            props = _system_properties(table, i, tenant, text, ts)
        else:
            # random.choices' own rule (the same draw), without its per-call set-up
            schema = SCHEMAS[bisect.bisect(cum_weights, rng.random() * total_weight, 0, len(SCHEMAS) - 1)]
            table = schema.short_name
            props = _properties(schema, i, tenant, rng, text, ts)
            props["embedding"] = vectors[j].tolist()
            if pool and rng.random() < INLINE_EDGE_RATE:  # insert stores data["edges"] inline and in properties
                props["edges"] = [{"dst": dst, "rel_type": rng.choice(["references", "owned_by", "related_to"]),
                                   "properties": {"weight": round(rng.random(), 3)}, "created_at": ts}
                                  for dst in rng.sample(pool, min(len(pool), rng.randint(1, 2)))]
        uuid = entity_id(table, props, key_field_for(table, SCHEMA_INFOS)) or _uuid4(rng)
        entity = {"id": uuid, "entity_type": table, "created_at": ts, "modified_at": ts, "deleted_at": None,
                  "edges": inline_edges(props, lambda: ts), "properties": props}
        applier.insert(tenant, entity)
        log(ts, {"Insert": {"tenant_id": tenant, "entity": entity}})
        if pool and rng.random() < ADD_EDGE_RATE:
            dst = rng.choice(pool)
            edge = encode_edge({"src": uuid, "dst": dst, "rel_type": "mentions",
                                "data": {"properties": {}, "created_at": clock.tick()}})
            applier.put("edges", edge_key(uuid, dst, "mentions"), edge)
            applier.put("edges_reverse", edge_reverse_key(uuid, dst, "mentions"), edge)
        pool.append(uuid)
        if len(pool) > 500:
            pool.pop(0)
        made.append((tenant, uuid))
        roll = rng.random()
        if roll < UPDATE_RATE + SOFT_DELETE_RATE + HARD_DELETE_RATE and len(made) > 10:
            target = made[rng.randrange(len(made))]
            if target in deleted or target in gone:
                continue
            t, target_id = target
            ts = clock.tick()
            current = applier.get_entity(t, target_id)
            if roll < UPDATE_RATE:
                updates += 1
                changes = {**current["properties"], "revision": updates}
                key_field = "uri" if "uri" in changes else key_field_for(current["entity_type"], SCHEMA_INFOS)
                if rng.random() < KEY_CHANGE_SHARE and isinstance(changes.get(key_field), str):
                    changes[key_field] += "-renamed"
                applier.update(t, target_id, changes, ts)
                log(ts, {"Update": {"tenant_id": t, "entity_id": target_id, "changes": changes}})
            elif roll < UPDATE_RATE + SOFT_DELETE_RATE:
                deleted.add(target)
                applier.soft_delete(t, target_id, ts)
                log(ts, {"Delete": {"tenant_id": t, "entity_id": target_id}})
            else:
                gone.add(target)
                applier.hard_delete(t, target_id)
    live = {t: 0 for t in job.tenants}
    for target in made:
        if target not in deleted and target not in gone:
            live[target[0]] += 1
    return _BatchRows(applier.batch.rows, wal, live, len(deleted), len(gone), updates)


SCHEMA_INFOS = {s.short_name: SchemaInfo(s.short_name, s.key_field, s.indexed_fields, None) for s in SCHEMAS}


@dataclass
class SampleSummary:
    path: str
    entities: int
    tenants: list[str]
    schemas: int
    soft_deleted: int
    hard_deleted: int
    updates: int
    replication: str
    wal_last_seq: int


def _in_order(pool, jobs: list, ahead: int) -> Iterator:
    """The batches in job order, at most `ahead` made but not yet taken: Pool.imap runs every job as
    fast as the workers go, and the batches the writer had not reached piled up in this process
    (566 MB at 10 million entities)."""
    waiting: collections.deque = collections.deque()
    for job in jobs:
        waiting.append(pool.apply_async(_make_batch, (job,)))
        if len(waiting) > ahead:
            yield waiting.popleft().get()
    while waiting:
        yield waiting.popleft().get()


REPLICATION_MODES = ("standalone", "primary")  # the engine's ReplicationMode without a follower


def create_sample(path: str | Path, entities: int = 1000, tenants: int = 3, seed: int = 42,
                  embedding_dim: int = 128, batch_size: int = 2000, workers: int | None = None,
                  progress: Callable[[int], None] | None = None, replication: str = "standalone") -> SampleSummary:
    """Create a REM database at path as percolate-rocks would leave it after `entities` inserts
    spread over `tenants` (plus its updates, deletes and edges), standalone or as a primary (with
    the logical WAL the engine writes then).

    Batches are made in worker processes and written in order by this one; the result does not
    depend on the number of workers.
    """
    if replication not in REPLICATION_MODES:
        from rem.errors import UsageError

        raise UsageError(f"--replication {replication!r}: use {' or '.join(REPLICATION_MODES)}")
    names = tuple(tenant_names(tenants))
    jobs = [_BatchJob(seed, b, start, min(batch_size, entities - start), batch_size, names, embedding_dim,
                      replication == "primary")
            for b, start in enumerate(range(0, entities, batch_size))]
    workers = workers if workers is not None else (min(os.cpu_count() or 1, len(jobs)) if len(jobs) > 2 else 0)
    # Fork the workers before RocksDB starts its threads in this process. A batch makes no reference
    # cycles (refcounting frees it whole), and the collector's passes over its thousands of dicts
    # and lists took a sixth of a worker's time: the workers run without it.
    pool = multiprocessing.get_context("fork").Pool(workers, initializer=gc.disable) if workers else None
    try:
        batches = _in_order(pool, jobs, 2 * workers) if pool else map(_make_batch, jobs)
        return _write_sample(Path(path), batches, names, seed, entities, progress, replication)
    finally:
        if pool:
            pool.terminate()


def _write_sample(path: Path, batches, names: tuple[str, ...], seed: int, entities: int, progress,
                  replication: str) -> SampleSummary:
    rng = random.Random(seed)
    bulk = WriteOptions()
    bulk.disable_wal = True  # a fresh sample is flushed before this returns; RocksDB's own WAL buys nothing
    soft_deleted = hard_deleted = updates = 0
    with init_db(path) as db:
        schema_clock = _Clock(rng, -len(SCHEMAS) * 1_000_000)
        writer = RemWriter(db, bulk, replication, clock=schema_clock.tick)
        for schema in SCHEMAS:
            writer.register_schema(schema.short_name, json_schema(schema))
        handles = {name: db.handle(name) for name in db.cf_names if name != "default"}
        for made in batches:
            batch = db.batch()
            for cf, key, value in made.rows:
                if value is None:
                    batch.delete(key, handles[cf])
                else:
                    batch.put(key, value, handles[cf])
            for ts, op_json in made.wal:
                writer.seq += 1
                batch.put(wal_key(writer.seq), wal_entry_json(writer.seq, ts, op_json), handles["wal"])
            db.write(batch, bulk)
            soft_deleted += made.soft_deleted
            hard_deleted += made.hard_deleted
            updates += made.updates
            if progress:
                progress(sum(made.live_per_tenant.values()) + made.soft_deleted + made.hard_deleted)
        writer.key_material(rng.randbytes(92), rng.randbytes(32))
        db.flush_all()
        return SampleSummary(str(path), entities, list(names), len(SCHEMAS), soft_deleted, hard_deleted, updates,
                             replication, writer.seq)
