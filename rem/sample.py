"""A realistic, deterministic sample REM database: same seed, same bytes."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from rocksdict import WriteOptions

from rem.db import init_db
from rem.format import (SCHEMA_ENTITY_TYPE, SCHEMA_TENANT, SchemaInfo, embedding_key, encode_entity, encode_wal_op,
                        wal_entry_json, wal_key)
from rem.writer import OpApplier, RemWriter

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


def schema_entity(schema: SampleSchema, dim: int, rng: random.Random, ts: str) -> dict:
    extra = {"key_field": schema.key_field, "indexed_fields": list(schema.indexed_fields), "embedding_dim": dim}
    return {
        "id": _uuid4(rng),
        "entity_type": SCHEMA_ENTITY_TYPE, "created_at": ts, "modified_at": ts, "deleted_at": None, "edges": [],
        "properties": {
            "short_name": schema.short_name, "name": schema.short_name.capitalize(), "version": "1.0.0",
            "schema": {"title": schema.short_name.capitalize(), "type": "object", "properties": schema.properties,
                       "required": [schema.key_field] if schema.key_field else [],
                       "json_schema_extra": extra},
            "description": f"Sample {schema.short_name} schema", "category": "sample",
        },
    }


class _Clock:
    """Rising RFC 3339 timestamps, several writes per second, deterministic.

    Batch b's writes fall in [b, b+1) * batch_size seconds after BASE_TIME: at most ~1.1 writes per
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
        return f"{self._prefix}.{micros:06d}Z"


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


@dataclass(frozen=True)
class _BatchJob:
    seed: int
    index: int
    start: int
    count: int
    batch_size: int
    tenants: tuple[str, ...]
    embedding_dim: int


@dataclass
class _BatchRows:
    rows: list[tuple[str, bytes, bytes | None]]
    wal: list[tuple[str, bytes]]  # (timestamp, op JSON) in write order; sequence numbers come later
    postings: dict[tuple[str, str], bytes]
    live_per_tenant: dict[str, int]
    soft_deleted: int
    updates: int


def _make_batch(job: _BatchJob) -> _BatchRows:
    """Entities [start, start+count) and the updates and soft deletes among them, as rows.

    Everything comes from (seed, batch index), so the result is the same in any process and order.
    """
    rng = random.Random(job.seed * 1_000_003 + job.index)
    np_rng = np.random.default_rng([job.seed, job.index])
    clock = _Clock(rng, job.index * job.batch_size * 1_000_000)
    text = _Texts(rng)
    applier = OpApplier(None, SCHEMA_INFOS)
    cum_weights = list(itertools.accumulate(s.weight for s in SCHEMAS))
    vectors = np_rng.standard_normal((job.count, job.embedding_dim), dtype=np.float32)
    vector_bytes = vectors.astype("<f4").tobytes()
    width = job.embedding_dim * 4
    recent: dict[str, list[str]] = {t: [] for t in job.tenants}
    made: list[tuple[str, str]] = []
    deleted: set[str] = set()
    postings: dict[tuple[str, str], bytearray] = {}
    wal: list[tuple[str, bytes]] = []
    updates = 0
    for j in range(job.count):
        i = job.start + j
        tenant = job.tenants[rng.randrange(len(job.tenants))]
        schema = rng.choices(SCHEMAS, cum_weights=cum_weights)[0]
        ts = clock.tick()
        entity_id = _uuid4(rng)
        props = _properties(schema, i, tenant, rng, text, ts)
        edges = []
        pool = recent[tenant]
        if pool and rng.random() < 0.5:
            for dst in rng.sample(pool, min(len(pool), rng.randint(1, 2))):
                edges.append({"dst": dst, "rel_type": rng.choice(["references", "owned_by", "related_to"]),
                              "properties": {"weight": round(rng.random(), 3)}, "created_at": ts})
        if schema.inline_embedding:
            props["embedding"] = np.round(vectors[j], 6).tolist()
        entity = {"id": entity_id, "entity_type": schema.short_name, "created_at": ts,
                  "modified_at": ts, "deleted_at": None, "edges": edges, "properties": props}
        entity_json = encode_entity(entity)
        applier.insert(tenant, entity, entity_json, is_new=True)
        if not schema.inline_embedding:
            applier.put("embeddings", embedding_key(tenant, entity_id), vector_bytes[j * width:(j + 1) * width])
        wal.append((ts, encode_wal_op({"Insert": {"tenant_id": tenant, "entity": entity}})))
        pool.append(entity_id)
        if len(pool) > 500:
            pool.pop(0)
        made.append((tenant, entity_id))
        for word in (props.get("title") or props.get("summary") or "").lower().split()[:3]:
            postings.setdefault((tenant, word), bytearray()).extend(bytes.fromhex(entity_id.replace("-", "")))
        roll = rng.random()
        if roll < UPDATE_RATE + SOFT_DELETE_RATE and len(made) > 10:
            t, target = made[rng.randrange(len(made))]
            if target in deleted:
                continue
            ts = clock.tick()
            if roll < UPDATE_RATE:
                updates += 1
                changes = {**applier.get_entity(t, target)["properties"], "revision": updates}
                op = {"Update": {"tenant_id": t, "entity_id": target, "changes": changes}}
            else:
                deleted.add(target)
                op = {"Delete": {"tenant_id": t, "entity_id": target}}
            applier.apply(op, ts)
            wal.append((ts, encode_wal_op(op)))
    live = {t: 0 for t in job.tenants}
    for t, _ in made:
        live[t] += 1
    return _BatchRows(applier.batch.rows, wal, {k: bytes(v) for k, v in postings.items()}, live,
                      len(deleted), updates)


