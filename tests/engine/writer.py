"""percolate-rocks 0.3.2 (commit 5d3d19b of percolating-sirsh/percolate-node, folder percolate-rocks/)
written again in Python, write path by write path, for tests: databases our tools must handle as
the engine leaves them. Runs under rocksdict 0.3.22 (RocksDB 8.10.0, the engine's through
rust-rocksdb 0.22) in its own virtualenv (.venv-engine); the product never imports it.

Every rule names the file and function it comes from (paths under src/).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import datetime, timezone

import blake3
from rocksdict import (AccessType, BlockBasedOptions, DBCompressionType, Options, Rdict, SliceTransform,
                       WriteBatch)

from spec import COLUMN_FAMILIES  # noqa: E402  (storage/column_families.rs)

# schema/builtin.rs register_builtin_schemas: registered in memory, never stored (category system).
BUILTIN_KEY_FIELDS = {"schemas": "name", "documents": "uri", "resources": "uri", "sessions": "session_id",
                      "messages": "message_id", "feedback": "feedback_id"}


def cf_options(spec: tuple) -> Options:
    compression, block_size, prefix = spec
    opts = Options(raw_mode=True)
    opts.set_compression_type(DBCompressionType.lz4() if compression == "lz4" else DBCompressionType.none())
    table = BlockBasedOptions()
    table.set_block_size(block_size)
    table.set_bloom_filter(10, False)
    opts.set_block_based_table_factory(table)
    if prefix:
        opts.set_prefix_extractor(SliceTransform.create_fixed_prefix(prefix))
    return opts


def now_rfc3339() -> str:
    """chrono::Utc::now().to_rfc3339(): '+00:00', and 0, 3, 6 or 9 fractional digits (SecondsFormat::AutoSi)."""
    secs, nanos = divmod(time.time_ns(), 10**9)
    base = datetime.fromtimestamp(secs, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if nanos == 0:
        frac = ""
    elif nanos % 1_000_000 == 0:
        frac = f".{nanos // 1_000_000:03d}"
    elif nanos % 1000 == 0:
        frac = f".{nanos // 1000:06d}"
    else:
        frac = f".{nanos:09d}"
    return f"{base}{frac}+00:00"


def value_json(value) -> str:
    """serde_json::Value as text: objects are BTreeMaps (no preserve_order feature), so keys sorted."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def value_to_string(value) -> str:
    """types/uuid_gen.rs and database.rs value_to_string."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return value_json(value)


def hash_to_uuid(text: str) -> str:
    """types/uuid_gen.rs hash_to_uuid: the first 16 bytes of BLAKE3, version 5 and variant bits set."""
    raw = bytearray(blake3.blake3(text.encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))


def generate_uuid(table: str, data: dict, key_field: str | None) -> str:
    """types/uuid_gen.rs generate_uuid: uri (+ chunk_ordinal), key_field, key, name, else random."""
    if isinstance(data.get("uri"), str):
        ordinal = data.get("chunk_ordinal")
        ordinal = ordinal if isinstance(ordinal, int) and not isinstance(ordinal, bool) and ordinal >= 0 else 0
        return hash_to_uuid(f"{table}:{data['uri']}:{ordinal}")
    if key_field and key_field in data:
        return hash_to_uuid(f"{table}:{value_to_string(data[key_field])}")
    if "key" in data:
        return hash_to_uuid(f"{table}:{value_to_string(data['key'])}")
    if isinstance(data.get("name"), str):
        return hash_to_uuid(f"{table}:{data['name']}")
    return str(uuid.uuid4())


def extract_key_value(data: dict, key_field: str | None) -> str | None:
    """database.rs extract_key_value: uri if a string, key_field, key, name if a string."""
    if isinstance(data.get("uri"), str):
        return data["uri"]
    if key_field and key_field in data:
        return value_to_string(data[key_field])
    if "key" in data:
        return value_to_string(data["key"])
    if isinstance(data.get("name"), str):
        return data["name"]
    return None


def entity_json(entity: dict) -> bytes:
    """serde_json::to_vec(&Entity): SystemFields flattened in declaration order, then properties
    (a Value: sorted keys). InlineEdge: dst, rel_type, properties (a HashMap), created_at."""
    edges = ",".join('{"dst":%s,"rel_type":%s,"properties":%s,"created_at":%s}' % (
        json.dumps(e["dst"]), json.dumps(e["rel_type"], ensure_ascii=False), value_json(e["properties"]),
        json.dumps(e["created_at"])) for e in entity["edges"])
    return ('{"id":%s,"entity_type":%s,"created_at":%s,"modified_at":%s,"deleted_at":%s,"edges":[%s],'
            '"properties":%s}' % (json.dumps(entity["id"]), json.dumps(entity["entity_type"], ensure_ascii=False),
                                  json.dumps(entity["created_at"]), json.dumps(entity["modified_at"]),
                                  json.dumps(entity["deleted_at"]), edges,
                                  value_json(entity["properties"]))).encode()


class Engine:
    """database.rs Database, opened standalone (Database::open) or as a primary
    (Database::open_with_replication(path, ReplicationMode::Primary))."""

    def __init__(self, path: str, mode: str = "standalone", write_buffer_size: int = 64 * 1024 * 1024,
                 max_total_wal_size: int = 0):
        # storage/db.rs Storage::open
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.create_missing_column_families(True)
        opts.set_max_open_files(1000)
        opts.set_max_background_jobs(4)
        opts.set_write_buffer_size(write_buffer_size)
        if max_total_wal_size:  # tests only: make logs rotate and go
            opts.set_max_total_wal_size(max_total_wal_size)
        self.db = Rdict(path, options=opts, column_families={n: cf_options(s) for n, s in COLUMN_FAMILIES.items()},
                        access_type=AccessType.read_write())
        self.cfs = {name: self.db.get_column_family_handle(name) for name in COLUMN_FAMILIES}
        self.readers = {name: self.db.get_column_family(name) for name in COLUMN_FAMILIES}  # 2 ms each: made once
        self.primary = mode == "primary"
        self.schemas: dict[str, dict] = {name: {"json_schema_extra": {"key_field": key, "category": "system"}}
                                         for name, key in BUILTIN_KEY_FIELDS.items()}
        self.wal_seq = self._latest_wal_seq() if self.primary else 0
        self._load_schemas_from_storage()
        path_litter = os.path.join(path, "rocksdict-config.json")
        if os.path.exists(path_litter):  # rocksdict's, not the engine's
            os.remove(path_litter)

    def close(self) -> None:
        self.cfs.clear()
        self.readers.clear()
        self.db.close()

    # ------------------------------------------------------------------------ storage

    def _put(self, cf: str, key: bytes, value: bytes) -> None:
        batch = WriteBatch(raw_mode=True)
        batch.put(key, value, self.cfs[cf])
        self.db.write(batch)

    def _delete(self, cf: str, key: bytes) -> None:
        batch = WriteBatch(raw_mode=True)
        batch.delete(key, self.cfs[cf])
        self.db.write(batch)

    def _get(self, cf: str, key: bytes) -> bytes | None:
        return self.readers[cf].get(key)

    def _latest_wal_seq(self) -> int:
        """replication/wal.rs WriteAheadLog::read_latest_seq."""
        keys = list(self.db.get_column_family("wal").keys())
        return int(keys[-1][4:]) if keys else 0

    def _wal_append(self, op: str, body: str) -> None:
        """replication/wal.rs append: its own put after the entity's; WalEntry {seq, op, timestamp}."""
        if not self.primary:
            return
        self.wal_seq += 1
        value = '{"seq":%d,"op":{"%s":%s},"timestamp":%s}' % (self.wal_seq, op, body, json.dumps(now_rfc3339()))
        self._put("wal", f"wal:{self.wal_seq:020d}".encode(), value.encode())

    def _load_schemas_from_storage(self) -> None:
        """database.rs load_schemas_from_storage: entities of tenant default with entity_type schemas."""
        for key, value in self.db.get_column_family("entities").items(from_key=b"entity:default:"):
            if not key.startswith(b"entity:default:"):
                break
            entity = json.loads(value)
            if entity["entity_type"] == "schemas":
                self.schemas[entity["properties"]["short_name"]] = entity["properties"]["schema"]

    def key_field(self, table: str) -> str | None:
        """schema/pydantic.rs extract_key_field."""
        return (self.schemas[table].get("json_schema_extra") or {}).get("key_field")

    # ------------------------------------------------------------------------ schemas

    def register_schema(self, name: str, schema: dict) -> str | None:
        """database.rs register_schema + persist_schema: stored unless its category is system; no key
        row, no WAL entry."""
        self.schemas[name] = schema
        extra = schema.get("json_schema_extra") or {}
        if str(extra.get("category", "user")).lower() == "system":
            return None
        data = {"short_name": name, "name": extra.get("name") or name, "version": schema["version"],
                "schema": schema, "description": schema.get("description") or "No description",
                "category": str(extra.get("category", "user")).lower()}
        entity_id = generate_uuid("schemas", data, "name")
        now = now_rfc3339()
        entity = {"id": entity_id, "entity_type": "schemas", "created_at": now, "modified_at": now,
                  "deleted_at": None, "edges": [], "properties": data}
        self._put("entities", f"entity:default:{entity_id}".encode(), entity_json(entity))
        return entity_id

    # ------------------------------------------------------------------------ writes

    def get(self, tenant: str, entity_id: str) -> dict | None:
        raw = self._get("entities", f"entity:{tenant}:{entity_id}".encode())
        return json.loads(raw) if raw is not None else None

    def insert(self, tenant: str, table: str, data: dict) -> str:
        """database.rs insert: an upsert by deterministic id; the entity, then its key row, then (primary)
        the WAL entry, each its own write."""
        key_field = self.key_field(table)
        entity_id = generate_uuid(table, data, key_field)
        inline = (self.schemas[table].get("json_schema_extra") or {}).get("edge_storage_mode", "inline") == "inline"
        incoming = [{"dst": e["dst"], "rel_type": e["rel_type"], "properties": e.get("properties") or {},
                     "created_at": e.get("created_at") or now_rfc3339()}
                    for e in data.get("edges") or [] if isinstance(e, dict) and "dst" in e and "rel_type" in e] \
            if inline else []
        now = now_rfc3339()
        entity = {"id": entity_id, "entity_type": table, "created_at": now, "modified_at": now, "deleted_at": None,
                  "edges": [], "properties": data}
        existing = self.get(tenant, entity_id)
        if existing is not None:
            entity["created_at"] = existing["created_at"]
            if inline:
                entity["edges"] = existing["edges"]
                for edge in incoming:  # types/entity.rs merge_edges -> add_edge (touches modified_at)
                    same = [e for e in entity["edges"] if (e["dst"], e["rel_type"]) == (edge["dst"], edge["rel_type"])]
                    if same:
                        same[0]["properties"], same[0]["created_at"] = edge["properties"], edge["created_at"]
                    else:
                        entity["edges"].append(edge)
                    entity["modified_at"] = now_rfc3339()
        elif inline:
            entity["edges"] = incoming
        self._put("entities", f"entity:{tenant}:{entity_id}".encode(), entity_json(entity))
        key_value = extract_key_value(data, key_field)
        if key_value is not None:
            self._put("key_index", f"key:{tenant}:{key_value}:{entity_id}".encode(),
                      json.dumps({"type": table}, separators=(",", ":")).encode())
        self._wal_append("Insert", '{"tenant_id":%s,"entity":%s}' % (json.dumps(tenant),
                                                                      value_json(json.loads(entity_json(entity)))))
        return entity_id

    def batch_insert(self, tenant: str, table: str, items: list[dict]) -> list[str]:
        """database.rs batch_insert: one WriteBatch of entities and key rows; no edge extraction, no
        upsert merge, no WAL entry."""
        key_field = self.key_field(table)
        batch = WriteBatch(raw_mode=True)
        ids = []
        for data in items:
            entity_id = generate_uuid(table, data, key_field)
            ids.append(entity_id)
            now = now_rfc3339()
            entity = {"id": entity_id, "entity_type": table, "created_at": now, "modified_at": now,
                      "deleted_at": None, "edges": [], "properties": data}
            batch.put(f"entity:{tenant}:{entity_id}".encode(), entity_json(entity), self.cfs["entities"])
            key_value = extract_key_value(data, key_field)
            if key_value is not None:
                batch.put(f"key:{tenant}:{key_value}:{entity_id}".encode(),
                          json.dumps({"type": table}, separators=(",", ":")).encode(), self.cfs["key_index"])
        self.db.write(batch)
        return ids

    def update(self, tenant: str, entity_id: str, updates: dict) -> None:
        """database.rs update: merged properties, a new modified_at; the key index is left alone."""
        entity = self.get(tenant, entity_id)
        entity["properties"].update(updates)
        entity["modified_at"] = now_rfc3339()
        self._put("entities", f"entity:{tenant}:{entity_id}".encode(), entity_json(entity))
        self._wal_append("Update", '{"tenant_id":%s,"entity_id":%s,"changes":%s}' % (
            json.dumps(tenant), json.dumps(entity_id), value_json(entity["properties"])))

    def delete(self, tenant: str, entity_id: str) -> None:
        """database.rs delete -> types/entity.rs mark_deleted: deleted_at, then modified_at, each now()."""
        entity = self.get(tenant, entity_id)
        entity["deleted_at"] = now_rfc3339()
        entity["modified_at"] = now_rfc3339()
        self._put("entities", f"entity:{tenant}:{entity_id}".encode(), entity_json(entity))
        self._wal_append("Delete", '{"tenant_id":%s,"entity_id":%s}' % (json.dumps(tenant), json.dumps(entity_id)))

    def hard_delete(self, tenant: str, entity_id: str) -> None:
        """database.rs hard_delete: the entity, then the key row its current properties imply; old key
        rows, embeddings, field indexes and edges stay (TODOs in the source); not logged."""
        entity = self.get(tenant, entity_id)
        self._delete("entities", f"entity:{tenant}:{entity_id}".encode())
        key_value = extract_key_value(entity["properties"], self.key_field(entity["entity_type"]))
        if key_value is not None:
            self._delete("key_index", f"key:{tenant}:{key_value}:{entity_id}".encode())

    def add_edge(self, tenant: str, src: str, dst: str, rel_type: str, properties: dict | None = None) -> None:
        """database.rs add_edge: both ends must exist; the edge in both edge CFs, nothing inline, not logged.
        Edge: src, dst, rel_type, data {properties (a HashMap), created_at}."""
        assert self.get(tenant, src) is not None and self.get(tenant, dst) is not None
        value = '{"src":%s,"dst":%s,"rel_type":%s,"data":{"properties":%s,"created_at":%s}}' % (
            json.dumps(src), json.dumps(dst), json.dumps(rel_type, ensure_ascii=False), value_json(properties or {}),
            json.dumps(now_rfc3339()))
        self._put("edges", f"src:{src}:dst:{dst}:type:{rel_type}".encode(), value.encode())
        self._put("edges_reverse", f"dst:{dst}:src:{src}:type:{rel_type}".encode(), value.encode())

    def delete_edge(self, src: str, dst: str, rel_type: str) -> None:
        """database.rs delete_edge: both edge CFs, not logged."""
        self._delete("edges", f"src:{src}:dst:{dst}:type:{rel_type}".encode())
        self._delete("edges_reverse", f"dst:{dst}:src:{src}:type:{rel_type}".encode())

    def key_material(self) -> None:
        """storage/db.rs load_or_generate_keypair (opened with a master password): two rows of bytes."""
        if self._get("keys", b"private_key_encrypted") is None:
            self._put("keys", b"private_key_encrypted", os.urandom(92))
            self._put("keys", b"public_key", os.urandom(32))
