"""Integrity verification, read-only (it runs against a live database).

Every finding is an Issue with a severity, a category, where it is and a suggested fix.
critical: damage the engine's write paths cannot produce (undecodable rows, an entity stored under
a key that disagrees with its id, an edge row without its twin, a value that breaks its schema, a
vector row that is not finite float32s, a gap in the logical WAL); error: rows that contradict each
other (edge twins that differ); warning: rows the engine never writes and nothing points at (orphan
`indexes`/`embeddings` rows), which `rem db vacuum` removes; info: states the engine's own writes
leave (see rem/engine.py), each with its cause, never a reason to fail.
"""

from __future__ import annotations

import math
import struct
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime

import fastjsonschema
import orjson

from rem.db import RemDB
from rem.engine import SYSTEM_KEY_FIELDS, current_key_row
from rem.errors import DecodeError
from rem.format import (SCHEMA_ENTITY_TYPE, SchemaInfo, decode_edge, decode_wal_entry, parse_edge_key,
                        parse_edge_reverse_key, parse_embedding_key, parse_entity_key, parse_index_key,
                        parse_key_index_key, parse_wal_key, schema_info)
from rem.tenant import schema_rows

ALL_CHECKS = ("schemas", "embeddings", "edges", "indexes", "wal")
MAX_ISSUES_PER_CATEGORY = 1000


@dataclass
class Issue:
    severity: str  # critical | error | warning | info
    category: str
    cf: str
    key: str
    entity_id: str | None
    message: str
    fix: str


@dataclass
class VerifyReport:
    issues: list[Issue] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # issues per category (including those not listed)
    checked: Counter = field(default_factory=Counter)  # rows checked per column family
    seconds: float = 0.0

    @property
    def critical(self) -> int:
        return sum(1 for i in self.issues if i.severity == "critical")

    def add(self, severity, category, cf, key, entity_id, message, fix) -> None:
        self.counts[(severity, category)] += 1
        if self.counts[(severity, category)] <= MAX_ISSUES_PER_CATEGORY:
            shown = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
            self.issues.append(Issue(severity, category, cf, shown, entity_id, message, fix))

    def to_dict(self) -> dict:
        return {"ok": self.critical == 0, "critical": self.critical,
                "by_severity": dict(Counter(sev for (sev, _), n in self.counts.items() for _ in range(n))),
                "by_category": {f"{sev}:{cat}": n for (sev, cat), n in sorted(self.counts.items())},
                "checked": dict(self.checked), "seconds": round(self.seconds, 3),
                "entities_per_second": round(self.checked["entities"] / self.seconds) if self.seconds else None,
                "issues": [asdict(i) for i in self.issues]}


_ENTITY_FIELDS = {"id": str, "entity_type": str, "created_at": str, "modified_at": str, "edges": list, "properties": dict}


def _entity_problem(entity, uuid: str) -> str | None:
    """Why an entity value is not a valid entity (a fast structural check), or None."""
    if not isinstance(entity, dict):
        return "value is not a JSON object"
    for name, kind in _ENTITY_FIELDS.items():
        if not isinstance(entity.get(name), kind):
            return f"field {name!r} missing or not {kind.__name__}"
    if entity["id"] != uuid:
        return f"id {entity['id']!r} differs from the key"
    for name in ("created_at", "modified_at", "deleted_at"):
        value = entity.get(name)
        if value is not None:
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except (ValueError, AttributeError):
                return f"{name} {value!r} is not RFC 3339"
    for edge in entity["edges"]:
        if not isinstance(edge, dict) or not isinstance(edge.get("dst"), str) or not isinstance(edge.get("rel_type"), str):
            return "an inline edge lacks dst or rel_type"
    return None


@dataclass
class _Schema:
    validate: object
    info: SchemaInfo


def _load_schemas(db: RemDB, report: VerifyReport) -> dict[str, _Schema]:
    schemas = {}
    for key, value in schema_rows(db):
        entity = orjson.loads(value)
        if entity.get("deleted_at") is not None:
            continue
        props = entity.get("properties", {})
        json_schema = props.get("schema") or {}
        body = {k: v for k, v in json_schema.items() if k != "json_schema_extra"}
        try:
            validate = fastjsonschema.compile(body)
        except fastjsonschema.JsonSchemaDefinitionException as exc:
            report.add("error", "schema", "entities", key, entity.get("id"), f"schema {props.get('short_name')!r} "
                       f"does not compile: {exc}", "fix the schema entity's JSON Schema")
            validate = None
        schemas[props.get("short_name")] = _Schema(validate, schema_info(entity))
    return schemas


