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


@pytest.fixture
def db(make_sample) -> Path:
    return make_sample(entities=800, tenants=2, seed=27, dim=16)


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


def test_a_snapshot_that_loses_a_race_with_the_engine_starts_over_and_keeps_nothing_of_the_first_try(
        tmp_path, monkeypatch):
    """The logs are copied beside the copy while RocksDB checks it; a check that finds the engine
    moved on (a flush between the listing and the MANIFEST copy) must wait for that copy, clear both,
    and start again."""
    from rem import snapshot
    from rem.rocksdb_log import last_log_sequence

    db = tmp_path / "db"
    engine_write(db, [["insert", "acme", "resources", {"uri": f"u-{i}", "content": "x" * 300}] for i in range(200)],
                 crash=True)  # every write is in the log only
    log = max(db.glob("*.log"), key=lambda p: p.stat().st_size)
    checked = snapshot._checked
    tries = []

    def loses_the_first_race(target):
        tries.append(sorted(p.name for p in target.iterdir()))
        if len(tries) == 1:
            raise snapshot.SnapshotRace("a flush finished during the copy")
        return checked(target)

    monkeypatch.setattr(snapshot, "_checked", loses_the_first_race)
    before = snapshot_dir(db)
    snap = snapshot.take_snapshot(db)
    try:
        assert len(tries) == 2 and tries[1] == tries[0]  # the second try starts as clean as the first
        assert not [name for name in tries[0] if name.endswith(".log")]  # RocksDB checks the copy without them
        assert not (snap.path / "logs").exists()
        assert (snap.path / "db" / log.name).read_bytes() == log.read_bytes()
        assert snap.last_sequence == last_log_sequence(log) > 0
    finally:
        snap.remove()
    assert snapshot_dir(db) == before


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


# -------------------------------------------------------------------- 6: an absent restore target


def _stopped_at(proc: subprocess.Popen, beside: Path, stage: str, timeout: float = 60) -> None:
    """SIGSTOP the restore once it reaches a stage seen from outside: its scratch directory exists
    ("scratch"), or the database's CURRENT file has been extracted into it ("extracted")."""
    import signal

    deadline = time.time() + timeout
    while time.time() < deadline:
        scratch = [p for p in beside.iterdir() if p.name.startswith(".rem-restore-")]
        if scratch and (stage == "scratch" or list(scratch[0].glob("*/CURRENT"))):
            proc.send_signal(signal.SIGSTOP)
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.001)
    raise AssertionError(f"the restore never reached {stage}")


@pytest.fixture(scope="module")
def big_backup(tmp_path_factory) -> tuple[Path, dict]:
    """An archive backup big enough that its extraction is a stage one can stop the restore in."""
    base = tmp_path_factory.mktemp("big")
    db = base / "db"
    engine_sample(db, 6000, 2, 28, 128)
    made = backup(db, {"P8_BACKUP_DIR": str(base / "backups")}, "--archive")
    return Path(made["location"]), dump_all(db)


@pytest.mark.parametrize("stage", ["scratch", "extracted"])
def test_an_engine_that_starts_in_an_absent_target_during_a_restore_loses_no_write(big_backup, tmp_path, stage):
    import signal

    from tests.test_safety import engine

    source, backed_up = big_backup
    target = tmp_path / "new" / "db"
    restore = subprocess.Popen([sys.executable, "-m", "cli.main", "backup", "restore", "--source", str(source),
                                "--target", str(target)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    (tmp_path / "new").mkdir()
    _stopped_at(restore, tmp_path / "new", stage)
    writer = engine(target, "engine", 50)  # retries its open until RocksDB lets it in
    time.sleep(1.0)  # long enough for an engine that can get in to write everything
    restore.send_signal(signal.SIGCONT)
    out, errs = restore.communicate(timeout=120)
    lines, _ = writer.communicate(timeout=60)
    acked = [line.split()[1].encode() for line in lines.splitlines() if line.startswith("ack")]
    assert writer.returncode == 0 and len(acked) == 50
    final = dump_all(target)
    assert all(key in final["entities"] for key in acked), "a write the engine acknowledged is gone"
    assert restore.returncode == 0, errs
    assert any(line.startswith("refused") for line in lines.splitlines())  # it waited for the restore
    for cf, prefix in (("entities", b"entity:engine:"), ("key_index", b"key:engine:")):
        final[cf] = {k: v for k, v in final[cf].items() if not k.startswith(prefix)}
    assert final == backed_up
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".rem-")]


