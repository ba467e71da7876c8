"""Many databases, one bucket: each sees, prunes and restores only its own backups unless told otherwise.

The databases come from the engine-faithful writer (RocksDB 8.10), each created on its own, so each
has its own RocksDB IDENTITY; both live in a directory called `db`, as on two hosts that keep theirs
at /var/lib/rem/db.
"""

import json
import shutil
from pathlib import Path

import pytest

from tests.engine.sample import engine_sample
from tests.helpers import db_name_of, dump_all, rem


@pytest.fixture
def two_hosts(tmp_path, s3_endpoint, bucket):
    dbs = []
    for host in ("host-a", "host-b"):
        db = tmp_path / host / "db"
        engine_sample(db, 400, 2, len(dbs) + 1, 16)
        dbs.append(db)
    env = {"P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": s3_endpoint, "P8_BACKUP_CHUNK_SIZE_MB": "5"}
    return dbs[0], dbs[1], env


def run(db, env, *args, code=0):
    proc = rem("--db-path", str(db), *args, "--json", env=env)
    assert proc.returncode == code, proc.stderr
    return json.loads(proc.stdout) if code == 0 else proc


def keys(s3, bucket) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: o["ETag"] for o in listed}


def test_two_databases_in_one_bucket_list_prune_health_pitr_and_drill_only_their_own(two_hosts, s3, bucket, tmp_path):
    a, b, env = two_hosts
    name_a, name_b = db_name_of(a), db_name_of(b)
    assert name_a != name_b and name_a.startswith("db-") and name_b.startswith("db-")
    run(a, env, "backup", "create", "--upload", "--name", "a-older")
    run(a, env, "backup", "create", "--upload", "--name", "a-newer")
    # B has no backup of its own yet: A's in the same bucket must not make it look healthy.
    health = rem("--db-path", str(b), "db", "health", "--json", env=env)
    assert json.loads(health.stdout)["checks"]["backup"]["status"] == "critical"
    only_b = run(b, env, "backup", "create", "--upload", "--name", "b-only")

    assert {r["name"] for r in run(a, env, "backup", "list")} == {"a-older", "a-newer"}
    assert [r["name"] for r in run(b, env, "backup", "list")] == ["b-only"]
    everything = run(a, env, "backup", "list", "--all-dbs")
    assert {(r["db"], r["name"]) for r in everything} == {(name_a, "a-older"), (name_a, "a-newer"),
                                                          (name_b, "b-only")}

    before_b = {k: v for k, v in keys(s3, bucket).items() if k.startswith(name_b + "/")}
    pruned = run(a, env, "backup", "prune", "--keep-daily", "0", "--keep-weekly", "0", "--keep-monthly", "0")
    assert [r["name"] for r in pruned["delete"]] == ["a-older"] and [r["name"] for r in pruned["keep"]] == ["a-newer"]
    assert {k: v for k, v in keys(s3, bucket).items() if k.startswith(name_b + "/")} == before_b  # B untouched
    assert [r["name"] for r in run(b, env, "backup", "list")] == ["b-only"]

    # PITR: each archive under its own name, each window on its own bases.
    for db in (a, b):
        run(db, env, "pitr", "archive")
    stored = keys(s3, bucket)
    assert {f"{name_a}/backups/wal/_all/manifest.json", f"{name_b}/backups/wal/_all/manifest.json"} <= set(stored)
    assert [p["base_backup"] for p in run(a, env, "pitr", "list-recovery-points")] == ["a-newer"]
    assert [p["base_backup"] for p in run(b, env, "pitr", "list-recovery-points")] == ["b-only"]

    # Another database's backup is found only by naming that database.
    refused = run(a, env, "drill", "--backup", "b-only", code=1)
    assert not json.loads(refused.stdout)["passed"] and "b-only" in json.loads(refused.stdout)["reason"]
    proc = rem("--db-path", str(a), "backup", "download", "--name", "b-only", "--output", str(tmp_path / "x"), env=env)
    assert proc.returncode == 2 and f"--from-db {name_b}" in proc.stderr and not (tmp_path / "x").exists()
    got = run(a, env, "backup", "download", "--from-db", name_b, "--name", "b-only", "--output", str(tmp_path / "dl"))
    restored = tmp_path / "restored"
    rem("backup", "restore", "--source", got["path"], "--target", str(restored), check=True)
    assert dump_all(restored) == dump_all(b) and only_b["db_name"] == name_b


