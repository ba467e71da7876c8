"""Tenant export to Parquet (pyarrow, record batches: memory stays flat).

Columns: tenant_id, id, entity_type, created_at, modified_at, deleted_at (timestamps, UTC), edges
(JSON text), extra_properties (JSON text of properties the schema does not declare, or null),
then each property with the Arrow type its JSON Schema implies (string, int64,
float64, bool, timestamp for format date-time, list for arrays of scalars, struct for objects with
declared properties, JSON text for anything else), and embedding: the engine's properties.embedding
as float32 (types/entity.rs get_embedding), list<float32>, or fixed_size_list<float32> where the
schema names a dimension (our sample's embedding_dim; then also from the embeddings CF). A value that
does not fit its type is written as null and counted.

A property named like a system column (the built-in sessions, messages and feedback schemas declare
tenant_id; sessions created_at) is exported as prop_{name}. The built-in schemas (schema/builtin.rs)
are never stored: their layouts come from rem.engine.SYSTEM_SCHEMA_PROPERTIES.
"""

from __future__ import annotations

from collections.abc import Callable

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from rem.db import RemDB, open_db
from rem.engine import SYSTEM_SCHEMA_PROPERTIES
from rem.errors import UsageError
from rem.format import embedding_key, entity_prefix, parse_entity_key
from rem.tenant import schema_rows

BATCH_ROWS = 10_000  # rows per Parquet row group
# Rows held as Python objects before they become an Arrow batch: a decoded entity with its vector
# takes about 4 KB as Python objects and a tenth of that in Arrow (10,000 held cost 350 MB).
CONVERT_ROWS = 1_000
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


SYSTEM_COLUMNS = {name for name, _ in SYSTEM_FIELDS}


def column_name(prop: str) -> str:
    """The column of a property: its own name, or prop_{name} where that is a system column's."""
    return f"prop_{prop}" if prop in SYSTEM_COLUMNS or prop.startswith("prop_") else prop


@dataclass
class SchemaLayout:
    name: str
    properties: list[tuple[str, pa.DataType]]  # (property name, type); the column is column_name(property)
    dim: int | None
    embedding: bool = True  # an embedding column (fixed size when dim, else list<float32>)

    @property
    def declared(self) -> set[str]:
        return {name for name, _ in self.properties} | ({"embedding"} if self.embedding else set())

    @property
    def arrow_schema(self) -> pa.Schema:
        fields = SYSTEM_FIELDS + [(column_name(name), kind) for name, kind in self.properties]
        if self.embedding:
            fields = fields + [("embedding", pa.list_(pa.float32(), self.dim) if self.dim else pa.list_(pa.float32()))]
        return pa.schema(fields)


def _layout(name: str, json_schema: dict) -> SchemaLayout:
    extra = json_schema.get("json_schema_extra") or {}
    declared = json_schema.get("properties") or {}
    columns = [(prop, arrow_type(spec)) for prop, spec in declared.items() if prop != "embedding"]
    has_vectors = bool(extra.get("embedding_dim") or extra.get("embedding_fields") or "embedding" in declared)
    return SchemaLayout(name, columns, extra.get("embedding_dim"), has_vectors)


def schema_layouts(db: RemDB) -> dict[str, SchemaLayout]:
    """The Parquet layout of every live schema, by short name: the built-in ones, then the stored ones."""
    layouts = {name: _layout(name, {"properties": props}) for name, props in SYSTEM_SCHEMA_PROPERTIES.items()}
    for _, value in schema_rows(db):
        entity = orjson.loads(value)
        if entity.get("deleted_at") is not None:
            continue
        props = entity["properties"]
        layouts[props["short_name"]] = _layout(props["short_name"], props.get("schema") or {})
    return layouts


@dataclass
class ExportStats:
    schema: str
    rows: int = 0
    nulled_values: int = 0  # values that did not fit their column's type
    path: str = ""
    columns: list[str] = field(default_factory=list)


def _row(db: RemDB, layout: SchemaLayout, tenant: str, uuid: str, entity: dict, stats: ExportStats) -> dict:
    props = entity.get("properties") or {}
    declared = layout.declared
    extra = {k: v for k, v in props.items() if k not in declared}
    row = {"tenant_id": tenant, "id": uuid, "entity_type": layout.name, "created_at": _time(entity.get("created_at")),
           "modified_at": _time(entity.get("modified_at")), "deleted_at": _time(entity.get("deleted_at")),
           "edges": json.dumps(entity.get("edges") or []), "extra_properties": json.dumps(extra) if extra else None}
    for name, kind in layout.properties:
        try:
            row[column_name(name)] = _convert(props.get(name), kind)
        except (TypeError, ValueError):
            row[column_name(name)] = None
            stats.nulled_values += 1
    if layout.embedding:
        inline = props.get("embedding")
        if isinstance(inline, list):
            try:
                raw = np.asarray(inline, dtype="<f4").tobytes()
            except (TypeError, ValueError):
                raw = None
                stats.nulled_values += 1
        else:
            raw = db.get("embeddings", embedding_key(tenant, uuid)) if layout.dim and db.has_cf("embeddings") else None
        row["embedding"] = raw if raw is not None and (not layout.dim or len(raw) == layout.dim * 4) else None
    return row