def test_two_restores_into_one_absent_target_cannot_both_succeed(big_backup, tmp_path):
    import signal

    source, backed_up = big_backup
    target = tmp_path / "new" / "db"
    (tmp_path / "new").mkdir()
    first = subprocess.Popen([sys.executable, "-m", "cli.main", "backup", "restore", "--source", str(source),
                              "--target", str(target)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    _stopped_at(first, tmp_path / "new", "scratch")
    second = rem("backup", "restore", "--source", str(source), "--target", str(target))
    first.send_signal(signal.SIGCONT)
    out, errs = first.communicate(timeout=120)
    assert first.returncode == 0, errs
    assert second.returncode == 2 and "another restore" in second.stderr, second.stderr
    assert dump_all(target) == backed_up


def test_a_failed_restore_into_an_absent_target_leaves_no_target(big_backup, tmp_path):
    source, _ = big_backup
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    archive = broken / "rocksdb.tar.zst"
    body = bytearray(archive.read_bytes())
    body[len(body) // 2] ^= 0xFF
    archive.write_bytes(bytes(body))
    target = tmp_path / "new" / "db"
    proc = rem("backup", "restore", "--source", str(broken), "--target", str(target))
    assert proc.returncode == 1 and not os.path.lexists(target), proc.stderr
    assert not [p for p in (tmp_path / "new").iterdir()]


# -------------------------------------------------------------------- 10: concurrent scrapes


def test_concurrent_scrapes_all_answer(db):
    from concurrent.futures import ThreadPoolExecutor
    import urllib.error
    import urllib.request

    from tests.helpers import free_port, wait_http

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "cli.main", "--db-path", str(db), "metrics", "serve", "--port",
                               str(port)], cwd=REPO, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape(_) -> int:
        try:
            with urllib.request.urlopen(url, timeout=60) as reply:
                return reply.status if b"rem_db_size_bytes" in reply.read() else -1
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        wait_http(url, 30, server)
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(scrape, range(80)))
    finally:
        server.terminate()
        server.wait(10)
    assert codes == [200] * 80, sorted(set(codes))
    assert not [p for p in db.parent.iterdir() if p.name.startswith(".rem-")]


def test_a_scratch_directory_being_made_or_removed_by_another_scrape_is_left_alone(tmp_path, monkeypatch):
    """The two windows behind the 500s, forced: a run between creating its owner file and locking
    it (the file has no pid yet), and a directory another run removes while this one looks at it."""
    import rem.scratch as scratch

    near = tmp_path / "db"
    near.mkdir()
    being_made = tmp_path / ".rem-view-db-0000aaaa"
    being_made.mkdir()
    (being_made / ".owner").touch()
    vanishing = tmp_path / ".rem-view-db-0000bbbb"
    vanishing.mkdir()
    (vanishing / ".owner").write_text("1\n")
    real_open = os.open

    def removed_meanwhile(path, *args, **kwargs):
        if str(path).startswith(str(vanishing)):
            shutil.rmtree(vanishing, ignore_errors=True)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(scratch.os, "open", removed_meanwhile)
    assert scratch.clean_stale(near) == []
    assert being_made.is_dir() and not vanishing.exists()


# -------------------------------------------------------------------- 5: a clone under the original's name


def test_a_clone_restored_under_productions_name_cannot_back_up_or_prune_production(db, tmp_path):
    prod = tmp_path / "prod" / "db"
    prod.parent.mkdir()
    db.rename(prod)
    env = local_env(tmp_path)
    first = backup(prod, env, "--name", "prod-1")
    staging = tmp_path / "staging" / "db"  # same directory name, and the backup carries the IDENTITY
    rem("backup", "restore", "--source", first["location"], "--target", str(staging), check=True)
    assert db_name_of(staging) == db_name_of(prod)
    store = tmp_path / "backups"
    before = snapshot_dir(store)
    for args in (["backup", "create", "--name", "staging-1"],
                 ["backup", "prune", "--keep-daily", "0", "--keep-weekly", "0", "--keep-monthly", "0"]):
        proc = rem("--db-path", str(staging), *args, env=env)
        assert proc.returncode == 2, proc.stderr
        assert "copy" in proc.stderr and str(prod.resolve()) in proc.stderr and len(proc.stderr.splitlines()) == 1
        assert snapshot_dir(store) == before  # production's backups and the record untouched
    backup(prod, env, "--name", "prod-2")  # the original goes on as before
    # The copy that replaces the original for good takes the name over; the original is then refused.
    rem("--db-path", str(staging), "backup", "takeover", env=env, check=True)
    backup(staging, env, "--name", "staging-2")
    proc = rem("--db-path", str(prod), "backup", "create", "--name", "prod-3", env=env)
    assert proc.returncode == 2 and "copy" in proc.stderr


# -------------------------------------------------------------------- 7: ages, thresholds, ports, modes


@pytest.mark.parametrize("args", [
    ["db", "vacuum", "--older-than", "-5d"],
    ["db", "vacuum", "--older-than", "infd"],
    ["db", "vacuum", "--older-than", "nand"],
    ["db", "vacuum", "--older-than", "99999999d"],
    ["db", "health", "--backup-max-age-hours", "nan"],
    ["db", "health", "--backup-max-age-hours", "-1"],
    ["db", "health", "--disk-warn-percent", "inf"],
    ["check", "--wal-lag-warn-seconds", "nan"],
    ["metrics", "serve", "--port", "70000"],
])
def test_a_negative_infinite_or_overflowing_figure_is_bad_input_and_changes_nothing(db, tmp_path, args):
    engine_write(db, [["insert", "acme", "articles", {"name": "soon-gone", "content": "x"}], ["delete", "acme", "$0"]])
    before = snapshot_dir(db)
    rows = dump_all(db)
    proc = rem("--db-path", str(db), *args, env=local_env(tmp_path), timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "OverflowError" not in proc.stderr
    assert snapshot_dir(db) == before and dump_all(db) == rows


def test_an_unknown_replication_mode_is_bad_input_even_without_a_sample(tmp_path):
    target = tmp_path / "new-db"
    proc = rem("--db-path", str(target), "db", "init", "--replication", "bogus")
    assert proc.returncode == 2 and "--replication 'bogus'" in proc.stderr, proc.stderr
    assert not target.exists()


# -------------------------------------------------------------------- 8: names from the data as file names


def _hostile_schema(name: str) -> dict:
    return {"title": "Hostile", "version": "1.0.0", "description": "a name that is a path", "type": "object",
            "properties": {"name": {"type": "string"}, "embedding": {"type": "array", "items": {"type": "number"}}},
            "required": ["name"], "json_schema_extra": {"name": name, "key_field": "name", "embedding_fields": [],
                                                         "category": "user"}}


def test_schema_and_entity_type_names_never_become_paths_outside_the_output(db, tmp_path):
    ops = [["register_schema", "../escaped-export", _hostile_schema("../escaped-export")],
           ["register_schema", "../../escaped-hnsw", _hostile_schema("../../escaped-hnsw")]]
    ops += [["insert", "acme", "../escaped-export", {"name": f"e{i}"}] for i in range(3)]
    ops += [["insert", "acme", "../../escaped-hnsw", {"name": f"h{i}", "embedding": [float(i), 1.0, 0.5, 0.25]}]
            for i in range(12)]
    engine_write(db, ops)
    outside = {p.name for p in tmp_path.iterdir()}

    out = tmp_path / "export"
    rem("--db-path", str(db), "export", "--tenant", "acme", "--format", "parquet", "--output", str(out), check=True)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any("escaped-export" in p.name for p in written) and all(p.parent == out for p in written)
    rem("--db-path", str(db), "index", "rebuild", "--type", "hnsw", check=True)
    hnsw = db.parent / f"{db.name}.hnsw"
    built = [p for p in hnsw.rglob("*") if p.is_file()]
    assert any("escaped-hnsw" in p.name for p in built)
    assert all(p.parent.parent == hnsw for p in built)  # {db}.hnsw/{tenant}/{schema}.*
    assert {p.name for p in tmp_path.iterdir()} == outside | {"export", hnsw.name}
    assert not list(tmp_path.parent.glob("escaped-*")) and not list(tmp_path.glob("escaped-*"))

    proc = rem("--db-path", str(db), "query", 'SELECT count(*) AS n FROM "../escaped-export"', "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["rows"] == [[3]], proc.stderr


# -------------------------------------------------------------------- 12: rem query's limits


def test_a_query_is_stopped_at_its_time_and_memory_limits_and_the_limits_can_be_raised(db):
    started = time.monotonic()
    slow = rem("--db-path", str(db), "query", "--timeout", "1",
               "SELECT count(*) FROM articles, range(100000000000) AS t(x)")
    assert slow.returncode == 2 and "1 s limit" in slow.stderr and "--timeout" in slow.stderr, slow.stderr
    assert time.monotonic() - started < 30
    hungry = rem("--db-path", str(db), "query", "--memory-limit-mb", "64",
                 "SELECT list(x) FROM articles, range(20000000) AS t(x)")
    assert hungry.returncode == 2 and "64 MB memory limit" in hungry.stderr, hungry.stderr
    fits = rem("--db-path", str(db), "query", "--memory-limit-mb", "64", "--json", "SELECT count(*) FROM articles")
    assert fits.returncode == 0 and json.loads(fits.stdout)["rows"][0][0] > 0, fits.stderr


# -------------------------------------------------------------------- 9: backups a lifecycle rule archived


def _rule_matches(rule: dict, key: str, tags: dict) -> bool:
    """S3's lifecycle filter (prefix, tag, or both under And), read from the rule as installed."""
    f = rule.get("Filter", {})
    both = f.get("And", {})
    prefix = f.get("Prefix", both.get("Prefix", ""))
    wanted = both.get("Tags", []) + ([f["Tag"]] if "Tag" in f else [])
    return key.startswith(prefix) and all(tags.get(t["Key"]) == t["Value"] for t in wanted)


def _age_into_glacier(s3, bucket, prefix) -> list[str]:
    """What S3 does 30 days on under the bucket's rules: each object a transition rule matches moves
    to that rule's class."""
    rules = [r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"] if r.get("Transitions")]
    moved = []
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=obj["Key"])["TagSet"]}
        for rule in rules:
            if _rule_matches(rule, obj["Key"], tags):
                s3.copy_object(Bucket=bucket, Key=obj["Key"], CopySource={"Bucket": bucket, "Key": obj["Key"]},
                               StorageClass=rule["Transitions"][0]["StorageClass"], MetadataDirective="COPY")
                moved.append(obj["Key"])
    return moved


def test_backups_whose_data_went_to_glacier_leave_every_command_working(db, tmp_path, s3_endpoint, bucket, s3):
    env = s3_env(s3_endpoint, bucket)
    backup(db, env, "--upload", "--name", "old-archive", "--archive")
    backup(db, env, "--upload", "--name", "old-incremental")
    rem("--db-path", str(db), "backup", "lifecycle", "apply", env=env, check=True)
    moved = _age_into_glacier(s3, bucket, f"{db_name_of(db)}/")
    assert moved and not [k for k in moved if k.endswith((".json", "/.claim"))]  # records stay readable
    backup(db, env, "--upload", "--name", "new")

    listed = rem("--db-path", str(db), "backup", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    status = {r["name"]: r["status"] for r in json.loads(listed.stdout)}
    assert status == {"old-archive": "archived", "old-incremental": "archived", "new": "ok"}
    health = rem("--db-path", str(db), "db", "health", env=env)
    assert "InvalidObjectState" not in health.stdout + health.stderr
    assert json.loads(health.stdout)["last_backup"] == json.loads(listed.stdout)[0]["created"]
    got = json.loads(rem("--db-path", str(db), "backup", "download", "--name", "new", "--output",
                         str(tmp_path / "dl"), "--json", env=env, check=True).stdout)
    restore_and_compare(db, Path(got["path"]), tmp_path / "restored")
    refused = rem("--db-path", str(db), "backup", "download", "--name", "old-archive", "--output",
                  str(tmp_path / "dl2"), env=env)
    assert refused.returncode == 1 and "archived" in refused.stderr and "restore-object" in refused.stderr
    assert "rocksdb.tar.zst" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    proc = rem("--db-path", str(db), "backup", "prune", "--dry-run", "--json", env=env)
    assert proc.returncode == 0, proc.stderr

    # A record an earlier rule did move: listed as unreadable with how to restore it; prune stops.
    meta = f"{db_name_of(db)}/backups/full/_all/old-incremental/metadata.json"
    s3.copy_object(Bucket=bucket, Key=meta, CopySource={"Bucket": bucket, "Key": meta}, StorageClass="GLACIER")
    listed = rem("--db-path", str(db), "backup", "list", "--json", env=env)
    assert listed.returncode == 0 and "restore-object" in listed.stderr, listed.stderr
    proc = rem("--db-path", str(db), "backup", "prune", "--json", env=env)
    assert proc.returncode == 1 and meta in proc.stderr and "deleted nothing" in proc.stderr
    s3.restore_object(Bucket=bucket, Key=meta, RestoreRequest={"Days": 1})  # as the hint says
    pruned = rem("--db-path", str(db), "backup", "prune", "--json", env=env)  # archived backups go like any other
    assert pruned.returncode == 0, pruned.stderr
    assert {r["name"] for r in json.loads(pruned.stdout)["delete"]} == {"old-archive", "old-incremental"}


# -------------------------------------------------------------------- 11: messages that point the right way


def test_a_corrupt_downloaded_object_is_fetched_again_and_named_as_the_local_copy(db, tmp_path, s3_endpoint, bucket):
    env = s3_env(s3_endpoint, bucket)
    backup(db, env, "--upload", "--name", "one")
    download = ("--db-path", str(db), "backup", "download", "--name", "one", "--output", str(tmp_path / "dl"),
                "--json")
    got = Path(json.loads(rem(*download, env=env, check=True).stdout)["path"])
    victim = max((got / "objects").iterdir(), key=lambda p: p.stat().st_size)
    body = bytearray(victim.read_bytes())
    body[len(body) // 2] ^= 0xFF
    victim.write_bytes(bytes(body))  # the right size, the wrong bytes
    proc = rem("backup", "restore", "--source", str(got), "--target", str(tmp_path / "refused"))
    assert proc.returncode == 1 and str(victim) in proc.stderr and "download" in proc.stderr, proc.stderr
    rem(*download, env=env, check=True)  # the rerun fetches it again instead of keeping it
    restore_and_compare(db, got, tmp_path / "restored")


def test_a_missing_s3_object_is_named_with_the_backups_that_need_it(db, tmp_path, s3_endpoint, bucket, s3):
    env = s3_env(s3_endpoint, bucket)
    backup(db, env, "--upload", "--name", "inc")
    backup(db, env, "--upload", "--name", "arc", "--archive")
    prefix = f"{db_name_of(db)}/backups/"
    listing = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}full/_all/inc/files.json")["Body"].read())
    gone = f"{prefix}sst/{_biggest_object(listing)['sha256']}.zst"
    s3.delete_object(Bucket=bucket, Key=gone)
    s3.delete_object(Bucket=bucket, Key=f"{prefix}full/_all/arc/rocksdb.tar.zst")
    for name, key in (("inc", gone), ("arc", f"{prefix}full/_all/arc/rocksdb.tar.zst")):
        proc = rem("--db-path", str(db), "backup", "download", "--name", name, "--output", str(tmp_path / name),
                   env=env)
        assert proc.returncode == 1 and key in proc.stderr and name in proc.stderr.split(key, 1)[1], proc.stderr
        assert "ClientError" not in proc.stderr and "HeadObject" not in proc.stderr


def test_a_damaged_log_archive_manifest_is_named(db, tmp_path):
    env = local_env(tmp_path)
    rem("--db-path", str(db), "pitr", "archive", env=env, check=True)
    manifest = tmp_path / "backups" / db_name_of(db) / "backups" / "wal" / "_all" / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:40])
    for args in (["pitr", "status"], ["pitr", "list-recovery-points"]):
        proc = rem("--db-path", str(db), *args, env=env)
        assert proc.returncode == 1 and str(manifest) in proc.stderr, proc.stderr
        assert "ValidationError" not in proc.stderr and "JSONDecodeError" not in proc.stderr


def test_a_password_in_the_endpoint_url_is_never_printed(db, tmp_path, s3_endpoint):
    port = s3_endpoint.rsplit(":", 1)[1]
    secret = "s3cr3t-pw"
    for endpoint, args in ((f"http://key:{secret}@127.0.0.1:1", ["backup", "list", "--json"]),
                           (f"http://key:{secret}@127.0.0.1:1", ["check", "--json"]),
                           (f"http://key:{secret}@127.0.0.1:{port}", ["backup", "create", "--upload"])):
        env = {**local_env(tmp_path), "P8_S3_BUCKET": "no-such-bucket", "P8_S3_ENDPOINT_URL": endpoint}
        proc = rem("--db-path", str(db), *args, env=env, timeout=120)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert secret not in proc.stdout + proc.stderr, (args, proc.stdout, proc.stderr)


def test_a_damaged_file_list_stops_garbage_collection_and_every_object_stays(db, tmp_path):
    env = local_env(tmp_path)
    backup(db, env, "--name", "one")
    engine_write(db, [["insert", "acme", "articles", {"name": f"later-{i}", "content": "y" * 300}]
                      for i in range(300)])
    rem("--db-path", str(db), "db", "compact", check=True)
    backup(db, env, "--name", "two")
    home = tmp_path / "backups" / db_name_of(db) / "backups"
    listing = home / "full" / "_all" / "one" / "files.json"
    listing.write_bytes(listing.read_bytes()[:-20])  # its metadata.json still reads, its list does not
    objects = snapshot_dir(home / "sst")
    proc = rem("--db-path", str(db), "backup", "prune", env=env)
    assert proc.returncode == 1 and str(listing) in proc.stderr and "no shared object" in proc.stderr, proc.stderr
    assert snapshot_dir(home / "sst") == objects
    restore_and_compare(db, home / "full" / "_all" / "two", tmp_path / "restored")
