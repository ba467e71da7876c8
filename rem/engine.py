"""Rules of percolate-rocks 0.3.2 (commit 5d3d19b) that our tools must honour, each from its source file.

- Key rows (`database.rs` extract_key_value): the key value is `properties.uri` if a string, else the
  schema's `key_field` value, else `key`, else `name` if a string; non-strings as JSON text
  (value_to_string). `insert` and `batch_insert` write `key:{tenant}:{value}:{uuid}`; `update` never
  touches key rows (after a key change the old row stays and the new key has none); `hard_delete`
  removes the row of the current key only.
- System schemas (`schema/builtin.rs`) are registered in memory, never stored; their key fields are
  below. A schema registered with category `system` is not stored either.
- The engine never writes the `indexes` or `embeddings` column families (TODOs in `database.rs`);
  vectors live in `properties.embedding`.
"""

from __future__ import annotations

import json
import re
from typing import Any

SYSTEM_KEY_FIELDS = {"schemas": "name", "documents": "uri", "resources": "uri", "sessions": "session_id",
                     "messages": "message_id", "feedback": "feedback_id"}


def value_to_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def extract_key_value(properties: dict, key_field: str | None) -> str | None:
    """The key an entity's key row carries, as the engine derives it (None: no key row)."""
    if isinstance(properties.get("uri"), str):
        return properties["uri"]
    if key_field and key_field in properties:
        return value_to_string(properties[key_field])
    if "key" in properties:
        return value_to_string(properties["key"])
    if isinstance(properties.get("name"), str):
        return properties["name"]
    return None


def key_field_for(entity_type: str, stored: dict) -> str | None:
    """The key field of a schema: from its stored schema entity, else the built-in one."""
    info = stored.get(entity_type)
    if info is not None:
        return info.key_field
    return SYSTEM_KEY_FIELDS.get(entity_type)


def current_key_row(tenant: str, entity: dict, stored: dict) -> bytes | None:
    """The key row the engine writes for this entity's current properties (on insert)."""
    value = extract_key_value(entity.get("properties") or {}, key_field_for(entity["entity_type"], stored))
    return None if value is None else f"key:{tenant}:{value}:{entity['id']}".encode()


def _t(kind) -> dict:
    return {"type": kind}


# schema/builtin.rs: the built-in schemas' declared properties (JSON Schema types), for export layouts.
SYSTEM_SCHEMA_PROPERTIES: dict[str, dict[str, dict]] = {
    "schemas": {"short_name": _t("string"), "name": _t("string"), "version": _t("string"), "schema": _t("object"),
                "description": _t("string"), "category": _t("string")},
    "documents": {"name": _t("string"), "uri": _t("string"), "content_type": _t("string"),
                  "file_size": _t("integer"), "file_hash": _t("string"), "category": _t("string"),
                  "tags": _t("array"), "sentiment_tags": _t("array"), "active_start_time": _t("string"),
                  "active_end_time": _t("string"), "chunk_count": _t("integer"), "metadata": _t("object")},
    "resources": {"name": _t("string"), "content": _t("string"), "uri": _t("string"), "chunk_ordinal": _t("integer"),
                  "content_type": _t("string"), "category": _t("string"), "tags": _t("array"),
                  "sentiment_tags": _t("array"), "active_start_time": _t("string"), "active_end_time": _t("string"),
                  "document_id": _t("string"), "metadata": _t("object")},
    "sessions": {"session_id": _t("string"), "tenant_id": _t("string"), "agent_uri": _t(["string", "null"]),
                 "message_count": _t("integer"), "metadata": _t("object"), "created_at": _t("string"),
                 "updated_at": _t("string")},
    "messages": {"message_id": _t("string"), "session_id": _t("string"), "tenant_id": _t("string"),
                 "role": _t("string"), "content": _t("string"), "model": _t(["string", "null"]),
                 "timestamp": _t("string"), "usage": _t(["object", "null"]), "trace_id": _t(["string", "null"]),
                 "span_id": _t(["string", "null"])},
    "feedback": {"feedback_id": _t("string"), "session_id": _t("string"), "message_id": _t(["string", "null"]),
                 "tenant_id": _t("string"), "trace_id": _t(["string", "null"]), "span_id": _t(["string", "null"]),
                 "label": _t(["string", "null"]), "score": _t(["number", "null"]),
                 "feedback_text": _t(["string", "null"]), "user_id": _t(["string", "null"]),
                 "timestamp": _t("string"), "metadata": _t("object")},
}


def hash_to_uuid(text: str) -> str:
    """types/uuid_gen.rs hash_to_uuid: the first 16 bytes of BLAKE3, version 5 and variant bits set."""
    import blake3

    raw = bytearray(blake3.blake3(text.encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()  # uuid.UUID's str, without building one (a tenth of sample generation)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def entity_id(table: str, data: dict, key_field: str | None) -> str | None:
    """types/uuid_gen.rs generate_uuid: uri (+ chunk_ordinal), key_field, key, name; None where the
    engine would draw a random v4 id (the caller draws it)."""
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
    return None


def rfc3339_tail(nanos: int) -> str:
    """What chrono's to_rfc3339() puts after the seconds: 0, 3, 6 or 9 fractional digits, '+00:00'."""
    if nanos == 0:
        return "+00:00"
    if nanos % 1_000_000 == 0:
        return f".{nanos // 1_000_000:03d}+00:00"
    if nanos % 1000 == 0:
        return f".{nanos // 1000:06d}+00:00"
    return f".{nanos:09d}+00:00"


def rfc3339(seconds: int, nanos: int) -> str:
    """chrono's DateTime<Utc>::to_rfc3339()."""
    from datetime import datetime, timezone

    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + rfc3339_tail(nanos)


def now_rfc3339() -> str:
    import time

    return rfc3339(*divmod(time.time_ns(), 10**9))


def schema_entity(name: str, schema: dict, created_at: str) -> dict | None:
    """database.rs persist_schema: the entity register_schema stores (None for category system)."""
    extra = schema.get("json_schema_extra") or {}
    category = str(extra.get("category") or "user").lower()
    if category == "system":
        return None
    data = {"short_name": name, "name": extra.get("name") or name, "version": schema["version"], "schema": schema,
            "description": schema.get("description") or "No description", "category": category}
    return {"id": entity_id("schemas", data, "name"), "entity_type": "schemas", "created_at": created_at,
            "modified_at": created_at, "deleted_at": None, "edges": [], "properties": data}


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def rfc3339_micros(text: str) -> int | None:
    """Microseconds since the epoch of a chrono RFC 3339 time (0-9 fractional digits, any offset);
    None for anything else."""
    from datetime import datetime

    match = _RFC3339.match(text)
    if not match:
        return None
    whole, fraction, zone = match.groups()
    try:
        seconds = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone)).timestamp()
    except ValueError:
        return None
    return int(seconds) * 1_000_000 + int((fraction or "0").ljust(9, "0")[:6])
