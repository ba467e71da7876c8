"""The hostile test pass (#27): every case where a command exited 0 and left a backup that does not
restore, or deleted what a backup needed, or wrote where it was not asked to. Each race is forced
deterministically (a planted half-written SST, a proxy holding deletes, an engine opening at each
stage of a restore). Databases come from the engine-faithful writer (RocksDB 8.10)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.engine import engine_write
from tests.engine.sample import engine_sample
from tests.faultproxy import FaultProxy
from tests.helpers import REPO, db_name_of, dump_all, rem, snapshot_dir


def backup(db, env, *extra) -> dict:
    proc = rem("--db-path", str(db), "backup", "create", "--json", *extra, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def local_env(tmp_path) -> dict:
    return {"P8_BACKUP_DIR": str(tmp_path / "backups"), "P8_BACKUP_GC_GRACE_HOURS": "0"}


def s3_env(endpoint, bucket) -> dict:
    return {"P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": endpoint, "P8_BACKUP_CHUNK_SIZE_MB": "5",
            "P8_BACKUP_GC_GRACE_HOURS": "0"}


def restore_and_compare(db_or_rows, source: Path, target: Path) -> None:
    rem("backup", "restore", "--source", str(source), "--target", str(target), check=True)
    want = db_or_rows if isinstance(db_or_rows, dict) else dump_all(db_or_rows)
    assert dump_all(target) == want


@pytest.fixture(scope="module")
def small_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "db"
    engine_sample(path, 800, 2, 27, 16)
    return path


@pytest.fixture
def db(small_db, tmp_path) -> Path:
    copy = tmp_path / "db"
    shutil.copytree(small_db, copy)
    return copy


# -------------------------------------------------------------------- 2: half-written compaction output


def test_an_sst_a_compaction_is_still_writing_never_enters_a_backup(db, tmp_path):
    """A running compaction's output is a file in the directory that no version names yet, and it
    grows while the backup reads it. Planted here as the next file number holding half an SST."""
    live = sorted(db.glob("*.sst"), key=lambda p: p.stat().st_size)
    number = max(int(p.stem) for p in db.iterdir() if p.stem.isdigit()) + 1
    half = db / f"{number:06d}.sst"
    half.write_bytes(live[-1].read_bytes()[: live[-1].stat().st_size // 2])
    env = local_env(tmp_path)
    made = backup(db, env, "--name", "during-compaction")
    home = tmp_path / "backups" / db_name_of(db) / "backups" / "full" / "_all" / made["name"]
    listed = {f["name"] for f in json.loads((home / "files.json").read_text())["files"]}
    assert half.name not in listed and {p.name for p in live} <= listed
    half.write_bytes(half.read_bytes() + b"\0" * 4096)  # the compaction goes on writing
    rem("--db-path", str(db), "backup", "verify", "--name", made["name"], env=env, check=True)
    half.unlink()
    restore_and_compare(db, home, tmp_path / "restored")
    assert not (tmp_path / "restored" / half.name).exists()

    half.write_bytes(live[-1].read_bytes()[:1000])
    archived = backup(db, env, "--name", "archive-during-compaction", "--archive")
    assert half.name not in json.loads((home.parent / archived["name"] / "metadata.json").read_text())["files"]
    half.unlink()


# -------------------------------------------------------------------- 1: a damaged store object


def _biggest_object(files_json: dict) -> dict:
    return max((f for f in files_json["files"] if f["object"]), key=lambda f: f["stored_bytes"])


def test_a_corrupted_local_object_is_uploaded_again_by_the_next_backup_and_both_backups_verify(db, tmp_path):
    env = local_env(tmp_path)
    backup(db, env, "--name", "one")
    home = tmp_path / "backups" / db_name_of(db) / "backups"
    victim = _biggest_object(json.loads((home / "full" / "_all" / "one" / "files.json").read_text()))
    path = home / "sst" / (victim["sha256"] + ".zst")
    body = bytearray(path.read_bytes())
    body[len(body) // 2] ^= 0xFF  # same size: only the store's fingerprint tells
    path.write_bytes(bytes(body))
    proc = rem("--db-path", str(db), "backup", "verify", "--name", "one", env=env)
    assert proc.returncode == 1 and "take a new backup" in proc.stderr, proc.stderr
    backup(db, env, "--name", "two")
    for name in ("two", "one"):  # the object is whole again, so the older backup is too
        rem("--db-path", str(db), "backup", "verify", "--name", name, env=env, check=True)
    restore_and_compare(db, home / "full" / "_all" / "two", tmp_path / "restored")


def test_a_truncated_s3_object_is_uploaded_again_by_the_next_backup(db, tmp_path, s3_endpoint, bucket, s3):
    env = s3_env(s3_endpoint, bucket)
    first = backup(db, env, "--upload", "--name", "one")
    prefix = f"{db_name_of(db)}/backups/"
    listing = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}full/_all/one/files.json")["Body"].read())
    victim = _biggest_object(listing)
    key = f"{prefix}sst/{victim['sha256']}.zst"
    whole = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=whole[: len(whole) // 2])
    second = backup(db, env, "--upload", "--name", "two")
    assert second["added_bytes"] >= len(whole)  # the truncated object went up again
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == whole
    for name in ("two", "one"):
        rem("--db-path", str(db), "backup", "verify", "--name", name, env=env, check=True)
    assert first["name"] == "one"


# -------------------------------------------------------------------- 4: a damaged metadata.json


def test_a_damaged_metadata_file_stops_prune_and_every_object_stays(db, tmp_path):
    env = local_env(tmp_path)
    backup(db, env, "--name", "one")
    engine_write(db, [["insert", "acme", "articles", {"name": f"later-{i}", "content": "y" * 300}]
                      for i in range(300)])
    rem("--db-path", str(db), "db", "compact", check=True)  # new SSTs: "one" holds objects of its own
    backup(db, env, "--name", "two")
    store = tmp_path / "backups"
    meta = store / db_name_of(db) / "backups" / "full" / "_all" / "one" / "metadata.json"
    body = meta.read_bytes()
    meta.write_bytes(body[:40] + body[41:])  # one byte gone
    before = snapshot_dir(store)
    for keep in (["--keep-daily", "7"], ["--keep-daily", "0", "--keep-weekly", "0", "--keep-monthly", "0"]):
        proc = rem("--db-path", str(db), "backup", "prune", *keep, env=env)
        assert proc.returncode == 1, proc.stderr
        assert str(meta) in proc.stderr and "deleted nothing" in proc.stderr
        assert snapshot_dir(store) == before
    meta.write_bytes(body)  # repaired: "one" restores whole
    restore_and_compare_path = tmp_path / "restored"
    rem("backup", "restore", "--source", str(meta.parent), "--target", str(restore_and_compare_path), check=True)


# -------------------------------------------------------------------- 3: prune racing a new backup


def test_a_backup_that_starts_while_prune_deletes_slowly_never_reuses_what_prune_deletes(
        db, tmp_path, s3_endpoint, bucket, s3):
    env = s3_env(s3_endpoint, bucket)
    backup(db, env, "--upload", "--name", "a")  # its objects are the live SSTs
    backup(db, env, "--upload", "--name", "b", "--archive")  # the newest: prune keeps only it
    held, release, backup_waits = threading.Event(), threading.Event(), threading.Event()

    def hold_object_deletes(method, path, body):
        query = path.partition("?")[2]
        if method == "POST" and "delete" in query and b"/backups/sst/" in body:
            held.set()
            release.wait(90)
        if method == "GET" and "/backups/.prune" in path and held.is_set():
            backup_waits.set()
        return None

    with FaultProxy(s3_endpoint, body_rule=hold_object_deletes) as proxy:
        run_env = {**os.environ, **s3_env(proxy.url, bucket)}
        pruning = subprocess.Popen([sys.executable, "-m", "cli.main", "--db-path", str(db), "backup", "prune",
                                    "--keep-daily", "1", "--keep-weekly", "0", "--keep-monthly", "0", "--json"],
                                   cwd=REPO, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert held.wait(60), "prune never reached its object deletes"
        backing_up = subprocess.Popen([sys.executable, "-m", "cli.main", "--db-path", str(db), "backup", "create",
                                       "--upload", "--name", "c", "--json"], cwd=REPO, env=run_env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 90
        while not backup_waits.is_set() and backing_up.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        release.set()  # the deletes go through once the backup has waited, or has finished without waiting
        out, err = pruning.communicate(timeout=120)
        assert pruning.returncode == 0, err
        assert json.loads(out)["garbage"] and [r["name"] for r in json.loads(out)["delete"]] == ["a"]
        out, err = backing_up.communicate(timeout=120)
        assert backing_up.returncode == 0, err
    rem("--db-path", str(db), "backup", "verify", "--name", "c", env=env, check=True)
    got = json.loads(rem("--db-path", str(db), "backup", "download", "--name", "c", "--output",
                         str(tmp_path / "dl"), "--json", env=env, check=True).stdout)
    restore_and_compare(db, Path(got["path"]), tmp_path / "restored")
    assert not s3.list_objects_v2(Bucket=bucket, Prefix=f"{db_name_of(db)}/backups/.prune").get("Contents")
