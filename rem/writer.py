"""Writes with the engine's semantics (percolate-rocks 0.3.2; the rules are in rem/engine.py).

`RemWriter` offers the engine's write paths (register_schema, insert as an upsert, batch_insert,
update, delete, hard_delete, add_edge, delete_edge) and leaves the rows the engine leaves; opened as
a primary it also writes the logical WAL entries the engine writes, for exactly the ops the engine
logs (insert, update, soft delete). `OpApplier` holds what those three WAL ops do to the rows; the
writer and replays of archived entries share it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import orjson
from rocksdict import WriteOptions

from rem.db import RemDB
from rem.engine import SYSTEM_KEY_FIELDS, current_key_row, entity_id, now_rfc3339, schema_entity
from rem.errors import RemError
from rem.format import (
    SCHEMA_ENTITY_TYPE,
    SCHEMA_TENANT,
    SchemaInfo,
    edge_key,
    edge_reverse_key,
    encode_edge,
    encode_entity,
    entity_key,
    index_key,
    schema_info,
    wal_entry_json,
    wal_key,
)
from rem.tenant import schema_rows


class EntityNotFound(RemError):
    def __init__(self, tenant: str, entity_id: str):
        super().__init__(f"entity {entity_id} of tenant {tenant!r} does not exist")


def load_schemas(db: RemDB) -> dict[str, SchemaInfo]:
    """Every live schema entity (tenant `default`, entity_type `schemas`), by short name."""
    found: dict[str, SchemaInfo] = {}
    for _, value in schema_rows(db):
        entity = orjson.loads(value)
        if entity.get("deleted_at") is None:
            info = schema_info(entity)
            found[info.short_name] = info
    return found


def _index_value(value: Any) -> str | None:
    """The text a field-index row holds for a property value; None for values that are not indexed."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


def index_rows(info: SchemaInfo | None, tenant: str, entity: dict) -> list[tuple[str, bytes, bytes]]:
    """The `indexes` rows a schema's indexed_fields imply (a column family the engine never writes:
    only `rem index rebuild --type fields` does)."""
    if info is None:
        return []
    props = entity.get("properties") or {}
    return [("indexes", index_key(tenant, field, value, entity["id"]), b"") for field in info.indexed_fields
            if (value := _index_value(props.get(field))) is not None]


def key_row_value(entity_type: str) -> bytes:
    return orjson.dumps({"type": entity_type})


class RowList:
    """A sink that collects rows instead of writing them: (cf, key, value), value None for a delete."""

    def __init__(self):
        self.rows: list[tuple[str, bytes, bytes | None]] = []

    def put(self, cf: str, key: bytes, value: bytes) -> None:
        self.rows.append((cf, key, value))

    def delete(self, cf: str, key: bytes) -> None:
        self.rows.append((cf, key, None))


