"""Vacuum, compaction, health and metrics, judged by what they do to the data and what they report."""

import json
import subprocess
import time
import sys
import urllib.request

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rem import format as f
from tests.engine import engine_write
from tests.helpers import REPO, dump_all, free_port, holding_lock, rem, snapshot_dir
from tests.test_verify import plant


def expected_vacuum(rows):
    """Every row vacuum must remove, worked out from a plain dump (all soft deletes are old)."""
    victims = {}
    for key, value in rows["entities"].items():
        e = orjson.loads(value)
        if e["deleted_at"] is not None and e["entity_type"] != "schemas":
            victims[e["id"]] = key.split(b":")[1].decode()
    gone = {cf: set() for cf in rows}
    for uuid, tenant in victims.items():
        gone["entities"].add(f.entity_key(tenant, uuid))
        gone["embeddings"] |= {k for k in rows["embeddings"] if k == f.embedding_key(tenant, uuid)}
        for cf in ("key_index", "indexes"):
            gone[cf] |= {k for k in rows[cf] if k.endswith(f":{uuid}".encode()) and k.split(b":")[1] == tenant.encode()}
    for key in rows["edges"]:
        src, dst, rel = f.parse_edge_key(key)
        if src in victims or dst in victims:
            gone["edges"].add(key)
            gone["edges_reverse"].add(f.edge_reverse_key(src, dst, rel))
    return victims, gone


def test_vacuum_removes_exactly_the_expected_rows_and_orphans_and_nothing_else(make_sample):
    path = make_sample(entities=1500)
    orphan_key = f.key_index_key("acme", "ghost", "00000000-dead-4000-8000-000000000009")
    orphan_emb = f.embedding_key("acme", "00000000-dead-4000-8000-000000000009")
    plant(path, [("key_index", orphan_key, b'{"type":"articles"}'), ("embeddings", orphan_emb, b"\0" * 64)])
    before = dump_all(path)
    victims, gone = expected_vacuum(before)
    gone["key_index"].add(orphan_key)
    gone["embeddings"].add(orphan_emb)
    assert len(victims) > 30

    files = snapshot_dir(path)
    dry = json.loads(rem("--db-path", str(path), "db", "vacuum", "--dry-run", "--older-than", "0s", "--orphans",
                         "--json", check=True).stdout)
    assert snapshot_dir(path) == files, "--dry-run must write nothing"
    assert dry["entities"] == len(victims) and dry["rows"] == {cf: len(k) for cf, k in gone.items() if k}

    report = json.loads(rem("--db-path", str(path), "db", "vacuum", "--older-than", "0s", "--orphans", "--json",
                            check=True).stdout)
    assert report["rows"] == dry["rows"] and report["orphans"] == {"key_index": 1, "embeddings": 1}
    assert report["bytes_reclaimed"] > 0
    after = dump_all(path)
    for cf in before:
        assert after[cf] == {k: v for k, v in before[cf].items() if k not in gone[cf]}, cf
    again = json.loads(rem("--db-path", str(path), "db", "vacuum", "--older-than", "0s", "--json", check=True).stdout)
    assert again["entities"] == 0 and again["rows"] == {}  # an interrupted vacuum is finished by a rerun


def test_vacuum_keeps_deletes_newer_than_the_cutoff(make_sample):
    path = make_sample()
    before = dump_all(path)
    report = json.loads(rem("--db-path", str(path), "db", "vacuum", "--older-than", "3650d", "--json",
                            check=True).stdout)
    assert report["entities"] == 0 and dump_all(path) == before


def test_compaction_keeps_every_key_and_value(make_sample):
    path = make_sample(entities=1500)
    before = dump_all(path)
    rows = json.loads(rem("--db-path", str(path), "db", "compact", "--json", check=True).stdout)
    assert {r["cf"] for r in rows} == set(before) - {"default"}
    assert dump_all(path) == before
    proc = rem("--db-path", str(path), "db", "compact", "--cf", "nope")
    assert proc.returncode == 2 and "entities" in proc.stderr


@pytest.mark.parametrize("command", [["db", "vacuum", "--older-than", "0s"], ["db", "compact"]])
def test_write_operations_refuse_a_locked_database_and_change_nothing(make_sample, command):
    path = make_sample()
    with holding_lock(path):
        before = snapshot_dir(path)
        proc = rem("--db-path", str(path), *command)
        assert proc.returncode == 1 and "writer holds its lock" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert snapshot_dir(path) == before


def test_metrics_text_parses_and_carries_the_runbook_names(make_sample, tmp_path):
    path = make_sample()
    meta = json.loads(rem("--db-path", str(path), "backup", "create", "--json", check=True).stdout)
    text = rem("--db-path", str(path), "metrics", check=True).stdout
    families = {fam.name: fam for fam in text_string_to_metric_families(text)}
    assert {"rem_backup_last_success_timestamp", "rem_backup_duration_seconds", "rem_backup_size_bytes",
            "rem_wal_archive_lag_seconds", "rem_wal_archive_failures", "rem_db_size_bytes", "rem_db_keys_total",
            "rem_db_compaction_pending_bytes"} <= set(families)
    assert families["rem_backup_size_bytes"].samples[0].value == meta["size_bytes"]
    assert {s.labels["cf"] for s in families["rem_db_size_bytes"].samples} >= {"entities", "wal"}
    textfile = tmp_path / "rem.prom"
    rem("--db-path", str(path), "metrics", "--textfile", str(textfile), check=True)
    assert {fam.name for fam in text_string_to_metric_families(textfile.read_text())} == set(families)

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "cli.main", "--db-path", str(path), "metrics", "serve", "--port",
                               str(port)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        assert "127.0.0.1" in server.stderr.readline()
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "rem_db_keys_total" in body
    finally:
        server.terminate()
        server.wait()


def test_health_is_healthy_then_reports_each_threshold_crossing(make_sample, s3_endpoint, bucket):
    path = make_sample(replication="primary")  # its logical WAL is what this PITR archives
    proc = rem("--db-path", str(path), "db", "health")
    assert proc.returncode == 1 and json.loads(proc.stdout)["checks"]["backup"]["status"] == "critical"  # none yet
    rem("--db-path", str(path), "backup", "create", check=True)
    proc = rem("--db-path", str(path), "db", "health")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0 and doc["status"] == "healthy"
    assert set(doc) == {"status", "last_backup", "wal_archive_lag_sec", "disk_usage_percent", "checks"}
    assert set(doc["checks"]) >= {"rocksdb", "wal", "backup", "embeddings"}

    stale = json.loads(rem("--db-path", str(path), "db", "health", "--backup-max-age-hours", "0").stdout)
    assert stale["status"] == "unhealthy" and stale["checks"]["backup"]["status"] == "critical"
    full = json.loads(rem("--db-path", str(path), "db", "health", "--disk-warn-percent", "0").stdout)
    assert full["status"] == "degraded" and full["checks"]["disk"]["status"] == "warning"

    env = {"P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": s3_endpoint, "P8_PITR_ENABLED": "true"}
    rem("--db-path", str(path), "pitr", "archive", env=env, check=True)
    victim = next(k for k in dump_all(path)["entities"] if k.startswith(b"entity:acme:")).split(b":")[2].decode()
    time.sleep(1.1)
    engine_write(path, [["delete", "acme", victim]], "primary")  # a write the archive has not seen
    lagging = json.loads(rem("--db-path", str(path), "db", "health", "--wal-lag-warn-seconds", "0.5", env=env).stdout)
    assert lagging["status"] == "degraded" and lagging["checks"]["wal"]["status"] == "warning"
    assert lagging["wal_archive_lag_sec"] > 0.5
