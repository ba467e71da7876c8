"""Index rebuilds put back exactly the rows the entities imply; HNSW finds the true neighbours."""

import json

from rem import format as f
from tests.helpers import dump_all, rem
from tests.test_verify import plant


def test_key_and_field_rows_are_rebuilt_exactly(make_sample):
    path = make_sample(entities=1500)
    # The engine never writes field-index rows: build them once (the explicit opt-in), then lose some.
    rem("--db-path", str(path), "index", "rebuild", "--type", "fields", "--json", check=True)
    original = dump_all(path)
    assert original["indexes"]
    lost_keys = list(original["key_index"])[::3]
    lost_fields = list(original["indexes"])[::4]
    stale = f.index_key("acme", "status", "bogus", next(iter(original["entities"])).split(b":")[2].decode())
    plant(path, [("indexes", stale, b"")], deletes=[("key_index", k) for k in lost_keys] +
          [("indexes", k) for k in lost_fields])
    keys = json.loads(rem("--db-path", str(path), "index", "rebuild", "--type", "keys", "--json", check=True).stdout)
    assert keys["keys"] == {"cf": "key_index", "written": len(lost_keys), "removed": 0} and "fields" not in keys
    fields = json.loads(rem("--db-path", str(path), "index", "rebuild", "--type", "fields", "--json", check=True).stdout)
    assert fields["fields"] == {"cf": "indexes", "written": len(lost_fields), "removed": 1}
    after = dump_all(path)
    assert after["key_index"] == original["key_index"] and after["indexes"] == original["indexes"]


def test_hnsw_indexes_per_tenant_and_schema_reach_the_recall_target(make_sample):
    path = make_sample(entities=3000, tenants=2, dim=32)
    result = json.loads(rem("--db-path", str(path), "index", "rebuild", "--type", "hnsw", "--json",
                            check=True).stdout)
    builds = result["hnsw"]
    assert {(b["tenant"], b["schema"]) for b in builds} == {(t, s) for t in ("acme", "globex")
                                                             for s in ("articles", "people", "projects", "tickets",
                                                                       "notes")}
    live = sum(1 for v in dump_all(path)["entities"].values()
               if json.loads(v)["deleted_at"] is None and "embedding" in json.loads(v)["properties"])
    assert sum(b["vectors"] for b in builds) == live
    assert all(b["recall_at_10"] >= 0.95 for b in builds), [(b["schema"], b["recall_at_10"]) for b in builds]
    from usearch.index import Index

    articles = next(b for b in builds if b["schema"] == "articles" and b["tenant"] == "acme")
    assert Index.restore(articles["path"]).size == articles["vectors"]
    from pathlib import Path

    ids = json.loads(Path(articles["path"].replace(".usearch", ".ids.json")).read_text())
    assert len(ids) == articles["vectors"]