def _check_vector(report, cf, key, uuid, values, dim) -> None:
    if dim and len(values) != dim:
        report.add("error", "embedding", cf, key, uuid, f"{len(values)} dimensions, schema says {dim}",
                   "re-embed the entity (`rem index rebuild --type hnsw` after)")
    elif not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in values):
        report.add("critical", "embedding", cf, key, uuid, "not all finite numbers", "re-embed the entity")


def verify_database(db: RemDB, checks: tuple[str, ...] = ALL_CHECKS) -> VerifyReport:
    """Check every value decodes, and the relations the checks name."""
    started = time.perf_counter()
    report = VerifyReport()
    schemas = _load_schemas(db, report)
    stored = {name: s.info for name, s in schemas.items()}
    # (tenant, uuid) -> entity_type (None: unreadable). Ids carry no tenant: one natural key in two
    # tenants is one id (types/uuid_gen.rs), so an id alone names no entity.
    entities: dict[tuple[str, str], str | None] = {}
    ids: set[str] = set()
    current_key_rows: dict[bytes, tuple[str, str]] = {}  # the key row each entity's current key implies

    for key, value in db.items("entities"):
        report.checked["entities"] += 1
        try:
            tenant, uuid = parse_entity_key(key)
            entity = orjson.loads(value)
        except DecodeError as exc:
            report.add("critical", "decode", "entities", key, None, exc.reason, "hard-delete this row")
            continue
        except orjson.JSONDecodeError:
            entity = None
        problem = _entity_problem(entity, uuid)
        ids.add(uuid)
        if problem:
            # Its other rows are not reported as orphans: this unreadable value is the one problem.
            entities[(tenant, uuid)] = None
            report.add("critical", "decode", "entities", key, uuid, problem, "restore this entity from a backup")
            continue
        entities[(tenant, uuid)] = entity["entity_type"]
        if entity["entity_type"] != SCHEMA_ENTITY_TYPE and (row := current_key_row(tenant, entity, stored)):
            current_key_rows[row] = (tenant, uuid)
        if entity["entity_type"] == SCHEMA_ENTITY_TYPE:
            continue
        schema = schemas.get(entity["entity_type"])
        props = entity["properties"]
        if "embeddings" in checks and isinstance(props.get("embedding"), list):
            _check_vector(report, "entities", key, uuid, props["embedding"], schema.info.embedding_dim if schema else None)
        if schema is None:
            if "schemas" in checks and entity["entity_type"] not in SYSTEM_KEY_FIELDS:
                report.add("info", "schema", "entities", key, uuid, f"no stored schema named {entity['entity_type']!r}"
                           " (the engine keeps schemas of category system in memory only)",
                           "nothing to do unless the schema was lost: then register it again")
            continue
        if "schemas" in checks and schema.validate is not None:
            try:
                schema.validate(props)
            except fastjsonschema.JsonSchemaValueException as exc:
                report.add("critical", "schema", "entities", key, uuid, exc.message, "correct the entity's properties")

    if "embeddings" in checks and db.has_cf("embeddings"):
        for key, value in db.items("embeddings"):
            report.checked["embeddings"] += 1
            try:
                tenant, uuid = parse_embedding_key(key)
            except DecodeError as exc:
                report.add("critical", "decode", "embeddings", key, None, exc.reason, "delete the row")
                continue
            if (tenant, uuid) not in entities:
                report.add("warning", "orphan", "embeddings", key, uuid, "no such entity", "`rem db vacuum`")
                continue
            owner_type = entities[(tenant, uuid)]
            if owner_type is None:
                continue
            if len(value) % 4:
                report.add("critical", "decode", "embeddings", key, uuid, f"{len(value)} bytes is not float32s",
                           "re-embed the entity")
                continue
            schema = schemas.get(owner_type)
            _check_vector(report, "embeddings", key, uuid, struct.unpack(f"<{len(value) // 4}f", value),
                          schema.info.embedding_dim if schema else None)

    if "edges" in checks and db.has_cf("edges"):
        forward: dict[bytes, bytes] = {}
        for key, value in db.items("edges"):
            report.checked["edges"] += 1
            try:
                src, dst, rel = parse_edge_key(key)
                decode_edge(key, value)
            except DecodeError as exc:
                report.add("critical", "decode", "edges", key, None, exc.reason, "delete the edge and re-add it")
                continue
            forward[f"{src}:{dst}:{rel}".encode()] = value
            for end, role in ((src, "source"), (dst, "target")):
                if end not in ids:
                    report.add("info", "edge", "edges", key, src, f"{role} entity {end} does not exist (the "
                               "engine's hard_delete leaves edge rows behind)", "`rem db vacuum` removes them")
        for key, value in db.items("edges_reverse"):
            report.checked["edges_reverse"] += 1
            try:
                src, dst, rel = parse_edge_reverse_key(key)
            except DecodeError as exc:
                report.add("critical", "decode", "edges_reverse", key, None, exc.reason, "delete the row")
                continue
            twin = forward.pop(f"{src}:{dst}:{rel}".encode(), None)
            if twin is None:
                report.add("critical", "edge", "edges_reverse", key, src, "reverse edge without its forward twin",
                           "re-add the edge (writes both) or delete this row")
            elif twin != value:
                report.add("error", "edge", "edges_reverse", key, src, "differs from its forward twin",
                           "re-add the edge")
        for pair in forward:
            src = pair.split(b":")[0].decode()
            report.add("critical", "edge", "edges", b"src:" + pair, src, "forward edge without its reverse twin",
                       "re-add the edge (writes both) or delete this row")

    if "indexes" in checks:
        _check_key_rows(db, report, entities, current_key_rows)
        if db.has_cf("indexes"):  # the engine never writes it; rows of ours must point at an entity
            for key, parsed in _parsed_keys(db, report, "indexes", parse_index_key, "`rem index rebuild --type fields`"):
                if (parsed.tenant, parsed.uuid) not in entities:
                    report.add("warning", "orphan", "indexes", key, parsed.uuid, "points at no entity", "`rem db vacuum`")

    if "wal" in checks and db.has_cf("wal"):
        previous = None
        for key, value in db.items("wal"):
            report.checked["wal"] += 1
            try:
                seq = parse_wal_key(key)
                decode_wal_entry(key, value)
            except DecodeError as exc:
                report.add("critical", "decode", "wal", key, None, exc.reason, "restore from a backup")
                continue
            if previous is not None and seq != previous + 1:
                report.add("critical", "wal-gap", "wal", key, None, f"sequences {previous + 1}-{seq - 1} missing",
                           "take a full backup now: point-in-time recovery cannot cross this gap")
            previous = seq
    report.seconds = time.perf_counter() - started
    return report


