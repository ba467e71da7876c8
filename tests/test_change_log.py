"""`rem pitr log`: the archived log read back as the engine's own operations, against a live engine
(RocksDB 8.10, standalone) writing in three tenants while the follower archives to moto."""

import json
import time

import pytest

from tests.engine import LiveEngine
from tests.engine.scenario import ARTICLES, PEOPLE
from tests.helpers import rem
from tests.test_pitr import SMALL_LOGS, article, env_for, follower_from_unit, instant, ok, stop, wait_archived


states: dict[str, dict] = {}  # the engine's whole database at t1, at t2 and at the end, read by the engine


@pytest.fixture
def burst(tmp_path, s3_endpoint, bucket, s3):
    """Good writes in three tenants, a base backup, then (archived throughout) more good writes, a bad
    burst in acme between t1 and t2, and good writes after it, some to what the burst touched. Yields
    the database, the environment, t1, t2, a time t3 after the last write that the archive reached,
    what the engine was told to do in the burst, in order, and the engine."""
    db = tmp_path / "db"
    env = env_for(s3_endpoint, bucket)
    engine = LiveEngine(db, **SMALL_LOGS)
    states.clear()
    try:
        engine.call("register_schema", "articles", ARTICLES)
        engine.call("register_schema", "people", PEOPLE)
        ids = {t: [engine.call("insert", t, "articles", article(f"{t}-{i}")) for i in range(12)]
               for t in ("acme", "globex", "initech")}
        alice = engine.call("insert", "acme", "people", {"name": "Alice", "age": 41})
        ok(rem("--db-path", str(db), "backup", "create", "--upload", "--json", env=env))
        follower = follower_from_unit(db, env)
        try:
            wait_archived(s3, bucket, engine)
            engine.call("add_edge", "acme", ids["acme"][0], alice, "authored_by", {"w": 1})
            engine.call("update", "globex", ids["globex"][1], {"views": 5})
            engine.call("delete", "acme", ids["acme"][9])  # soft-deleted before the burst: the burst revives it
            wait_archived(s3, bucket, engine)
            at_t1 = engine.dump()
            t1 = instant()
            time.sleep(0.01)
            a = ids["acme"]
            done = []
            for entity in a[1:6]:
                engine.call("delete", "acme", entity)
                done.append(("soft_delete", "acme", entity))
            engine.call("update", "acme", a[6], {"slug": "renamed", "title": "changed"})
            done.append(("update", "acme", a[6]))
            engine.call("update", "globex", ids["globex"][3], {"views": 9})  # a good write inside the burst
            done.append(("update", "globex", ids["globex"][3]))
            engine.call("hard_delete", "acme", a[7])
            done.append(("hard_delete", "acme", a[7]))
            engine.call("delete_edge", a[0], alice, "authored_by")
            done.append(("delete_edge", "acme", a[0]))
            engine.call("insert", "acme", "articles", article("acme-9"))  # an upsert of the soft-deleted one
            done.append(("undelete", "acme", a[9]))
            new = engine.call("insert", "acme", "people", {"name": "Mallory", "age": 1})
            done.append(("insert", "acme", new))
            wait_archived(s3, bucket, engine)
            at_t2 = engine.dump()
            time.sleep(0.01)
            t2 = instant()
            time.sleep(0.01)
            engine.call("update", "acme", a[2], {"views": 77})  # after t2, to an entity the burst touched
            engine.call("insert", "globex", "articles", article("globex-late"))
            t3 = instant()
            wait_archived(s3, bucket, engine, after=t3)  # the archive has looked past t3
            states.update(t1=at_t1, t2=at_t2, end=engine.dump())
        finally:
            stop(follower)
        yield db, env, t1, t2, t3, done, engine
    finally:
        engine.close()


def entity_changes(result: dict) -> list[tuple]:
    """The changes an engine operation is named by: its entity write, or its edge row."""
    return [(c["kind"], c["tenant"], c["entity_id"]) for c in result["changes"] if c["cf"] in ("entities", "edges")]


