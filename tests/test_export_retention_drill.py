"""Export round trip, SQL spot checks, GFS retention, lifecycle rules and recovery drills."""

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from rem.retention import gfs_keep
from tests.helpers import db_name_of, dump_all, rem


SYSTEM_COLUMNS = {"tenant_id", "id", "entity_type", "created_at", "modified_at", "deleted_at", "edges",
                  "extra_properties"}


def test_export_round_trip_equals_the_database(make_sample, tmp_path):
    path = make_sample(entities=1500, dim=16)
    out = tmp_path / "export"
    result = json.loads(rem("--db-path", str(path), "export", "--tenant", "acme", "--format", "parquet", "--output",
                            str(out), "--json", check=True).stdout)
    rows = dump_all(path)
    entities = {k.split(b":")[2].decode(): orjson.loads(v) for k, v in rows["entities"].items()
                if k.startswith(b"entity:acme:")}
    # the sample tables, and the built-in schemas the tenant has entities of (resources, sessions)
    assert {f["schema"] for f in result["files"]} == {"articles", "people", "projects", "tickets", "notes",
                                                      "resources", "sessions"}
    seen = 0
    for f in result["files"]:
        assert f["nulled_values"] == 0
        table = pq.read_table(f["path"])
        if f["schema"] not in ("resources", "sessions"):  # vectors: the engine's f32 view of properties.embedding
            assert str(table.schema.field("embedding").type.value_type) == "float"
        for row in table.to_pylist():
            e = entities[row["id"]]
            seen += 1
            assert e["deleted_at"] is None and row["tenant_id"] == "acme" and row["entity_type"] == e["entity_type"]
            assert row["created_at"] == datetime.fromisoformat(e["created_at"].replace("Z", "+00:00"))
            props = dict(e["properties"])
            inline = props.pop("embedding", None)
            extra = json.loads(row["extra_properties"]) if row["extra_properties"] else {}
            for name, value in props.items():
                column = f"prop_{name}" if name in SYSTEM_COLUMNS else name  # sessions declare tenant_id
                got = extra[name] if name in extra else row[column]
                if isinstance(value, str) and name in ("published_at", "opened_at"):
                    got = got.isoformat().replace("+00:00", "Z") if not isinstance(got, str) else got
                    value = datetime.fromisoformat(value.replace("Z", "+00:00")).isoformat().replace("+00:00", "Z")
                assert got == value, (name, got, value)
            if inline is not None:
                assert row["embedding"] == pytest.approx(inline, rel=1e-6)
            assert json.loads(row["edges"]) == e["edges"]
    assert seen == sum(1 for e in entities.values() if e["deleted_at"] is None)
    single = tmp_path / "articles.parquet"
    rem("--db-path", str(path), "export", "--tenant", "acme", "--schemas", "articles", "--output", str(single),
        "--include-deleted", check=True)
    assert pq.read_table(single).num_rows == sum(1 for e in entities.values() if e["entity_type"] == "articles")


def test_export_upload_writes_the_runbook_layout(make_sample, s3_endpoint, bucket, s3):
    path = make_sample()
    env = {"P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": s3_endpoint}
    rem("--db-path", str(path), "export", "--tenant", "globex", "--schemas", "people,tickets", "--upload",
        env=env, check=True)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    name = db_name_of(path)
    assert [k.split("/")[0:3] + [k.split("/")[4]] for k in keys if k != f"{name}/database.json"] == [
        [name, "exports", "globex", "people.parquet"], [name, "exports", "globex", "tickets.parquet"]]


def test_query_answers_spot_checks_on_live_and_restored_databases(make_sample, tmp_path):
    path = make_sample(entities=1500)
    rows = dump_all(path)
    live = [orjson.loads(v) for k, v in rows["entities"].items()]
    want = sum(1 for e in live if e["entity_type"] == "articles" and e["deleted_at"] is None)
    got = json.loads(rem("--db-path", str(path), "query", "SELECT COUNT(*) FROM articles", "--json",
                         check=True).stdout)
    assert got["rows"] == [[want]]
    meta = json.loads(rem("--db-path", str(path), "backup", "create", "--json", check=True).stdout)
    restored = tmp_path / "restored"
    rem("backup", "restore", "--source", meta["location"], "--target", str(restored), check=True)
    grouped = json.loads(rem("--db-path", str(restored), "query",
                             "SELECT status, COUNT(*) AS n FROM tickets WHERE priority > 2 GROUP BY status "
                             "ORDER BY status LIMIT 5", "--json", check=True).stdout)
    expected: dict = {}
    for e in live:
        if e["entity_type"] == "tickets" and e["deleted_at"] is None and e["properties"]["priority"] > 2:
            expected[e["properties"]["status"]] = expected.get(e["properties"]["status"], 0) + 1
    assert grouped["rows"] == [[k, v] for k, v in sorted(expected.items())]
    proc = rem("--db-path", str(path), "query", "DELETE FROM articles")
    assert proc.returncode == 2 and "read-only" in proc.stderr


