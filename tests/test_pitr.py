"""Point-in-time recovery from RocksDB's own log, against moto and a live engine (RocksDB 8.10 in
its own process, standalone: its logical `wal` column family stays empty)."""

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.engine import LiveEngine, engine_read_all
from tests.engine.scenario import ARTICLES, PEOPLE
from tests.faultproxy import FaultProxy
from tests.helpers import REPO, db_name_of, dump_all, rem

UNIT = REPO / "deployments" / "rem-wal-archiver.service"
SMALL_LOGS = {"max_total_wal_size": 64 * 1024}  # past it RocksDB flushes the oldest log's CFs: logs rotate and go


def env_for(endpoint, bucket, **more):
    return {"P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": endpoint, "P8_BACKUP_CHUNK_SIZE_MB": "5",
            "P8_PITR_SEGMENT_MAX_MB": "0.02", **more}


def ok(proc):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip().startswith(("{", "[")) else proc.stdout


def instant() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def manifest_of(s3, bucket, db) -> dict:
    key = f"{db_name_of(db)}/backups/wal/_all/manifest.json"
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key)
    if not listed.get("KeyCount"):
        return {}
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def wait_archived(s3, bucket, engine: LiveEngine, after: str | None = None, seconds: float = 60) -> dict:
    """Until the archive holds the engine's last write (and a pass started after `after`)."""
    want = engine.call("latest_sequence")
    deadline = time.time() + seconds
    while time.time() < deadline:
        manifest = manifest_of(s3, bucket, engine.path)
        if (manifest.get("last_archived_sequence") or 0) >= want and (
                after is None or (manifest.get("confirmed_timestamp") or "") > after):
            return manifest
        time.sleep(0.05)
    raise AssertionError(f"the archive did not reach sequence {want}: {manifest_of(s3, bucket, engine.path)}")


