"""The REM on-disk format (percolate-rocks 0.3.x): column families, key layouts, value codecs.

Keys are UTF-8 strings with ':' separators; tenant ids and uuids never contain ':', so a
key value (which may) is recovered by splitting from both ends.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Union

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rem.errors import DecodeError

# ---------------------------------------------------------------------------- column families


@dataclass(frozen=True)
class CFSpec:
    """Engine options of one column family, as percolate-rocks creates it."""

    name: str
    compression: Literal["lz4", "none"]
    block_size: int
    bloom_bits: int
    prefix_len: int | None


_ENTITY_LIKE = dict(compression="lz4", block_size=4 * 1024, bloom_bits=10, prefix_len=10)
_INDEX_LIKE = dict(compression="lz4", block_size=2 * 1024, bloom_bits=10, prefix_len=15)

CF_SPECS: dict[str, CFSpec] = {
    spec.name: spec
    for spec in (
        CFSpec("entities", **_ENTITY_LIKE),
        CFSpec("key_index", **_INDEX_LIKE),
        CFSpec("edges", **_ENTITY_LIKE),
        CFSpec("edges_reverse", **_ENTITY_LIKE),
        CFSpec("embeddings", compression="none", block_size=32 * 1024, bloom_bits=10, prefix_len=None),
        CFSpec("indexes", **_INDEX_LIKE),
        CFSpec("wal", **_ENTITY_LIKE),
        CFSpec("keys", **_ENTITY_LIKE),
        CFSpec("bm25_index", **_INDEX_LIKE),
    )
}
CF_NAMES: tuple[str, ...] = tuple(CF_SPECS)

SCHEMA_TENANT = "default"
SCHEMA_ENTITY_TYPE = "schemas"

_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_tenant(tenant: str) -> str:
    """Return the tenant id, or raise UsageError when it could not be a key segment."""
    from rem.errors import UsageError

    if not _TENANT_RE.match(tenant):
        raise UsageError(f"tenant id {tenant!r}: use letters, digits, '_', '-' or '.', starting with a letter or digit")
    return tenant


# ---------------------------------------------------------------------------- keys


class EntityKey(NamedTuple):
    tenant: str
    uuid: str


class KeyIndexKey(NamedTuple):
    tenant: str
    key_value: str
    uuid: str


class EdgeKey(NamedTuple):
    src: str
    dst: str
    rel_type: str


class EmbeddingKey(NamedTuple):
    tenant: str
    uuid: str


class FieldIndexKey(NamedTuple):
    tenant: str
    field: str
    value: str
    uuid: str


_PLAIN_STEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,119}$")


def file_stem(name: str) -> str:
    """A name taken from the data (a schema, an entity type, a tenant) as one file or folder name
    that stays where it is put: kept as it is when it is plain, else percent-encoded ('/' and a
    leading '.' included), and past 120 characters cut with a hash of the whole name. The engine
    accepts any string as a schema or entity type; a file name must never climb out of its folder."""
    if _PLAIN_STEM.match(name):
        return name
    from urllib.parse import quote

    encoded = quote(name, safe="_.-")
    if encoded.startswith("."):  # "..", ".", a hidden file
        encoded = encoded.replace(".", "%2E")
    encoded = encoded or "%"  # the empty name: quote never makes a lone '%'
    if len(encoded) > 120:
        import hashlib

        encoded = f"{encoded[:100]}~{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return encoded


def entity_key(tenant: str, uuid: str) -> bytes:
    return f"entity:{tenant}:{uuid}".encode()


def entity_prefix(tenant: str | None = None) -> bytes:
    return b"entity:" if tenant is None else f"entity:{tenant}:".encode()


def key_index_key(tenant: str, key_value: str, uuid: str) -> bytes:
    return f"key:{tenant}:{key_value}:{uuid}".encode()


def edge_key(src: str, dst: str, rel_type: str) -> bytes:
    return f"src:{src}:dst:{dst}:type:{rel_type}".encode()


def edge_reverse_key(src: str, dst: str, rel_type: str) -> bytes:
    return f"dst:{dst}:src:{src}:type:{rel_type}".encode()


def embedding_key(tenant: str, uuid: str) -> bytes:
    return f"emb:{tenant}:{uuid}".encode()


def index_key(tenant: str, field: str, value: str, uuid: str) -> bytes:
    return f"idx:{tenant}:{field}:{value}:{uuid}".encode()


def wal_key(seq: int) -> bytes:
    return f"wal:{seq:020d}".encode()


WAL_PREFIX = b"wal:"


def _split(cf: str, key: bytes, head: str, min_parts: int) -> list[str]:
    try:
        text = key.decode()
    except UnicodeDecodeError as exc:
        raise DecodeError(cf, key, "key is not UTF-8") from exc
    parts = text.split(":")
    if parts[0] != head or len(parts) < min_parts:
        raise DecodeError(cf, key, f"key does not match {head}:... with {min_parts} segments")
    return parts


def parse_entity_key(key: bytes) -> EntityKey:
    parts = _split("entities", key, "entity", 3)
    if len(parts) != 3:
        raise DecodeError("entities", key, "expected entity:{tenant}:{uuid}")
    return EntityKey(parts[1], parts[2])


def parse_key_index_key(key: bytes) -> KeyIndexKey:
    parts = _split("key_index", key, "key", 4)
    return KeyIndexKey(parts[1], ":".join(parts[2:-1]), parts[-1])


def parse_edge_key(key: bytes) -> EdgeKey:
    parts = _split("edges", key, "src", 6)
    if parts[2] != "dst" or parts[4] != "type":
        raise DecodeError("edges", key, "expected src:{src}:dst:{dst}:type:{rel}")
    return EdgeKey(parts[1], parts[3], ":".join(parts[5:]))


def parse_edge_reverse_key(key: bytes) -> EdgeKey:
    parts = _split("edges_reverse", key, "dst", 6)
    if parts[2] != "src" or parts[4] != "type":
        raise DecodeError("edges_reverse", key, "expected dst:{dst}:src:{src}:type:{rel}")
    return EdgeKey(parts[3], parts[1], ":".join(parts[5:]))


def parse_embedding_key(key: bytes) -> EmbeddingKey:
    parts = _split("embeddings", key, "emb", 3)
    if len(parts) != 3:
        raise DecodeError("embeddings", key, "expected emb:{tenant}:{uuid}")
    return EmbeddingKey(parts[1], parts[2])


def parse_index_key(key: bytes) -> FieldIndexKey:
    parts = _split("indexes", key, "idx", 5)
    return FieldIndexKey(parts[1], parts[2], ":".join(parts[3:-1]), parts[-1])


def parse_wal_key(key: bytes) -> int:
    parts = _split("wal", key, "wal", 2)
    if len(parts) != 2 or len(parts[1]) != 20 or not parts[1].isdigit():
        raise DecodeError("wal", key, "expected wal:{seq:020}")
    return int(parts[1])


# ---------------------------------------------------------------------------- values


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_rfc3339(value: str | None) -> str | None:
    from datetime import datetime

    if value is not None:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value


class EdgeRef(_Model):
    """An edge as it sits inline in its source entity."""

    dst: str
    rel_type: str
    properties: dict[str, Any] = Field(default_factory=dict)
    created_at: str

    _ts = field_validator("created_at")(_check_rfc3339)


class Entity(_Model):
    id: str
    entity_type: str
    created_at: str
    modified_at: str
    deleted_at: str | None = None
    edges: list[EdgeRef] = Field(default_factory=list)
    properties: dict[str, Any] = Field(default_factory=dict)

    _ts = field_validator("created_at", "modified_at", "deleted_at")(_check_rfc3339)


class EdgeData(_Model):
    properties: dict[str, Any] = Field(default_factory=dict)
    created_at: str

    _ts = field_validator("created_at")(_check_rfc3339)


class Edge(_Model):
    """An edge as stored (identically) in `edges` and `edges_reverse`."""

    src: str
    dst: str
    rel_type: str
    data: EdgeData


class InsertOp(_Model):
    tenant_id: str
    entity: Entity


class UpdateOp(_Model):
    tenant_id: str
    entity_id: str
    changes: dict[str, Any]


class DeleteOp(_Model):
    tenant_id: str
    entity_id: str


class _Insert(_Model):
    Insert: InsertOp


class _Update(_Model):
    Update: UpdateOp


class _Delete(_Model):
    Delete: DeleteOp


WalOp = Union[_Insert, _Update, _Delete]


class WalEntry(_Model):
    seq: int = Field(ge=1)
    timestamp: str
    op: WalOp

    _ts = field_validator("timestamp")(_check_rfc3339)

    @property
    def tenant_id(self) -> str:
        return self.inner_op.tenant_id

    @property
    def inner_op(self) -> InsertOp | UpdateOp | DeleteOp:
        return next(iter(self.op.__dict__.values()))


def dumps(value: Any) -> bytes:
    """The one JSON encoder for everything this toolkit writes into a REM database."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return orjson.dumps(value)


