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
from rem.format import (SCHEMA_ENTITY_TYPE, SchemaInfo, decode_edge, decode_wal_entry, edge_reverse_key,
                        entity_key, parse_edge_key, parse_edge_reverse_key, parse_embedding_key, parse_entity_key,
                        parse_index_key, parse_key_index_key, parse_wal_key, schema_info)
from rem.scratch import remove_scratch, scratch_dir
from rem.spill import HashSpill, KeyLog, clear, keys_of, parts_for, tags_where
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

    def room(self, category: tuple[str, str]) -> int:
        """How many more findings of category its listing takes."""
        return max(0, MAX_ISSUES_PER_CATEGORY - self.counts[category])

    def add_unlisted(self, category: tuple[str, str], n: int) -> None:
        """Count n findings of category past its listing: after the listed ones are added, which
        add() lists only while the count leaves room."""
        if n > 0:
            self.counts[category] += n

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


@dataclass(frozen=True)
class _Spill:
    """Where one job writes the hashes the relation checks join (rem/spill.py): 8 bytes per row on
    disk, a partition at a time in memory, so verify's memory does not grow with the database."""

    directory: Path
    parts: int
    writer: int

    def hashes(self, name: str, tagged: bool = False) -> HashSpill:
        return HashSpill(self.directory, name, self.parts, self.writer, tagged)

    def keys(self, name: str) -> KeyLog:
        return KeyLog(self.directory, name, self.writer)


def _flushed(*spills) -> None:
    for spill in spills:
        spill.flush()


def _scanned(rows, report: VerifyReport, cf: str, spills: tuple[HashSpill, ...]):
    """rows, each counted as a row of cf checked; progress told, and the spills flushed once the first
    is full, every _TICK rows."""
    for row in rows:
        report.checked[cf] += 1
        if report.checked[cf] % _TICK == 0:
            _tick()
            if spills[0].full():
                _flushed(*spills)
        yield row


def _scan_entities(db: RemDB, spill: _Spill, checks: tuple[str, ...], lo: bytes | None,
                   hi: bytes | None) -> tuple[VerifyReport, set]:
    """One range of `entities`: each value decoded and checked, and spilled for the relation checks:
    hash(uuid) (edges name entities by id alone), hash(key), hash(the key row each entity's current
    key implies) and, tagged with its key, hash(key) of each entity that implies one. Returns the
    findings and the (tenant, uuid) of entities whose value is not an entity (reported already)."""
    report = VerifyReport()
    schemas = _load_schemas(db, VerifyReport())  # compile errors are the caller's to report
    stored = {name: s.info for name, s in schemas.items()}
    dims = {name: info.embedding_dim for name, info in stored.items()} if "embeddings" in checks else {}
    decoder, typed = typed_decoder({name: (s.body, s.info.key_field) for name, s in schemas.items()
                                    if s.validate is not None})
    ids, owners, current = spill.hashes("ids"), spill.hashes("owners"), spill.hashes("current")
    keyed_owners, entity_keys = spill.hashes("keyed", tagged=True), spill.keys("entities")
    unreadable: set = set()

    def keyed(key: bytes, row: bytes | None) -> None:
        if row is not None:
            current.hashes.append(hash(row))
            keyed_owners.hashes.append(hash(key))
            keyed_owners.tags.append(entity_keys.add(key))

    for key, value in _scanned(db.items("entities", start=lo, end=hi), report, "entities",
                               (ids, owners, current, keyed_owners)):
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
        ids.hashes.append(hash(uuid))
        owners.hashes.append(hash(key))
        if decoder is not None:  # the fast path: schema and vector checked while decoding
            try:
                entity = decoder.decode(value)
            except (msgspec.ValidationError, msgspec.DecodeError):
                entity = None
            if entity is not None and entity.id == uuid and _timestamps_hold(entity) and \
                    (schema := typed[type(entity)]).holds(entity.properties, dims.get(schema.name)):
                value_of_key = schema.key_value(entity.properties)
                keyed(key, None if value_of_key is None else f"key:{tenant}:{value_of_key}:{uuid}".encode())
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
    _flushed(ids, owners, current, keyed_owners, entity_keys)
    return report, unreadable


def _timestamps_hold(entity) -> bool:
    created = entity.created_at
    for value in (created, entity.modified_at if entity.modified_at != created else None, entity.deleted_at):
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