def test_the_log_shows_exactly_the_engines_operations_in_order(burst):
    db, env, t1, t2, _, done, _ = burst
    result = ok(rem("--db-path", str(db), "pitr", "log", "--from", t1, "--to", t2, "--detail", "--json", env=env))
    assert entity_changes(result) == done
    update = next(c for c in result["changes"] if c["kind"] == "update" and c["tenant"] == "acme")
    assert update["changed"] == ["slug", "title"] and update["schema"] == "articles"
    assert update["key"] == "renamed"  # the entity's key after the write
    soft = [c for c in result["changes"] if c["kind"] == "soft_delete"]
    assert {c["key"] for c in soft} == {f"acme-{i}" for i in range(1, 6)} and {c["schema"] for c in soft} == {"articles"}
    # the engine's key rows follow the entity writes they belong to: the insert's new row, the hard
    # delete's removed row (the update leaves the key index alone, as the engine does)
    rows = [(c["kind"], c["key"]) for c in result["changes"] if c["cf"] == "key_index"]
    assert ("key_row_removed", "acme-7") in rows and ("key_row_added", "Mallory") in rows
    assert ("key_row_added", "renamed") not in rows
    assert {c["tenant"] for c in result["changes"]} == {"acme", "globex"}
    acme = ok(rem("--db-path", str(db), "pitr", "log", "--from", t1, "--to", t2, "--tenant", "acme", "--detail",
                  "--json", env=env))
    assert entity_changes(acme) == [d for d in done if d[1] == "acme"]
    seqs = [c["sequence"] for c in result["changes"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    edge = next(c for c in result["changes"] if c["kind"] == "delete_edge" and c["cf"] == "edges")
    assert edge["tenant"] == "acme" and edge["key"].endswith(":authored_by")  # an edge key has no tenant: its source's

    summary = ok(rem("--db-path", str(db), "pitr", "log", "--from", t1, "--to", t2, "--json", env=env))
    assert "changes" not in summary and summary["changes_total"] == result["changes_total"]
    softs = [r for r in summary["summary"] if r["kind"] == "soft_delete"]
    assert sum(r["changes"] for r in softs) == 5 and all(r["tenant"] == "acme" for r in softs)
    assert all(t1[:19] <= r["second"][:19] <= t2[:19] for r in summary["summary"])  # named to the second
    text = rem("--db-path", str(db), "pitr", "log", "--from", t1, "--to", t2, env=env)
    assert text.returncode == 0 and "soft deletes of articles in 5 batches" in text.stdout


def test_filters_and_ranges(burst):
    db, env, t1, t2, t3, done, _ = burst
    later = ok(rem("--db-path", str(db), "pitr", "log", "--from", t2, "--to", t3, "--detail", "--json", env=env))
    assert entity_changes(later)[0][:2] == ("update", "acme")  # the good write after the burst
    globex = ok(rem("--db-path", str(db), "pitr", "log", "--from", t2, "--to", t3, "--tenant", "globex",
                    "--detail", "--json", env=env))
    assert [c[0] for c in entity_changes(globex)] == ["insert"] and all(
        c["tenant"] == "globex" for c in globex["changes"])
    one = ok(rem("--db-path", str(db), "pitr", "log", "--from", t1, "--to", t2, "--entity", done[5][2], "--detail",
                 "--json", env=env))
    assert entity_changes(one) == [done[5]]
    keyed = ok(rem("--db-path", str(db), "pitr", "log", "--from", t1, "--to", t2, "--key", "Mallory", "--detail",
                   "--json", env=env))
    assert {c["entity_id"] for c in keyed["changes"]} == {done[-1][2]}

    before = rem("--db-path", str(db), "pitr", "log", "--from", "2000-01-01T00:00:00Z", "--to", t2, env=env)
    assert before.returncode == 2 and "outside the recovery window" in before.stderr
    past = rem("--db-path", str(db), "pitr", "log", "--from", t1, "--to", "2999-01-01T00:00:00Z", env=env)
    assert past.returncode == 2 and "past what the archive can show" in past.stderr and len(past.stderr.splitlines()) == 1
    backwards = rem("--db-path", str(db), "pitr", "log", "--from", t2, "--to", t1, env=env)
    assert backwards.returncode == 2 and "is not after --from" in backwards.stderr


def test_undo_puts_back_only_the_bursts_writes_and_can_itself_be_undone(burst, tmp_path, s3):
    db, env, t1, t2, _, done, engine = burst
    at_end = states["end"]
    from tests.engine import engine_read_all
    from tests.helpers import dump_all, snapshot_dir

    undo = ["--db-path", str(db), "pitr", "undo", "--from", t1, "--to", t2, "--tenant", "acme", "--json"]
    running = rem(*undo, env=env)  # the engine still holds the database: refused, nothing written
    assert running.returncode != 0 and "lock" in running.stderr.lower()
    engine.close()  # an undo, as a restore, needs the database to itself
    untouched = snapshot_dir(db)
    bucket = env["P8_S3_BUCKET"]
    objects = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))
    preview = ok(rem(*undo, "--dry-run", env=env))
    assert snapshot_dir(db) == untouched  # every file's size, time and digest
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])) == objects

    expected, conflicting = undo_oracle()
    assert conflicting and {(c["cf"], c["key"].encode()) for c in preview["conflicts"]} == conflicting
    assert preview["to_write"] > 0 and preview["record"] is None
    # Narrowed to a schema or an entity, the undo takes that entity's own rows and nothing else.
    people = ok(rem(*undo, "--schema", "people", "--dry-run", env=env))
    assert sorted((w["cf"], w["action"]) for w in people["writes"]) == [("entities", "delete"), ("key_index", "delete")]
    assert {w["entity_id"] for w in people["writes"]} == {done[-1][2]}  # the burst's one insert of a person
    hard_deleted = next(entity for kind, _, entity in done if kind == "hard_delete")
    hard = ok(rem(*undo, "--entity", hard_deleted, "--dry-run", env=env))
    assert sorted((w["cf"], w["action"]) for w in hard["writes"]) == [("entities", "put"), ("key_index", "put")]
    assert snapshot_dir(db) == untouched

    applied = ok(rem(*undo, env=env))
    after = dump_all(db)
    assert {cf: rows for cf, rows in after.items() if rows} == expected
    for tenant in ("globex", "initech"):  # the other tenants, byte for byte
        prefix = f"entity:{tenant}:".encode(), f"key:{tenant}:".encode()
        assert {k: v for k, v in after["entities"].items() if k.startswith(prefix)} == \
            {k: v for k, v in at_end["entities"].items() if k.startswith(prefix)}
    assert applied["bytes_written"] > 0 and applied["record"]
    verify = rem("--db-path", str(db), "db", "verify", "--json")
    report = json.loads(verify.stdout)
    assert verify.returncode == 0 and not [i for i in report["issues"] if i["severity"] != "info"], report["issues"]
    assert engine_read_all(db)["entities"] == after["entities"]  # RocksDB 8.10 opens it read-write

    again = ok(rem(*undo, env=env))  # a second run of the same undo changes nothing
    assert again["to_write"] == 0 and again["record"] is None and dump_all(db) == after

    reverted = ok(rem("--db-path", str(db), "pitr", "undo", "--revert", applied["record"], "--json", env=env))
    assert reverted["to_write"] == applied["to_write"]
    assert {cf: rows for cf, rows in dump_all(db).items() if rows} == {cf: rows for cf, rows in at_end.items() if rows}
    bad = rem("--db-path", str(db), "pitr", "undo", "--revert", "../../etc", env=env)
    assert bad.returncode == 2 and "not an undo record" in bad.stderr



