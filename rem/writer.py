"""Writes with the engine's semantics. Every write and its WAL entry share one WriteBatch.

`OpApplier` holds the effects of the three WAL ops (Insert, Update, soft Delete) on every column
family; the writer uses it for new writes and point-in-time recovery uses it to replay archived
entries, so live writes and replays can never drift apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import orjson
from rocksdict import WriteOptions

from rem.db import RemDB
from rem.tenant import schema_rows
from rem.errors import RemError
from rem.format import (
    SCHEMA_ENTITY_TYPE,
    SCHEMA_TENANT,
    Entity,
    SchemaInfo,
    edge_key,
    edge_reverse_key,
    encode_entity,
    embedding_key,
    encode_embedding,
    entity_key,
    index_key,
    key_index_key,
    schema_info,
    wal_entry_json,
    wal_key,
)


def utc_now() -> str:
    """Current time as RFC 3339 UTC with microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


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
    """The text an index row holds for a property value; None for values that are not indexed."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


def index_rows(info: SchemaInfo | None, tenant: str, entity: dict) -> list[tuple[str, bytes, bytes]]:
    """The key_index and field-index rows an entity implies under its schema."""
    rows: list[tuple[str, bytes, bytes]] = []
    if info is None:
        return rows
    props = entity.get("properties") or {}
    uuid = entity["id"]
    if info.key_field and (key_value := _index_value(props.get(info.key_field))) is not None:
        rows.append(("key_index", key_index_key(tenant, key_value, uuid), orjson.dumps({"type": entity["entity_type"]})))
    for field in info.indexed_fields:
        if (value := _index_value(props.get(field))) is not None:
            rows.append(("indexes", index_key(tenant, field, value, uuid), b""))
    return rows


def derived_rows(schemas: dict[str, SchemaInfo], tenant: str, entity: dict) -> list[tuple[str, bytes, bytes]]:
    """Every row besides the entity's own that follows from it: key and field index rows, the
    inline embedding, and its edges in both edge CFs. Writes, vacuum, verify and rebuilds share it."""
    rows = index_rows(schemas.get(entity["entity_type"]), tenant, entity)
    uuid = entity["id"]
    inline = (entity.get("properties") or {}).get("embedding")
    if isinstance(inline, list) and inline:
        rows.append(("embeddings", embedding_key(tenant, uuid), encode_embedding(inline)))
    for edge in entity.get("edges") or ():
        value = orjson.dumps({"src": uuid, "dst": edge["dst"], "rel_type": edge["rel_type"],
                              "data": {"properties": edge.get("properties") or {}, "created_at": edge["created_at"]}})
        rows.append(("edges", edge_key(uuid, edge["dst"], edge["rel_type"]), value))
        rows.append(("edges_reverse", edge_reverse_key(uuid, edge["dst"], edge["rel_type"]), value))
    return rows


class RowList:
    """A sink that collects rows instead of writing them: (cf, key, value), value None for a delete."""

    def __init__(self):
        self.rows: list[tuple[str, bytes, bytes | None]] = []

    def put(self, cf: str, key: bytes, value: bytes) -> None:
        self.rows.append((cf, key, value))

    def delete(self, cf: str, key: bytes) -> None:
        self.rows.append((cf, key, None))


class OpApplier:
    """Applies entity ops to one WriteBatch, reading through the rows the batch already holds.

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

    def _store(self, tenant: str, old: dict | None, new: dict, new_json: bytes | None = None) -> None:
        new_rows = derived_rows(self.schemas, tenant, new)
        if old:
            old_rows = {(cf, key) for cf, key, _ in derived_rows(self.schemas, tenant, old)}
            for cf, key in old_rows - {(cf, key) for cf, key, _ in new_rows}:
                self.delete(cf, key)
        key = entity_key(tenant, new["id"])
        self.put("entities", key, new_json or encode_entity(new))
        for cf, row_key, value in new_rows:
            self.put(cf, row_key, value)
        self._pending[key] = new
        if new.get("entity_type") == SCHEMA_ENTITY_TYPE and tenant == SCHEMA_TENANT:
            info = schema_info(new)
            self.schemas[info.short_name] = info

    def insert(self, tenant: str, entity: dict, entity_json: bytes | None = None, is_new: bool = False) -> None:
        """Insert or replace a whole entity, with its key, index, inline-embedding and edge rows.

        is_new skips looking up the rows of a previous version (for ids the caller just made).
        """
        old = None if is_new else self.get_entity(tenant, entity["id"])
        self._store(tenant, old, entity, entity_json)

    def _change(self, tenant: str, entity_id: str, **fields: Any) -> dict:
        old = self.get_entity(tenant, entity_id)
        if old is None:
            raise EntityNotFound(tenant, entity_id)
        new = {**old, **fields}
        self._store(tenant, old, new)
        return new

    def update(self, tenant: str, entity_id: str, changes: dict, timestamp: str) -> dict:
        """Replace an entity's properties; modified_at becomes the entry time."""
        return self._change(tenant, entity_id, properties=changes, modified_at=timestamp)

    def soft_delete(self, tenant: str, entity_id: str, timestamp: str) -> dict:
        """Mark deleted: deleted_at and modified_at become the entry time; every row stays."""
        return self._change(tenant, entity_id, deleted_at=timestamp, modified_at=timestamp)

    def apply(self, op: dict, timestamp: str) -> None:
        """Apply one WAL op ({"Insert": ...} | {"Update": ...} | {"Delete": ...}) as the engine does."""
        (kind, body), = op.items()
        if kind == "Insert":
            self.insert(body["tenant_id"], body["entity"])
        elif kind == "Update":
            self.update(body["tenant_id"], body["entity_id"], body["changes"], timestamp)
        elif kind == "Delete":
            self.soft_delete(body["tenant_id"], body["entity_id"], timestamp)
        else:
            raise RemError(f"unknown WAL op {kind!r}")


