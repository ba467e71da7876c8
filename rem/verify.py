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
import multiprocessing
import multiprocessing.util
import os
import struct
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import fastjsonschema
import msgspec
import numpy as np
import orjson

from rem.db import RemDB, open_db
from rem.engine import SYSTEM_KEY_FIELDS, current_key_row
from rem.errors import DecodeError
from rem.fast_schema import typed_decoder
from rem.format import (SCHEMA_ENTITY_TYPE, SchemaInfo, decode_edge, decode_wal_entry, edge_key, edge_reverse_key,
                        entity_key, parse_edge_key, parse_edge_reverse_key, parse_embedding_key, parse_entity_key,
                        parse_index_key, parse_key_index_key, parse_wal_key, schema_info)
from rem.stats import estimate_keys
from rem.tenant import schema_rows

ALL_CHECKS = ("schemas", "embeddings", "edges", "indexes", "wal")
SMALL_ENTITIES = 50_000  # below this, verify runs in one process
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

    def merge(self, other: "VerifyReport") -> None:
        """Add another pass's findings, keeping at most MAX_ISSUES_PER_CATEGORY listed per category."""
        listed = Counter((i.severity, i.category) for i in self.issues)
        for issue in other.issues:
            if listed[(issue.severity, issue.category)] < MAX_ISSUES_PER_CATEGORY:
                listed[(issue.severity, issue.category)] += 1
                self.issues.append(issue)
        self.counts.update(other.counts)
        self.checked.update(other.checked)

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
    body: dict


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
        schemas[props.get("short_name")] = _Schema(validate, schema_info(entity), body)
    return schemas


def _check_vector(report, cf, key, uuid, values, dim) -> None:
    if dim and len(values) != dim:
        report.add("error", "embedding", cf, key, uuid, f"{len(values)} dimensions, schema says {dim}",
                   "re-embed the entity (`rem index rebuild --type hnsw` after)")
    elif not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in values):
        report.add("critical", "embedding", cf, key, uuid, "not all finite numbers", "re-embed the entity")


@dataclass
class _EntityScan:
    """What one pass over a range of `entities` found, and the hashes the other checks look ids up in:
    8 bytes per entity in each array, where a dict of every id cost about 800 bytes per entity."""

    report: VerifyReport
    ids: np.ndarray  # hash(uuid) of every entity (edges name entities by id alone)
    owners: np.ndarray  # hash(entities key) of every entity: b"entity:{tenant}:{uuid}"
    current_rows: np.ndarray  # hash(key row) of the row each entity's current key implies
    unreadable: set  # (tenant, uuid) of entities whose value is not an entity (reported already)
    keyed: np.ndarray  # hash(entities key) of every entity whose current key implies a key row


def _scan_entities(db: RemDB, checks: tuple[str, ...], lo: bytes | None, hi: bytes | None) -> _EntityScan:
    report = VerifyReport()
    schemas = _load_schemas(db, VerifyReport())  # compile errors are the caller's to report
    stored = {name: s.info for name, s in schemas.items()}
    decoder, typed = typed_decoder({name: (s.body, s.info.key_field) for name, s in schemas.items()
                                    if s.validate is not None})
    ids, owners, current = array("q"), array("q"), array("q")
    unreadable: set = set()
    keyed_owners = array("q")

    def keyed(key: bytes, row: bytes | None) -> None:
        if row is not None:
            current.append(hash(row))
            keyed_owners.append(hash(key))

    for key, value in db.items("entities", start=lo, end=hi):
        report.checked["entities"] += 1
        if report.checked["entities"] % _TICK == 0:
            _tick()
        try:
            head, tenant, uuid = key.decode().split(":")  # parse_entity_key's rule, without its cost
            if head != "entity":
                raise ValueError
        except ValueError:
            tenant = uuid = None
        try:
            if uuid is None:
                tenant, uuid = parse_entity_key(key)  # raises, saying what is wrong
        except DecodeError as exc:
            report.add("critical", "decode", "entities", key, None, exc.reason, "hard-delete this row")
            continue
        ids.append(hash(uuid))
        owners.append(hash(key))
        if decoder is not None:  # the fast path: schema and vector checked while decoding
            try:
                entity = decoder.decode(value)
            except (msgspec.ValidationError, msgspec.DecodeError):
                entity = None
            if entity is not None and entity.id == uuid and _timestamps_hold(entity) and \
                    (schema := typed[type(entity)]).formats_hold(entity.properties):
                value_of_key = schema.key_value(entity.properties)
                keyed(key, None if value_of_key is None else f"key:{tenant}:{value_of_key}:{uuid}".encode())
                vector = schema.embedding(entity.properties)
                if "embeddings" in checks and isinstance(vector, list):
                    dim = stored[schema.name].embedding_dim
                    if not schema.vector_checked or (dim and len(vector) != dim):
                        _check_vector(report, "entities", key, uuid, vector, dim)
                continue
        try:
            entity = orjson.loads(value)
        except orjson.JSONDecodeError:
            entity = None
        problem = _entity_problem(entity, uuid)
        if problem:
            # Its other rows are not reported as orphans: this unreadable value is the one problem.
            unreadable.add((tenant, uuid))
            report.add("critical", "decode", "entities", key, uuid, problem, "restore this entity from a backup")
            continue
        if entity["entity_type"] == SCHEMA_ENTITY_TYPE:
            continue
        keyed(key, current_key_row(tenant, entity, stored))
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
    return _EntityScan(report, np.frombuffer(ids, dtype=np.int64), np.frombuffer(owners, dtype=np.int64),
                       np.frombuffer(current, dtype=np.int64), unreadable, np.frombuffer(keyed_owners, dtype=np.int64))