class OpApplier:
    """Applies entity writes to one WriteBatch, reading through the rows the batch already holds.

    With db=None it needs no database at all and collects rows in a RowList: bulk loaders build
    rows in worker processes with exactly the code live writes and replays use.
    """

    def __init__(self, db: RemDB | None, schemas: dict[str, SchemaInfo]):
        self.db = db
        self.schemas = schemas
        self.batch = db.batch() if db is not None else RowList()
        self.count = 0
        self._pending: dict[bytes, dict | None] = {}
        if db is None:  # straight to the list: this is the hot path of bulk loads
            self.put = self.batch.put  # type: ignore[method-assign]
            self.delete = self.batch.delete  # type: ignore[method-assign]

    def put(self, cf: str, key: bytes, value: bytes) -> None:
        self.batch.put(key, value, self.db.handle(cf))
        self.count += 1

    def delete(self, cf: str, key: bytes) -> None:
        self.batch.delete(key, self.db.handle(cf))
        self.count += 1

    def get_entity(self, tenant: str, entity_id: str) -> dict | None:
        key = entity_key(tenant, entity_id)
        if key in self._pending or self.db is None:
            return self._pending.get(key)
        raw = self.db.get("entities", key)
        return orjson.loads(raw) if raw is not None else None

    def _store(self, tenant: str, entity: dict, entity_json: bytes | None = None) -> None:
        key = entity_key(tenant, entity["id"])
        self.put("entities", key, entity_json or encode_entity(entity))
        self._pending[key] = entity
        if entity.get("entity_type") == SCHEMA_ENTITY_TYPE and tenant == SCHEMA_TENANT:
            info = schema_info(entity)
            self.schemas[info.short_name] = info

    def insert(self, tenant: str, entity: dict, entity_json: bytes | None = None) -> None:
        """database.rs insert / batch_insert, as an Insert op carries it: the entity, then the key
        row of its properties (an upsert that changed the key leaves the old row)."""
        self._store(tenant, entity, entity_json)
        if entity.get("entity_type") != SCHEMA_ENTITY_TYPE and (row := current_key_row(tenant, entity, self.schemas)):
            self.put("key_index", row, key_row_value(entity["entity_type"]))

    def _change(self, tenant: str, entity_id: str, **fields: Any) -> dict:
        old = self.get_entity(tenant, entity_id)
        if old is None:
            raise EntityNotFound(tenant, entity_id)
        new = {**old, **fields}
        self._store(tenant, new)
        return new

    def update(self, tenant: str, entity_id: str, changes: dict, timestamp: str) -> dict:
        """database.rs update, as its WAL op carries it (changes: every property after the update);
        key rows are left alone."""
        return self._change(tenant, entity_id, properties=changes, modified_at=timestamp)

    def soft_delete(self, tenant: str, entity_id: str, timestamp: str, modified_at: str | None = None) -> dict:
        """database.rs delete (types/entity.rs mark_deleted): deleted_at and modified_at; rows stay."""
        return self._change(tenant, entity_id, deleted_at=timestamp, modified_at=modified_at or timestamp)

    def hard_delete(self, tenant: str, entity_id: str) -> None:
        """database.rs hard_delete: the entity and the key row of its current key; old key rows and
        edge rows stay (TODOs in the source); never logged."""
        entity = self.get_entity(tenant, entity_id)
        if entity is None:
            raise EntityNotFound(tenant, entity_id)
        self.delete("entities", entity_key(tenant, entity_id))
        self._pending[entity_key(tenant, entity_id)] = None
        if row := current_key_row(tenant, entity, self.schemas):
            self.delete("key_index", row)

    def apply(self, op: dict, timestamp: str) -> None:
        """Apply one logical WAL op ({"Insert": ...} | {"Update": ...} | {"Delete": ...})."""
        (kind, body), = op.items()
        if kind == "Insert":
            self.insert(body["tenant_id"], body["entity"])
        elif kind == "Update":
            self.update(body["tenant_id"], body["entity_id"], body["changes"], timestamp)
        elif kind == "Delete":
            self.soft_delete(body["tenant_id"], body["entity_id"], timestamp)
        else:
            raise RemError(f"unknown WAL op {kind!r}")


def upserted(existing: dict | None, entity: dict, now) -> dict:
    """database.rs insert's upsert: an existing entity keeps created_at and its inline edges, merged
    with the incoming ones by (dst, rel_type); each merged edge touches modified_at."""
    if existing is None:
        return entity
    merged = {**entity, "created_at": existing["created_at"], "edges": [dict(e) for e in existing["edges"]]}
    for edge in entity["edges"]:
        same = next((e for e in merged["edges"] if (e["dst"], e["rel_type"]) == (edge["dst"], edge["rel_type"])), None)
        if same is not None:
            same["properties"], same["created_at"] = edge["properties"], edge["created_at"]
        else:
            merged["edges"].append(edge)
        merged["modified_at"] = now()
    return merged


def inline_edges(data: dict, now) -> list[dict]:
    """database.rs extract_edges_from_data: `edges` entries with a dst and a rel_type."""
    return [{"dst": e["dst"], "rel_type": e["rel_type"], "properties": e.get("properties") or {},
             "created_at": e.get("created_at") or now()}
            for e in data.get("edges") or () if isinstance(e, dict) and isinstance(e.get("dst"), str)
            and isinstance(e.get("rel_type"), str)]


