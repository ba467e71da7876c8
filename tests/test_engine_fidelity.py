"""Our commands on databases the engine writes (tests/engine: percolate-rocks' write paths through
RocksDB 8.10.0), in standalone and primary mode: verify raises no false alarm, rebuilds and vacuum
touch only what they must, and every database a command writes opens in RocksDB 8.10 with the
engine's options in every SST file."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest

from rem import format as f
from tests.engine import LiveEngine, engine_read_all, engine_write
from tests.engine.scenario import scenario
from tests.engine.spec import COLUMN_FAMILIES
from tests.helpers import REPO, dump_all, rem
from tests.test_verify import plant, verify


@pytest.fixture(scope="session")
def _engine_dbs(tmp_path_factory):
    built = {}
    for mode in ("standalone", "primary"):
        path = tmp_path_factory.mktemp(f"engine-{mode}") / "db"
        engine_write(path, scenario(), mode)
        built[mode] = path
    return built


@pytest.fixture(params=["standalone", "primary"])
def engine_db(request, _engine_dbs, tmp_path) -> Path:
    """A fresh copy of a database the engine wrote, in each mode."""
    target = tmp_path / "db"
    shutil.copytree(_engine_dbs[request.param], target)
    return target


def sst_options(db: Path) -> list[dict]:
    """Per SST file, what Debian's sst_dump (RocksDB 7.8.3, an independent reader) says of it."""
    if shutil.which("sst_dump") is None:
        pytest.fail("sst_dump is missing: `apt-get install rocksdb-tools` (.ci/run does)")
    found = []
    for sst in sorted(db.glob("*.sst")):
        out = subprocess.run(["sst_dump", f"--file={sst}", "--show_properties"], capture_output=True, text=True,
                             check=True).stdout
        props: dict[str, str] = {}
        for line in out.splitlines():
            name, sep, value = line.strip().partition(": ")
            if sep and name:
                props.setdefault(name, value)
        found.append({"file": sst.name, "cf": props.get("column family name"),
                      "filter": props.get("filter policy name"), "prefix": props.get("prefix extractor name"),
                      "compression": props.get("SST file compression algo"),
                      "blocks": int(props.get("# data blocks", 0)),
                      "raw": int(props.get("raw key size", 0)) + int(props.get("raw value size", 0))})
    return found


def assert_engine_compatible(db: Path, expect_rows: dict | None = None) -> None:
    """Opens read-write in RocksDB 8.10 and reads back every key; every SST carries its CF's engine options."""
    rows = engine_read_all(db)
    if expect_rows is not None:
        assert {cf: rows.get(cf, {}) for cf in expect_rows} == expect_rows
    tables = sst_options(db)
    assert tables, "no SST files to check"
    for table in tables:
        compression, block_size, prefix = COLUMN_FAMILIES[table["cf"]]
        assert table["filter"] == "bloomfilter", table
        assert table["prefix"] == (f"rocksdb.FixedPrefix.{prefix}" if prefix else "nullptr"), table
        assert table["compression"] == ("LZ4" if compression == "lz4" else "NoCompression"), table
        if table["blocks"] > 1:  # blocks cut at the CF's block size
            assert table["raw"] / table["blocks"] <= block_size * 1.5, table


# --------------------------------------------------------------------------------------- verify


def test_verify_reports_nothing_above_info_on_what_the_engine_writes(engine_db):
    code, report = verify(engine_db)
    assert code == 0, report["by_category"]
    assert {i["severity"] for i in report["issues"]} == {"info"}, report["by_category"]
    messages = " ".join(i["message"] for i in report["issues"])
    assert "an old key of the entity" in messages  # the update that renamed a-3
    assert "hard_delete leaves edge rows" in messages  # the hard-deleted person's edge
    assert report["checked"]["entities"] == len(dump_all(engine_db)["entities"])


