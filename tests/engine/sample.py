"""Sample databases for the tests, written by the engine-faithful writer (never by the product's):
a deterministic script of engine ops over the sample tables (articles, people, projects, tickets,
notes) and the built-in ones, run under RocksDB 8.10. Timestamps are the engine's own (now)."""

from __future__ import annotations

import random

from tests.engine import engine_write

TENANTS = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka"]
WORDS = ("backup restore replica shard tenant vector index graph edge schema query latency throughput cluster "
         "region failover snapshot archive compaction vacuum tombstone bloom filter cache memory disk network").split()
TABLES = {  # name: (weight, key_field, indexed_fields, properties)
    "articles": (0.35, "uri", ["category", "status"], {
        "uri": {"type": "string"}, "title": {"type": "string"}, "content": {"type": "string"},
        "category": {"type": "string"}, "status": {"type": "string", "enum": ["draft", "published", "archived"]},
        "word_count": {"type": "integer"}, "published_at": {"type": "string", "format": "date-time"},
        "tags": {"type": "array", "items": {"type": "string"}}}),
    "people": (0.2, "email", ["team"], {
        "email": {"type": "string"}, "name": {"type": "string"}, "team": {"type": "string"},
        "active": {"type": "boolean"}, "score": {"type": "number"}}),
    "projects": (0.1, "name", ["status"], {
        "name": {"type": "string"}, "description": {"type": "string"},
        "status": {"type": "string", "enum": ["planned", "active", "done"]}, "budget": {"type": "number"},
        "owner": {"type": "object", "properties": {"email": {"type": "string"}, "team": {"type": "string"}}}}),
    "tickets": (0.25, "ticket_id", ["priority", "status"], {
        "ticket_id": {"type": "string"}, "summary": {"type": "string"}, "priority": {"type": "integer"},
        "status": {"type": "string", "enum": ["open", "pending", "closed"]},
        "opened_at": {"type": "string", "format": "date-time"}}),
    "notes": (0.1, None, [], {"text": {"type": "string"}}),  # no key: the engine draws a random id
}


def table_schema(name: str) -> dict:
    _, key_field, indexed, props = TABLES[name]
    return {"title": name.capitalize(), "version": "1.0.0", "description": f"Sample {name}", "type": "object",
            "properties": {**props, "embedding": {"type": "array", "items": {"type": "number"}}},
            "required": [key_field] if key_field else [],
            "json_schema_extra": {"name": f"sample.{name.capitalize()}", "key_field": key_field,
                                  "indexed_fields": indexed, "embedding_fields": [], "category": "user"}}


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, k=n))


def _data(rng: random.Random, table: str, i: int, tenant: str, dim: int) -> dict:
    stamp = f"2025-10-{1 + i % 28:02d}T12:00:00Z"
    data = {
        "articles": lambda: {"uri": f"https://{tenant}.example/articles/{i}", "title": _text(rng, 5).title(),
                             "content": _text(rng, 30), "category": rng.choice(WORDS[:8]),
                             "status": rng.choice(["draft", "published", "archived"]),
                             "word_count": rng.randint(50, 5000), "published_at": stamp, "tags": rng.sample(WORDS, 3)},
        "people": lambda: {"email": f"person{i}@{tenant}.example", "name": _text(rng, 2).title(),
                           "team": rng.choice(["storage", "search", "platform"]), "active": rng.random() < 0.9,
                           "score": round(rng.random() * 100, 3)},
        "projects": lambda: {"name": f"{tenant}-project-{i}", "description": _text(rng, 12),
                             "status": rng.choice(["planned", "active", "done"]), "budget": round(rng.random() * 1e6, 2),
                             "owner": {"email": f"person{i}@{tenant}.example", "team": "platform"}},
        "tickets": lambda: {"ticket_id": f"{tenant.upper()}-{i}", "summary": _text(rng, 8),
                            "priority": rng.randint(1, 4), "status": rng.choice(["open", "pending", "closed"]),
                            "opened_at": stamp},
        "notes": lambda: {"text": _text(rng, 15)},
    }[table]()
    # Three decimals: serde_json and Python print these floats alike.
    data["embedding"] = [round(rng.uniform(-1, 1), 3) for _ in range(dim)]
    return data


def sample_ops(entities: int, tenants: int, seed: int, dim: int) -> list:
    rng = random.Random(seed)
    names = TENANTS[:tenants]
    tables = list(TABLES)
    weights = [TABLES[t][0] for t in tables]
    ops: list = [["register_schema", name, table_schema(name)] for name in tables]
    made: list[tuple[str, str]] = []  # (tenant, "$op") of each insert
    bulk: dict[tuple[str, str], list] = {}

    def flush() -> None:
        for (tenant, table), items in bulk.items():
            ops.append(["batch_insert", tenant, table, items])
        bulk.clear()

    # `entities` is what the database ends up storing besides schemas: the built-in schemas' two per
    # tenant included, and each hard delete made up by one more insert.
    target = max(0, entities - 2 * len(names))
    stored, i = 0, -1
    while stored < target:
        i += 1
        stored += 1
        tenant, table = rng.choice(names), rng.choices(tables, weights)[0]
        data = _data(rng, table, i, tenant, dim)
        if rng.random() < 0.7:  # most entities arrive through batch_insert
            bulk.setdefault((tenant, table), []).append(data)
            if sum(len(v) for v in bulk.values()) >= 500:
                flush()
            continue
        flush()
        pool = [ref for t, ref in made[-200:] if t == tenant]
        if pool and rng.random() < 0.5:  # inline edges: stored in `edges` and in properties.edges
            data["edges"] = [{"dst": dst, "rel_type": rng.choice(["references", "owned_by"]),
                              "properties": {"weight": round(rng.random(), 3)}} for dst in rng.sample(pool, 1)]
        ops.append(["insert", tenant, table, data])
        ref = f"${len(ops) - 1}"
        made.append((tenant, ref))
        roll = rng.random()
        if pool and roll < 0.15:
            ops.append(["add_edge", tenant, ref, rng.choice(pool), "mentions", {}])
        elif len(made) > 10 and roll < 0.35:
            t, target_ref = made[rng.randrange(len(made) - 1)]
            kind = rng.random()
            ops.append(["update", t, target_ref, {"revision": i}] if kind < 0.4 else
                       ["delete", t, target_ref] if kind < 0.95 else ["hard_delete", t, target_ref])
            if kind >= 0.4:
                made = [m for m in made if m[1] != target_ref]
            if kind >= 0.95:
                stored -= 1
    flush()
    for tenant in names[:entities // 2]:
        ops.append(["insert", tenant, "resources", {"uri": f"https://{tenant}.example/doc", "content": "text",
                                                    "chunk_ordinal": 0}])
        ops.append(["insert", tenant, "sessions", {"session_id": f"s-{tenant}", "tenant_id": tenant}])
    ops.append(["key_material"])
    return ops


def engine_sample(path, entities: int, tenants: int, seed: int, dim: int, replication: str = "standalone") -> None:
    engine_write(path, sample_ops(entities, tenants, seed, dim), replication)