class RemWriter:
    """Writes to an open read-write database the way percolate-rocks does.

    Each public method writes its rows and its WAL entry in one WriteBatch. Inside
    `with writer.batch():` many writes share one WriteBatch (still atomically with their WAL entries).
    """

    def __init__(self, db: RemDB, write_options: WriteOptions | None = None):
        if db.mode != "rw":
            raise RemError(f"{db.path}: opened {db.mode}; writes need a read-write open")
        self.db = db
        self.write_options = write_options
        self.seq = db.latest_wal_seq()
        self.schemas = load_schemas(db)
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

    def _log(self, applier: OpApplier, op: dict, timestamp: str) -> int:
        self.seq += 1
        applier.put("wal", wal_key(self.seq), wal_entry_json(self.seq, timestamp, op))
        return self.seq

    def _write(self, op: dict, timestamp: str | None) -> int:
        timestamp = timestamp or utc_now()
        with self.batch() as applier:
            applier.apply(op, timestamp)
            return self._log(applier, op, timestamp)

    def insert(self, tenant: str, entity: Entity | dict, embedding: Sequence[float] | bytes | None = None,
               timestamp: str | None = None, is_new: bool = False) -> int:
        """Insert (or replace) an entity. `embedding` goes to the embeddings CF only (derived data,
        not carried by the WAL); an inline `properties.embedding` is stored in both places.
        is_new: the caller guarantees no entity has this id yet (sample generation, bulk loads)."""
        body = entity.model_dump(mode="json") if isinstance(entity, Entity) else entity
        timestamp = timestamp or utc_now()
        body_json = encode_entity(body)
        if self._open is not None:  # the hot path of bulk loads: no context-manager round trip
            return self._insert(self._open, tenant, body, body_json, embedding, timestamp, is_new)
        with self.batch() as applier:
            return self._insert(applier, tenant, body, body_json, embedding, timestamp, is_new)

    def _insert(self, applier: OpApplier, tenant: str, body: dict, body_json: bytes, embedding, timestamp: str,
                is_new: bool) -> int:
        applier.insert(tenant, body, body_json, is_new)
        seq = self._log(applier, {"Insert": {"tenant_id": tenant, "entity": body}}, timestamp)
        if embedding is not None:
            applier.put("embeddings", embedding_key(tenant, body["id"]), encode_embedding(embedding))
        return seq

    def update(self, tenant: str, entity_id: str, changes: dict, timestamp: str | None = None) -> int:
        return self._write({"Update": {"tenant_id": tenant, "entity_id": entity_id, "changes": changes}}, timestamp)

    def soft_delete(self, tenant: str, entity_id: str, timestamp: str | None = None) -> int:
        return self._write({"Delete": {"tenant_id": tenant, "entity_id": entity_id}}, timestamp)

    def add_edge(self, tenant: str, src: str, dst: str, rel_type: str, properties: dict | None = None,
                 timestamp: str | None = None) -> int:
        """Add (or replace) an edge: inline in the source entity and in both edge CFs.

        The WAL has no edge op, so the change is logged as an Insert of the whole source entity.
        """
        timestamp = timestamp or utc_now()
        with self.batch() as applier:
            entity = applier.get_entity(tenant, src)
            if entity is None:
                raise EntityNotFound(tenant, src)
            edges = [e for e in entity.get("edges") or () if (e["dst"], e["rel_type"]) != (dst, rel_type)]
            edges.append({"dst": dst, "rel_type": rel_type, "properties": properties or {}, "created_at": timestamp})
            return self._write({"Insert": {"tenant_id": tenant,
                                           "entity": {**entity, "edges": edges, "modified_at": timestamp}}},
                               timestamp)

    def hard_delete(self, tenant: str, entity_id: str) -> None:
        """Remove an entity and every row that belongs to it (a maintenance operation: the engine's
        WAL has no op for it, so nothing is logged). Inline edges pointing at it from other
        entities are removed with a logged Insert of each source entity."""
        with self.batch() as applier:
            entity = applier.get_entity(tenant, entity_id)
            if entity is None:
                raise EntityNotFound(tenant, entity_id)
            for cf, key, _ in derived_rows(self.schemas, tenant, entity):
                applier.delete(cf, key)
            applier.delete("entities", entity_key(tenant, entity_id))
            applier.delete("embeddings", embedding_key(tenant, entity_id))
            applier._pending[entity_key(tenant, entity_id)] = None
            for key, value in self.db.items("edges_reverse", f"dst:{entity_id}:".encode()):
                edge = orjson.loads(value)
                applier.delete("edges_reverse", key)
                applier.delete("edges", edge_key(edge["src"], edge["dst"], edge["rel_type"]))
                source = applier.get_entity(tenant, edge["src"])
                if source is not None:
                    kept = [e for e in source.get("edges") or () if e["dst"] != entity_id]
                    now = utc_now()
                    self._write({"Insert": {"tenant_id": tenant,
                                            "entity": {**source, "edges": kept, "modified_at": now}}}, now)
