"""Incremental backups: each SST stored once per database, a backup costs what changed, retention
collects what no backup references. Databases come from the engine-faithful writer (RocksDB 8.10)."""

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.engine import engine_write
from tests.engine.sample import engine_sample
from tests.faultproxy import FaultProxy
from tests.helpers import REPO, database_files, db_name_of, dump_all, rem


def backup(db, env, *extra) -> dict:
    proc = rem("--db-path", str(db), "backup", "create", "--json", *extra, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def sst_hashes(db: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in db.glob("*.sst")}


def objects(s3, bucket, db) -> set[str]:
    prefix = f"{db_name_of(db)}/backups/sst/"
    return {o["Key"][len(prefix):-4] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                                               Prefix=prefix)
            for o in page.get("Contents", [])}


def writes(round_: int, count: int = 150) -> list:
    """Engine writes of one round: new entities, an update and a soft delete of earlier ones."""
    ops = [["insert", "acme", "articles", {"name": f"r{round_}-{i}", "content": "x" * 200}] for i in range(count)]
    return ops + [["update", "acme", "$0", {"content": f"changed in {round_}"}], ["delete", "acme", "$1"]]


def s3_env(endpoint, bucket):
    return {"P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": endpoint, "P8_BACKUP_CHUNK_SIZE_MB": "5"}


def test_a_second_backup_uploads_only_the_small_files_and_after_changes_exactly_the_new_ssts(
        tmp_path, s3_endpoint, bucket, s3):
    db = tmp_path / "db"
    engine_sample(db, 3000, 2, 5, 32)
    env = s3_env(s3_endpoint, bucket)
    first = backup(db, env, "--upload", "--name", "first")  # named: two runs within a second would share a time
    assert first["layout"] == "incremental" and objects(s3, bucket, db) == sst_hashes(db)
    before = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    second = backup(db, env, "--upload", "--name", "second")
    after = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    home = f"{db_name_of(db)}/backups/full/_all/{second['name']}/"
    assert after - before == {home + f for f in ("files.json", "small.tar.zst", "schemas.json", "metadata.json")}
    assert second["added_bytes"] < 0.05 * first["added_bytes"]  # the small files and the list
    assert second["column_families"] == first["column_families"]  # counts the unchanged files still hold

    held = sst_hashes(db)
    engine_write(db, writes(1, 2000))  # the engine's own flush on close writes new SSTs
    rem("--db-path", str(db), "db", "compact", "--cf", "entities", check=True)  # and RocksDB rewrites some
    new = sst_hashes(db) - held
    assert new, "the writes and the compaction must have made new SSTs"
    known = objects(s3, bucket, db)
    third = backup(db, env, "--upload", "--name", "third")
    assert objects(s3, bucket, db) - known == new  # exactly the new SSTs, nothing already held
    # described anew, not reused: RocksDB's estimate, exact for the column family just compacted
    assert third["column_families"]["entities"] == len(dump_all(db)["entities"]) > first["column_families"]["entities"]
    restored = tmp_path / "restored"
    got = json.loads(rem("--db-path", str(db), "backup", "download", "--name", third["name"], "--output",
                         str(tmp_path / "dl"), "--json", env=env, check=True).stdout)
    rem("backup", "restore", "--source", got["path"], "--target", str(restored), check=True)
    assert dump_all(restored) == dump_all(db)


def test_each_of_five_backups_restores_its_own_moment_and_the_oldest_survives_a_prune_of_the_others(tmp_path):
    db = tmp_path / "db"
    engine_sample(db, 1000, 2, 6, 16)
    env = {"P8_BACKUP_DIR": str(tmp_path / "backups"), "P8_BACKUP_GC_GRACE_HOURS": "0"}
    home = tmp_path / "backups" / db_name_of(db) / "backups"
    moments = {}
    for round_ in range(5):
        if round_:
            engine_write(db, writes(round_))
        if round_ == 2:  # RocksDB rewrites the SSTs the first backups hold: theirs become unique to them
            rem("--db-path", str(db), "db", "compact", check=True)
        name = backup(db, env, "--name", f"b{round_}")["name"]
        moments[name] = dump_all(db)
    for name, then in moments.items():
        out = tmp_path / f"r-{name}"
        rem("backup", "restore", "--source", str(home / "full" / "_all" / name), "--target", str(out), check=True)
        assert dump_all(out) == then, name

    # Prune never deletes the newest backup, so to prune all but the oldest, the oldest is made a
    # monthly of last month: prune keeps it and the newest, and collects what only b1-b3 held.
    meta_path = home / "full" / "_all" / "b0" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["timestamp"] = "2020-01-01T00:00:00Z"
    meta_path.write_text(json.dumps(meta))
    pruned = json.loads(rem("--db-path", str(db), "backup", "prune", "--keep-daily", "1", "--keep-weekly", "0",
                            "--keep-monthly", "2", "--json", env=env, check=True).stdout)
    kept = {r["name"] for r in pruned["keep"]}
    assert "b0" in kept and len(kept) == 2 and len(pruned["delete"]) == 3
    assert next(iter(pruned["garbage"].values()))["deleted_objects"] > 0  # b1-b3's own SSTs went
    named = set()
    for name in kept:
        named |= {f["sha256"] for f in json.loads((home / "full" / "_all" / name / "files.json").read_text())["files"]
                  if f["object"]}
    assert {p.name[:-4] for p in (home / "sst").iterdir()} == named  # exactly the kept backups' objects remain
    for name in kept:
        out = tmp_path / f"after-prune-{name}"
        rem("backup", "restore", "--source", str(home / "full" / "_all" / name), "--target", str(out), check=True)
        assert dump_all(out) == moments[name]