class RemWriter:
    """Writes to an open read-write database the way percolate-rocks does (standalone, or primary:
    with its logical WAL). Inside `with writer.batch():` many writes share one WriteBatch."""

    def __init__(self, db: RemDB, write_options: WriteOptions | None = None,
                 replication: Literal["standalone", "primary"] = "standalone", clock=now_rfc3339):
        if db.mode != "rw":
            raise RemError(f"{db.path}: opened {db.mode}; writes need a read-write open")
        self.db = db
        self.write_options = write_options
        self.primary = replication == "primary"
        self.seq = db.latest_wal_seq()
        self.schemas = load_schemas(db)
        self.now = clock
        self._open: OpApplier | None = None

    @contextmanager
    def batch(self) -> Iterator[OpApplier]:
        if self._open is not None:  # nested: join the enclosing batch
            yield self._open
            return
        applier = self._open = OpApplier(self.db, self.schemas)
        seq_before = self.seq
        try:
            yield applier
            if applier.count:
                self.db.write(applier.batch, self.write_options)
        except BaseException:
            self.seq = seq_before
            raise
        finally:
            self._open = None

    def _log(self, applier: OpApplier, op: dict) -> int:
        """replication/wal.rs append: only a primary logs, after the entity's own write."""
        if not self.primary:
            return 0
        self.seq += 1
        applier.put("wal", wal_key(self.seq), wal_entry_json(self.seq, self.now(), op))
        return self.seq

    def key_field(self, table: str) -> str | None:
        info = self.schemas.get(table)
        return info.key_field if info is not None else SYSTEM_KEY_FIELDS.get(table)

    # ------------------------------------------------------------------ the engine's write paths

    def register_schema(self, name: str, schema: dict) -> str | None:
        """database.rs register_schema: stored as an entity of tenant default unless its category is
        system; no key row, never logged."""
        entity = schema_entity(name, schema, self.now())
        if entity is None:
            return None
        with self.batch() as applier:
            applier._store(SCHEMA_TENANT, entity)
        return entity["id"]

    def _entity(self, table: str, data: dict, id_: str | None, now: str) -> dict:
        return {"id": id_ or entity_id(table, data, self.key_field(table)), "entity_type": table, "created_at": now,
                "modified_at": now, "deleted_at": None, "edges": [], "properties": data}

    def insert(self, tenant: str, table: str, data: dict, id_: str | None = None) -> str:
        """database.rs insert: an upsert by deterministic id (id_ stands in where the engine draws a
        random one); inline edges from data["edges"]; logged on a primary."""
        with self.batch() as applier:
            entity = self._entity(table, data, id_, self.now())
            entity["edges"] = inline_edges(data, self.now)
            entity = upserted(applier.get_entity(tenant, entity["id"]), entity, self.now)
            applier.insert(tenant, entity)
            self._log(applier, {"Insert": {"tenant_id": tenant, "entity": entity}})
        return entity["id"]

    def batch_insert(self, tenant: str, table: str, items: list[dict], ids: list[str] | None = None) -> list[str]:
        """database.rs batch_insert: one WriteBatch; no inline edges, no upsert merge, not logged."""
        made = []
        with self.batch() as applier:
            for i, data in enumerate(items):
                entity = self._entity(table, data, ids[i] if ids else None, self.now())
                applier.insert(tenant, entity)
                made.append(entity["id"])
        return made

    def put_entity(self, tenant: str, entity: dict) -> int:
        """Write a whole entity as an Insert op carries it (for replays and tests); logged on a primary."""
        with self.batch() as applier:
            applier.insert(tenant, entity)
            return self._log(applier, {"Insert": {"tenant_id": tenant, "entity": entity}})

    def update(self, tenant: str, entity_id: str, updates: dict) -> int:
        """database.rs update: updates merged into the properties, a new modified_at; key rows stay."""
        with self.batch() as applier:
            old = applier.get_entity(tenant, entity_id)
            if old is None:
                raise EntityNotFound(tenant, entity_id)
            changes = {**old["properties"], **updates}
            applier.update(tenant, entity_id, changes, self.now())
            return self._log(applier, {"Update": {"tenant_id": tenant, "entity_id": entity_id, "changes": changes}})

    def soft_delete(self, tenant: str, entity_id: str) -> int:
        """database.rs delete: deleted_at then modified_at, each now()."""
        with self.batch() as applier:
            applier.soft_delete(tenant, entity_id, self.now(), self.now())
            return self._log(applier, {"Delete": {"tenant_id": tenant, "entity_id": entity_id}})

    def hard_delete(self, tenant: str, entity_id: str) -> None:
        """database.rs hard_delete (see OpApplier.hard_delete); not logged."""
        with self.batch() as applier:
            applier.hard_delete(tenant, entity_id)

    def add_edge(self, tenant: str, src: str, dst: str, rel_type: str, properties: dict | None = None) -> None:
        """database.rs add_edge: both ends must exist; the edge in both edge CFs, nothing inline, not logged."""
        with self.batch() as applier:
            for end in (src, dst):
                if applier.get_entity(tenant, end) is None:
                    raise EntityNotFound(tenant, end)
            value = encode_edge({"src": src, "dst": dst, "rel_type": rel_type,
                                 "data": {"properties": properties or {}, "created_at": self.now()}})
            applier.put("edges", edge_key(src, dst, rel_type), value)
            applier.put("edges_reverse", edge_reverse_key(src, dst, rel_type), value)

    def delete_edge(self, src: str, dst: str, rel_type: str) -> None:
        """database.rs delete_edge: both edge CFs, not logged."""
        with self.batch() as applier:
            applier.delete("edges", edge_key(src, dst, rel_type))
            applier.delete("edges_reverse", edge_reverse_key(src, dst, rel_type))

    def key_material(self, private_key_encrypted: bytes, public_key: bytes) -> None:
        """storage/db.rs load_or_generate_keypair (opened with a master password): two rows, once."""
        if self.db.get("keys", b"private_key_encrypted") is None:
            with self.batch() as applier:
                applier.put("keys", b"private_key_encrypted", private_key_encrypted)
                applier.put("keys", b"public_key", public_key)
