"""Point-in-time recovery against moto: an oracle of known states, races, corruption, trimmed WAL."""

import json
import threading

import pytest

from rem.db import open_db
from rem.writer import RemWriter
from tests.helpers import dump_all, rem


def env_for(endpoint, bucket, **more):
    return {"P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": endpoint, "P8_BACKUP_CHUNK_SIZE_MB": "5",
            "P8_PITR_SEGMENT_MAX_ENTRIES": "7", **more}


def ok(proc):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip().startswith(("{", "[")) else proc.stdout


def note(uid, text):
    return {"id": uid, "entity_type": "articles", "created_at": "2099-01-01T00:00:00Z",
            "modified_at": "2099-01-01T00:00:00Z", "deleted_at": None, "edges": [],
            "properties": {"uri": f"u:{uid}", "title": text, "status": "draft", "category": "c"}}


def workload_phase(db_path, ops):
    """Run writes as a primary engine would (the logical WAL this PITR archives), at explicit times,
    then close so the state can be captured."""
    with open_db(db_path, "rw") as db:
        w = RemWriter(db, replication="primary")
        for op in ops:
            op(w)
        db.flush_all()


def at(timestamp, write):
    """A write made at a given instant (the writer's clock says so)."""
    def run(w):
        w.now = lambda: timestamp
        return write(w)
    return run


@pytest.fixture
def pitr_db(make_sample, s3_endpoint, bucket):
    db = make_sample(entities=300, tenants=2, replication="primary")
    env = env_for(s3_endpoint, bucket)
    base = ok(rem("--db-path", str(db), "backup", "create", "--upload", "--json", env=env))
    return db, env, base


def test_restore_to_each_instant_matches_the_state_the_database_had_then(pitr_db, tmp_path):
    db, env, base = pitr_db
    expected = {base["wal_last_timestamp"]: dump_all(db)}  # the instant of the base backup itself
    t = lambda s: f"2099-01-01T00:00:{s}Z"  # noqa: E731
    phases = [
        ("2099-01-01T00:00:01.300000Z", [at(t("01.100000"), lambda w: w.put_entity("acme", note("p1-a", "one")))]),
        # between two entries of the same second: 01.100 is in, 01.700 is not
        ("2099-01-01 00:00:02.500000", [at(t("01.700000"), lambda w: w.put_entity("acme", note("p2-a", "two"))),
                                        at(t("02.000000"), lambda w: w.update("acme", "p1-a", {
                                            "uri": "u:moved", "title": "one!", "status": "published"}))]),
        # No add_edge here: the engine's logical WAL never logs one (replication/wal.rs), so this
        # PITR cannot restore it; PITR from RocksDB's own log (issue 12) will.
        (t("05.000000"), [at(t("03.000000"), lambda w: w.soft_delete("acme", "p2-a")),
                          at(t("04.500000"), lambda w: w.put_entity("globex", note("p3-g", "three")))]),
    ]
    for instant, ops in phases:
        workload_phase(db, ops)
        expected[instant] = dump_all(db)
    workload_phase(db, [at(t("09.000000"), lambda w: w.put_entity("acme", note("late", "after")))])
    archived = ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
    assert archived["lag_entries"] == 0 and len(archived["segments"]) >= 2  # 7 entries per segment at most

    for i, (instant, state) in enumerate(expected.items()):
        out = tmp_path / f"at-{i}"
        result = ok(rem("--db-path", str(db), "pitr", "restore", "--timestamp", instant, "--output", str(out),
                        "--json", env=env))
        assert result["base_backup"] == base["name"]
        restored = dump_all(out)
        assert restored == state, f"state at {instant} differs"

    status = ok(rem("--db-path", str(db), "pitr", "status", "--json", env=env))
    assert status["lag_entries"] == 0 and status["last_archived_timestamp"] == t("09.000000")
    points = ok(rem("--db-path", str(db), "pitr", "list-recovery-points", "--json", env=env))
    assert points[0]["window_start"] == base["wal_last_timestamp"] and points[0]["window_end"] == t("09.000000")
    verify = ok(rem("--db-path", str(db), "pitr", "verify", "--timestamp", t("03.500000"), "--json", env=env))
    assert verify["base_backup"] == base["name"]