def undo_oracle() -> tuple[dict, set]:
    """What `undo --tenant acme` must leave, from the engine's own states at t1, t2 and the end: a key
    acme's burst changed and nothing wrote since goes back to its t1 value; a key written again after
    t2 is a conflict and stays; every other key stays as it is."""
    at_t1, at_t2, at_end = states["t1"], states["t2"], states["end"]
    expected, conflicting = {}, set()
    for cf in at_end:
        for key in set(at_t1[cf]) | set(at_t2[cf]) | set(at_end[cf]):
            acme = key.startswith((b"entity:acme:", b"key:acme:")) or cf in ("edges", "edges_reverse")
            changed_in_burst = acme and at_t1[cf].get(key) != at_t2[cf].get(key)
            later = at_t2[cf].get(key) != at_end[cf].get(key)
            if changed_in_burst and later:
                conflicting.add((cf, key))
            value = at_t1[cf].get(key) if changed_in_burst and not later else at_end[cf].get(key)
            if value is not None:
                expected.setdefault(cf, {})[key] = value
    return expected, conflicting


def acme_entities(rows: dict) -> dict[str, dict]:
    return {k.decode().split(":")[2]: json.loads(v) for k, v in rows["entities"].items()
            if k.startswith(b"entity:acme:")}


def test_restore_preview_and_query_as_of_read_the_state_then(burst, s3):
    db, env, t1, t2, _, done, engine = burst
    engine.close()
    from tests.helpers import snapshot_dir

    then, now = acme_entities(states["t1"]), acme_entities(states["end"])
    for moment, rows in (("t1", then), ("t2", acme_entities(states["t2"]))):
        answer = ok(rem("--db-path", str(db), "query", "--as-of", {"t1": t1, "t2": t2}[moment],
                        "SELECT COUNT(*) FROM articles", "--tenant", "acme", "--json", env=env))
        assert answer["rows"][0][0] == sum(e["entity_type"] == "articles" and e["deleted_at"] is None
                                           for e in rows.values()), moment

    untouched = snapshot_dir(db)
    objects = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=env["P8_S3_BUCKET"]).get("Contents", []))
    preview = ok(rem("--db-path", str(db), "pitr", "restore", "--timestamp", t1, "--dry-run", "--tenant", "acme",
                     "--json", env=env))
    assert snapshot_dir(db) == untouched
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=env["P8_S3_BUCKET"]).get("Contents", [])) == objects
    assert preview["bytes_to_fetch"] > 0 and preview["segments"] >= 1 and preview["base_backup"]

    def live(e):
        return e is not None and e["deleted_at"] is None

    expected: dict[str, dict[str, int]] = {}
    for uuid in set(then) | set(now):
        was, will = now.get(uuid), then.get(uuid)  # the restore puts `then` in place of `now`
        what = ("come_back" if live(will) and not live(was) else "vanish" if live(was) and not live(will)
                else "change" if live(was) and live(will) and (was["properties"], was["edges"]) !=
                (will["properties"], will["edges"]) else None)
        if what:
            schema = (will or was)["entity_type"]
            expected.setdefault(schema, {"come_back": 0, "vanish": 0, "change": 0})[what] += 1
    assert {s: {k: r[k] for k in ("come_back", "vanish", "change")} for s, r in preview["changes"].items()} == expected
    assert expected["articles"]["come_back"] >= 4  # the burst's soft deletes and its hard delete
    text = rem("--db-path", str(db), "pitr", "restore", "--timestamp", t1, "--dry-run", env=env)
    assert text.returncode == 0 and "Nothing was written" in text.stdout
    missing = rem("--db-path", str(db), "pitr", "restore", "--timestamp", t1, env=env)
    assert missing.returncode == 2 and "--output" in missing.stderr