SCHEMA_INFOS = {s.short_name: SchemaInfo(s.short_name, s.key_field, s.indexed_fields, None) for s in SCHEMAS}


@dataclass
class SampleSummary:
    path: str
    entities: int
    tenants: list[str]
    schemas: int
    soft_deleted: int
    updates: int
    wal_last_seq: int


def create_sample(path: str | Path, entities: int = 1000, tenants: int = 3, seed: int = 42,
                  embedding_dim: int = 128, batch_size: int = 2000, workers: int | None = None,
                  progress: Callable[[int], None] | None = None) -> SampleSummary:
    """Create a REM database at path holding `entities` sample entities spread over `tenants`.

    Batches are made in worker processes and written in order by this one; the result does not
    depend on the number of workers.
    """
    names = tuple(tenant_names(tenants))
    jobs = [_BatchJob(seed, b, start, min(batch_size, entities - start), batch_size, names, embedding_dim)
            for b, start in enumerate(range(0, entities, batch_size))]
    workers = workers if workers is not None else (min(os.cpu_count() or 1, len(jobs)) if len(jobs) > 2 else 0)
    # Fork the workers before RocksDB starts its threads in this process.
    pool = multiprocessing.get_context("fork").Pool(workers) if workers else None
    try:
        batches = pool.imap(_make_batch, jobs) if pool else map(_make_batch, jobs)
        return _write_sample(Path(path), batches, names, seed, embedding_dim, entities, progress)
    finally:
        if pool:
            pool.terminate()


def _write_sample(path: Path, batches, names: tuple[str, ...], seed: int, embedding_dim: int, entities: int,
                  progress) -> SampleSummary:
    rng = random.Random(seed)
    bulk = WriteOptions()
    bulk.disable_wal = True  # a fresh sample is flushed before this returns; RocksDB's own WAL buys nothing
    postings: dict[tuple[str, str], bytearray] = {}
    live = {t: 0 for t in names}
    soft_deleted = updates = 0
    with init_db(path) as db:
        writer = RemWriter(db, bulk)
        schema_clock = _Clock(rng, -len(SCHEMAS) * 1_000_000)
        with writer.batch():
            for schema in SCHEMAS:
                ts = schema_clock.tick()
                writer.insert(SCHEMA_TENANT, schema_entity(schema, embedding_dim, rng, ts), timestamp=ts)
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
            for key, ids in made.postings.items():
                postings.setdefault(key, bytearray()).extend(ids)
            for t, n in made.live_per_tenant.items():
                live[t] += n
            soft_deleted += made.soft_deleted
            updates += made.updates
            if progress:
                progress(sum(made.live_per_tenant.values()))
        with writer.batch() as applier:
            applier.put("keys", b"private_key_encrypted", rng.randbytes(64))
            applier.put("keys", b"public_key", rng.randbytes(32))
            for tenant in names:
                applier.put("keys", f"tenant:{tenant}:data_key_encrypted".encode(), rng.randbytes(48))
                applier.put("bm25_index", f"meta:{tenant}:doc_count".encode(), struct.pack("<Q", live[tenant]))
            for (tenant, word), ids in sorted(postings.items()):
                applier.put("bm25_index", f"post:{tenant}:{word}".encode(), bytes(ids))
        db.flush_all()
        return SampleSummary(str(path), entities, list(names), len(SCHEMAS), soft_deleted, updates, writer.seq)
