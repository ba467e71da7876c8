"""S3 Object Lock on moto's bucket (created with Object Lock, so versioned) on 127.0.0.1: every
object of a backup written locked, a reused SST's lock carried forward, prune deleting only what is
past its date and reporting the rest. Databases from the engine-faithful writer."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone

import pytest
from botocore.exceptions import ClientError

from tests.engine import engine_write
from tests.faultproxy import FaultProxy
from tests.helpers import db_name_of, dump_all, rem


def ok(proc):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def locked_bucket(s3) -> str:
    name = f"rem-lock-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def until(s3, bucket, key) -> datetime | None:
    return s3.head_object(Bucket=bucket, Key=key).get("ObjectLockRetainUntilDate")


def test_backups_are_locked_reused_objects_carried_forward_and_prune_deletes_only_what_is_past_its_date(
        make_sample, tmp_path, s3, s3_endpoint, locked_bucket):
    db = make_sample(800, 2, 21, 16)
    env = {"P8_S3_BUCKET": locked_bucket, "P8_S3_ENDPOINT_URL": s3_endpoint, "P8_BACKUP_CHUNK_SIZE_MB": "5",
           "P8_BACKUP_OBJECT_LOCK": "governance"}
    cli = ("--db-path", str(db))
    home = f"{db_name_of(db)}/backups/full/_all/"
    ok(rem(*cli, "backup", "create", "--upload", "--name", "short", "--json",
           env={**env, "P8_BACKUP_OBJECT_LOCK_DAYS": "0.00005"}))  # about 4 s
    short_objects = [o["Key"] for o in s3.list_objects_v2(Bucket=locked_bucket)["Contents"]]
    ssts = [k for k in short_objects if "/backups/sst/" in k]
    assert ssts and all(until(s3, locked_bucket, k) for k in short_objects if "/full/" in k or "/sst/" in k)
    short_until = until(s3, locked_bucket, ssts[0])

    # the next backup reuses every SST: each one's lock moves forward, one request each
    with FaultProxy(s3_endpoint) as proxy:
        long_ = ok(rem(*cli, "backup", "create", "--upload", "--name", "long", "--json",
                       env={**env, "P8_S3_ENDPOINT_URL": proxy.url}))
    retention_calls = [r for r in proxy.requests if r.method == "PUT" and "retention" in r.path]
    new_streams = [r for r in proxy.requests if r.method == "POST" and "uploads" in r.path]  # multipart creations
    assert len(retention_calls) == len(ssts) + len(new_streams)
    assert all(until(s3, locked_bucket, k) > short_until for k in ssts)
    assert (until(s3, locked_bucket, ssts[0]) - datetime.now(timezone.utc)).days >= 92  # 31 x keep_monthly 3

    # with the host's credentials, a locked version cannot be deleted
    version = s3.head_object(Bucket=locked_bucket, Key=f"{home}long/small.tar.zst")["VersionId"]
    with pytest.raises(ClientError, match="AccessDenied"):
        s3.delete_object(Bucket=locked_bucket, Key=f"{home}long/small.tar.zst", VersionId=version)

    at_long = dump_all(db)
    engine_write(db, [["insert", "acme", "articles", {"uri": "newest", "title": "x"}]])
    ok(rem(*cli, "backup", "create", "--upload", "--name", "newest", "--json", env=env))
    while until(s3, locked_bucket, f"{home}short/metadata.json") > datetime.now(timezone.utc):
        time.sleep(0.2)
    time.sleep(1.1)  # S3 compares whole seconds
    zero = ("backup", "prune", "--keep-daily", "0", "--keep-weekly", "0", "--keep-monthly", "0", "--json")
    result = ok(rem(*cli, *zero, env=env))
    assert [r["name"] for r in result["delete"]] == ["short"]
    assert [r["name"] for r in result["locked"]] == ["long"] and result["locked"][0]["kept_until"]
    versions = s3.list_object_versions(Bucket=locked_bucket, Prefix=f"{home}short/")
    assert not versions.get("Versions") and not versions.get("DeleteMarkers")  # gone, not hidden
    assert all(until(s3, locked_bucket, k) for k in ssts)  # still needed by long, and locked

    restored = tmp_path / "restored"
    ok(rem(*cli, "backup", "restore", "--name", "long", "--target", str(restored), "--json", env=env))
    assert long_["name"] == "long" and dump_all(restored) == at_long  # the locked backup, whole

    checks = {c["name"].split(" s3://")[0]: c for c in ok(rem(*cli, "check", "--json", env=env))["checks"]
              if "s3://" in c["name"]}
    assert checks["object lock"]["ok"] and "versioning Enabled" in checks["object lock"]["detail"]
    assert "governance" in checks["object lock"]["detail"] and checks["write"]["ok"] and checks["delete"]["ok"]
    rules = ok(rem(*cli, "backup", "lifecycle", "apply", "--json", env=env))["rules"]
    assert next(r for r in rules if r["ID"].endswith("backups-expire"))["Expiration"]["Days"] > 93


def test_object_lock_asked_of_a_bucket_without_it_fails_rem_check_with_what_to_do(make_sample, s3_endpoint, bucket):
    db = make_sample()
    env = {"P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": s3_endpoint, "P8_BACKUP_OBJECT_LOCK": "compliance"}
    proc = rem("--db-path", str(db), "check", "--json", env=env)
    assert proc.returncode == 1
    lock = next(c for c in json.loads(proc.stdout)["checks"] if c["name"].startswith("object lock"))
    assert lock["ok"] is False and "Object Lock enabled" in lock["detail"]


def test_a_symbolic_link_out_of_the_local_store_is_refused_and_nothing_outside_is_read(make_sample, tmp_path):
    db = make_sample()
    backups, outside = tmp_path / "backups", tmp_path / "outside"
    env = {"P8_BACKUP_DIR": str(backups)}
    ok(rem("--db-path", str(db), "backup", "create", "--name", "b", "--json", env=env))
    small = next(backups.rglob("small.tar.zst"))
    outside.mkdir()
    planted = outside / "small.tar.zst"  # the same bytes: only where they are read from is wrong
    small.rename(planted)
    small.symlink_to(planted)
    before = planted.stat().st_atime_ns
    proc = rem("--db-path", str(db), "backup", "restore", "--name", "b", "--target", str(tmp_path / "t"), env=env)
    assert proc.returncode == 2 and "symbolic link" in proc.stderr and str(small) in proc.stderr, proc.stderr
    assert not (tmp_path / "t").exists() and planted.stat().st_atime_ns == before