def _vectors(raws: list[bytes | None], dim: int | None) -> pa.Array:
    """fixed_size_list<float32> (or list<float32> without a dim) straight from little-endian bytes."""
    mask = pa.array([r is None for r in raws])
    if not dim:
        offsets = np.cumsum([0] + [len(r) // 4 if r is not None else 0 for r in raws]).astype("int32")
        values = pa.array(np.frombuffer(b"".join(r for r in raws if r is not None), dtype="<f4"))
        return pa.ListArray.from_arrays(pa.array(offsets), values, mask=mask)
    blank = bytes(dim * 4)
    values = pa.array(np.frombuffer(b"".join(r if r is not None else blank for r in raws), dtype="<f4"))
    return pa.FixedSizeListArray.from_arrays(values, dim, mask=mask)


def _batch(layout: SchemaLayout, rows: list[dict], stats: ExportStats) -> pa.RecordBatch:
    schema = layout.arrow_schema
    columns = []
    for f in schema:
        values = [r.get(f.name) for r in rows]
        if f.name == "embedding" and layout.embedding:
            columns.append(_vectors(values, layout.dim))
            continue
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


def export_tenant(db: RemDB, layouts: dict[str, SchemaLayout], tenant: str | None, targets: dict[str, Path],
                  include_deleted: bool = False, batch_rows: int = BATCH_ROWS,
                  progress: Callable[[int], None] | None = None) -> dict[str, ExportStats]:
    """Write each schema in targets to its Parquet file in one scan of the entities (of one tenant, or
    all), each file written beside and renamed into place when complete. progress: entities scanned."""
    stats = {name: ExportStats(name, path=str(path), columns=layouts[name].arrow_schema.names)
             for name, path in targets.items()}
    partials = {name: path.with_name(path.name + ".partial") for name, path in targets.items()}
    writers = {}
    try:
        for name, partial in partials.items():
            partial.parent.mkdir(parents=True, exist_ok=True)
            writers[name] = pq.ParquetWriter(partial, layouts[name].arrow_schema, compression="zstd")
        pending: dict[str, list[dict]] = {name: [] for name in targets}
        converted: dict[str, list[pa.RecordBatch]] = {name: [] for name in targets}

        def convert(name: str, last: bool = False) -> None:
            if pending[name]:
                converted[name].append(_batch(layouts[name], pending[name], stats[name]))
                pending[name] = []
            if converted[name] and (last or sum(len(b) for b in converted[name]) >= batch_rows):
                writers[name].write_table(pa.Table.from_batches(converted[name]), row_group_size=batch_rows)
                converted[name] = []
                pa.default_memory_pool().release_unused()

        for scanned, (key, value) in enumerate(db.items("entities", entity_prefix(tenant) if tenant else b"entity:")):
            if progress and scanned % 4096 == 4095:
                progress(4096)
            entity = orjson.loads(value)
            name = entity.get("entity_type")
            if name not in pending or (entity.get("deleted_at") is not None and not include_deleted):
                continue
            t, uuid = parse_entity_key(key)
            pending[name].append(_row(db, layouts[name], t, uuid, entity, stats[name]))
            stats[name].rows += 1
            if len(pending[name]) >= min(CONVERT_ROWS, batch_rows):
                convert(name)
        for name in pending:
            convert(name, last=True)
        for name, writer in writers.items():
            writer.close()
            partials[name].replace(targets[name])
    except BaseException:
        for name, writer in writers.items():
            writer.close()
            partials[name].unlink(missing_ok=True)
        raise
    return stats


def export_schema(db: RemDB, layout: SchemaLayout, tenant: str | None, target: Path,
                  include_deleted: bool = False) -> ExportStats:
    """One schema's entities to one Parquet file."""
    return export_tenant(db, {layout.name: layout}, tenant, {layout.name: target}, include_deleted)[layout.name]


def chosen_schemas(db_path: str, wanted: list[str] | None) -> list[str]:
    with open_db(db_path, "ro") as db:
        known = sorted(schema_layouts(db))
    if not wanted:
        return known
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise UsageError(f"unknown schema(s) {', '.join(unknown)}; this database has: {', '.join(known)}")
    return wanted