def _api(url: str, path: str, body: dict | None) -> list | dict:
    import urllib.request

    request = urllib.request.Request(url + path, data=json.dumps(body).encode() if body is not None else None,
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
        return json.loads(raw) if raw else {}


def _paused_run(url: str, db_name: str, seconds: float = 120) -> dict:
    deadline = time.time() + seconds
    while time.time() < deadline:
        runs = _api(url, "/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}},
                                                             "tags": {"all_": [f"db:{db_name}"]}}})
        if runs:
            return runs[0]
        time.sleep(0.2)
    raise AssertionError("the undo never paused for its approval")


def test_the_prefect_undo_waits_for_approval_and_a_rejection_writes_nothing(burst, prefect_api):
    import subprocess
    import sys

    from tests.helpers import REPO, db_name_of, dump_all, snapshot_dir

    db, env, t1, t2, _, _, engine = burst
    engine.close()
    env = {**env, "PREFECT_API_URL": prefect_api["url"], "PREFECT_HOME": prefect_api["home"]}
    command = [sys.executable, "-m", "cli.main", "--db-path", str(db), "pitr", "undo", "--from", t1, "--to", t2,
               "--tenant", "acme", "--wait-for-approval", "--json"]
    import os

    untouched = snapshot_dir(db)
    for answer in ({"approve": False, "force": False}, {"approve": True, "force": False}):
        undo = subprocess.Popen(command, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            run = _paused_run(prefect_api["url"], db_name_of(db))
            artifacts = _api(prefect_api["url"], "/artifacts/filter",
                             {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
            assert any(a["type"] == "markdown" and "Undo of" in a["data"] for a in artifacts)  # the preview first
            assert snapshot_dir(db) == untouched  # nothing written while it waits
            _api(prefect_api["url"], f"/flow_runs/{run['id']}/resume", {"run_input": answer})  # as the UI does
            out, err = undo.communicate(timeout=120)
        finally:
            undo.kill()
        assert undo.returncode == 0, err
        result = json.loads(out)
        if not answer["approve"]:
            assert result["approved"] is False and snapshot_dir(db) == untouched
        else:
            assert result["approved"] is True and result["record"]
            assert {cf: rows for cf, rows in dump_all(db).items() if rows} == undo_oracle()[0]