def follower_from_unit(db: Path, env: dict) -> subprocess.Popen:
    """The systemd unit's own ExecStart and environment, run as systemd would (then SIGTERM to stop)."""
    service = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            service.setdefault(key.strip(), value.strip())
    command = shlex.split(service["ExecStart"])
    assert command[0].endswith("/bin/rem") and command[1:4] == ["pitr", "archive", "--follow"]
    # the unit's EnvironmentFile sets these on a host; here the test's database and bucket stand in
    full_env = {**os.environ, **env, "P8_DB_PATH": str(db)}
    return subprocess.Popen([sys.executable, "-m", "cli.main", *command[1:], "--interval", "0.2", "--json"],
                            cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(follower: subprocess.Popen) -> dict:
    follower.send_signal(signal.SIGTERM)  # systemctl stop
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, err
    return json.loads(out)


def restore_to(db, env, moment, out, *more) -> dict:
    return ok(rem("--db-path", str(db), "pitr", "restore", "--timestamp", moment, "--output", str(out), *more,
                  "--json", env=env))


def article(slug: str, words: int = 60) -> dict:
    return {"slug": slug, "title": f"{slug} " + "lorem ipsum " * words, "views": len(slug)}


@pytest.fixture
def live(tmp_path, s3_endpoint, bucket):
    db = tmp_path / "db"
    engine = LiveEngine(db, **SMALL_LOGS)
    engine.call("register_schema", "articles", ARTICLES)
    engine.call("register_schema", "people", PEOPLE)
    yield db, engine, env_for(s3_endpoint, bucket)
    engine.close()


def test_restore_to_each_instant_equals_the_live_database_then_in_every_column_family(live, s3, tmp_path):
    db, engine, env = live
    bucket = env["P8_S3_BUCKET"]
    ids = [engine.call("insert", "acme", "articles", article(f"a-{i}")) for i in range(40)]
    base = ok(rem("--db-path", str(db), "backup", "create", "--upload", "--json", env=env))
    assert base["last_sequence"] == engine.call("latest_sequence")  # no write since: the live one's
    states = {base["last_sequence_time"]: engine.dump()}  # the base instant itself
    follower = follower_from_unit(db, env)
    try:
        wait_archived(s3, bucket, engine)  # its first pass has pinned the live log
        people = []

        def phase(writes) -> None:
            writes()
            wait_archived(s3, bucket, engine)
            moment = instant()
            states[moment] = engine.dump()
            time.sleep(0.002)

        phase(lambda: [engine.call("insert", "globex", "articles", article(f"g-{i}")) for i in range(120)])
        phase(lambda: people.extend(engine.call("insert", "acme", "people", {"name": f"P{i}", "age": 30 + i})
                                    for i in range(3)))
        phase(lambda: [engine.call("insert", "acme", "articles", {**article("a-1"), "views": 999}),  # upsert
                       engine.call("update", "acme", ids[2], {"views": 7, "title": "changed"}),
                       engine.call("add_edge", "acme", ids[3], people[0], "authored_by", {"w": 1}),
                       engine.call("add_edge", "acme", ids[4], people[1], "cites")])
        phase(lambda: [engine.call("delete", "acme", ids[5]),  # soft delete
                       engine.call("hard_delete", "acme", ids[6]),
                       engine.call("delete_edge", ids[4], people[1], "cites"),
                       engine.call("batch_insert", "globex", "people",
                                   [{"name": f"B{i}", "age": i} for i in range(20)])])
        phase(lambda: [engine.call("insert", "acme", "articles", article(f"late-{i}")) for i in range(120)])
        while datetime.now(timezone.utc).microsecond > 300_000:  # two instants in one second, one batch apart
            time.sleep(0.01)
        phase(lambda: engine.call("insert", "acme", "articles", article("same-second-1", 3)))
        phase(lambda: engine.call("hard_delete", "acme", ids[7]))
        final = instant()
        wait_archived(s3, bucket, engine, after=final)  # caught up, and a pass looked after the last write
        states[final] = engine.dump()
    finally:
        report = stop(follower)
    assert report["gaps"] == [] and report["passes"] >= 5

    manifest = manifest_of(s3, bucket, db)
    logs = sorted({s["log_number"] for s in manifest["wal_segments"]})
    live_logs = {int(p.name[:-4]) for p in db.glob("*.log")}
    assert len(logs) >= 3 and logs[0] not in live_logs  # logs rotated, and the engine deleted what we pinned
    pinned = sorted(p.name for p in (tmp_path / ".rem-logpins-db").glob("*.log"))
    assert len(pinned) <= 2, pinned  # every shipped, finished log was released
    limit = float(env["P8_PITR_SEGMENT_MAX_MB"]) * 2**20
    for log in logs[:-1]:  # a finished log's one-per-pass segments were compacted into full-size ones
        sizes = [s["end_offset"] - s["start_offset"] for s in manifest["wal_segments"] if s["log_number"] == log]
        assert sum(size < limit / 2 for size in sizes) <= 1, (log, sizes)
    assert manifest["retired"]  # the segments compaction replaced stay until no restore can want them
    for retired in manifest["retired"]:
        s3.head_object(Bucket=bucket, Key=retired["key"])

    points = ok(rem("--db-path", str(db), "pitr", "list-recovery-points", "--json", env=env))
    assert points[0]["base_backup"] == base["name"] and points[0]["broken"] is None
    assert points[0]["window_end"] >= final
    status = ok(rem("--db-path", str(db), "pitr", "status", "--json", env=env))
    assert status["live_last_sequence"] == status["last_archived_sequence"] == engine.call("latest_sequence")
    assert status["lag_batches"] == 0 and status["broken_ranges"] == []
    for i, (moment, state) in enumerate(states.items()):
        out = tmp_path / f"at-{i}"
        result = restore_to(db, env, moment, out)
        assert result["base_backup"] == base["name"]
        restored = dump_all(out)
        for cf, rows in state.items():
            assert restored.get(cf, {}) == rows, f"{cf} at {moment} (instant {i}) differs"
        assert restored.get("wal", {}) == {}  # standalone: the logical WAL played no part
        assert engine_read_all(out) == {cf: restored.get(cf, {}) for cf in state}  # RocksDB 8.10 opens it


def test_compacted_segments_restore_and_the_ones_they_replaced_go_after_the_grace_period(live, s3, tmp_path):
    db, engine, env = live
    bucket = env["P8_S3_BUCKET"]
    ok(rem("--db-path", str(db), "backup", "create", "--upload", "--json", env=env))
    for round_ in range(3):  # three passes: three segments of one log
        engine.call("insert", "acme", "articles", article(f"r-{round_}", 2))
        ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
    log = manifest_of(s3, bucket, db)["wal_segments"][-1]["log_number"]
    engine.call("flush")  # a new log: the pass after this finds that one finished and compacts it
    engine.call("insert", "acme", "articles", article("next-log", 2))
    ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
    manifest = manifest_of(s3, bucket, db)
    assert len([s for s in manifest["wal_segments"] if s["log_number"] == log]) == 1
    retired = [r["key"] for r in manifest["retired"]]
    assert len(retired) >= 3 and all(s3.head_object(Bucket=bucket, Key=k) for k in retired)
    moment = instant()
    ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
    out = tmp_path / "from-compacted"
    restore_to(db, env, moment, out)
    assert dump_all(out)["entities"] == engine.dump()["entities"]

    manifest["retired"] = [{**r, "retired_at": "2000-01-01T00:00:00Z"} for r in manifest["retired"]]
    s3.put_object(Bucket=bucket, Key=f"{db_name_of(db)}/backups/wal/_all/manifest.json", Body=json.dumps(manifest).encode())
    ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
    assert manifest_of(s3, bucket, db)["retired"] == []
    left = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{db_name_of(db)}/backups/wal/_all/segments/")["Contents"]}
    assert not left & set(retired) and left == {s["key"] for s in manifest_of(s3, bucket, db)["wal_segments"]}


def test_settled_segments_are_sealed_into_pages_that_restore_and_prune_read(live, s3, tmp_path):
    db, engine, env = live
    env = {**env, "P8_PITR_PAGE_SEGMENTS": "2"}
    bucket = env["P8_S3_BUCKET"]
    ok(rem("--db-path", str(db), "backup", "create", "--upload", "--json", env=env))
    for log_round in range(4):  # four finished logs, each shipped in two passes, then compacted
        for i in range(2):
            engine.call("insert", "acme", "articles", article(f"p-{log_round}-{i}", 2))
            ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
        engine.call("flush")
    engine.call("insert", "acme", "articles", article("last", 2))
    ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
    moment = instant()
    ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
    manifest = manifest_of(s3, bucket, db)
    assert len(manifest["pages"]) >= 1 and len(manifest["wal_segments"]) <= 3  # the manifest stays small
    out = tmp_path / "through-pages"
    restore_to(db, env, moment, out)
    assert dump_all(out)["entities"] == engine.dump()["entities"]

    sealed = {p["key"] for p in manifest["pages"]}
    newer = ok(rem("--db-path", str(db), "backup", "create", "--upload", "--json", env=env))
    ok(rem("--db-path", str(db), "backup", "prune", "--json", env=env))  # the older base of the day goes
    manifest = manifest_of(s3, bucket, db)
    pages = manifest["pages"]
    assert all(p["last_seq"] > newer["last_sequence"] for p in pages)  # pages every kept base holds went whole
    stored = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{db_name_of(db)}/backups/wal/_all/")["Contents"]}
    listed = {p["key"] for p in pages} | {s["key"] for s in manifest["wal_segments"]} | \
        {s["key"] for p in pages for s in json.loads(s3.get_object(Bucket=bucket, Key=p["key"])["Body"].read())}
    assert stored - {f"{db_name_of(db)}/backups/wal/_all/manifest.json"} - {r["key"] for r in manifest["retired"]} == listed
    assert not sealed & stored  # the pages sealed before the newer base are gone, objects and all


def test_the_follower_keeps_pinning_through_an_s3_outage_and_catches_up_without_a_gap(live, s3, s3_endpoint,
                                                                                      tmp_path):
    db, engine, env = live
    bucket = env["P8_S3_BUCKET"]
    outage = threading.Event()
    # 403 is not retried: each pass fails at once, as after minutes of 503s once the client's retries run out
    with FaultProxy(s3_endpoint, rule=lambda method, path, headers: "403" if outage.is_set() else None) as proxy:
        through_proxy = {**env, "P8_S3_ENDPOINT_URL": proxy.url}
        ok(rem("--db-path", str(db), "backup", "create", "--upload", "--json", env=through_proxy))
        follower = follower_from_unit(db, through_proxy)
        try:
            wait_archived(s3, bucket, engine)
            before = {int(p.name[:-4]) for p in db.glob("*.log")}
            outage.set()  # S3 refuses everything
            for i in range(300):
                engine.call("insert", "acme", "articles", article(f"dark-{i}"))
            time.sleep(3)
            assert not before & {int(p.name[:-4]) for p in db.glob("*.log")}  # the engine deleted those logs
            assert manifest_of(s3, bucket, db)["last_archived_sequence"] < engine.call("latest_sequence")
            outage.clear()
            wait_archived(s3, bucket, engine)
            moment = instant()
            wait_archived(s3, bucket, engine, after=moment)
            state = engine.dump()
        finally:
            report = stop(follower)
    assert report["gaps"] == [] and report["failed_passes"] >= 1
    out = tmp_path / "after-outage"
    restore_to(db, env, moment, out)
    restored = dump_all(out)
    assert {cf: restored.get(cf, {}) for cf in state} == state


def test_a_tenant_restore_to_an_instant_holds_exactly_that_tenants_rows_then(live, s3, tmp_path):
    db, engine, env = live
    for i in range(10):
        engine.call("insert", "acme", "articles", article(f"a-{i}", 2))
        engine.call("insert", "globex", "articles", article(f"g-{i}", 2))
    ok(rem("--db-path", str(db), "backup", "create", "--upload", "--json", env=env))
    engine.call("insert", "acme", "articles", article("after-base", 2))
    ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
    moment = instant()
    state = engine.dump()
    engine.call("insert", "acme", "articles", article("too-late", 2))
    ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
    out = tmp_path / "acme-only"
    restore_to(db, env, moment, out, "--tenant", "acme")
    restored = dump_all(out)["entities"]
    want = {k: v for k, v in state["entities"].items() if k.startswith(b"entity:acme:")}
    assert {k: v for k, v in restored.items() if k.startswith(b"entity:acme:")} == want
    assert not [k for k in restored if k.startswith(b"entity:globex:")]
    assert len(want) == 11 and b"too-late" not in b"".join(restored.values())


def test_a_full_backup_of_an_engine_holding_unflushed_writes_restores_every_acknowledged_one(tmp_path):
    db = tmp_path / "db"
    engine = LiveEngine(db)  # the engine's 64 MB write buffer: nothing below is flushed
    try:
        engine.call("register_schema", "articles", ARTICLES)
        for i in range(300):
            engine.call("insert", "acme", "articles", article(f"u-{i}", 5))
        assert not list(db.glob("*.sst"))  # every write is in the log and the memtables only
        env = {"P8_BACKUP_DIR": str(tmp_path / "backups")}
        base = ok(rem("--db-path", str(db), "backup", "create", "--json", env=env))
        assert base["last_sequence"] == engine.call("latest_sequence")
        state = engine.dump()
        engine.call("insert", "acme", "articles", article("after", 5))
    finally:
        engine.close()
    out = tmp_path / "restored"
    ok(rem("--db-path", str(db), "backup", "restore", "--source", base["location"], "--target", str(out), "--json",
           env=env))
    restored = dump_all(out)
    assert {cf: restored.get(cf, {}) for cf in state} == state


def test_a_log_deleted_before_it_was_pinned_is_a_named_gap_and_nothing_is_restored_across_it(live, s3, tmp_path):
    db, engine, env = live
    engine.call("insert", "acme", "articles", article("first", 2))
    base = ok(rem("--db-path", str(db), "backup", "create", "--upload", "--json", env=env))
    ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))  # pins the current log
    before_gap = instant()
    engine.call("insert", "acme", "articles", article("in-pinned-log", 2))
    engine.call("flush")  # a new log; the pinned one is finished
    first_lost = engine.call("latest_sequence") + 1
    for i in range(5):
        engine.call("insert", "acme", "articles", article(f"lost-{i}", 2))
    last_lost = engine.call("latest_sequence")
    engine.call("flush")  # that log is flushed and deleted before any archiver saw it
    engine.call("insert", "acme", "articles", article("after-gap", 2))
    proc = rem("--db-path", str(db), "pitr", "archive", env=env)
    assert proc.returncode == 1 and f"{first_lost}-{last_lost}" in proc.stderr, proc.stderr
    points = ok(rem("--db-path", str(db), "pitr", "list-recovery-points", "--json", env=env))
    window = next(p for p in points if p["base_backup"] == base["name"])
    assert window["broken"] and f"{first_lost}-{last_lost}" in window["broken"]
    assert window["window_last_sequence"] == first_lost - 1
    late = instant()
    out = tmp_path / "across"
    proc = rem("--db-path", str(db), "pitr", "restore", "--timestamp", late, "--output", str(out), env=env)
    assert proc.returncode == 2 and "outside the recovery window" in proc.stderr and not out.exists()
    restored = restore_to(db, env, before_gap, tmp_path / "before")  # the window before the gap still works
    assert restored["last_sequence"] < first_lost
    health = json.loads(rem("--db-path", str(db), "db", "health", "--json",
                            env={**env, "P8_PITR_ENABLED": "true"}).stdout)
    assert health["checks"]["wal"]["status"] == "critical"
    # the next full backup starts a whole window again
    fresh = ok(rem("--db-path", str(db), "backup", "create", "--upload", "--json", env=env))
    engine.call("insert", "acme", "articles", article("healed", 2))
    ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
    points = ok(rem("--db-path", str(db), "pitr", "list-recovery-points", "--json", env=env))
    assert next(p for p in points if p["base_backup"] == fresh["name"])["broken"] is None
    health = json.loads(rem("--db-path", str(db), "db", "health", "--json",
                            env={**env, "P8_PITR_ENABLED": "true"}).stdout)
    assert health["checks"]["wal"]["status"] != "critical"