def _value(value: Any) -> orjson.Fragment:
    """A serde_json::Value as the engine writes it: objects are BTreeMaps, so keys sorted at every level."""
    return orjson.Fragment(orjson.dumps(value, option=orjson.OPT_SORT_KEYS))


def encode_entity(entity: dict) -> bytes:
    """An entity's bytes exactly as the engine writes them (types/entity.rs Entity: SystemFields
    flattened in declaration order, then properties, a Value; InlineEdge: dst, rel_type, properties,
    created_at)."""
    edges = [{"dst": e["dst"], "rel_type": e["rel_type"], "properties": _value(e.get("properties") or {}),
              "created_at": e["created_at"]} for e in entity.get("edges") or ()]
    return orjson.dumps({"id": entity["id"], "entity_type": entity["entity_type"], "created_at": entity["created_at"],
                         "modified_at": entity["modified_at"], "deleted_at": entity.get("deleted_at"), "edges": edges,
                         "properties": _value(entity.get("properties") or {})})


def encode_edge(edge: dict) -> bytes:
    """types/entity.rs Edge: src, dst, rel_type, data {properties, created_at}."""
    return orjson.dumps({"src": edge["src"], "dst": edge["dst"], "rel_type": edge["rel_type"],
                         "data": {"properties": _value(edge["data"].get("properties") or {}),
                                  "created_at": edge["data"]["created_at"]}})