def test_a_target_outside_the_window_states_the_window(pitr_db, tmp_path):
    db, env, base = pitr_db
    ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
    out = tmp_path / "too-late"
    proc = rem("--db-path", str(db), "pitr", "restore", "--timestamp", "2030-01-01 00:00:00", "--output", str(out),
               env=env)
    assert proc.returncode == 2 and "outside the recovery window" in proc.stderr
    assert base["wal_last_timestamp"] in proc.stderr and not out.exists()


def test_two_archivers_at_once_neither_lose_nor_duplicate_a_segment(pitr_db, s3):
    from flows.pitr import wal_archive_for
    from rem.settings import load_settings
    from tasks.wal_archive import archive_pass

    db, env, _ = pitr_db
    cfg = load_settings(db_path=db, s3_bucket=env["P8_S3_BUCKET"], s3_endpoint_url=env["P8_S3_ENDPOINT_URL"])
    for round_ in range(4):
        workload_phase(db, [at(f"2099-02-0{round_ + 1}T00:00:{i:02d}Z", lambda w, i=i: w.put_entity("acme", note(f"r{round_}-{i}", "x")))
                            for i in range(40)])
        errors = []

        def run():
            try:
                archive_pass(db, wal_archive_for(cfg), max_entries=9)
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors, errors
    archive = wal_archive_for(cfg)
    manifest, _ = archive.read_manifest()
    with open_db(db, "ro") as handle:
        latest = handle.latest_wal_seq()
    covered = [seq for s in manifest.wal_segments for seq in range(s.first_seq, s.last_seq + 1)]
    assert covered == list(range(1, latest + 1))  # every entry exactly once, in order
    stored = {o["Key"] for o in s3.list_objects_v2(Bucket=archive.bucket, Prefix=archive.root + "segments/")["Contents"]}
    assert stored == {s.key for s in manifest.wal_segments}  # no orphan left by a lost race