def test_a_corrupted_shared_object_is_named_with_every_backup_that_needs_it_and_nothing_is_restored(tmp_path):
    db = tmp_path / "db"
    engine_sample(db, 1000, 2, 7, 16)
    env = {"P8_BACKUP_DIR": str(tmp_path / "backups")}
    backup(db, env, "--name", "one")
    engine_write(db, writes(1))
    backup(db, env, "--name", "two")
    home = tmp_path / "backups" / db_name_of(db) / "backups"
    files = json.loads((home / "full" / "_all" / "one" / "files.json").read_text())["files"]
    victim = max((f for f in files if f["object"]), key=lambda f: f["stored_bytes"])  # in both backups
    path = home / "sst" / (victim["sha256"] + ".zst")
    body = bytearray(path.read_bytes())
    body[len(body) // 2] ^= 0xFF
    path.write_bytes(bytes(body))
    proc = rem("--db-path", str(db), "backup", "verify", "--name", "two", env=env)
    assert proc.returncode == 1
    assert victim["sha256"] in proc.stderr and "one, two" in proc.stderr, proc.stderr
    target = tmp_path / "target"
    proc = rem("backup", "restore", "--source", str(home / "full" / "_all" / "one"), "--target", str(target))
    assert proc.returncode == 1 and not target.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rem-")]  # no scratch left


def test_a_killed_upload_and_an_interrupted_prune_leave_nothing_a_later_run_trips_on(tmp_path, s3_endpoint, bucket,
                                                                                      s3):
    db = tmp_path / "db"
    engine_sample(db, 3000, 2, 8, 64)
    release = threading.Event()
    uploads = []

    def stall_second_object(method, path, headers):
        if "/backups/sst/" in path and method == "POST" and "uploads" in path:
            uploads.append(path)
            if len(uploads) == 2:
                release.wait(60)
        return None

    with FaultProxy(s3_endpoint, rule=stall_second_object) as proxy:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "--db-path", str(db), "backup", "create",
                                 "--upload", "--name", "killed"], cwd=REPO,
                                env={**os.environ, **s3_env(proxy.url, bucket)}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while len(uploads) < 2 and time.time() < deadline:
            time.sleep(0.1)
        proc.kill()
        proc.wait()
        release.set()
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), "the kill must leave an unfinished object"
    env = {**s3_env(s3_endpoint, bucket), "P8_BACKUP_GC_GRACE_HOURS": "0"}
    assert json.loads(rem("--db-path", str(db), "backup", "list", "--json", env=env, check=True).stdout) == []
    good = backup(db, env, "--upload", "--name", "good")
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # the dead run's are aborted
    assert objects(s3, bucket, db) == sst_hashes(db)
    # A prune killed after it removed a backup's metadata.json: the next prune finishes the job.
    backup(db, env, "--upload", "--name", "newest")
    s3.delete_object(Bucket=bucket, Key=f"{db_name_of(db)}/backups/full/_all/good/metadata.json")
    rem("--db-path", str(db), "backup", "prune", "--json", env=env, check=True)
    left = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert not [k for k in left if "/full/_all/good/" in k or "/full/_all/killed/" in k]
    out = tmp_path / "restored"
    got = json.loads(rem("--db-path", str(db), "backup", "download", "--name", "newest", "--output",
                         str(tmp_path / "dl"), "--json", env=env, check=True).stdout)
    rem("backup", "restore", "--source", got["path"], "--target", str(out), check=True)
    assert dump_all(out) == dump_all(db) and good["name"] == "good"


def test_a_delta_restore_over_a_database_changed_since_fetches_only_what_changed_and_equals_a_full_one(
        tmp_path, s3_endpoint, bucket, s3):
    db = tmp_path / "db"
    engine_sample(db, 6000, 2, 9, 32)
    env = s3_env(s3_endpoint, bucket)
    backup(db, env, "--upload", "--name", "night")
    full = tmp_path / "full"
    with FaultProxy(s3_endpoint) as proxy:
        rem("--db-path", str(db), "backup", "restore", "--name", "night", "--target", str(full), "--json",
            env={**env, "P8_S3_ENDPOINT_URL": proxy.url}, check=True)
    full_bytes = proxy.fetched_bytes(s3, bucket)

    engine_write(db, writes(9, 60))  # about 1% more; the engine's flush on close writes a new SST
    with FaultProxy(s3_endpoint) as proxy:
        result = json.loads(rem("--db-path", str(db), "backup", "restore", "--name", "night", "--target", str(db),
                                "--delta", "--json", env={**env, "P8_S3_ENDPOINT_URL": proxy.url}, check=True).stdout)
    delta_bytes = proxy.fetched_bytes(s3, bucket)
    print(f"delta fetched {delta_bytes:,} of a full restore's {full_bytes:,} bytes")
    assert delta_bytes <= 0.05 * full_bytes, (delta_bytes, full_bytes)
    ssts = sum(p.stat().st_size for p in full.glob("*.sst"))
    assert result["delta"]["kept_bytes"] >= 0.95 * ssts  # linked from the target, not written again
    assert database_files(db) == database_files(full)
    assert dump_all(db) == dump_all(full)


def test_delta_refuses_a_tenant_backup_and_changes_nothing(tmp_path):
    db = tmp_path / "db"
    engine_sample(db, 500, 2, 10, 16)
    env = {"P8_BACKUP_DIR": str(tmp_path / "b")}
    backup(db, env, "--tenant", "acme", "--name", "t")
    before = dump_all(db)
    proc = rem("--db-path", str(db), "backup", "restore", "--name", "t", "--tenant", "acme", "--target", str(db),
               "--delta", env=env)
    assert proc.returncode == 2 and "--delta" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert dump_all(db) == before