def _fake_backup(root: Path, when: datetime, seq: int) -> str:
    name = when.strftime("%Y-%m-%dT%H%M%SZ")
    folder = root / "full" / "_all" / name
    folder.mkdir(parents=True)
    meta = {"name": name, "kind": "full", "tenant_id": None, "timestamp": when.isoformat().replace("+00:00", "Z"),
            "size_bytes": 1, "uncompressed_bytes": 1, "entity_count": 0, "schema_count": 0, "checksum_sha256": "0",
            "rocksdb_version": "8.10.0", "schema_version": "0", "wal_last_seq": 0, "last_sequence": seq,
            "column_families": {},
            "host": "h", "tool_version": "t", "duration_seconds": 1.0, "compression": "zstd-3", "online": False}
    (folder / "metadata.json").write_text(json.dumps(meta))
    return name


def test_a_year_of_daily_backups_is_pruned_to_exactly_the_gfs_set(make_sample, tmp_path, s3_endpoint, bucket):
    db = make_sample()
    backups = tmp_path / "backups"
    start = datetime(2025, 1, 1, 2, 0, tzinfo=timezone.utc)
    days = [start + timedelta(days=i) for i in range(365)]
    name = db_name_of(db)
    home = backups / name / "backups"
    for i, d in enumerate(days):
        _fake_backup(home, d, seq=i + 1)
    newest = days[-1]
    # The expected set, worked out by hand from the calendar: 7 newest days, the newest backup of each
    # of the 4 newest ISO weeks, of the 3 newest months.
    daily = {d for d in days if d > newest - timedelta(days=7)}
    weeks, months = {}, {}
    for d in sorted(days, reverse=True):
        weeks.setdefault(d.isocalendar()[:2], d)
        months.setdefault((d.year, d.month), d)
    weekly = set(sorted(weeks.values(), reverse=True)[:4])
    monthly = set(sorted(months.values(), reverse=True)[:3])
    expected = {d.strftime("%Y-%m-%dT%H%M%SZ") for d in daily | weekly | monthly}
    oldest_kept_seq = days.index(min(daily | weekly | monthly)) + 1

    env = {"P8_BACKUP_DIR": str(backups), "P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": s3_endpoint}
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    manifest = {"format_version": 2, "last_archived_sequence": 365, "wal_segments": [
        {"key": f"{name}/backups/wal/_all/segments/{i:020d}-{i:020d}.log.zst", "log_number": i, "start_offset": 0,
         "end_offset": 1, "first_seq": i, "last_seq": i, "first_timestamp": "x", "last_timestamp": "x", "batches": 1,
         "size_bytes": 1, "sha256": "0"} for i in range(1, 366)]}
    s3.put_object(Bucket=bucket, Key=f"{name}/backups/wal/_all/manifest.json", Body=json.dumps(manifest).encode())
    for seg in manifest["wal_segments"]:
        s3.put_object(Bucket=bucket, Key=seg["key"], Body=b"x")

    dry = json.loads(rem("--db-path", str(db), "backup", "prune", "--dry-run", "--json", env=env, check=True).stdout)
    assert {r["name"] for r in dry["keep"]} == expected
    assert len(list((home / "full" / "_all").iterdir())) == 365  # nothing deleted by a dry run
    rem("--db-path", str(db), "backup", "prune", env=env, check=True)
    assert {p.name for p in (home / "full" / "_all").iterdir()} == expected
    kept = json.loads(s3.get_object(Bucket=bucket, Key=f"{name}/backups/wal/_all/manifest.json")["Body"].read())
    assert min(s["first_seq"] for s in kept["wal_segments"]) == oldest_kept_seq + 1  # what no kept base holds
    stored = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{name}/backups/wal/_all/segments/") for o in page.get("Contents", [])}
    assert stored == {s["key"] for s in kept["wal_segments"]}