def _in_workers(db: RemDB, jobs: list[tuple], workers: int, rerun: Callable[[], None]) -> list:
    """check(db, *args) for every (check, args), in worker processes when there are several (decoding
    holds the GIL). Each worker opens the database itself: a live database written between the opens
    would give them different states, so then rerun() undoes what they wrote and the jobs run again
    here, on this one handle."""
    if workers > 1 and len(jobs) > 1:
        pool = multiprocessing.get_context("fork").Pool(min(workers, len(jobs)), _open_in_worker, (db.path,))
        try:
            results = pool.map(_run_job, jobs, chunksize=1)
        except BaseException:
            pool.terminate()
            raise
        else:
            pool.close()  # workers leave their loop and run their finalizers: each closes its handle
        finally:
            pool.join()
        if {sequence for sequence, _ in results} == {db.rdict.latest_sequence_number()}:
            return [result for _, result in results]
        rerun()
    return [check(db, *args) for check, args in jobs]


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


def verify_database(db: RemDB, checks: tuple[str, ...] = ALL_CHECKS, workers: int | None = None,
                    progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Check every value decodes, and the relations the checks name: the entities, key rows and edges
    scanned at once, split by key range over worker processes, each spilling the hashes of what it
    saw; then the relations joined from the spills. progress is told of rows checked as they go
    (about rows_to_check in all)."""
    with _reporting(progress):
        return _verify(db, checks, workers)


def _verify(db: RemDB, checks: tuple[str, ...], workers: int | None) -> VerifyReport:
    started = time.perf_counter()
    if workers is None:  # forking and opening per worker costs more than a small database's scan
        workers = 1 if estimate_keys(db, "entities") < SMALL_ENTITIES else min(os.cpu_count() or 1, 4)
    report = VerifyReport()
    schemas = _load_schemas(db, report)
    edges, indexes = "edges" in checks and db.has_cf("edges"), "indexes" in checks and db.has_cf("key_index")
    parts = parts_for(max((estimate_keys(db, cf) for cf in ("entities", "key_index", "edges") if db.has_cf(cf)),
                          default=0))
    # the entity ranges (the longest jobs) first, cut finer so the others fill the workers around them
    jobs = [(_scan_entities, (checks, lo, hi)) for lo, hi in key_ranges(db, "entities", b"entity:", 2 * workers)]
    jobs += [(_check_edges, (lo, hi)) for lo, hi in key_ranges(db, "edges", b"src:", workers)] if edges else []
    jobs += [(_check_reverse_edges, (lo, hi)) for lo, hi in key_ranges(db, "edges_reverse", b"dst:", workers)] \
        if edges else []
    jobs += [(_check_key_rows, (lo, hi)) for lo, hi in key_ranges(db, "key_index", b"key:", workers)] if indexes else []
    directory = scratch_dir(db.path, "verify")
    try:
        spills = [(check, (_Spill(directory, parts, writer), *args)) for writer, (check, args) in enumerate(jobs)]
        unreadable: set = set()
        for found, unreadable_here in _in_workers(db, spills, workers, rerun=lambda: clear(directory)):
            report.merge(found)
            unreadable |= unreadable_here
        if indexes:
            _report_key_rows(db, report, schemas, directory, parts, unreadable)
        if edges:
            _report_edge_twins(report, directory, parts)
            _report_missing_ends(report, directory, parts)
        _check_rare(db, report, schemas, checks, unreadable)
    finally:
        remove_scratch(directory)
    report.seconds = time.perf_counter() - started
    return report


def _entity_exists(db: RemDB, tenant: str, uuid: str) -> bool:
    return db.get("entities", entity_key(tenant, uuid)) is not None


def _check_rare(db: RemDB, report: VerifyReport, schemas: dict[str, _Schema], checks: tuple[str, ...],
                unreadable: set) -> None:
    """The column families the engine never writes (embeddings, indexes), each row's entity looked up,
    and the logical WAL."""
    if "embeddings" in checks and db.has_cf("embeddings"):
        for key, value in db.items("embeddings"):
            report.checked["embeddings"] += 1
            try:
                tenant, uuid = parse_embedding_key(key)
            except DecodeError as exc:
                report.add("critical", "decode", "embeddings", key, None, exc.reason, "delete the row")
                continue
            owner = db.get("entities", entity_key(tenant, uuid))
            if owner is None:
                report.add("warning", "orphan", "embeddings", key, uuid, "no such entity", "`rem db vacuum`")
                continue
            if (tenant, uuid) in unreadable:
                continue
            if len(value) % 4:
                report.add("critical", "decode", "embeddings", key, uuid, f"{len(value)} bytes is not float32s",
                           "re-embed the entity")
                continue
            schema = schemas.get(orjson.loads(owner)["entity_type"])
            _check_vector(report, "embeddings", key, uuid, struct.unpack(f"<{len(value) // 4}f", value),
                          schema.info.embedding_dim if schema else None)
    if "indexes" in checks and db.has_cf("indexes"):  # the engine never writes it; rows of ours must point at an entity
        for key, parsed in _parsed_keys(db, report, "indexes", parse_index_key, "`rem index rebuild --type fields`"):
            if not _entity_exists(db, parsed.tenant, parsed.uuid):
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


def _check_edges(db: RemDB, spill: _Spill, lo: bytes | None, hi: bytes | None) -> tuple[VerifyReport, set]:
    """One range of forward edges: each decoded; spilled for the joins (no lookups: a random read per
    edge cost more than the rest of the check): the twin each implies, by key and by key and value,
    and both its ends, all tagged with its key."""
    report = VerifyReport()
    forward, twins, twin_rows = spill.hashes("edge-fwd"), spill.hashes("edge-twin", tagged=True), \
        spill.hashes("edge-twin-row", tagged=True)
    sources, targets, edge_keys = spill.hashes("edge-src", tagged=True), spill.hashes("edge-dst", tagged=True), \
        spill.keys("edges")
    for key, value in _scanned(db.items("edges", start=lo, end=hi), report, "edges",
                               (forward, twins, twin_rows, sources, targets)):
        try:
            src, dst, rel = parse_edge_key(key)
            twin = edge_reverse_key(src, dst, rel)
            forward.hashes.append(hash(twin))  # an edge whose value does not decode still has a twin
            decode_edge(key, value)
        except DecodeError as exc:
            report.add("critical", "decode", "edges", key, None, exc.reason, "delete the edge and re-add it")
            continue
        tag = edge_keys.add(key)
        for spilled, hashed in ((twins, hash(twin)), (twin_rows, hash((twin, value))), (sources, hash(src)),
                                (targets, hash(dst))):
            spilled.hashes.append(hashed)
            spilled.tags.append(tag)
    _flushed(forward, twins, twin_rows, sources, targets, edge_keys)
    return report, set()


def _check_reverse_edges(db: RemDB, spill: _Spill, lo: bytes | None, hi: bytes | None) -> tuple[VerifyReport, set]:
    """One range of reverse edges, spilled by key and by key and value, tagged with its key: a row no
    forward edge implies is parsed when it is reported (a forward edge's twin parses)."""
    report = VerifyReport()
    rows, row_values, reverse_keys = spill.hashes("edge-rev", tagged=True), spill.hashes("edge-rev-row"), \
        spill.keys("edges_reverse")
    for key, value in _scanned(db.items("edges_reverse", start=lo, end=hi), report, "edges_reverse",
                               (rows, row_values)):
        rows.hashes.append(hash(key))
        rows.tags.append(reverse_keys.add(key))
        row_values.hashes.append(hash((key, value)))
    _flushed(rows, row_values, reverse_keys)
    return report, set()


def _report_edge_twins(report: VerifyReport, directory: Path, parts: int) -> None:
    """Each edge row against its twin, joined from the spills, in key order: forward edges without
    their reverse row, reverse rows that differ from their forward edge, reverse rows (parsed now)
    no forward edge implies."""
    without_reverse = tags_where(directory, "edge-twin", parts, "edge-rev", present=False)
    differing = np.setdiff1d(tags_where(directory, "edge-twin-row", parts, "edge-rev-row", present=False),
                             without_reverse, assume_unique=True)
    for tags, severity, message, fix in (
            (without_reverse, "critical", "forward edge without its reverse twin",
             "re-add the edge (writes both) or delete this row"),
            (differing, "error", "differs from its forward twin", "re-add the edge")):
        shown = tags[:report.room((severity, "edge"))]
        for key in keys_of(directory, "edges", shown):
            src, dst, rel = parse_edge_key(key)
            where = ("edges", key) if severity == "critical" else ("edges_reverse", edge_reverse_key(src, dst, rel))
            report.add(severity, "edge", *where, src, message, fix)
        report.add_unlisted((severity, "edge"), len(tags) - len(shown))
    without_forward = tags_where(directory, "edge-rev", parts, "edge-fwd", present=False)
    for start in range(0, len(without_forward), _TICK):
        for key in keys_of(directory, "edges_reverse", without_forward[start:start + _TICK]):
            try:
                src, _, _ = parse_edge_reverse_key(key)
            except DecodeError as exc:
                report.add("critical", "decode", "edges_reverse", key, None, exc.reason, "delete the row")
                continue
            report.add("critical", "edge", "edges_reverse", key, src, "reverse edge without its forward twin",
                       "re-add the edge (writes both) or delete this row")


def _report_missing_ends(report: VerifyReport, directory: Path, parts: int) -> None:
    """Edges whose source or target is no entity (joined from the spills), in key order."""
    category = ("info", "edge")
    missing = sorted([(int(tag), 0) for tag in tags_where(directory, "edge-src", parts, "ids", present=False)] +
                     [(int(tag), 1) for tag in tags_where(directory, "edge-dst", parts, "ids", present=False)])
    shown = missing[:report.room(category)]
    for key, (_, role) in zip(keys_of(directory, "edges", [tag for tag, _ in shown]), shown):
        src, dst, _ = parse_edge_key(key)
        end, name = (src, "source") if role == 0 else (dst, "target")
        report.add(*category, "edges", key, src, f"{name} entity {end} does not exist (the engine's hard_delete "
                   "leaves edge rows behind)", "`rem db vacuum` removes them")
    report.add_unlisted(category, len(missing) - len(shown))


def _parsed_keys(db: RemDB, report: VerifyReport, cf: str, parse, fix: str):
    """Every key of cf with its parsed form, counted; one that does not parse is a critical finding."""
    for key in db.keys(cf):
        report.checked[cf] += 1
        try:
            yield key, parse(key)
        except DecodeError as exc:
            report.add("critical", "decode", cf, key, None, exc.reason, fix)


def _check_key_rows(db: RemDB, spill: _Spill, lo: bytes | None, hi: bytes | None) -> tuple[VerifyReport, set]:
    """One range of key rows: each parsed, and spilled, tagged with its key, twice: by its own hash (is
    it the row of its entity's current key?) and by its entity's (does that entity exist?)."""
    report = VerifyReport()
    rows, owned, row_keys = spill.hashes("row", tagged=True), spill.hashes("row-owner", tagged=True), \
        spill.keys("key_index")
    for chunk in _chunks(db.keys("key_index", start=lo, end=hi), _TICK):
        _tick(len(chunk))
        report.checked["key_index"] += len(chunk)
        for key in chunk:
            head, _, rest = key.partition(b":")  # parse_key_index_key's rule, without its cost, for ASCII keys
            tenant, _, rest = rest.partition(b":")
            _, colon, uuid = rest.rpartition(b":")
            if head == b"key" and colon and key.isascii():
                owner = b"entity:" + tenant + b":" + uuid
            else:
                try:
                    parsed = parse_key_index_key(key)
                except DecodeError as exc:
                    report.add("critical", "decode", "key_index", key, None, exc.reason,
                               "`rem index rebuild --type keys`")
                    continue
                owner = entity_key(parsed.tenant, parsed.uuid)
            tag = row_keys.add(key)
            rows.hashes.append(hash(key))
            rows.tags.append(tag)
            owned.hashes.append(hash(owner))
            owned.tags.append(tag)
        if rows.full():
            _flushed(rows, owned)
    _flushed(rows, owned, row_keys)
    return report, set()


def _report_key_rows(db: RemDB, report: VerifyReport, schemas: dict[str, _Schema], directory: Path, parts: int,
                     unreadable: set) -> None:
    """Key rows against the entities, as the engine writes them (every state its own writes leave is
    info), then the entities that have no key row at all."""
    category = ("info", "key-row")
    unreadable_owners = np.sort(np.array([hash(entity_key(*owner)) for owner in unreadable], dtype=np.int64))
    ownerless = tags_where(directory, "row-owner", parts, "owners", present=False)
    of_unreadable = tags_where(directory, "row-owner", parts, unreadable_owners, present=True)
    old = np.setdiff1d(tags_where(directory, "row", parts, "current", present=False),
                       np.concatenate([ownerless, of_unreadable]), assume_unique=True)
    found = sorted([(int(tag), "points at no entity (the engine's hard_delete removes only the row of the current "
                     "key)", "`rem db vacuum` removes it") for tag in ownerless] +
                   [(int(tag), "an old key of the entity (the engine's update never touches key rows)",
                     "nothing to do: lookups by the old key still find it") for tag in old])
    shown = found[:report.room(category)]
    for key, (_, message, fix) in zip(keys_of(directory, "key_index", [tag for tag, _, _ in shown]), shown):
        report.add(*category, "key_index", key, parse_key_index_key(key).uuid, message, fix)
    report.add_unlisted(category, len(found) - len(shown))
    _report_unkeyed(db, report, schemas, tags_where(directory, "keyed", parts, "row-owner", present=False), directory)


def _report_unkeyed(db: RemDB, report: VerifyReport, schemas: dict[str, _Schema], missing: np.ndarray,
                    directory: Path) -> None:
    """Entities whose current key implies a row and that have no key row at all (tags of their keys):
    counted; listed, looked up again, while the listing of their category has room."""
    category = ("info", "key-row")
    shown = missing[:report.room(category)]
    stored = {name: s.info for name, s in schemas.items()}
    listed = 0
    for key, value in zip(keys := keys_of(directory, "entities", shown), db.get_many("entities", keys)):
        if value is None:  # deleted since the scan
            continue
        tenant, uuid = parse_entity_key(key)
        report.add(*category, "key_index", current_key_row(tenant, orjson.loads(value), stored), uuid,
                   "no key row (the engine writes one on insert only: the key was added by an update, or the row "
                   "was lost)", "`rem index rebuild --type keys` writes it if lookups by this key are needed")
        listed += 1
    report.add_unlisted(category, len(missing) - listed)
