"""Integrity verification, read-only (it runs against a live database).

Every finding is an Issue with a severity, a category, where it is and a suggested fix.
critical: the engine or a restore would misbehave (undecodable rows, a WAL gap, a keyed entity
without its key row, an edge without its twin); error: data that breaks its own contract (schema
violations, edges to missing entities, bad vectors); warning: leftovers that waste space (orphan
index or embedding rows), which `rem db vacuum` removes.
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
from rem.errors import DecodeError
from rem.format import (SCHEMA_ENTITY_TYPE, SchemaInfo, decode_edge, decode_wal_entry, parse_edge_key,
                        parse_edge_reverse_key, parse_embedding_key, parse_entity_key, parse_index_key,
                        parse_key_index_key, parse_wal_key, schema_info)
from rem.tenant import schema_rows
from rem.writer import index_rows

ALL_CHECKS = ("schemas", "embeddings", "edges", "indexes", "wal")
MAX_ISSUES_PER_CATEGORY = 1000


@dataclass
class Issue:
    severity: str  # critical | error | warning
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
    elif not all(math.isfinite(x) for x in values):
        report.add("error", "embedding", cf, key, uuid, "NaN or infinite values", "re-embed the entity")


def verify_database(db: RemDB, checks: tuple[str, ...] = ALL_CHECKS) -> VerifyReport:
    """Check every value decodes, and the relations the checks name."""
    started = time.perf_counter()
    report = VerifyReport()
    schemas = _load_schemas(db, report)
    entities: dict[str, tuple[str, str | None]] = {}  # uuid -> (tenant, entity_type); None: unreadable
    expected_key_rows: set[bytes] = set()
    expected_index_rows: set[bytes] = set()

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
        if problem:
            # Its other rows are not reported as orphans: this unreadable value is the one problem.
            entities[uuid] = (tenant, None)
            report.add("critical", "decode", "entities", key, uuid, problem, "restore this entity from a backup")
            continue
        entities[uuid] = (tenant, entity["entity_type"])
        if entity["entity_type"] == SCHEMA_ENTITY_TYPE:
            continue
        schema = schemas.get(entity["entity_type"])
        props = entity["properties"]
        if schema is None:
            if "schemas" in checks:
                report.add("error", "schema", "entities", key, uuid, f"no schema named {entity['entity_type']!r}",
                           "register the schema or correct entity_type")
            continue
        if "schemas" in checks and schema.validate is not None:
            try:
                schema.validate(props)
            except fastjsonschema.JsonSchemaValueException as exc:
                report.add("error", "schema", "entities", key, uuid, exc.message, "correct the entity's properties")
        if "embeddings" in checks and isinstance(props.get("embedding"), list):
            _check_vector(report, "entities", key, uuid, props["embedding"], schema.info.embedding_dim)
        if "indexes" in checks:
            for cf, row_key, _ in index_rows(schema.info, tenant, entity):
                (expected_key_rows if cf == "key_index" else expected_index_rows).add(row_key)

    if "embeddings" in checks and db.has_cf("embeddings"):
        for key, value in db.items("embeddings"):
            report.checked["embeddings"] += 1
            try:
                tenant, uuid = parse_embedding_key(key)
            except DecodeError as exc:
                report.add("critical", "decode", "embeddings", key, None, exc.reason, "delete the row")
                continue
            owner = entities.get(uuid)
            if owner is None or owner[0] != tenant:
                report.add("warning", "orphan", "embeddings", key, uuid, "no such entity", "`rem db vacuum`")
                continue
            if owner[1] is None:
                continue
            if len(value) % 4:
                report.add("critical", "decode", "embeddings", key, uuid, f"{len(value)} bytes is not float32s",
                           "re-embed the entity")
                continue
            schema = schemas.get(owner[1])
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
                if end not in entities:
                    report.add("error", "edge", "edges", key, src, f"{role} entity {end} does not exist",
                               "`rem db vacuum` removes edges of missing entities")
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
        for cf, expected, parse in (("key_index", expected_key_rows, parse_key_index_key),
                                    ("indexes", expected_index_rows, parse_index_key)):
            if not db.has_cf(cf):
                continue
            for key in db.keys(cf):
                report.checked[cf] += 1
                try:
                    parsed = parse(key)
                except DecodeError as exc:
                    report.add("critical", "decode", cf, key, None, exc.reason, "`rem index rebuild`")
                    continue
                if key in expected:
                    expected.discard(key)
                elif parsed.uuid in entities and entities[parsed.uuid][1] is None:
                    continue  # belongs to an unreadable entity, already reported
                elif parsed.uuid not in entities:
                    report.add("warning", "orphan", cf, key, parsed.uuid, "points at no entity", "`rem db vacuum`")
                else:
                    report.add("warning", "stale-index", cf, key, parsed.uuid, "no longer matches the entity",
                               "`rem index rebuild`")
            for key in expected:
                uuid = key.decode().rsplit(":", 1)[-1]
                severity = "critical" if cf == "key_index" else "error"
                report.add(severity, "missing-index", cf, key, uuid, "the entity has no row here",
                           "`rem index rebuild --type " + ("keys" if cf == "key_index" else "fields") + "`")

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