def test_gfs_keeps_the_newest_of_each_bucket():
    t = [datetime(2025, 3, 1, 1, tzinfo=timezone.utc), datetime(2025, 3, 1, 9, tzinfo=timezone.utc),
         datetime(2025, 3, 2, 1, tzinfo=timezone.utc), datetime(2025, 3, 2, 5, tzinfo=timezone.utc)]
    assert gfs_keep(t, keep_daily=2, keep_weekly=0, keep_monthly=0) == {3: ["daily 2025-03-02"],
                                                                          1: ["daily 2025-03-01"]}
    assert set(gfs_keep(t, keep_daily=1, keep_weekly=1, keep_monthly=1)) == {3}


def test_lifecycle_rules_are_installed_idempotently_per_database(make_sample, s3_endpoint, bucket, s3):
    first, second = make_sample(), make_sample()
    env = {"P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": s3_endpoint}
    a, b = db_name_of(first), db_name_of(second)
    # The rule earlier versions installed (it moved metadata.json to Glacier too) is replaced.
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": f"rem-{a}-backups-glacier-then-expire", "Status": "Enabled", "Filter": {"Prefix": f"{a}/backups/full/"},
         "Transitions": [{"Days": 30, "StorageClass": "GLACIER"}]}]})
    for db in (first, first, second):
        result = json.loads(rem("--db-path", str(db), "backup", "lifecycle", "apply", "--keep-monthly", "6", "--json",
                                env=env, check=True).stdout)
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert sorted(r["ID"] for r in rules) == sorted(f"rem-{n}-{rule}" for n in (a, b) for rule in (
        "abort-incomplete-uploads", "backup-data-to-glacier", "backups-expire"))  # the second database kept the first's
    glacier = next(r for r in rules if r["ID"] == f"rem-{a}-backup-data-to-glacier")
    assert glacier["Filter"]["And"] == {"Prefix": f"{a}/backups/full/", "Tags": [{"Key": "rem-class", "Value": "data"}]}
    assert glacier["Transitions"][0] == {"Days": 30, "StorageClass": "GLACIER"} and "Expiration" not in glacier
    expire = next(r for r in rules if r["ID"] == f"rem-{a}-backups-expire")
    assert expire["Filter"]["And"] == {"Prefix": f"{a}/backups/full/", "Tags": [{"Key": "rem-keep", "Value": "no"}]}
    assert expire["Expiration"]["Days"] == 90  # a kept backup (rem-keep=yes) never expires
    assert any("beyond" in note for note in result["notes"])


def test_drill_passes_on_a_healthy_database_and_logs_it(make_sample, s3_endpoint, bucket, tmp_path):
    db = make_sample(entities=1000)
    env = {"P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": s3_endpoint, "P8_BACKUP_DIR": str(tmp_path / "b")}
    result = json.loads(rem("--db-path", str(db), "drill", "--json", env=env, check=True).stdout)
    assert result["passed"] and result["counts"]["restored"] == result["counts"]["live"]
    line = json.loads(Path(result["log"]).read_text().splitlines()[-1])
    assert line["passed"] and line["backup"] == result["backup"]
    assert not [p for p in Path("/tmp").glob("rem-drill-*")]


def test_drill_fails_cleanly_with_the_reason_on_a_corrupted_archive(make_sample, s3_endpoint, bucket, s3, tmp_path):
    db = make_sample()
    env = {"P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": s3_endpoint, "P8_BACKUP_DIR": str(tmp_path / "b"),
           "P8_BACKUP_CHUNK_SIZE_MB": "5"}
    meta = json.loads(rem("--db-path", str(db), "backup", "create", "--archive", "--upload", "--json", env=env,
                          check=True).stdout)
    key = f"{db_name_of(db)}/backups/full/_all/{meta['name']}/rocksdb.tar.zst"
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[100] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    proc = rem("--db-path", str(db), "drill", "--backup", meta["name"], "--json", env=env)
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert not result["passed"] and "checksum" in result["reason"]
    assert json.loads(Path(result["log"]).read_text().splitlines()[-1])["passed"] is False