def test_an_archiver_that_loses_the_manifest_race_retries_and_leaves_no_orphan(pitr_db, s3):
    """Archiver A is interrupted just before its manifest write by a whole pass of archiver B."""
    from flows.pitr import wal_archive_for
    from rem.settings import load_settings
    from tasks.wal_archive import archive_pass

    db, env, _ = pitr_db
    cfg = load_settings(db_path=db, s3_bucket=env["P8_S3_BUCKET"], s3_endpoint_url=env["P8_S3_ENDPOINT_URL"])
    archive_pass(db, wal_archive_for(cfg), max_entries=50)
    workload_phase(db, [at(f"2099-05-01T00:00:{i:02d}Z", lambda w, i=i: w.put_entity("acme", note(f"race-{i}", "x")))
                        for i in range(30)])
    rival = wal_archive_for(cfg)
    loser = wal_archive_for(cfg)
    real_write, rival_reports = loser.write_manifest, []

    def write_after_rival(manifest, etag):
        if not rival_reports:
            rival_reports.append(archive_pass(db, rival, max_entries=7))  # B wins the race
        return real_write(manifest, etag)

    loser.write_manifest = write_after_rival
    report = archive_pass(db, loser, max_entries=9)
    assert report.conflicts == 1 and rival_reports[0].archived_entries == 30
    assert report.archived_entries == 0  # everything was already archived by the winner
    manifest, _ = rival.read_manifest()
    with open_db(db, "ro") as handle:
        latest = handle.latest_wal_seq()
    covered = [seq for seg in manifest.wal_segments for seq in range(seg.first_seq, seg.last_seq + 1)]
    assert covered == list(range(1, latest + 1))
    stored = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=rival.bucket, Prefix=rival.root + "segments/") for o in page.get("Contents", [])}
    assert stored == {seg.key for seg in manifest.wal_segments}  # the loser's segments were deleted


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_a_corrupted_or_missing_segment_is_named_and_no_database_is_written(pitr_db, s3, tmp_path, damage):
    db, env, base = pitr_db
    workload_phase(db, [at(f"2099-03-01T00:00:{i:02d}Z", lambda w, i=i: w.put_entity("acme", note(f"c{i}", "x")))
                        for i in range(20)])
    ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
    bucket = env["P8_S3_BUCKET"]
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="backups/wal/_all/manifest.json")["Body"].read())
    victim = next(seg for seg in manifest["wal_segments"] if seg["first_seq"] > base["wal_last_seq"] + 1)
    if damage == "flip":
        body = bytearray(s3.get_object(Bucket=bucket, Key=victim["key"])["Body"].read())
        body[len(body) // 2] ^= 0xFF
        s3.put_object(Bucket=bucket, Key=victim["key"], Body=bytes(body))
    else:
        s3.delete_object(Bucket=bucket, Key=victim["key"])
    out = tmp_path / "restored"
    for command in (["pitr", "restore", "--output", str(out)], ["pitr", "verify"]):
        proc = rem("--db-path", str(db), *command, "--timestamp", "2099-03-01T00:00:19Z", env=env)
        assert proc.returncode == 1
        assert f"{victim['first_seq']}-{victim['last_seq']}" in proc.stderr
        assert ("checksum" if damage == "flip" else "missing") in proc.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".rem-")]


def test_a_trimmed_wal_is_reported_and_marks_the_window_broken_until_the_next_backup(pitr_db, tmp_path):
    db, env, base = pitr_db
    workload_phase(db, [at(f"2099-04-01T00:00:{i:02d}Z", lambda w, i=i: w.put_entity("acme", note(f"t{i}", "x")))
                        for i in range(30)])
    first_trimmed, last_trimmed = base["wal_last_seq"] + 1, base["wal_last_seq"] + 10
    with open_db(db, "rw") as handle:  # the engine trims entries before the archiver saw them
        from rem.format import wal_key

        batch = handle.batch()
        for seq in range(first_trimmed, last_trimmed + 1):
            batch.delete(wal_key(seq), handle.handle("wal"))
        handle.write(batch)
        handle.flush_all()
    proc = rem("--db-path", str(db), "pitr", "archive", env=env)
    assert proc.returncode == 1 and f"{first_trimmed}-{last_trimmed}" in proc.stderr and "trimmed" in proc.stderr
    points = ok(rem("--db-path", str(db), "pitr", "list-recovery-points", "--json", env=env))
    assert points[0]["broken"] and f"{first_trimmed}-{last_trimmed}" in points[0]["broken"]
    assert points[0]["window_end"] == base["wal_last_timestamp"]  # nothing past the gap is reachable
    # A new full backup heals it: archiving resumes after the backup, and its window is whole.
    fresh = ok(rem("--db-path", str(db), "backup", "create", "--upload", "--json", env=env))
    ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
    workload_phase(db, [at("2099-04-02T00:00:00Z", lambda w: w.put_entity("acme", note("after", "x")))])
    ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
    points = ok(rem("--db-path", str(db), "pitr", "list-recovery-points", "--json", env=env))
    newest = next(p for p in points if p["base_backup"] == fresh["name"])
    assert newest["broken"] is None and newest["window_end"] == "2099-04-02T00:00:00Z"
    out = tmp_path / "healed"
    ok(rem("--db-path", str(db), "pitr", "restore", "--timestamp", "2099-04-02T00:00:00Z", "--output", str(out),
           "--json", env=env))
    assert dump_all(out)["entities"] == dump_all(db)["entities"]