def test_damage_the_engine_cannot_produce_is_critical(engine_db):
    rows = dump_all(engine_db)
    key, value = next((k, v) for k, v in sorted(rows["entities"].items())
                      if orjson.loads(v)["entity_type"] == "articles" and k.startswith(b"entity:acme:"))
    entity = orjson.loads(value)
    other = "00000000-0000-5000-8000-00000000c0de"
    src, dst, rel = f.parse_edge_key(next(iter(rows["edges"])))
    plant(engine_db, [("entities", f.entity_key("acme", other), value),  # stored under another id
                      ("entities", key, orjson.dumps({**entity, "properties": {**entity["properties"], "views": "x"}}))],
          deletes=[("edges_reverse", f.edge_reverse_key(src, dst, rel))])
    code, report = verify(engine_db)
    critical = {(i["category"], i["entity_id"]) for i in report["issues"] if i["severity"] == "critical"}
    assert code == 1
    assert ("decode", other) in critical and ("schema", entity["id"]) in critical and ("edge", src) in critical


# ------------------------------------------------------------------------------ rebuild, vacuum


def test_index_rebuild_changes_no_row_the_engine_reads(engine_db):
    before = dump_all(engine_db)
    keys = json.loads(rem("--db-path", str(engine_db), "index", "rebuild", "--type", "keys", "--json",
                          check=True).stdout)
    assert keys["keys"] == {"cf": "key_index", "written": 0, "removed": 0}
    assert dump_all(engine_db) == before
    rem("--db-path", str(engine_db), "index", "rebuild", "--type", "fields", "--json", check=True)
    after = dump_all(engine_db)
    assert {cf: rows for cf, rows in after.items() if cf != "indexes"} == \
        {cf: rows for cf, rows in before.items() if cf != "indexes"}  # the engine never reads `indexes`
    assert_engine_compatible(engine_db)


def test_a_lost_key_row_is_written_back_and_nothing_else(engine_db):
    rows = dump_all(engine_db)
    lost = next(k for k in sorted(rows["key_index"]) if b":a-7:" in k)
    plant(engine_db, deletes=[("key_index", lost)])
    result = json.loads(rem("--db-path", str(engine_db), "index", "rebuild", "--type", "keys", "--json",
                            check=True).stdout)
    assert result["keys"]["written"] == 1 and dump_all(engine_db) == rows


def expected_after_vacuum(rows: dict) -> dict:
    """The engine's rows minus those of soft-deleted entities, worked out from a plain dump."""
    victims, live_ids = set(), set()
    for key, value in rows["entities"].items():
        tenant, uuid = key.decode().split(":")[1:]
        e = orjson.loads(value)
        (victims.add((tenant, uuid)) if e["deleted_at"] and e["entity_type"] != "schemas" else live_ids.add(uuid))
    dead_ids = {uuid for _, uuid in victims} - live_ids
    gone = {f.entity_key(t, u) for t, u in victims}
    gone |= {k for k in rows["key_index"] if tuple(f.parse_key_index_key(k)[::2]) in victims}  # (tenant, uuid)
    for key in rows["edges"]:
        src, dst, rel = f.parse_edge_key(key)
        if src in dead_ids or dst in dead_ids:
            gone |= {key, f.edge_reverse_key(src, dst, rel)}
    assert victims and dead_ids and any(u not in dead_ids for _, u in victims), "the scenario must cover both cases"
    return {cf: {k: v for k, v in cf_rows.items() if k not in gone} for cf, cf_rows in rows.items()}


def test_vacuum_removes_exactly_the_soft_deleted_entities_rows(engine_db):
    before = dump_all(engine_db)
    expected = expected_after_vacuum(before)
    assert expected != before
    report = json.loads(rem("--db-path", str(engine_db), "db", "vacuum", "--older-than", "0s", "--json",
                            check=True).stdout)
    assert report["entities"] == 5  # a-4 and a-5 in both tenants, a-10 in the first
    assert dump_all(engine_db) == expected
    assert_engine_compatible(engine_db, expected)


# ------------------------------------------------------------------------- RocksDB 8.10 reads it


