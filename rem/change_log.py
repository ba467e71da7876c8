"""The archived log read back as REM changes: every write of RocksDB's WriteBatches in a time range,
in the engine's terms (insert, update and what it changed, soft delete, undelete, hard delete,
add_edge, delete_edge, schema registered, key rows), with its tenant, schema, entity and key.

A write is told apart from the value the key held before it: the last one the log wrote since the
base backup, else the base's own (`Prior`). Only the store is read (base backup and segments),
never the live database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from rem.engine import extract_key_value, key_field_for
from rem.format import SCHEMA_ENTITY_TYPE, SCHEMA_TENANT, schema_info
from rem.pitr import format_micros
from rem.rocksdb_log import WriteBatch

# The engine's column families and what a write to each is, in its terms.
ENTITIES, KEY_INDEX, EDGES, EDGES_REVERSE = "entities", "key_index", "edges", "edges_reverse"
TRACKED = (ENTITIES, KEY_INDEX, EDGES, EDGES_REVERSE)  # their values before each write are known
EDGE_KINDS = {(EDGES, "PUT"): "add_edge", (EDGES, "DELETE"): "delete_edge",
              (EDGES_REVERSE, "PUT"): "add_edge", (EDGES_REVERSE, "DELETE"): "delete_edge"}
PLURAL = {"insert": "inserts", "update": "updates", "soft_delete": "soft deletes", "undelete": "undeletes",
          "hard_delete": "hard deletes", "add_edge": "edges added", "delete_edge": "edges removed",
          "schema_registered": "schemas registered", "key_row_added": "key rows added",
          "key_row_removed": "key rows removed"}


@dataclass
class Change:
    time: str  # the batch's time (RFC 3339, microseconds)
    time_us: int
    sequence: int  # RocksDB's sequence number of this write
    batch: int  # the sequence number of its batch's first write
    cf: str
    kind: str
    tenant: str | None
    schema: str | None
    entity_id: str | None
    key: str | None  # the entity's key value (uri, key_field, key or name), or the key row's
    other_id: str | None = None  # an edge's other end (entity_id is its source)
    changed: list[str] = field(default_factory=list)  # an update's changed properties (and `edges`)
    row_key: bytes = b""  # the RocksDB key written
    value: bytes | None = None  # what was written (None: a delete)
    before: bytes | None = None  # what the key held before (None: nothing)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        for name in ("row_key", "value", "before"):
            doc.pop(name)
        doc["row_key"] = self.row_key.decode(errors="replace")
        return doc


_UNWRITTEN = object()


class Prior:
    """The value each key held before a write: the log's last write to it, else the base's."""

    def __init__(self, base_get: Callable[[str, bytes], bytes | None], base_uuid_tenant: Callable[[str], str | None],
                 base_schemas: dict):
        self.written: dict[tuple[str, bytes], bytes | None] = {}
        self.base_get = base_get
        self.base_uuid_tenant = base_uuid_tenant
        self.schemas = dict(base_schemas)  # short name -> SchemaInfo, updated as schemas are registered
        self.uuid_tenant: dict[str, str] = {}

    def get(self, cf: str, key: bytes) -> bytes | None:
        value = self.written.get((cf, key), _UNWRITTEN)
        return self.base_get(cf, key) if value is _UNWRITTEN else value

    def tenant_of(self, uuid: str) -> str | None:
        return self.uuid_tenant.get(uuid) or self.base_uuid_tenant(uuid)

    def record(self, cf: str, key: bytes, value: bytes | None) -> None:
        self.written[(cf, key)] = value


def _entity_change(base: dict, key: bytes, value: bytes | None, before: bytes | None, prior: Prior) -> Change:
    _, tenant, uuid = key.decode().split(":", 2)
    prior.uuid_tenant[uuid] = tenant
    new = orjson.loads(value) if value is not None else None
    old = orjson.loads(before) if before is not None else None
    entity = new or old or {}
    schema = entity.get("entity_type")
    if new is None:
        kind, changed = "hard_delete", []
    elif schema == SCHEMA_ENTITY_TYPE and tenant == SCHEMA_TENANT:
        kind, changed = "schema_registered", []
        prior.schemas[new["properties"].get("short_name")] = schema_info(new)
    elif old is None:
        kind, changed = "insert", []
    elif new.get("deleted_at") and not old.get("deleted_at"):
        kind, changed = "soft_delete", []
    elif old.get("deleted_at") and not new.get("deleted_at"):
        kind, changed = "undelete", []
    else:
        before_props, after_props = old.get("properties") or {}, new.get("properties") or {}
        changed = sorted(k for k in set(before_props) | set(after_props) if before_props.get(k) != after_props.get(k))
        if old.get("edges") != new.get("edges"):
            changed.append("edges")
        kind = "update"
    key_value = extract_key_value(entity.get("properties") or {}, key_field_for(schema, prior.schemas)) \
        if schema else None
    return Change(**base, kind=kind, tenant=tenant, schema=schema, entity_id=uuid, key=key_value, changed=changed)


def _key_row_change(base: dict, key: bytes, value: bytes | None, before: bytes | None) -> Change:
    parts = key.decode().split(":")
    tenant, key_value, uuid = parts[1], ":".join(parts[2:-1]), parts[-1]
    schema = None
    for raw in (value, before):
        if raw:
            try:
                schema = orjson.loads(raw).get("type")
            except (orjson.JSONDecodeError, AttributeError):
                pass
            break
    return Change(**base, kind="key_row_added" if value is not None else "key_row_removed", tenant=tenant,
                  schema=schema, entity_id=uuid, key=key_value)


def _edge_change(base: dict, cf: str, op: str, key: bytes, prior: Prior) -> Change:
    parts = key.decode().split(":")
    src, dst = (parts[1], parts[3]) if cf == EDGES else (parts[3], parts[1])
    return Change(**base, kind=EDGE_KINDS[(cf, op)], tenant=prior.tenant_of(src), schema=None, entity_id=src,
                  key=f"{src}->{dst}:{':'.join(parts[5:])}", other_id=dst)


def changes_of(time_us: int, batch: WriteBatch, cf_names: dict[int, str], prior: Prior,
               wanted: bool = True) -> Iterator[Change]:
    """Every write of one batch as a Change, when wanted; prior is kept current either way (a batch
    before the range only teaches the tenant of each id, the schemas and the values)."""
    sequence = batch.sequence
    time = _batch_time(time_us) if wanted else ""
    for op in batch.ops:
        if not op.is_data:
            continue
        cf = cf_names.get(op.cf, f"cf{op.cf}")
        value = op.value if op.kind == "PUT" else None
        if wanted:
            yield _change(time, time_us, sequence, batch.sequence, cf, op.kind, op.key, value, prior)
        elif cf == ENTITIES and op.key.startswith(b"entity:"):
            _, tenant, uuid = op.key.decode().split(":", 2)
            prior.uuid_tenant[uuid] = tenant
            if tenant == SCHEMA_TENANT and value is not None:
                entity = orjson.loads(value)
                if entity.get("entity_type") == SCHEMA_ENTITY_TYPE:
                    prior.schemas[entity["properties"].get("short_name")] = schema_info(entity)
        if cf in TRACKED:
            prior.record(cf, op.key, value)
        sequence += 1


def _batch_time(time_us: int) -> str:
    """format_micros(time_us), its second formatted once for all the batches in it."""
    return f"{_second(time_us // 1_000_000)}.{time_us % 1_000_000:06d}Z"


@lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    return format_micros(seconds * 1_000_000)[:19]


def _change(time: str, time_us: int, sequence: int, batch: int, cf: str, op: str, key: bytes, value: bytes | None,
            prior: Prior) -> Change:
    before = prior.get(cf, key) if cf in TRACKED else None
    base = dict(time=time, time_us=time_us, sequence=sequence, batch=batch, cf=cf, row_key=key,
                value=value, before=before)
    if cf == ENTITIES and key.startswith(b"entity:"):
        return _entity_change(base, key, value, before, prior)
    if cf == KEY_INDEX and key.startswith(b"key:"):
        return _key_row_change(base, key, value, before)
    if cf in (EDGES, EDGES_REVERSE) and (cf, op) in EDGE_KINDS:
        return _edge_change(base, cf, op, key, prior)
    return Change(**base, kind=op.lower(), tenant=None, schema=None, entity_id=None, key=None)


@dataclass
class ChangeFilter:
    tenant: str | None = None
    schema: str | None = None
    entity_ids: tuple[str, ...] = ()
    key: str | None = None

    def __call__(self, change: Change) -> bool:
        return ((self.tenant is None or change.tenant == self.tenant)
                and (self.schema is None or change.schema == self.schema)
                and (not self.entity_ids or change.entity_id in self.entity_ids)
                and (self.key is None or change.key == self.key))


def summarize(changes: Iterable[Change]) -> list[dict[str, Any]]:
    """Changes grouped by second, tenant, kind and schema, in log order: a burst stands out as one
    line ("14:29:03 acme: 1,204 soft deletes of articles in 3 batches, first seq 8812")."""
    rows: dict[tuple, dict[str, Any]] = {}
    for c in changes:
        if c.cf == EDGES_REVERSE:
            continue  # an edge's twin row: the edge itself is counted once, in edges
        group = (c.time[:19], c.tenant, c.kind, c.schema)
        row = rows.get(group)
        if row is None:
            row = rows[group] = {"second": c.time[:19] + "Z", "tenant": c.tenant, "kind": c.kind, "schema": c.schema,
                                 "changes": 0, "batches": set(), "first_sequence": c.sequence}
        row["changes"] += 1
        row["batches"].add(c.batch)
    return [{**row, "batches": len(row["batches"])} for row in rows.values()]


def summary_line(row: dict[str, Any]) -> str:
    what = PLURAL.get(row["kind"], f"{row['kind']} writes") if row["changes"] != 1 else row["kind"].replace("_", " ")
    of = f" of {row['schema']}" if row["schema"] else ""
    batches = f"{row['batches']:,} batch{'es' if row['batches'] != 1 else ''}"
    return (f"{row['second'][11:19]} {row['tenant'] or '-'}: {row['changes']:,} {what}{of} in {batches}, "
            f"first seq {row['first_sequence']}")


def base_prior(db) -> Prior:
    """A Prior over an opened base backup: its values, its schemas, and (read once, only when an edge
    asks) which tenant each entity id is in."""
    from rem.format import parse_entity_key
    from rem.tenant import schema_rows

    tenants: dict[str, str] | None = None

    def tenant_of(uuid: str) -> str | None:
        nonlocal tenants
        if tenants is None:
            tenants = {}
            for key in db.keys(ENTITIES, b"entity:"):
                parsed = parse_entity_key(key)
                tenants[parsed.uuid] = parsed.tenant
        return tenants.get(uuid)

    schemas = {}
    if db.has_cf(ENTITIES):
        for _, value in schema_rows(db):
            info = schema_info(orjson.loads(value))
            schemas[info.short_name] = info
    lookups = {cf: db.cf(cf).get for cf in TRACKED if db.has_cf(cf)}
    return Prior(lambda cf, key: lookups[cf](key) if cf in lookups else None, tenant_of, schemas)


def read_changes(pieces: Iterable, cf_names: dict[int, str], prior: Prior, base_last: int, start_us: int,
                 end_us: int, keep: Callable[[Change], bool]) -> list[Change]:
    """The changes of every batch after the base with a time in (start_us, end_us] that keep accepts;
    the batches between the base and start_us only bring prior up to date."""
    found = []
    for piece in pieces:
        for time_us, batch in piece.written():
            if batch.last_sequence <= base_last:
                continue  # already in the base
            if time_us > end_us:
                return found
            found.extend(c for c in changes_of(time_us, batch, cf_names, prior, time_us > start_us) if keep(c))
    return found
