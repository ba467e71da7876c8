"""rem db verify finds each planted fault kind, and nothing on a clean database."""

import json
from collections import Counter

import orjson
import pytest

from rem import format as f
from rem.db import open_db
from tests.helpers import dump_all, holding_lock, rem


def plant(db_path, puts=(), deletes=()):
    with open_db(db_path, "rw") as db:
        batch = db.batch()
        for cf, key, value in puts:
            batch.put(key, value, db.handle(cf))
        for cf, key in deletes:
            batch.delete(key, db.handle(cf))
        db.write(batch)
        db.flush_all()


def some(rows, cf, prefix=b"", where=lambda k, v: True):
    return next((k, v) for k, v in sorted(rows[cf].items()) if k.startswith(prefix) and where(k, v))


def verify(path, *flags):
    proc = rem("--db-path", str(path), "db", "verify", "--json", *flags)
    return proc.returncode, json.loads(proc.stdout)


def test_a_clean_sample_has_nothing_above_info(make_sample):
    code, report = verify(make_sample(entities=1500))
    assert code == 0 and {i["severity"] for i in report["issues"]} <= {"info"}
    assert report["checked"]["entities"] == 1505


FAULTS = {  # damage the engine's write paths cannot produce is critical; states they leave are info
    "undecodable entity": ("critical", "decode"),
    "schema violation": ("critical", "schema"),
    "NaN embedding": ("critical", "embedding"),
    "forward edge without twin": ("critical", "edge"),
    "reverse edge without twin": ("critical", "edge"),
    "edge twins that differ": ("error", "edge"),
    "edge to a missing entity": ("info", "edge"),
    "orphan key row": ("info", "key-row"),
    "keyed entity without key row": ("info", "key-row"),
    "WAL gap": ("critical", "wal-gap"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_planted_fault_is_found_with_severity_and_fix(make_sample, fault):
    path = make_sample(entities=800, replication="primary")
    rows = dump_all(path)
    article = lambda k, v: orjson.loads(v)["entity_type"] == "articles"  # noqa: E731
    key, value = some(rows, "entities", b"entity:acme:", article)
    entity = orjson.loads(value)
    uuid = entity["id"]
    if fault == "undecodable entity":
        plant(path, [("entities", key, b"{broken")])
    elif fault == "schema violation":
        plant(path, [("entities", key, orjson.dumps({**entity, "properties": {**entity["properties"], "word_count": "many"}}))])
    elif fault == "NaN embedding":
        plant(path, [("embeddings", f.embedding_key("acme", uuid), f.encode_embedding([float("nan")] * 16))])
    elif fault == "forward edge without twin":
        edge_key = next(iter(rows["edges"]))
        src, dst, rel = f.parse_edge_key(edge_key)
        plant(path, deletes=[("edges_reverse", f.edge_reverse_key(src, dst, rel))])
    elif fault == "reverse edge without twin":
        edge_key = next(iter(rows["edges"]))
        plant(path, deletes=[("edges", edge_key)])
    elif fault == "edge twins that differ":
        edge_key, value = next(iter(rows["edges"].items()))
        src, dst, rel = f.parse_edge_key(edge_key)
        changed = orjson.loads(value)
        changed["data"]["properties"]["weight"] = 0.125
        plant(path, [("edges_reverse", f.edge_reverse_key(src, dst, rel), orjson.dumps(changed))])
    elif fault == "edge to a missing entity":
        ghost = "00000000-dead-4000-8000-000000000000"
        value = orjson.dumps({"src": uuid, "dst": ghost, "rel_type": "references",
                              "data": {"properties": {}, "created_at": "2025-01-01T00:00:00Z"}})
        plant(path, [("edges", f.edge_key(uuid, ghost, "references"), value),
                     ("edges_reverse", f.edge_reverse_key(uuid, ghost, "references"), value)])
    elif fault == "orphan key row":
        plant(path, [("key_index", f.key_index_key("acme", "nowhere", "00000000-dead-4000-8000-000000000001"),
                      b'{"type":"articles"}')])
    elif fault == "keyed entity without key row":
        plant(path, deletes=[("key_index", f.key_index_key("acme", entity["properties"]["uri"], uuid))])
    elif fault == "WAL gap":
        plant(path, deletes=[("wal", f.wal_key(100))])
    code, report = verify(path)
    severity, category = FAULTS[fault]
    found = [i for i in report["issues"] if (i["severity"], i["category"]) == (severity, category)]
    assert found, report["by_category"]
    assert all(i["fix"] for i in found)
    assert code == (1 if severity == "critical" else 0)
    others = {k for k in report["by_category"] if k != f"{severity}:{category}" and not k.startswith("info:")}
    assert not others, f"unexpected findings for {fault}: {others}"


def test_verify_runs_against_a_live_locked_database(make_sample):
    path = make_sample()
    with holding_lock(path):
        code, report = verify(path)
        assert code == 0 and report["checked"]["entities"] > 0


def test_verify_joined_from_many_small_partitions_names_each_planted_relation_fault(make_sample, monkeypatch):
    """The relation checks join hashes spilled to disk a partition at a time (memory stays flat):
    cut into many partitions, each flushed many times, every planted fault is still named by its key,
    an unreadable entity's key row is not reported on top of it, and nothing is left beside the database."""
    from rem import spill
    from rem.verify import verify_database

    path = make_sample(entities=3000)
    rows = dump_all(path)
    article = lambda k, v: orjson.loads(v)["entity_type"] == "articles"  # noqa: E731
    articles = sorted((k, orjson.loads(v)) for k, v in rows["entities"].items()
                      if k.startswith(b"entity:acme:") and article(k, v))
    (_, unkeyed), (broken_key, broken) = articles[0], articles[1]
    ghost = "00000000-dead-4000-8000-000000000000"
    edge = {"src": unkeyed["id"], "dst": ghost, "rel_type": "references",
            "data": {"properties": {}, "created_at": "2025-01-01T00:00:00Z"}}
    orphan_row = f.key_index_key("acme", "nowhere", "00000000-dead-4000-8000-000000000001")
    unkeyed_row = f.key_index_key("acme", unkeyed["properties"]["uri"], unkeyed["id"])
    plant(path, [("edges", f.edge_key(unkeyed["id"], ghost, "references"), orjson.dumps(edge)),
                 ("edges_reverse", f.edge_reverse_key(unkeyed["id"], ghost, "references"), orjson.dumps(edge)),
                 ("key_index", orphan_row, b'{"type":"articles"}'), ("entities", broken_key, b"{broken")],
          deletes=[("key_index", unkeyed_row)])
    broken_row = f.key_index_key("acme", broken["properties"]["uri"], broken["id"]).decode()
    forward_only, reverse_only, differing = sorted(rows["edges"])[:3]  # twins joined from the spills too
    other = {**orjson.loads(rows["edges"][differing]), "rel_type": "changed"}
    plant(path, [("edges_reverse", f.edge_reverse_key(*f.parse_edge_key(differing)), orjson.dumps(other))],
          deletes=[("edges_reverse", f.edge_reverse_key(*f.parse_edge_key(forward_only))), ("edges", reverse_only)])
    with open_db(path, "ro") as db:
        whole = verify_database(db, workers=2)
        monkeypatch.setattr(spill, "PART_ROWS", 500)
        monkeypatch.setattr(spill, "FLUSH_ROWS", 256)
        assert spill.parts_for(3000) >= 12
        for workers in (1, 2):
            report = verify_database(db, workers=workers)
            listed = {(i.category, i.key): i.message for i in report.issues}
            assert "target entity 00000000-dead-4000-8000-000000000000 does not exist" in \
                listed[("edge", f.edge_key(unkeyed["id"], ghost, "references").decode())]
            assert "points at no entity" in listed[("key-row", orphan_row.decode())]
            assert "no key row" in listed[("key-row", unkeyed_row.decode())]
            assert ("key-row", broken_row) not in listed
            assert "without its reverse twin" in listed[("edge", forward_only.decode())]
            reverse_of = lambda key: f.edge_reverse_key(*f.parse_edge_key(key)).decode()  # noqa: E731
            assert "without its forward twin" in listed[("edge", reverse_of(reverse_only))]
            assert "differs from its forward twin" in listed[("edge", reverse_of(differing))]
            assert report.counts[("critical", "edge")] == 2 and report.counts[("error", "edge")] == 1
            assert report.counts[("critical", "decode")] == 1
            assert report.counts == whole.counts and report.checked == whole.checked
    assert not list(path.parent.glob(".rem-verify-*"))


def test_a_category_with_more_findings_than_its_listing_lists_as_many_as_fit_and_counts_them_all(
        make_sample, monkeypatch):
    """Each report caps its listing per category: cut to two, every category with findings (planted
    edge twins, the sample's own key-row and edge states) still lists two and counts as many as before."""
    from rem import verify as verify_module
    from rem.verify import verify_database

    path = make_sample(entities=3000)
    edges = sorted(dump_all(path)["edges"])
    reverse_of = lambda key: f.edge_reverse_key(*f.parse_edge_key(key))  # noqa: E731
    plant(path, [("edges_reverse", reverse_of(key), b'{"changed": true}') for key in edges[6:9]],
          deletes=[("edges_reverse", reverse_of(key)) for key in edges[:3]] + [("edges", key) for key in edges[3:6]])
    with open_db(path, "ro") as db:
        whole = verify_database(db, workers=1)
        assert whole.counts[("critical", "edge")] == 6 and whole.counts[("error", "edge")] == 3
        monkeypatch.setattr(verify_module, "MAX_ISSUES_PER_CATEGORY", 2)
        for workers in (1, 2):
            capped = verify_database(db, workers=workers)
            assert capped.counts == whole.counts
            listed = Counter((i.severity, i.category) for i in capped.issues)
            assert listed == {category: min(2, n) for category, n in whole.counts.items() if n}
            assert {(i.category, i.key) for i in capped.issues} <= {(i.category, i.key) for i in whole.issues}


def test_inline_vectors_are_judged_alike_on_the_fast_path_and_the_exact_one(make_sample, monkeypatch):
    """Verify reads an inline embedding's bytes instead of building its floats: each planted vector
    gets the same findings as when every entity takes the exact path (orjson, fastjsonschema and the
    element loop), a plain vector written with exponents passes, and each broken one is critical."""
    import rem.verify as verify_module

    path = make_sample(entities=800)
    rows = dump_all(path)
    articles = sorted((k, v) for k, v in rows["entities"].items()
                      if k.startswith(b"entity:acme:") and orjson.loads(v)["entity_type"] == "articles")
    vectors = {"exponents": b"[1e-07,-2.5E+3,0.5,3e2]", "spaced": b"[ 1.5 , -2 ]", "empty": b"[]",
               "null": b"[null,1.0]", "string": b'["a",1.0]', "nested": b"[[1.0],[2.0]]",
               "past float range": b"[1e999,1.0]", "309 digits": b"[2" + b"0" * 308 + b",1.0]",
               "308 digits": b"[1" + b"0" * 307 + b".5,1.0]", "not an array": b"7"}
    planted = {}
    for (key, value), (name, vector) in zip(articles, vectors.items()):
        entity = orjson.loads(value)
        entity["properties"]["embedding"] = "VECTOR"  # written as bytes: orjson would not write 1e999 or spaces
        planted[key.decode()] = name
        plant(path, [("entities", key, orjson.dumps(entity).replace(b'"VECTOR"', vector))])
    with open_db(path, "ro") as db:
        assert {db.get("entities", k.encode()).count(b'"embedding":' + v) for k, v in zip(planted, vectors.values())} == {1}
        fast = verify_database_issues(db)
        monkeypatch.setattr(verify_module, "typed_decoder", lambda schemas: (None, {}))
        exact = verify_database_issues(db)
    assert fast == exact
    broken = {planted[key] for severity, _, key in fast if key in planted and severity == "critical"}
    assert broken == {"null", "string", "nested", "past float range", "309 digits", "not an array"}


def verify_database_issues(db) -> list:
    from rem.verify import verify_database

    return sorted((i.severity, i.category, i.key) for i in verify_database(db, workers=1).issues)