def test_every_database_a_command_writes_opens_in_rocksdb_810_with_the_engine_options(engine_db, tmp_path):
    original = dump_all(engine_db)
    rem("--db-path", str(engine_db), "db", "compact", "--json", check=True)
    assert_engine_compatible(engine_db, original)

    meta = json.loads(rem("--db-path", str(engine_db), "backup", "create", "--json", check=True).stdout)
    restored = tmp_path / "restored"
    rem("backup", "restore", "--source", meta["location"], "--target", str(restored), check=True)
    assert_engine_compatible(restored, original)

    tenant = json.loads(rem("--db-path", str(engine_db), "backup", "create", "--tenant", "acme", "--json",
                            check=True).stdout)
    rem("backup", "restore", "--source", tenant["location"], "--target", str(restored), "--overwrite", check=True)
    assert_engine_compatible(restored, original)

    fresh = tmp_path / "fresh"
    rem("--db-path", str(fresh), "db", "init", check=True)
    rows = engine_read_all(fresh)
    assert set(rows) == set(COLUMN_FAMILIES)


def test_metadata_names_the_engine_rocksdb_and_ours_apart(engine_db):
    meta = json.loads(rem("--db-path", str(engine_db), "backup", "create", "--json", check=True).stdout)
    assert meta["rocksdb_version"] == "8.10.0"  # from the engine's OPTIONS file
    # Ours, read independently: the OPTIONS file plain rocksdict writes for a throwaway database.
    import re
    import tempfile

    from rocksdict import Options, Rdict

    with tempfile.TemporaryDirectory() as tmp:
        Rdict(tmp, Options(raw_mode=True)).close()
        ours = re.search(r"rocksdb_version=([\d.]+)", next(Path(tmp).glob("OPTIONS-*")).read_text()).group(1)
    assert meta["tools_rocksdb_version"] == ours != "8.10.0"


# ---------------------------------------------------------------------------------- golden rows


def test_our_codecs_write_the_engines_bytes(engine_db):
    """Every entity, edge and logical WAL row the engine wrote decodes and re-encodes byte for byte
    (serde's field order; serde_json::Value objects with sorted keys)."""
    rows = dump_all(engine_db)
    for key, value in rows["entities"].items():
        f.decode_entity(key, value)
        assert f.encode_entity(orjson.loads(value)) == value, key
    for cf in ("edges", "edges_reverse"):
        for key, value in rows[cf].items():
            assert f.encode_edge(f.decode_edge(key, value, cf).model_dump(mode="json")) == value, key
    for key, value in rows["wal"].items():
        entry = f.decode_wal_entry(key, value)
        raw = orjson.loads(value)
        assert f.wal_entry_json(entry.seq, raw["timestamp"], raw["op"]) == value, key


# --------------------------------------------------------------------------------------- export


def test_export_carries_the_engines_vectors_and_its_system_schemas(engine_db, tmp_path):
    import numpy as np
    import pyarrow.parquet as pq

    out = tmp_path / "export"
    rem("--db-path", str(engine_db), "export", "--tenant", "acme", "--output", str(out), "--include-deleted",
        check=True)
    entities = {orjson.loads(v)["id"]: orjson.loads(v) for k, v in dump_all(engine_db)["entities"].items()
                if k.startswith(b"entity:acme:")}
    articles = pq.read_table(out / "articles.parquet").to_pylist()
    assert len(articles) == sum(e["entity_type"] == "articles" for e in entities.values())
    for row in articles:
        stored = entities[row["id"]]["properties"]["embedding"]
        assert row["embedding"] == np.asarray(stored, dtype="<f4").tolist()  # the engine's get_embedding: f32
        assert row["slug"] == entities[row["id"]]["properties"]["slug"]
    sessions = pq.read_table(out / "sessions.parquet").to_pylist()
    assert len(sessions) == 1
    session = entities[sessions[0]["id"]]
    # the property created_at (a system column's name) travels as prop_created_at; the column is the entity's
    assert sessions[0]["prop_created_at"] == session["properties"]["created_at"]
    assert sessions[0]["created_at"].isoformat().startswith(session["created_at"][:26])
    resources = pq.read_table(out / "resources.parquet").to_pylist()
    assert [r["uri"] for r in resources] == ["https://acme.example/doc"]
    assert json.loads(resources[0]["extra_properties"]) == {"tenant_id": "acme", "timestamp": "2026-01-01T00:00:00Z"}
    messages = pq.read_table(out / "messages.parquet").to_pylist()
    assert [m["message_id"] for m in messages] == ["7"]