def _timestamps_hold(entity) -> bool:
    for value in (entity.created_at, entity.modified_at, entity.deleted_at):
        if value is not None:
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return False
    return True


def key_ranges(db: RemDB, cf: str, prefix: bytes, parts: int) -> list[tuple[bytes | None, bytes | None]]:
    """The key space of a column family (its keys start with prefix) cut into parts of about equal
    bytes: at the first keys of the SST files of the level that holds most of it (RocksDB's own
    metadata: nothing is read; level 0's files each span every key), or, when that level has too few
    files to cut (a small column family), at every n-th key of a scan of its keys."""
    if parts < 2 or not db.has_cf(cf):
        return [(None, None)]
    files = [f for f in db.rdict.live_files() if f["start_key"].startswith(prefix)]
    by_level: dict[int, int] = {}
    for f in files:
        by_level[f["level"]] = by_level.get(f["level"], 0) + f["size"]
    level = max(by_level, key=by_level.get, default=None)
    starts = sorted((f["start_key"], f["size"]) for f in files if f["level"] == level)
    if len(starts) < 2 * parts:
        sample = [key for i, key in enumerate(db.keys(cf)) if i % 1024 == 0]
        cuts = [sample[len(sample) * k // parts] for k in range(1, parts)] if len(sample) >= parts else []
    else:
        cuts, running = [], 0
        for start, size in starts:
            share = by_level[level] * (len(cuts) + 1) / parts
            if len(cuts) < parts - 1 and running and abs(running - share) <= abs(running + size - share):
                cuts.append(start)
            running += size
    bounds = [None, *sorted(set(cuts)), None]
    return list(zip(bounds[:-1], bounds[1:]))


_WORKER_DB: RemDB | None = None


def _open_in_worker(path: Path) -> None:
    """A worker opens the database once for all its jobs, and closes it (removing its view) on exit."""
    global _WORKER_DB
    _WORKER_DB = open_db(path, "ro")
    multiprocessing.util.Finalize(None, _WORKER_DB.close, exitpriority=10)


def _run_job(job: tuple):
    check, args = job
    return _WORKER_DB.rdict.latest_sequence_number(), check(_WORKER_DB, *args)


def _in_workers(db: RemDB, check, jobs: list[tuple], workers: int) -> list:
    """check(db, *job) for every job, in worker processes when there are several (decoding holds the
    GIL). Each worker opens the database itself: a live database written between the opens would
    give them different states, so then the jobs run again here, on this one handle. Workers are
    forked, so what this process found so far (_FOUND) is theirs without being sent."""
    if workers > 1 and len(jobs) > 1:
        pool = multiprocessing.get_context("fork").Pool(min(workers, len(jobs)), _open_in_worker, (db.path,))
        try:
            results = pool.map(_run_job, [(check, job) for job in jobs], chunksize=1)
        except BaseException:
            pool.terminate()
            raise
        else:
            pool.close()  # workers leave their loop and run their finalizers: each closes its handle
        finally:
            pool.join()
        if {sequence for sequence, _ in results} == {db.rdict.latest_sequence_number()}:
            return [result for _, result in results]
    return [check(db, *job) for job in jobs]


@dataclass
class _Found:
    """What the entity pass found, as the relation checks look things up in it."""

    ids: np.ndarray  # sorted
    owners: np.ndarray  # sorted
    current_rows: np.ndarray  # sorted
    unreadable: set


_FOUND: _Found | None = None
# Rows checked so far, shared with the forked workers: the caller's progress is read from it.
_CHECKED = multiprocessing.Value("q", 0)
_TICK = 4096


def _tick(rows: int = _TICK) -> None:
    with _CHECKED.get_lock():
        _CHECKED.value += rows


def rows_to_check(db: RemDB, checks: tuple[str, ...] = ALL_CHECKS) -> int:
    """About how many rows a verify reads (RocksDB's estimates): the total its progress counts toward."""
    cfs = ["entities"] + (["key_index"] if "indexes" in checks else []) + (
        ["edges", "edges_reverse"] if "edges" in checks else [])
    return sum(estimate_keys(db, cf) for cf in cfs if db.has_cf(cf))


@contextmanager
def _reporting(progress: Callable[[int], None] | None) -> Iterator[None]:
    """Pass the shared count of checked rows to progress while the checks run (a thread polls it)."""
    if progress is None:
        yield
        return
    _CHECKED.value = 0
    stop = threading.Event()

    def poll() -> None:
        passed = 0
        while not stop.wait(0.2):
            now = _CHECKED.value
            progress(now - passed)
            passed = now

    poller = threading.Thread(target=poll, name="rem-verify-progress", daemon=True)
    poller.start()
    try:
        yield
    finally:
        stop.set()
        poller.join()


def _sorted_from(parts: list[_EntityScan], name: str) -> np.ndarray:
    """One sorted array of the parts' hashes, each part's array let go as it is copied in: memory is
    the 8 bytes per entity of each of the four hash arrays, not twice or thrice that."""
    merged = np.concatenate([getattr(p, name) for p in parts])
    for part in parts:
        setattr(part, name, None)
    merged.sort()
    return merged


def _member(sorted_hashes: np.ndarray, values) -> np.ndarray:
    """Which values are in sorted_hashes (vectorised)."""
    values = np.asarray(values, dtype=np.int64)
    if not len(sorted_hashes):
        return np.zeros(len(values), dtype=bool)
    where = np.minimum(np.searchsorted(sorted_hashes, values), len(sorted_hashes) - 1)
    return sorted_hashes[where] == values


def verify_database(db: RemDB, checks: tuple[str, ...] = ALL_CHECKS, workers: int | None = None,
                    progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Check every value decodes, and the relations the checks name: the entities first, split by
    key range over worker processes, then key rows and edges against what they found, likewise.
    progress is told of rows checked as they go (about rows_to_check in all)."""
    with _reporting(progress):
        return _verify(db, checks, workers)


def _verify(db: RemDB, checks: tuple[str, ...], workers: int | None) -> VerifyReport:
    global _FOUND
    started = time.perf_counter()
    if workers is None:  # forking and opening per worker costs more than a small database's scan
        workers = 1 if estimate_keys(db, "entities") < SMALL_ENTITIES else min(os.cpu_count() or 1, 4)
    report = VerifyReport()
    schemas = _load_schemas(db, report)
    parts = _in_workers(db, _scan_entities, [(checks, lo, hi) for lo, hi in key_ranges(db, "entities", b"entity:", workers)],
                        workers)
    for part in parts:
        report.merge(part.report)
    _FOUND = _Found(*(_sorted_from(parts, name) for name in ("ids", "owners", "current_rows")),
                    set().union(*(p.unreadable for p in parts)))
    keyed_owners = _sorted_from(parts, "keyed")
    del parts
    try:
        jobs = []  # the edges (one job) first, so the key row ranges fill the other workers around it
        if "edges" in checks and db.has_cf("edges"):
            jobs += [("edges", None, None)]
        if "indexes" in checks and db.has_cf("key_index"):
            jobs += [("key_index", lo, hi) for lo, hi in key_ranges(db, "key_index", b"key:", 2 * workers)]
        with_rows = []
        for found, rows in _in_workers(db, _check_relations, jobs, workers):
            report.merge(found)
            with_rows.append(rows)
        if "indexes" in checks and db.has_cf("key_index"):
            _report_unkeyed(db, report, schemas, keyed_owners[~_member(np.sort(np.concatenate(with_rows)),
                                                                       keyed_owners)])
        _check_rare(db, report, schemas, checks)
    finally:
        _FOUND = None
    report.seconds = time.perf_counter() - started
    return report


def _check_relations(db: RemDB, cf: str, lo: bytes | None, hi: bytes | None) -> tuple[VerifyReport, np.ndarray]:
    """One job of the relation checks: a range of key rows (with the owners of the rows it saw), or the edges."""
    report = VerifyReport()
    if cf == "key_index":
        return report, _check_key_rows(db, report, lo, hi)
    _check_edges(db, report)
    return report, np.zeros(0, dtype=np.int64)


def _check_rare(db: RemDB, report: VerifyReport, schemas: dict[str, _Schema], checks: tuple[str, ...]) -> None:
    """The column families the engine never writes (embeddings, indexes) and the logical WAL."""
    owners, unreadable = _FOUND.owners, _FOUND.unreadable
    if "embeddings" in checks and db.has_cf("embeddings"):
        for key, value in db.items("embeddings"):
            report.checked["embeddings"] += 1
            try:
                tenant, uuid = parse_embedding_key(key)
            except DecodeError as exc:
                report.add("critical", "decode", "embeddings", key, None, exc.reason, "delete the row")
                continue
            if not _member(owners, [hash(entity_key(tenant, uuid))])[0]:
                report.add("warning", "orphan", "embeddings", key, uuid, "no such entity", "`rem db vacuum`")
                continue
            if (tenant, uuid) in unreadable:
                continue
            if len(value) % 4:
                report.add("critical", "decode", "embeddings", key, uuid, f"{len(value)} bytes is not float32s",
                           "re-embed the entity")
                continue
            owner_type = orjson.loads(db.get("entities", entity_key(tenant, uuid)))["entity_type"]
            schema = schemas.get(owner_type)
            _check_vector(report, "embeddings", key, uuid, struct.unpack(f"<{len(value) // 4}f", value),
                          schema.info.embedding_dim if schema else None)
    if "indexes" in checks and db.has_cf("indexes"):  # the engine never writes it; rows of ours must point at an entity
        for key, parsed in _parsed_keys(db, report, "indexes", parse_index_key, "`rem index rebuild --type fields`"):
            if not _member(owners, [hash(entity_key(parsed.tenant, parsed.uuid))])[0]:
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


def _chunks(rows, size: int = 4096):
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _check_edges(db: RemDB, report: VerifyReport) -> None:
    """Each edge row against its twin (looked up, not held: memory stays flat) and both its ends."""
    ids = _FOUND.ids
    for chunk in _chunks(db.items("edges"), _TICK):
        _tick(len(chunk))
        parsed = []
        for key, value in chunk:
            report.checked["edges"] += 1
            try:
                src, dst, rel = parse_edge_key(key)
                decode_edge(key, value)
            except DecodeError as exc:
                report.add("critical", "decode", "edges", key, None, exc.reason, "delete the edge and re-add it")
                continue
            parsed.append((key, value, src, dst, rel))
        twins = db.get_many("edges_reverse", [edge_reverse_key(src, dst, rel) for _, _, src, dst, rel in parsed])
        ends = _member(ids, [hash(end) for _, _, src, dst, _ in parsed for end in (src, dst)])
        for i, ((key, value, src, dst, rel), twin) in enumerate(zip(parsed, twins)):
            if twin is None:
                report.add("critical", "edge", "edges", key, src, "forward edge without its reverse twin",
                           "re-add the edge (writes both) or delete this row")
            elif twin != value:
                report.add("error", "edge", "edges_reverse", edge_reverse_key(src, dst, rel), src,
                           "differs from its forward twin", "re-add the edge")
            for end, role, present in ((src, "source", ends[2 * i]), (dst, "target", ends[2 * i + 1])):
                if not present:
                    report.add("info", "edge", "edges", key, src, f"{role} entity {end} does not exist (the "
                               "engine's hard_delete leaves edge rows behind)", "`rem db vacuum` removes them")
    for chunk in _chunks(db.keys("edges_reverse"), _TICK):
        _tick(len(chunk))
        parsed = []
        for key in chunk:
            report.checked["edges_reverse"] += 1
            try:
                parsed.append((key, *parse_edge_reverse_key(key)))
            except DecodeError as exc:
                report.add("critical", "decode", "edges_reverse", key, None, exc.reason, "delete the row")
        twins = db.get_many("edges", [edge_key(src, dst, rel) for _, src, dst, rel in parsed])
        for (key, src, _, _), twin in zip(parsed, twins):
            if twin is None:
                report.add("critical", "edge", "edges_reverse", key, src, "reverse edge without its forward twin",
                           "re-add the edge (writes both) or delete this row")


def _parsed_keys(db: RemDB, report: VerifyReport, cf: str, parse, fix: str):
    """Every key of cf with its parsed form, counted; one that does not parse is a critical finding."""
    for key in db.keys(cf):
        report.checked[cf] += 1
        try:
            yield key, parse(key)
        except DecodeError as exc:
            report.add("critical", "decode", cf, key, None, exc.reason, fix)


def _check_key_rows(db: RemDB, report: VerifyReport, lo: bytes | None, hi: bytes | None) -> np.ndarray:
    """Key rows of one key range against the entities, as the engine writes them: every state its own
    writes leave is info. Returns the owner of every row seen."""
    owners, current_rows, unreadable = _FOUND.owners, _FOUND.current_rows, _FOUND.unreadable
    with_rows = array("q")
    for chunk in _chunks(db.items("key_index", start=lo, end=hi), _TICK):
        _tick(len(chunk))
        parsed_rows = []
        for key, _ in chunk:
            report.checked["key_index"] += 1
            try:
                parsed_rows.append((key, parse_key_index_key(key)))
            except DecodeError as exc:
                report.add("critical", "decode", "key_index", key, None, exc.reason, "`rem index rebuild --type keys`")
        owner_hashes = [hash(entity_key(parsed.tenant, parsed.uuid)) for _, parsed in parsed_rows]
        with_rows.extend(owner_hashes)
        is_current = _member(current_rows, [hash(key) for key, _ in parsed_rows])
        exists = _member(owners, owner_hashes)
        for (key, parsed), current, present in zip(parsed_rows, is_current, exists):
            if current or (parsed.tenant, parsed.uuid) in unreadable:
                continue  # the row of the current key, or one of an unreadable entity (reported already)
            if not present:
                report.add("info", "key-row", "key_index", key, parsed.uuid, "points at no entity (the engine's "
                           "hard_delete removes only the row of the current key)", "`rem db vacuum` removes it")
            else:
                report.add("info", "key-row", "key_index", key, parsed.uuid, "an old key of the entity (the engine's "
                           "update never touches key rows)", "nothing to do: lookups by the old key still find it")
    return np.frombuffer(with_rows, dtype=np.int64)


def _report_unkeyed(db: RemDB, report: VerifyReport, schemas: dict[str, _Schema], missing: np.ndarray) -> None:
    """Entities whose current key implies a row and that have no key row at all: counted from the
    hashes; listed (found again by a scan) only while the listing of their category has room."""
    category = ("info", "key-row")
    room = MAX_ISSUES_PER_CATEGORY - sum(1 for i in report.issues if (i.severity, i.category) == category)
    wanted, listed = set(missing.tolist()), 0
    stored = {name: s.info for name, s in schemas.items()}
    if room > 0 and wanted:
        for key, value in db.items("entities"):
            if hash(key) in wanted:
                tenant, uuid = parse_entity_key(key)
                report.add(*category, "key_index", current_key_row(tenant, orjson.loads(value), stored), uuid,
                           "no key row (the engine writes one on insert only: the key was added by an update, or "
                           "the row was lost)", "`rem index rebuild --type keys` writes it if lookups by this key "
                           "are needed")
                listed += 1
                if listed >= min(room, len(wanted)):
                    break
    report.counts[category] += len(wanted) - listed
