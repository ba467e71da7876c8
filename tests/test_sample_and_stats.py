import json

import pytest

from rem.sample import create_sample
from tests.helpers import brute_force_stats, digest, dump_all, rem


def test_same_seed_same_database_whatever_the_number_of_workers(tmp_path):
    create_sample(tmp_path / "a", 3000, 3, seed=5, embedding_dim=8, batch_size=500, workers=0)
    create_sample(tmp_path / "b", 3000, 3, seed=5, embedding_dim=8, batch_size=500, workers=2)
    create_sample(tmp_path / "c", 3000, 3, seed=6, embedding_dim=8, batch_size=500, workers=0)
    assert digest(dump_all(tmp_path / "a")) == digest(dump_all(tmp_path / "b"))
    assert digest(dump_all(tmp_path / "a")) != digest(dump_all(tmp_path / "c"))


@pytest.mark.parametrize("replication", ["standalone", "primary"])
def test_the_sample_is_what_the_engine_would_write(tmp_path, replication):
    """rem db init --sample: judged by the engine's rules (verify finds nothing above info, RocksDB
    8.10 opens it with the engine's options) and by what a live engine leaves behind."""
    from tests.engine import engine_read_all
    from tests.test_engine_fidelity import assert_engine_compatible

    path = tmp_path / "sample"
    rem("--db-path", str(path), "db", "init", "--sample", "2000", "--tenants", "4", "--embedding-dim", "8",
        "--replication", replication, check=True)
    rows = engine_read_all(path)
    assert_engine_compatible(path, rows)
    report = json.loads(rem("--db-path", str(path), "db", "verify", "--json").stdout)
    assert {i["severity"] for i in report["issues"]} <= {"info"}, report["by_category"]
    entities = [json.loads(v) for v in rows["entities"].values()]
    stats = brute_force_stats(path)
    assert stats["schemas"] == 5 and 0.03 < stats["entities_soft_deleted"] / 2000 < 0.07
    assert {e["entity_type"] for e in entities} >= {"articles", "people", "notes", "resources", "sessions", "messages"}
    assert sum(1 for e in entities if e["edges"]) > 100 and len(rows["edges"]) > 50  # inline and add_edge
    assert all(len(e["properties"]["embedding"]) == 8 for e in entities if "embedding" in e["properties"])
    assert not rows["embeddings"] and not rows["indexes"] and not rows["bm25_index"]  # the engine never writes them
    assert set(rows["keys"]) == {b"private_key_encrypted", b"public_key"}
    assert len({k.split(b":")[1] for k in rows["entities"]} - {b"default"}) == 4
    assert any("old key" in i["message"] for i in report["issues"])  # updates that changed the key
    entries = [json.loads(v) for _, v in sorted(rows["wal"].items())]
    if replication == "standalone":
        assert entries == []
    else:  # one entry per insert, update and soft delete, timestamps rising with the sequence
        assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1)) and len(entries) > 2000
        assert [e["timestamp"] for e in entries] == sorted(e["timestamp"] for e in entries)


def test_init_refuses_a_path_that_holds_anything(tmp_path):
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    proc = rem("--db-path", str(target), "db", "init", "--sample", "10")
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("cf", [None, "entities"])
def test_db_stats_json_agrees_with_a_brute_force_scan(make_sample, cf):
    path = make_sample(entities=1500, tenants=3, dim=8)
    args = ["--db-path", str(path), "db", "stats", "--json"] + (["--cf", cf] if cf else [])
    proc = rem(*args, check=True)
    got = json.loads(proc.stdout)
    want = brute_force_stats(path)
    for field in ("entities_live", "entities_soft_deleted", "schemas", "embeddings", "edges", "wal_entries",
                  "wal_latest_seq"):
        assert got[field] == want[field], field
    expected_cfs = {cf: want["keys"][cf]} if cf else want["keys"]
    assert {name: c["keys"] for name, c in got["column_families"].items()} == expected_cfs
    assert got["disk_usage_bytes"] > 0 and all(c["size_bytes"] > 0 for c in got["column_families"].values() if c["keys"])


def test_db_stats_unknown_column_family_lists_the_real_ones(make_sample):
    proc = rem("--db-path", str(make_sample()), "db", "stats", "--cf", "nope")
    assert proc.returncode == 2 and "entities" in proc.stderr and "bm25_index" in proc.stderr


def test_db_stats_per_schema_figures_agree_with_a_brute_force_scan(make_sample):
    path = make_sample(entities=1500, tenants=3, dim=8)
    got = json.loads(rem("--db-path", str(path), "db", "stats", "--json", check=True).stdout)["schemas_detail"]
    rows = dump_all(path)
    want: dict = {}
    for key, value in rows["entities"].items():
        e = json.loads(value)
        if e["entity_type"] == "schemas":
            continue
        d = want.setdefault(e["entity_type"], {"live": 0, "soft_deleted": 0, "bytes": 0, "with_embedding": 0})
        d["bytes"] += len(value)
        if e["deleted_at"] is None:
            d["live"] += 1
            emb = b"emb:" + key[len(b"entity:"):]
            d["with_embedding"] += isinstance(e["properties"].get("embedding"), list) or emb in rows["embeddings"]
        else:
            d["soft_deleted"] += 1
    assert {k: {f: v[f] for f in ("live", "soft_deleted", "bytes", "with_embedding")} for k, v in got.items()} == want