def test_logs_deleted_while_the_newest_is_empty_show_against_the_live_sequence(live, s3):
    db, engine, env = live
    engine.call("insert", "acme", "articles", article("one", 2))
    ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
    engine.call("flush")
    first_lost = engine.call("latest_sequence") + 1
    for i in range(3):
        engine.call("insert", "acme", "articles", article(f"gone-{i}", 2))
    engine.call("flush")  # their log is deleted and the newest is empty: only the live sequence tells
    live_last = engine.call("latest_sequence")
    proc = rem("--db-path", str(db), "pitr", "archive", env=env)
    assert proc.returncode == 1 and f"{first_lost}-{live_last}" in proc.stderr, proc.stderr


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_a_corrupted_or_missing_segment_is_named_and_no_database_is_written(live, s3, tmp_path, damage):
    db, engine, env = live
    bucket = env["P8_S3_BUCKET"]
    base = ok(rem("--db-path", str(db), "backup", "create", "--upload", "--json", env=env))
    for i in range(60):
        engine.call("insert", "acme", "articles", article(f"c-{i}", 20))
    moment = instant()  # the pass that follows confirms every write before it
    ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
    manifest = manifest_of(s3, bucket, db)
    victim = next(seg for seg in manifest["wal_segments"] if seg["first_seq"] > base["last_sequence"] + 1)
    if damage == "flip":
        body = bytearray(s3.get_object(Bucket=bucket, Key=victim["key"])["Body"].read())
        body[len(body) // 2] ^= 0xFF
        s3.put_object(Bucket=bucket, Key=victim["key"], Body=bytes(body))
    else:
        s3.delete_object(Bucket=bucket, Key=victim["key"])
    out = tmp_path / "restored"
    for command in (["pitr", "restore", "--output", str(out)], ["pitr", "verify"]):
        proc = rem("--db-path", str(db), *command, "--timestamp", moment, env=env)
        assert proc.returncode == 1
        assert f"{victim['first_seq']}-{victim['last_seq']}" in proc.stderr
        assert ("checksum" if damage == "flip" else "missing") in proc.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".rem-") and
                                     not p.name.startswith(".rem-logpins-")]