def _parsed_keys(db: RemDB, report: VerifyReport, cf: str, parse, fix: str):
    """Every key of cf with its parsed form, counted; one that does not parse is a critical finding."""
    for key in db.keys(cf):
        report.checked[cf] += 1
        try:
            yield key, parse(key)
        except DecodeError as exc:
            report.add("critical", "decode", cf, key, None, exc.reason, fix)


def _check_key_rows(db: RemDB, report: VerifyReport, entities: dict, current_key_rows: dict[bytes, tuple]) -> None:
    """Key rows against the entities, as the engine writes them: every state its own writes leave is info."""
    if not db.has_cf("key_index"):
        return
    with_rows: set[tuple[str, str]] = set()
    for key, parsed in _parsed_keys(db, report, "key_index", parse_key_index_key, "`rem index rebuild --type keys`"):
        owner = (parsed.tenant, parsed.uuid)
        with_rows.add(owner)
        if key in current_key_rows or entities.get(owner, "") is None:
            continue  # the row of the current key, or one of an unreadable entity (reported already)
        if owner not in entities:
            report.add("info", "key-row", "key_index", key, parsed.uuid, "points at no entity (the engine's "
                       "hard_delete removes only the row of the current key)", "`rem db vacuum` removes it")
        else:
            report.add("info", "key-row", "key_index", key, parsed.uuid, "an old key of the entity (the engine's "
                       "update never touches key rows)", "nothing to do: lookups by the old key still find it")
    for row, owner in current_key_rows.items():
        if owner not in with_rows:
            report.add("info", "key-row", "key_index", row, owner[1], "no key row (the engine writes one on "
                       "insert only: the key was added by an update, or the row was lost)",
                       "`rem index rebuild --type keys` writes it if lookups by this key are needed")
