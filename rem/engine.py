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
