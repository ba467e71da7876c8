"""Which rows of each column family belong to one tenant.

Keys of entities, key_index, indexes and embeddings carry the tenant as their second segment.
Edge keys carry no tenant: an edge belongs to the tenant of its source entity. WAL entries belong
to the tenant named in their op. Schemas (tenant `default`, entity_type `schemas`) go with every
tenant's backup. `keys` (the engine's two database-wide rows) and `bm25_index` (global `term:{t}:df`
counts beside per-document rows, index/keys_fuzzy.rs) are not split by tenant: whole-database
backups copy them byte for byte, tenant backups and restores leave them alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import orjson

from rem.db import RemDB
from rem.format import SCHEMA_ENTITY_TYPE, SCHEMA_TENANT, entity_prefix, parse_entity_key

# Column families whose keys are `{kind}:{tenant}:...`, with the prefixes a tenant's rows use.
PREFIXED_CFS = {
    "entities": ("entity",),
    "key_index": ("key",),
    "indexes": ("idx",),
    "embeddings": ("emb",),
}
EDGE_CFS = ("edges", "edges_reverse")


def tenant_entity_ids(db: RemDB, tenant: str) -> set[str]:
    return {parse_entity_key(k).uuid for k in db.keys("entities", entity_prefix(tenant))}


def schema_rows(db: RemDB) -> Iterator[tuple[bytes, bytes]]:
    for key, value in db.items("entities", entity_prefix(SCHEMA_TENANT)):
        if orjson.loads(value).get("entity_type") == SCHEMA_ENTITY_TYPE:
            yield key, value


def tenant_rows(db: RemDB, tenant: str, cf: str, entity_ids: set[str] | None = None) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of cf that belongs to tenant. Unknown column families yield nothing."""
    if cf in PREFIXED_CFS:
        for kind in PREFIXED_CFS[cf]:
            yield from db.items(cf, f"{kind}:{tenant}:".encode())
    elif cf in EDGE_CFS:
        ids = entity_ids if entity_ids is not None else tenant_entity_ids(db, tenant)
        src_at = 1 if cf == "edges" else 3  # src:{src}:dst:... | dst:{dst}:src:{src}:...
        for key, value in db.items(cf):
            if key.split(b":", 4)[src_at].decode() in ids:
                yield key, value
    elif cf == "wal":
        needle = f'"tenant_id":"{tenant}"'.encode()
        for key, value in db.items("wal"):
            if needle in value and orjson.loads(value)["op"].popitem()[1]["tenant_id"] == tenant:
                yield key, value


def tenant_entity_counts(db: RemDB, progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Entities per tenant, counting keys only (the stored schemas, tenant `default`, are not entities)."""
    counts: Counter[str] = Counter()
    for scanned, key in enumerate(db.keys("entities"), 1):
        counts[key.split(b":", 2)[1].decode(errors="replace")] += 1
        if progress and scanned % 4096 == 0:
            progress(4096)
    counts[SCHEMA_TENANT] -= sum(1 for _ in schema_rows(db))
    return {tenant: n for tenant, n in sorted(counts.items()) if n > 0}


def require_tenant(db_path: str, tenant: str) -> None:
    """Refuse a tenant the database has no entity of: a typo must not give an empty backup or export."""
    from rem.db import open_db
    from rem.errors import UsageError

    with open_db(db_path, "ro") as db:
        if next(db.keys("entities", entity_prefix(tenant)), None) is None:
            raise UsageError(f"tenant {tenant!r} has no entities in {db_path}; check --tenant")


def tenant_difference(then: RemDB, now: RemDB, tenant: str, sample: int = 5) -> dict[str, dict]:
    """Per schema, what putting `then`'s rows of a tenant in place of `now`'s would do to its entities:
    come back (live then; absent or soft-deleted now), vanish (live now; absent or soft-deleted then)
    or change (live in both, other properties or edges), with a sample of ids and keys of each."""
    import hashlib

    from rem.engine import extract_key_value, key_field_for
    from rem.format import schema_info

    def state(db: RemDB) -> dict[str, tuple[str, bool, bytes, str | None]]:
        schemas = {i.short_name: i for i in (schema_info(orjson.loads(v)) for _, v in schema_rows(db))}
        found = {}
        for key, value in db.items("entities", entity_prefix(tenant)):
            entity = orjson.loads(value)
            props = entity.get("properties") or {}
            body = orjson.dumps([props, entity.get("edges")], option=orjson.OPT_SORT_KEYS)
            found[parse_entity_key(key).uuid] = (
                entity.get("entity_type"), entity.get("deleted_at") is None, hashlib.sha256(body).digest(),
                extract_key_value(props, key_field_for(entity.get("entity_type"), schemas)))
        return found

    before, after = state(now), state(then)
    out: dict[str, dict] = {}
    for uuid in sorted(set(before) | set(after)):
        was, will = before.get(uuid), after.get(uuid)
        live_now, live_then = bool(was and was[1]), bool(will and will[1])
        what = ("come_back" if live_then and not live_now else "vanish" if live_now and not live_then
                else "change" if live_now and live_then and was[2] != will[2] else None)
        if what is None:
            continue
        schema, key = (will or was)[0], (will or was)[3]
        row = out.setdefault(schema, {"come_back": 0, "vanish": 0, "change": 0, "samples": {}})
        row[what] += 1
        samples = row["samples"].setdefault(what, [])
        if len(samples) < sample:
            samples.append({"id": uuid, "key": key})
    return out