def encode_wal_op(op: dict) -> bytes:
    """replication/wal.rs WalOperation: {"Insert": {tenant_id, entity}} | {"Update": {tenant_id,
    entity_id, changes}} | {"Delete": {tenant_id, entity_id}}; entity and changes are Values."""
    (kind, body), = op.items()
    return orjson.dumps({kind: {k: _value(v) if k in ("entity", "changes") else v for k, v in body.items()}})


def wal_entry_json(seq: int, timestamp: str, op: dict | bytes) -> bytes:
    """A logical WAL entry's bytes as replication/wal.rs writes them: seq, op, timestamp. op may be
    already encoded (encode_wal_op)."""
    op_json = op if isinstance(op, bytes) else encode_wal_op(op)
    return orjson.dumps({"seq": seq, "op": orjson.Fragment(op_json), "timestamp": timestamp})


def _decode_model(model: type[_Model], cf: str, key: bytes, value: bytes):
    try:
        return model.model_validate_json(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "value"
        raise DecodeError(cf, key, f"{where}: {first['msg']}") from exc


def decode_entity(key: bytes, value: bytes) -> Entity:
    return _decode_model(Entity, "entities", key, value)


def decode_edge(key: bytes, value: bytes, cf: str = "edges") -> Edge:
    return _decode_model(Edge, cf, key, value)


def decode_wal_entry(key: bytes, value: bytes) -> WalEntry:
    entry = _decode_model(WalEntry, "wal", key, value)
    if parse_wal_key(key) != entry.seq:
        raise DecodeError("wal", key, f"key sequence differs from entry seq {entry.seq}")
    return entry


def decode_key_index_value(key: bytes, value: bytes) -> str:
    try:
        decoded = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("key_index", key, "value is not JSON") from exc
    if not isinstance(decoded, dict) or not isinstance(decoded.get("type"), str):
        raise DecodeError("key_index", key, 'value must be {"type": "<schema>"}')
    return decoded["type"]


def encode_embedding(vector) -> bytes:
    """float32 little-endian, whatever the input (list, tuple, numpy array, or bytes already encoded)."""
    if isinstance(vector, (bytes, bytearray)):
        return bytes(vector)
    if hasattr(vector, "astype"):
        return vector.astype("<f4").tobytes()
    return struct.pack(f"<{len(vector)}f", *vector)


def decode_embedding(key: bytes, value: bytes) -> tuple[float, ...]:
    if len(value) % 4:
        raise DecodeError("embeddings", key, f"{len(value)} bytes is not a whole number of float32")
    return struct.unpack(f"<{len(value) // 4}f", value)


def decode_index_value(key: bytes, value: bytes) -> Any:
    if not value:
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("indexes", key, "value is neither empty nor JSON") from exc


def decode_row(cf: str, key: bytes, value: bytes) -> tuple[Any, Any]:
    """Decode any row of any known column family into (parsed key, decoded value)."""
    if cf == "entities":
        return parse_entity_key(key), decode_entity(key, value)
    if cf == "key_index":
        return parse_key_index_key(key), decode_key_index_value(key, value)
    if cf == "edges":
        return parse_edge_key(key), decode_edge(key, value, "edges")
    if cf == "edges_reverse":
        return parse_edge_reverse_key(key), decode_edge(key, value, "edges_reverse")
    if cf == "embeddings":
        return parse_embedding_key(key), decode_embedding(key, value)
    if cf == "indexes":
        return parse_index_key(key), decode_index_value(key, value)
    if cf == "wal":
        return parse_wal_key(key), decode_wal_entry(key, value)
    # keys and bm25_index hold opaque bytes: secrets and binary postings.
    return key, value


# ---------------------------------------------------------------------------- schemas


class SchemaInfo(NamedTuple):
    """What the writer needs to know of a schema entity."""

    short_name: str
    key_field: str | None
    indexed_fields: tuple[str, ...]
    embedding_dim: int | None


def schema_info(entity: Entity | dict) -> SchemaInfo:
    """Read the key field, indexed fields and embedding dimension from a schema entity.

    They sit in the JSON Schema's `json_schema_extra`, as percolate-rocks' Pydantic models put them.
    """
    props = entity.properties if isinstance(entity, Entity) else entity["properties"]
    extra = (props.get("schema") or {}).get("json_schema_extra") or {}
    return SchemaInfo(
        short_name=props["short_name"],
        key_field=extra.get("key_field"),
        indexed_fields=tuple(extra.get("indexed_fields") or ()),
        embedding_dim=extra.get("embedding_dim"),
    )