def test_pitr_verify_checks_every_segment_and_the_continuity_without_writing_a_database(live, s3, tmp_path):
    db, engine, env = live
    base = ok(rem("--db-path", str(db), "backup", "create", "--upload", "--json", env=env))
    for i in range(60):
        engine.call("insert", "acme", "articles", article(f"v-{i}", 20))
    ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))  # dates the key rows: seen by now
    moment = instant()
    ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))  # confirms nothing came after
    before = sorted(p.name for p in tmp_path.iterdir())
    result = ok(rem("--db-path", str(db), "pitr", "verify", "--timestamp", moment, "--json", env=env))
    assert result["base_backup"] == base["name"] and result["segments"] >= 2
    assert result["would_replay_through_sequence"] == engine.call("latest_sequence")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_while_the_follower_runs_a_scheduled_pass_steps_aside_and_a_second_follower_is_refused(live, s3):
    db, engine, env = live
    follower = follower_from_unit(db, env)
    try:
        wait_archived(s3, env["P8_S3_BUCKET"], engine)
        engine.call("insert", "acme", "articles", article("x", 2))
        before = wait_archived(s3, env["P8_S3_BUCKET"], engine)["wal_segments"]
        skipped = ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
        assert "another archiver" in skipped["skipped"] and skipped["segments"] == []
        second = rem("--db-path", str(db), "pitr", "archive", "--follow", env=env)
        assert second.returncode == 1 and "another archiver" in second.stderr
        engine.call("insert", "acme", "articles", article("y", 2))
        manifest = wait_archived(s3, env["P8_S3_BUCKET"], engine)
        assert manifest["wal_segments"][:len(before)] == before  # nothing shipped twice or lost
        assert manifest["wal_segments"][len(before)]["first_seq"] == before[-1]["last_seq"] + 1
    finally:
        stop(follower)