# -------------------------------------------------------------- read-only means not touching it


def _files(db: Path) -> dict[str, tuple[int, int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in db.iterdir()}


def test_read_only_commands_never_touch_the_engines_directory(engine_db, tmp_path):
    """Eight read-only commands at once; the kernel reports every entry created, deleted, renamed
    or written in the directory meanwhile (rocksdict used to create and unlink its config there on
    every open, and left it behind when two opened at once)."""
    from tests.helpers import DirectoryEvents

    before = _files(engine_db)
    watch = DirectoryEvents(engine_db)
    commands = [["db", "stats"], ["db", "stats"], ["db", "verify"], ["db", "health"], ["metrics"],
                ["backup", "create", "--json"], ["query", "SELECT COUNT(*) FROM articles"],
                ["export", "--tenant", "acme", "--output", str(tmp_path / "export")]]
    procs = [subprocess.Popen([".venv/bin/python", "-m", "cli.main", "--db-path", str(engine_db), *c], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in commands]
    errors = [(c, p.wait(120), p.stderr.read()) for c, p in zip(commands, procs)]
    events = watch.collect()
    assert all(code in (0, 1) and "Traceback" not in err for _, code, err in errors), errors  # health may say 1
    assert events == [], events
    assert _files(engine_db) == before
    assert not [p for p in engine_db.parent.iterdir() if p.name.startswith(".rem-view-")]
    rem("--db-path", str(engine_db), "db", "compact", check=True)  # the watch does see a writer
    assert watch.collect(), "a compaction must show up: the watch would miss nothing"
    watch.close()


def test_repaired_and_point_in_time_restores_open_in_rocksdb_810_with_the_engine_options(
        _engine_dbs, tmp_path, s3_endpoint, bucket):
    db = tmp_path / "primary"
    shutil.copytree(_engine_dbs["primary"], db)
    env = {"P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": s3_endpoint, "P8_BACKUP_CHUNK_SIZE_MB": "5"}
    meta = json.loads(rem("--db-path", str(db), "backup", "create", "--archive", "--json", check=True).stdout)

    # A copy whose CURRENT is gone: the restore repairs it, and the repaired database is the engine's.
    from tests.test_backup import _rebuilt_backup

    damaged = _rebuilt_backup(tmp_path, meta, lambda d: (d / "CURRENT").unlink())
    repaired = tmp_path / "repaired"
    rem("backup", "restore", "--source", str(damaged), "--target", str(repaired), check=True)
    assert_engine_compatible(repaired, engine_read_all(db))

    rem("--db-path", str(db), "backup", "create", "--upload", env=env, check=True)
    engine = LiveEngine(db, "primary")  # PITR follows a live engine: one that closes flushes its log away
    try:
        rem("--db-path", str(db), "pitr", "archive", env=env, check=True)
        engine.call("insert", "acme", "people", {"name": "Later", "age": 1})
        rem("--db-path", str(db), "pitr", "archive", env=env, check=True)
        moment = datetime.now(timezone.utc).isoformat()
        rem("--db-path", str(db), "pitr", "archive", env=env, check=True)
    finally:
        engine.close()
    out = tmp_path / "pitr"
    rem("--db-path", str(db), "pitr", "restore", "--timestamp", moment, "--output", str(out), env=env, check=True)
    restored = engine_read_all(out)
    assert any(b'"Later"' in v for v in restored["entities"].values())
    assert_engine_compatible(out)
