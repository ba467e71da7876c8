"""Index rebuilds: key_index and field-index rows from the entities, and an HNSW vector index per
tenant and schema (usearch), stored beside the database:

    {db}.hnsw/{tenant}/{schema}.usearch     the graph (cosine)
    {db}.hnsw/{tenant}/{schema}.ids.json    uuid of each label, in label order
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from rem.db import RemDB
from rem.engine import current_key_row
from rem.format import (SCHEMA_ENTITY_TYPE, embedding_key, file_stem, parse_entity_key, parse_index_key,
                        parse_key_index_key)
from rem.writer import index_rows, key_row_value, load_schemas

HNSW_CONNECTIVITY = 32
HNSW_EXPANSION_ADD = 256
HNSW_EXPANSION_SEARCH = 256
RECALL_QUERIES = 200


@dataclass
class RowRebuild:
    cf: str
    written: int
    removed: int


def hnsw_dir(db_path: Path) -> Path:
    return db_path.parent / f"{db_path.name}.hnsw"


def rebuild_key_rows(db: RemDB, schema: str | None = None, batch_rows: int = 10_000) -> RowRebuild:
    """Write the key row of an entity's current key where the entity has no key row at all (one was
    lost); remove nothing. Every existing row is one the engine may look up: an old key an update
    left (rem/engine.py) still finds its entity, and one whose entity is gone finds nothing."""
    stored = load_schemas(db)
    with_rows = {(parsed.tenant, parsed.uuid) for parsed in map(parse_key_index_key, db.keys("key_index"))}
    missing: list[tuple[bytes, bytes]] = []
    for key, value in db.items("entities"):
        entity = orjson.loads(value)
        owner = parse_entity_key(key)
        if entity.get("entity_type") == SCHEMA_ENTITY_TYPE or (schema and entity.get("entity_type") != schema):
            continue
        row = current_key_row(owner.tenant, entity, stored)
        if row is not None and (owner.tenant, owner.uuid) not in with_rows:
            missing.append((row, key_row_value(entity["entity_type"])))
    with db.batched(batch_rows) as writes:
        for row, value in missing:
            writes.put("key_index", row, value)
    db.flush_all()
    return RowRebuild("key_index", len(missing), 0)


def rebuild_field_rows(db: RemDB, schema: str | None = None, batch_rows: int = 10_000) -> RowRebuild:
    """Make the `indexes` column family hold exactly the rows the schemas' indexed_fields imply.
    The engine never writes or reads it (a TODO in database.rs): an explicit opt-in."""
    schemas = load_schemas(db)
    expected: set[bytes] = set()
    types: dict[tuple[str, str], str] = {}
    for key, value in db.items("entities"):
        entity = orjson.loads(value)
        owner = parse_entity_key(key)
        types[(owner.tenant, owner.uuid)] = entity.get("entity_type")
        if entity.get("entity_type") == SCHEMA_ENTITY_TYPE or (schema and entity.get("entity_type") != schema):
            continue
        expected |= {k for c, k, _ in index_rows(schemas.get(entity.get("entity_type")), owner.tenant, entity)
                     if c == "indexes"}
    stale = []
    for key in db.keys("indexes"):
        if key in expected:
            expected.discard(key)
            continue
        parsed = parse_index_key(key)
        if schema is None or types.get((parsed.tenant, parsed.uuid)) == schema:
            stale.append(key)
    missing = sorted(expected)
    with db.batched(batch_rows) as writes:
        for key in stale:
            writes.delete("indexes", key)
        for key in missing:
            writes.put("indexes", key, b"")
    db.flush_all()
    return RowRebuild("indexes", len(missing), len(stale))


@dataclass
class HnswBuild:
    tenant: str
    schema: str
    vectors: int
    dimensions: int
    recall_at_10: float | None
    seconds: float
    path: str


def _vectors(db: RemDB, schema: str | None) -> dict[tuple[str, str], tuple[list[str], list[np.ndarray]]]:
    groups: dict[tuple[str, str], tuple[list[str], list[np.ndarray]]] = {}
    for key, value in db.items("entities"):
        entity = orjson.loads(value)
        kind = entity.get("entity_type")
        if kind == SCHEMA_ENTITY_TYPE or entity.get("deleted_at") is not None or (schema and kind != schema):
            continue
        tenant, uuid = parse_entity_key(key)
        inline = (entity.get("properties") or {}).get("embedding")
        if isinstance(inline, list) and inline:
            vector = np.asarray(inline, dtype=np.float32)
        else:
            raw = db.get("embeddings", embedding_key(tenant, uuid)) if db.has_cf("embeddings") else None
            if not raw or len(raw) % 4:
                continue
            vector = np.frombuffer(raw, dtype="<f4")
        ids, vecs = groups.setdefault((tenant, kind), ([], []))
        ids.append(uuid)
        vecs.append(vector)
    return groups


def recall_at_10(index, matrix: np.ndarray, queries: int = RECALL_QUERIES, seed: int = 0) -> float | None:
    """Share of the exact (cosine) top 10 that the index returns, over a sample of the vectors."""
    n = len(matrix)
    if n <= 10:
        return None
    rng = np.random.default_rng(seed)
    sample = rng.choice(n, size=min(queries, n), replace=False)
    normed = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    exact = np.argsort(-(normed[sample] @ normed.T), axis=1)[:, :10]
    found = index.search(matrix[sample], 10).keys
    return float(np.mean([len(set(found[i].tolist()) & set(exact[i].tolist())) / 10 for i in range(len(sample))]))


def build_hnsw(db: RemDB, schema: str | None = None, out_dir: Path | None = None) -> list[HnswBuild]:
    """One usearch HNSW index per (tenant, schema) from live entities' vectors, with its recall@10."""
    from usearch.index import Index

    out_dir = out_dir or hnsw_dir(db.path)
    built = []
    for (tenant, kind), (ids, vecs) in sorted(_vectors(db, schema).items()):
        started = time.perf_counter()
        dims = {len(v) for v in vecs}
        if len(dims) != 1:
            raise ValueError(f"{tenant}/{kind}: vectors of several dimensions {sorted(dims)}; run `rem db verify`")
        matrix = np.vstack(vecs)
        index = Index(ndim=matrix.shape[1], metric="cos", connectivity=HNSW_CONNECTIVITY,
                      expansion_add=HNSW_EXPANSION_ADD, expansion_search=HNSW_EXPANSION_SEARCH)
        index.add(np.arange(len(ids)), matrix, threads=1)
        folder = out_dir / file_stem(tenant)  # names from the data: they never climb out of out_dir
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{file_stem(kind)}.usearch"
        index.save(str(target) + ".tmp")
        os.replace(str(target) + ".tmp", target)
        (folder / f"{file_stem(kind)}.ids.json").write_text(json.dumps(ids))
        built.append(HnswBuild(tenant, kind, len(ids), matrix.shape[1], recall_at_10(index, matrix),
                               time.perf_counter() - started, str(target)))
    return built

