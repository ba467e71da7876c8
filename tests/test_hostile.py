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