def test_a_database_given_anothers_name_is_refused_and_writes_nothing(two_hosts, s3, bucket):
    a, b, env = two_hosts
    name_a = db_name_of(a)
    run(a, env, "backup", "create", "--upload", "--name", "first")
    before = keys(s3, bucket)
    impostor = {**env, "P8_DB_NAME": name_a}
    for args in (("backup", "create", "--upload"), ("backup", "prune", "--keep-daily", "0", "--keep-weekly", "0",
                                                    "--keep-monthly", "0"), ("pitr", "archive")):
        proc = rem("--db-path", str(b), *args, env=impostor)
        assert proc.returncode == 2, (args, proc.stderr)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "its own name" in errors[0] and str(a) in errors[0], proc.stderr
        assert keys(s3, bucket) == before  # not one object written or deleted
    # The same refusal in a local backup directory.
    local = {"P8_BACKUP_DIR": str(a.parent.parent / "shared-backups")}
    run(a, local, "backup", "create", "--name", "local-a")
    proc = rem("--db-path", str(b), "backup", "create", env={**local, "P8_DB_NAME": name_a})
    assert proc.returncode == 2 and "its own name" in proc.stderr
    assert [r["name"] for r in run(a, local, "backup", "list")] == ["local-a"]


def test_backups_in_the_old_layout_stay_listable_and_restorable_by_naming_them(two_hosts, tmp_path):
    a, _, _ = two_hosts
    backups = tmp_path / "backups"
    env = {"P8_BACKUP_DIR": str(backups)}
    made = run(a, env, "backup", "create", "--archive", "--name", "old-one")  # the previous version's format
    # Where the previous version wrote it: no database level.
    legacy = backups / "full" / "_all" / "old-one"
    legacy.parent.mkdir(parents=True)
    shutil.move(made["location"], legacy)
    meta = json.loads((legacy / "metadata.json").read_text())
    for field in ("db_name", "db_identity", "db_path"):  # the old version did not write these
        meta.pop(field)
    (legacy / "metadata.json").write_text(json.dumps(meta))

    listed = rem("--db-path", str(a), "backup", "list", "--json", env=env)
    assert [(r["db"], r["name"]) for r in json.loads(listed.stdout)] == [("legacy", "old-one")]
    assert "old layout" in listed.stderr and "move" in listed.stderr
    assert str(backups / db_name_of(a) / "backups" / "full") in listed.stderr  # where to: its own level
    proc = rem("--db-path", str(a), "backup", "verify", "--name", "old-one", env=env)
    assert proc.returncode == 2 and "--from-db legacy" in proc.stderr
    assert run(a, env, "backup", "verify", "--from-db", "legacy", "--name", "old-one")["ok"]
    got = run(a, env, "backup", "download", "--from-db", "legacy", "--name", "old-one",
              "--output", str(tmp_path / "dl"))
    restored = tmp_path / "restored"
    rem("backup", "restore", "--source", got["path"], "--target", str(restored), check=True)
    assert dump_all(restored) == dump_all(a)
    # Prune and health never count them: they are not this database's.
    pruned = run(a, env, "backup", "prune", "--keep-daily", "0", "--keep-weekly", "0", "--keep-monthly", "0")
    assert pruned["delete"] == [] and pruned["keep"] == [] and (legacy / "metadata.json").exists()


def test_a_path_without_a_database_and_without_a_name_lists_nothing_and_says_what_to_give(two_hosts, tmp_path):
    a, _, env = two_hosts
    run(a, env, "backup", "create", "--upload")
    proc = rem("--db-path", str(tmp_path / "gone"), "backup", "list", env=env)
    assert proc.returncode == 2 and "--db-name" in proc.stderr and "--all-dbs" in proc.stderr
    assert not (tmp_path / "gone").exists()
    named = rem("--db-path", str(tmp_path / "gone"), "--db-name", db_name_of(a), "backup", "list", "--json", env=env)
    assert len(json.loads(named.stdout)) == 1  # the disk is gone; its name still finds its backups


def test_an_unknown_p8_variable_is_reported_and_the_engines_own_are_not(two_hosts):
    a, _, _ = two_hosts
    proc = rem("--db-path", str(a), "backup", "list", "--json",
               env={"P8_S3_BUKET": "typo", "P8_REPLICATION_MODE": "primary", "P8_HOME": str(Path.home())})
    assert proc.returncode == 0, proc.stderr
    assert "P8_S3_BUKET is not a setting" in proc.stderr and "did you mean P8_S3_BUCKET" in proc.stderr
    assert "P8_REPLICATION_MODE" not in proc.stderr and "P8_HOME" not in proc.stderr
