"""Tenant export to Parquet (pyarrow, record batches: memory stays flat).

Columns: tenant_id, id, entity_type, created_at, modified_at, deleted_at (timestamps, UTC), edges
(JSON text), extra_properties (JSON text of properties the schema does not declare, or null),
then each property with the Arrow type its JSON Schema implies (string, int64,
float64, bool, timestamp for format date-time, list for arrays of scalars, struct for objects with
declared properties, JSON text for anything else), and embedding as fixed_size_list<float32>
(from the embeddings CF, or inline properties.embedding). A value that does not fit its type is
written as null and counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from rem.db import RemDB
from rem.format import SCHEMA_ENTITY_TYPE, SCHEMA_TENANT, embedding_key, entity_prefix, parse_entity_key

BATCH_ROWS = 10_000
TIMESTAMP = pa.timestamp("us", tz="UTC")
SYSTEM_FIELDS = [("tenant_id", pa.string()), ("id", pa.string()), ("entity_type", pa.string()),
                 ("created_at", TIMESTAMP), ("modified_at", TIMESTAMP), ("deleted_at", TIMESTAMP),
                 ("edges", pa.string()), ("extra_properties", pa.string())]


def _time(value):
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value


def arrow_type(spec: dict) -> pa.DataType:
    """The Arrow type a JSON Schema property implies."""
    kind = spec.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "string":
        return TIMESTAMP if spec.get("format") == "date-time" else pa.string()
    if kind == "integer":
        return pa.int64()
    if kind == "number":
        return pa.float64()
    if kind == "boolean":
        return pa.bool_()
    if kind == "array":
        item = arrow_type(spec.get("items") or {})
        return pa.list_(item) if item != pa.string() or (spec.get("items") or {}).get("type") == "string" else pa.string()
    if kind == "object" and spec.get("properties"):
        return pa.struct([(name, arrow_type(sub)) for name, sub in spec["properties"].items()])
    return pa.string()  # anything else travels as JSON text


def _convert(value, kind: pa.DataType):
    """A Python value ready for pa.array(type=kind); raises when it does not fit."""
    if value is None:
        return None
    if kind == TIMESTAMP:
        return _time(value)
    if pa.types.is_struct(kind):
        if not isinstance(value, dict):
            raise TypeError("not an object")
        return {f.name: _convert(value.get(f.name), f.type) for f in kind}
    if pa.types.is_list(kind):
        if not isinstance(value, list):
            raise TypeError("not an array")
        return [_convert(v, kind.value_type) for v in value]
    if kind == pa.string():
        return value if isinstance(value, str) else json.dumps(value)
    if kind == pa.int64() and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError("not an integer")
    if kind == pa.float64() and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise TypeError("not a number")
    if kind == pa.bool_() and not isinstance(value, bool):
        raise TypeError("not a boolean")
    return value


@dataclass
class SchemaLayout:
    name: str
    properties: list[tuple[str, pa.DataType]]
    dim: int | None

    @property
    def arrow_schema(self) -> pa.Schema:
        fields = SYSTEM_FIELDS + self.properties
        if self.dim:
            fields = fields + [("embedding", pa.list_(pa.float32(), self.dim))]
        return pa.schema(fields)


def schema_layouts(db: RemDB) -> dict[str, SchemaLayout]:
    layouts = {}
    for _, value in db.items("entities", entity_prefix(SCHEMA_TENANT)):
        entity = orjson.loads(value)
        if entity.get("entity_type") != SCHEMA_ENTITY_TYPE or entity.get("deleted_at") is not None:
            continue
        props = entity["properties"]
        json_schema = props.get("schema") or {}
        dim = (json_schema.get("json_schema_extra") or {}).get("embedding_dim")
        columns = [(name, arrow_type(spec)) for name, spec in (json_schema.get("properties") or {}).items()
                   if name != "embedding"]
        layouts[props["short_name"]] = SchemaLayout(props["short_name"], columns, dim)
    return layouts


@dataclass
class ExportStats:
    schema: str
    rows: int = 0
    nulled_values: int = 0  # values that did not fit their column's type
    path: str = ""
    columns: list[str] = field(default_factory=list)


def record_batches(db: RemDB, layout: SchemaLayout, tenant: str | None, include_deleted: bool,
                   stats: ExportStats, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """The schema's entities (of one tenant, or all) as record batches of the layout's schema."""
    schema = layout.arrow_schema
    rows: list[dict] = []

    def flush() -> pa.RecordBatch:
        columns = []
        for f in schema:
            values = [r.get(f.name) for r in rows]
            try:
                columns.append(pa.array(values, type=f.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
                fixed = []
                for v in values:
                    try:
                        pa.array([v], type=f.type)
                        fixed.append(v)
                    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
                        fixed.append(None)
                        stats.nulled_values += 1
                columns.append(pa.array(fixed, type=f.type))
        return pa.RecordBatch.from_arrays(columns, schema=schema)

    prefix = entity_prefix(tenant) if tenant else b"entity:"
    for key, value in db.items("entities", prefix):
        entity = orjson.loads(value)
        if entity.get("entity_type") != layout.name or (entity.get("deleted_at") is not None and not include_deleted):
            continue
        t, uuid = parse_entity_key(key)
        props = entity.get("properties") or {}
        declared = {name for name, _ in layout.properties} | {"embedding"}
        extra = {k: v for k, v in props.items() if k not in declared}
        row = {"tenant_id": t, "id": uuid, "entity_type": layout.name, "created_at": _time(entity.get("created_at")),
               "modified_at": _time(entity.get("modified_at")), "deleted_at": _time(entity.get("deleted_at")),
               "edges": json.dumps(entity.get("edges") or []), "extra_properties": json.dumps(extra) if extra else None}
        for name, kind in layout.properties:
            try:
                row[name] = _convert(props.get(name), kind)
            except (TypeError, ValueError):
                row[name] = None
                stats.nulled_values += 1
        if layout.dim:
            inline = props.get("embedding")
            if isinstance(inline, list):
                vector = inline
            else:
                raw = db.get("embeddings", embedding_key(t, uuid)) if db.has_cf("embeddings") else None
                vector = list(memoryview(raw).cast("f")) if raw and len(raw) == layout.dim * 4 else None
            row["embedding"] = vector if vector is not None and len(vector) == layout.dim else None
        rows.append(row)
        stats.rows += 1
        if len(rows) >= batch_rows:
            yield flush()
            rows = []
    if rows:
        yield flush()


def export_schema(db: RemDB, layout: SchemaLayout, tenant: str | None, target: Path,
                  include_deleted: bool = False) -> ExportStats:
    """Write one schema's entities to a Parquet file (written beside, then renamed into place)."""
    stats = ExportStats(layout.name, path=str(target), columns=layout.arrow_schema.names)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with pq.ParquetWriter(partial, layout.arrow_schema, compression="zstd") as writer:
        for batch in record_batches(db, layout, tenant, include_deleted, stats):
            writer.write_batch(batch)
    partial.replace(target)
    return stats