def test_an_archiver_that_loses_the_manifest_race_retries_and_leaves_no_orphan(live, s3):
    """Archiver A is interrupted just before its manifest write by a whole pass of archiver B."""
    from runtime.wiring import log_archive
    from rem.pitr import LogPins
    from rem.settings import load_settings
    from rem.wal_archive import archive_pass

    db, engine, env = live
    cfg = load_settings(db_path=db, s3_bucket=env["P8_S3_BUCKET"], s3_endpoint_url=env["P8_S3_ENDPOINT_URL"])
    archive_pass(db, log_archive(cfg))
    for i in range(30):
        engine.call("insert", "acme", "articles", article(f"race-{i}", 2))
    rival, loser = log_archive(cfg), log_archive(cfg)
    real_write, rival_reports = loser.write_manifest, []

    def write_after_rival(manifest, etag):
        if not rival_reports:
            rival_reports.append(archive_pass(db, rival, 4096, pins=LogPins(db)))  # B wins the race
        return real_write(manifest, etag)

    loser.write_manifest = write_after_rival
    report = archive_pass(db, loser, 8192, pins=LogPins(db))
    assert report.conflicts == 1 and rival_reports[0].archived_batches > 30
    assert report.archived_batches == 0  # everything was already archived by the winner
    manifest, _ = rival.read_manifest()
    covered = [seq for seg in manifest.wal_segments for seq in range(seg.first_seq, seg.last_seq + 1)]
    assert covered == list(range(covered[0], engine.call("latest_sequence") + 1))  # each batch once, in order
    stored = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=env["P8_S3_BUCKET"], Prefix=rival.root + "segments/") for o in page.get("Contents", [])}
    assert stored == {seg.key for seg in manifest.wal_segments}  # the loser's segments were deleted


def test_a_target_outside_the_window_states_the_window(live, tmp_path):
    db, engine, env = live
    base = ok(rem("--db-path", str(db), "backup", "create", "--upload", "--json", env=env))
    ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
    out = tmp_path / "too-late"
    proc = rem("--db-path", str(db), "pitr", "restore", "--timestamp", "2099-01-01 00:00:00", "--output", str(out),
               env=env)
    assert proc.returncode == 2 and "outside the recovery window" in proc.stderr
    assert base["name"] in proc.stderr and not out.exists()


def test_archiving_a_path_that_holds_no_database_says_so_and_creates_nothing(tmp_path, s3_endpoint, bucket):
    proc = rem("--db-path", str(tmp_path / "nothing-here"), "pitr", "archive", env=env_for(s3_endpoint, bucket))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_restore_from_a_bucket_fetches_only_the_base_files_the_live_database_lacks(live, s3, tmp_path):
    """A point-in-time restore links the live database's SSTs that match the base's recorded size and
    SHA-256 (held by hard links, so the engine's compactions cannot pull them away) and fetches only
    the rest; the result is the engine's state at that instant."""
    db, engine, env = live
    bucket = env["P8_S3_BUCKET"]
    engine.call("batch_insert", "acme", "articles", [{**article(f"a-{i}"), "title": os.urandom(400).hex()}
                                                     for i in range(600)])
    engine.call("flush")
    base = ok(rem("--db-path", str(db), "backup", "create", "--upload", "--json", env=env))
    after_base = instant()
    inserted = engine.call("insert", "acme", "articles", article("after-base"))
    ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
    moment, state = instant(), engine.dump()
    ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
    with FaultProxy(env["P8_S3_ENDPOINT_URL"]) as proxy:
        restore_to(db, {**env, "P8_S3_ENDPOINT_URL": proxy.url}, moment, tmp_path / "then")
    fetched = proxy.fetched_bytes(s3, bucket)
    listing = json.loads(s3.get_object(Bucket=bucket, Key=f"{db_name_of(db)}/backups/full/_all/{base['name']}/"
                                                         "files.json")["Body"].read())
    stored = sum(f.get("stored_bytes") or 0 for f in listing["files"] if f.get("object"))
    print(f"fetched {fetched:,} bytes; the base's SSTs are {stored:,} stored")
    assert stored > 200_000 and fetched < 0.1 * stored, (fetched, stored)
    restored = dump_all(tmp_path / "then")
    assert {cf: restored.get(cf, {}) for cf in state} == state
    assert not list(tmp_path.glob(".rem-hold-*"))
    # The change log (and the undo, which decodes through it) reads the base the same way.
    with FaultProxy(env["P8_S3_ENDPOINT_URL"]) as proxy:
        log = ok(rem("--db-path", str(db), "pitr", "log", "--from", after_base, "--to", moment, "--detail", "--json",
                     env={**env, "P8_S3_ENDPOINT_URL": proxy.url}))
    assert proxy.fetched_bytes(s3, bucket) < 0.1 * stored
    assert [(c["kind"], c["entity_id"]) for c in log["changes"] if c["cf"] == "entities"] == [("insert", inserted)]
