"""Restore, prune, query and monitoring tried the way a hostile or unlucky on-call engineer would:
each command does what it says completely, or refuses with one line and leaves everything as it was."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.engine import ENGINE_PYTHON, RUN, engine_write
from tests.helpers import REPO, db_name_of, digest, dump_all, free_port, rem, snapshot_dir, wait_http

# The engine (tests/engine, RocksDB 8.10) as a service starts it: it retries its read-write open
# until RocksDB lets it in, then inserts notes into one tenant and prints each entity's key once
# the write returned (acknowledged).
ENGINE = r"""
import sys, time
sys.path.insert(0, sys.argv[4])
from writer import Engine
path, tenant, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
refused = 0
while True:
    try:
        engine = Engine(path)
        break
    except Exception as exc:
        refused += 1
        print("refused", time.time(), str(exc).splitlines()[0], flush=True)
        time.sleep(0.01)
for i in range(rows):
    entity_id = engine.insert(tenant, "notes", {"key": f"{tenant}-{i:08d}", "text": "written by the engine"})
    print("ack", f"entity:{tenant}:{entity_id}", flush=True)
engine.close()
print("closed", refused, flush=True)
"""


def engine(path: Path, tenant: str, rows: int) -> subprocess.Popen:
    return subprocess.Popen([str(ENGINE_PYTHON), "-c", ENGINE, str(path), tenant, str(rows), str(RUN.parent)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def engine_writes(path: Path, prefix: str, rows: int) -> None:
    proc = engine(path, prefix, rows)
    out, errs = proc.communicate(timeout=60)
    assert proc.returncode == 0, errs


def lock_held(path: Path) -> bool:
    """Asked from this process, which never holds the lock (F_GETLK takes nothing)."""
    from rem.db import lock_is_held

    return lock_is_held(path)


def backup(db: Path, *extra: str) -> dict:
    proc = rem("--db-path", str(db), "backup", "create", "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# ------------------------------------------------------------------ 1. the target stays locked


def test_an_engine_that_starts_during_a_restore_waits_for_it_and_loses_no_acknowledged_write(make_sample, tmp_path):
    db = make_sample(entities=20000, dim=256)
    meta = backup(db)
    backed_up = dump_all(db)
    engine_writes(db, "after-backup", 500)  # the target moves on after the backup...
    rem("--db-path", str(db), "db", "compact", check=True)  # ...and is compacted: new SSTs, a new MANIFEST

    restore = subprocess.Popen([sys.executable, "-m", "cli.main", "backup", "restore", "--source", meta["location"],
                                "--target", str(db), "--overwrite"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not lock_held(db):
        assert restore.poll() is None and time.time() < deadline, restore.communicate()
        time.sleep(0.005)
    writer = engine(db, "engine", 300)  # starts while the restore holds the target
    out, errs = restore.communicate(timeout=120)
    assert restore.returncode == 0, errs
    lines, _ = writer.communicate(timeout=60)
    assert writer.returncode == 0
    refused = [line for line in lines.splitlines() if line.startswith("refused")]
    acked = [line.split()[1].encode() for line in lines.splitlines() if line.startswith("ack")]
    assert refused, "the engine must have tried (and been refused) while the restore ran"
    assert any("lock" in line.lower() for line in refused)
    assert len(acked) == 300

    final = dump_all(db)  # opens cleanly
    assert all(key in final["entities"] for key in acked)
    for cf, prefix in (("entities", b"entity:engine:"), ("key_index", b"key:engine:")):
        final[cf] = {k: v for k, v in final[cf].items() if not k.startswith(prefix)}
    assert digest(final) == digest(backed_up)  # exactly the backup, plus what the engine acknowledged
    assert not [p for p in db.parent.iterdir() if p.name.startswith(".rem-")]


def test_a_restore_refuses_a_target_an_engine_holds_and_changes_nothing(make_sample, tmp_path):
    db = make_sample()
    meta = backup(db)
    engine_writes(db, "later", 10)
    holder = subprocess.Popen([str(ENGINE_PYTHON), "-c", "import sys, time; sys.path.insert(0, sys.argv[2]); "
                               "from writer import Engine; e = Engine(sys.argv[1]); print('open', flush=True); "
                               "time.sleep(60)", str(db), str(RUN.parent)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        before = snapshot_dir(db)
        proc = rem("backup", "restore", "--source", meta["location"], "--target", str(db), "--overwrite")
        assert proc.returncode == 1 and "holds its lock" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert snapshot_dir(db) == before
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------ 2. tenant restores are atomic


def _tenant_rows(rows: dict, tenant: str) -> dict:
    return {k: v for k, v in rows["entities"].items() if k.startswith(f"entity:{tenant}:".encode())}


def test_a_killed_tenant_restore_leaves_the_old_tenant_or_the_new_one(make_sample, tmp_path):
    db = make_sample(entities=30000, tenants=3, dim=64)
    meta = backup(db, "--tenant", "acme")
    new_acme = _tenant_rows(dump_all(db), "acme")
    engine_writes(db, "acme", 2000)  # acme moves on: 2000 more entities
    old = dump_all(db)
    old_acme, others = _tenant_rows(old, "acme"), {k: v for k, v in old["entities"].items()
                                                   if not k.startswith(b"entity:acme:")}
    assert old_acme != new_acme
    command = [sys.executable, "-m", "cli.main", "backup", "restore", "--source", meta["location"], "--overwrite"]
    rehearsal = tmp_path / "rehearsal"
    shutil.copytree(db, rehearsal)
    started = time.monotonic()
    subprocess.run([*command, "--target", str(rehearsal)], cwd=REPO, check=True, capture_output=True)
    duration = time.monotonic() - started  # how long a whole tenant restore takes here, whatever it does
    outcomes = []
    for fraction in (0.5, 0.7, 0.85, 0.95, None):
        restore = subprocess.Popen([*command, "--target", str(db)], cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        if fraction is not None:
            time.sleep(duration * fraction)
            restore.send_signal(signal.SIGKILL)
        restore.wait(120)
        now = dump_all(db)  # opens cleanly whatever happened
        acme = _tenant_rows(now, "acme")
        assert acme in (old_acme, new_acme), f"kill at {fraction} of a run: a mix of {len(acme)} acme entities"
        assert {k: v for k, v in now["entities"].items() if not k.startswith(b"entity:acme:")} == others
        outcomes.append("new" if acme == new_acme else "old")
    assert outcomes[-1] == "new"  # the run left alone finishes, even after killed ones left scratch behind
    # Scratch of the killed runs is gone; a quarantine (the old database) may stay: it is never deleted blindly.
    assert not [p for p in db.parent.iterdir() if p.name.startswith(".rem-") and "quarantine" not in p.name]


def test_a_tenant_restore_of_default_keeps_the_schemas_the_backup_lacks(make_sample, tmp_path):
    db = make_sample()
    meta = backup(db, "--tenant", "default")
    schema_id, = engine_write(db, [["register_schema", "invoices", {"version": "1.0.0", "type": "object",
                                                                   "json_schema_extra": {"category": "user"}}]])
    registered = dump_all(db)["entities"][f"entity:default:{schema_id}".encode()]
    proc = rem("backup", "restore", "--source", meta["location"], "--target", str(db), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert dump_all(db)["entities"][f"entity:default:{schema_id}".encode()] == registered


# ------------------------------------------------------------ 3. paths come from where things are


def test_prune_never_acts_on_a_path_a_metadata_file_names(make_sample, tmp_path):
    db = make_sample()
    backup_dir = tmp_path / "backups"
    meta = backup(db, "--name", "real")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    home = backup_dir / db_name_of(db) / "backups" / "full" / "_all"
    crafted = home / "evil"
    crafted.mkdir(parents=True)
    (crafted / "metadata.json").write_text(json.dumps({**{k: v for k, v in meta.items() if k != "location"},
                                                       "name": "../../../victim", "timestamp": "2001-01-01T00:00:00Z"}))
    liar = home / "liar"
    liar.mkdir()
    (liar / "metadata.json").write_text(json.dumps({**{k: v for k, v in meta.items() if k != "location"},
                                                    "name": "real", "timestamp": "2001-01-01T00:00:00Z"}))
    env = {"P8_BACKUP_DIR": str(backup_dir)}
    listed = rem("--db-path", str(db), "backup", "list", "--json", env=env)
    assert listed.returncode == 0 and [r["name"] for r in json.loads(listed.stdout)] == ["real"]
    assert "skipping" in listed.stderr and "evil" in listed.stderr and "liar" in listed.stderr
    prune = ("--db-path", str(db), "backup", "prune", "--keep-daily", "0", "--keep-weekly", "0", "--keep-monthly",
             "0", "--json")
    proc = rem(*prune, env=env)  # an unreadable record is an unknown backup: prune stops, deleting nothing
    assert proc.returncode == 1 and "evil" in proc.stderr and "deleted nothing" in proc.stderr, proc.stderr
    assert (victim / "precious.txt").read_text() == "keep me" and (crafted / "metadata.json").exists()
    shutil.rmtree(crafted)
    proc = rem(*prune, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (victim / "precious.txt").read_text() == "keep me"
    assert (liar / "metadata.json").exists()  # skipped, never acted on
    assert Path(meta["location"], "metadata.json").exists()  # the newest is kept


def test_download_never_writes_outside_output(make_sample, tmp_path, s3_endpoint, bucket, s3):
    db = make_sample()
    env = {"P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": s3_endpoint}
    real = json.loads(rem("--db-path", str(db), "backup", "create", "--archive", "--upload", "--json", env=env,
                          check=True).stdout)
    # A record planted in the bucket whose metadata names a path outside any --output.
    crafted = {**{k: v for k, v in real.items() if k != "location"}, "name": "../../escaped"}
    home = f"{db_name_of(db)}/backups/full/_all/"
    for filename in ("rocksdb.tar.zst", "schemas.json"):
        s3.copy_object(Bucket=bucket, Key=f"{home}escaped/{filename}",
                       CopySource={"Bucket": bucket, "Key": f"{home}{real['name']}/{filename}"})
    s3.put_object(Bucket=bucket, Key=f"{home}escaped/metadata.json", Body=json.dumps(crafted).encode())
    out = tmp_path / "out" / "inner"
    for name in ("../../escaped", "escaped"):
        proc = rem("backup", "download", "--name", name, "--output", str(out), env={**env, "P8_DB_NAME": db_name_of(db)})
        assert proc.returncode == 2, proc.stderr
        assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1
        assert not (tmp_path / "escaped").exists() and not out.exists()


# ------------------------------------------------------------------------ 5. tenants are explicit


@pytest.mark.parametrize("args", [
    ("backup", "create", "--tenant", ""),
    ("backup", "create", "--tenant", "nosuch"),
    ("backup", "prune", "--tenant", ""),
    ("query", "--tenant", "", "SELECT COUNT(*) FROM articles"),
    ("query", "--tenant", "nosuch", "SELECT COUNT(*) FROM articles"),
    ("export", "--tenant", "nosuch", "--output", "OUT"),
    ("db", "vacuum", "--tenant", ""),
])
def test_an_empty_or_unknown_tenant_is_bad_input_and_writes_nothing(make_sample, tmp_path, args):
    db = make_sample()
    args = tuple(str(tmp_path / "export") if a == "OUT" else a for a in args)
    before = snapshot_dir(tmp_path)
    proc = rem("--db-path", str(db), *args)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "tenant" in proc.stderr
    assert snapshot_dir(tmp_path) == before


# ------------------------------------------------------------------ 6. query reads only the tables


def test_query_cannot_read_files_reach_the_network_or_install_anything(make_sample, tmp_path):
    db = make_sample()
    secret = tmp_path / "env.sh"
    secret.write_text("export AWS_SECRET_ACCESS_KEY=do-not-leak\n")
    home = tmp_path / "home"
    home.mkdir()
    ok = rem("--db-path", str(db), "query", "SELECT COUNT(*) AS n FROM articles", "--json", env={"HOME": str(home)})
    assert ok.returncode == 0 and json.loads(ok.stdout)["rows"][0][0] > 0
    for sql in (f"SELECT * FROM read_text('{secret}'), (SELECT 1 FROM articles LIMIT 1)",
                f"SELECT * FROM glob('{tmp_path}/*'), (SELECT 1 FROM articles LIMIT 1)",
                f"SELECT * FROM read_csv('{secret}'), (SELECT 1 FROM articles LIMIT 1)",
                "SELECT * FROM read_json('https://127.0.0.1:9/x.json'), (SELECT 1 FROM articles LIMIT 1)",
                f"SELECT * FROM articles, (SELECT * FROM '{secret}')"):
        proc = rem("--db-path", str(db), "query", sql, env={"HOME": str(home)})
        assert proc.returncode == 2, (sql, proc.stdout, proc.stderr)
        assert "do-not-leak" not in proc.stdout + proc.stderr
        # refused by DuckDB's sandbox, or (a bare path) looked up as a table that does not exist
        assert "Permission Error" in proc.stderr or "does not exist" in proc.stderr, proc.stderr
    for sql in ("INSTALL httpfs", "LOAD httpfs", "SET enable_external_access = true"):
        assert rem("--db-path", str(db), "query", sql, env={"HOME": str(home)}).returncode == 2
    assert not (home / ".duckdb").exists()


# --------------------------------------------------------------------------- 7. symlinked targets


def test_a_restore_through_a_symlink_restores_the_real_directory(make_sample, tmp_path):
    db = make_sample(seed=1)
    meta = backup(db)
    real = make_sample(seed=2)
    link = tmp_path / "current"
    link.symlink_to(real)
    proc = rem("backup", "restore", "--source", meta["location"], "--target", str(link), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert digest(dump_all(real)) == digest(dump_all(db))


# ------------------------------------------------------------ 8. nothing left behind, nothing hidden


def test_the_next_run_removes_scratch_a_killed_run_left_and_spares_a_live_one(make_sample, tmp_path):
    db = make_sample()
    code = ("import os, sys, time; from pathlib import Path; from rem.scratch import scratch_dir; "
            "p = scratch_dir(Path(sys.argv[1]), sys.argv[2]); "
            "[os.link(f, p / f.name) for f in Path(sys.argv[1]).glob('*.sst')]; print(p, flush=True); time.sleep(60)")
    dead = subprocess.Popen([sys.executable, "-c", code, str(db), "snapshot"], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    alive = subprocess.Popen([sys.executable, "-c", code, str(db), "restore"], stdout=subprocess.PIPE, text=True,
                             cwd=REPO)
    try:
        dead_dir, alive_dir = Path(dead.stdout.readline().strip()), Path(alive.stdout.readline().strip())
        dead.send_signal(signal.SIGKILL)
        dead.wait()
        assert dead_dir.exists() and any(dead_dir.glob("*.sst"))  # what SIGKILL leaves: links pinning SSTs
        proc = rem("--db-path", str(db), "backup", "create")
        assert proc.returncode == 0, proc.stderr
        assert not dead_dir.exists() and f"removed {dead_dir}" in proc.stderr
        assert alive_dir.exists()  # its run is alive
    finally:
        alive.kill()
        alive.wait()


def test_a_missing_target_names_the_quarantine_that_holds_it(make_sample, tmp_path):
    db = make_sample()
    quarantine = db.parent / f".rem-quarantine-{db.name}-20261125T090000-abcd"
    db.rename(quarantine)
    proc = rem("--db-path", str(db), "db", "stats")
    assert proc.returncode == 2
    assert str(quarantine) in proc.stderr and f"mv {quarantine} {db}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- 9. error lines are text


def test_error_lines_print_brackets_literally(tmp_path):
    odd = tmp_path / "db[/]x"
    proc = rem("--db-path", str(odd), "db", "stats")
    assert proc.returncode == 2 and str(odd) in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    config = tmp_path / "rem.toml"
    config.write_text("[backup]\ncompression = 99\n")
    proc = rem("--config", str(config), "db", "stats")
    assert proc.returncode == 2 and "[backup] compression" in proc.stderr


# ------------------------------------------------------------ 10. monitoring stays up when S3 is down


def test_metrics_are_served_while_a_client_sits_idle(make_sample):
    db = make_sample()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "cli.main", "--db-path", str(db), "metrics", "serve", "--port",
                               str(port)], cwd=REPO, stderr=subprocess.PIPE)
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", 30, server)
        idle = socket.create_connection(("127.0.0.1", port))  # connects and says nothing
        try:
            started = time.time()
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            assert "rem_db_size_bytes" in body and time.time() - started < 5
        finally:
            idle.close()
    finally:
        server.terminate()
        server.wait(10)


def test_with_s3_unreachable_list_and_health_still_report_the_local_backups(make_sample, tmp_path):
    db = make_sample()
    meta = backup(db)
    env = {"P8_S3_BUCKET": "rem-nowhere", "P8_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    started = time.time()
    listed = rem("--db-path", str(db), "backup", "list", "--json", env=env)
    assert listed.returncode == 1 and [r["name"] for r in json.loads(listed.stdout)] == [meta["name"]]
    assert "s3://rem-nowhere" in listed.stderr and len(listed.stderr.strip().splitlines()) == 1
    health = rem("--db-path", str(db), "db", "health", env=env)
    assert time.time() - started < 30
    report = json.loads(health.stdout)
    assert health.returncode == 1 and report["status"] == "unhealthy"
    assert report["checks"]["storage"]["status"] == "critical" and "rem-nowhere" in json.dumps(report["checks"]["storage"])
    assert report["checks"]["backup"]["last"] == meta["name"] and report["checks"]["rocksdb"]["status"] == "ok"


# ------------------------------------------------------------------------------------ 11. smaller


@pytest.mark.parametrize("name", ["x" * 300, ""])
def test_a_bad_backup_name_is_bad_input(make_sample, tmp_path, name):
    db = make_sample()
    before = snapshot_dir(db.parent)
    proc = rem("--db-path", str(db), "backup", "create", "--name", name)
    assert proc.returncode == 2 and "backup name" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert snapshot_dir(db.parent) == before


def test_two_backups_with_one_name_cannot_both_succeed(make_sample, tmp_path):
    db = make_sample(entities=8000, dim=128)
    runs = [subprocess.Popen([sys.executable, "-m", "cli.main", "--db-path", str(db), "backup", "create", "--name",
                              "same", "--json"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [(r.wait(120), *r.communicate()) for r in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    loser = next(errs for code, _, errs in results if code == 2)
    assert "same" in loser and len(loser.strip().splitlines()) == 1
    target = tmp_path / "restored"
    winner = json.loads(next(out for code, out, _ in results if code == 0))
    assert rem("backup", "restore", "--source", winner["location"], "--target", str(target)).returncode == 0
    assert dump_all(target) == dump_all(db)


def test_two_s3_backups_with_one_name_cannot_both_succeed(make_sample, s3_endpoint, bucket):
    db = make_sample(entities=3000)
    env = {"P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": s3_endpoint, "P8_BACKUP_CHUNK_SIZE_MB": "5"}
    runs = [subprocess.Popen([sys.executable, "-m", "cli.main", "--db-path", str(db), "backup", "create", "--upload",
                              "--name", "same"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, **env}) for _ in range(2)]
    codes = sorted(r.wait(120) for r in runs)
    assert codes == [0, 2], [r.communicate() for r in runs]
    verify = rem("--db-path", str(db), "backup", "verify", "--name", "same", env=env)
    assert verify.returncode == 0, verify.stderr


def test_kms_without_a_key_is_bad_configuration(make_sample):
    db = make_sample()
    proc = rem("--db-path", str(db), "backup", "create", "--upload",
               env={"P8_S3_BUCKET": "rem-any", "P8_BACKUP_ENCRYPTION": "aws:kms"})
    assert proc.returncode == 2 and "P8_KMS_KEY_ID" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_backup_files_are_readable_by_their_owner_only(make_sample, tmp_path, s3_endpoint, bucket):
    db = make_sample()
    meta = backup(db)
    env = {"P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": s3_endpoint}
    assert rem("--db-path", str(db), "backup", "create", "--upload", "--name", "up", env=env).returncode == 0
    out = tmp_path / "dl"
    assert rem("--db-path", str(db), "backup", "download", "--name", "up", "--output", str(out), env=env).returncode == 0
    shared = Path(meta["location"]).parents[2] / "sst"  # the incremental backups' SST objects
    files = [p for top in (Path(meta["location"]), out / "up", shared) for p in top.rglob("*") if p.is_file()]
    assert len(files) >= 10 and {p.name for p in files} >= {"metadata.json", "files.json", "small.tar.zst"}
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {"0o600"}


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 4 MiB tmpfs: a real ENOSPC (CI runs as root, as this machine does)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)]).returncode != 0:
        pytest.fail("cannot mount a tmpfs: this test needs root, as CI has")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def test_a_full_disk_is_named_once_and_not_retried(make_sample, tiny_filesystem):
    db = make_sample(entities=6000, dim=256)
    started = time.time()
    proc = rem("--db-path", str(db), "--backup-dir", str(tiny_filesystem), "backup", "create")
    assert proc.returncode == 1 and "no space left on device" in proc.stderr
    assert str(tiny_filesystem) in proc.stderr and "retry" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert time.time() - started < 20  # the task's retry delay is 10 s: no retry happened
    assert not list(tiny_filesystem.rglob("*.partial"))


def test_a_cleanup_failure_does_not_hide_the_error_that_caused_it(make_sample, s3_endpoint, bucket):
    """The upload fails (every part is refused), and so does the abort that follows: the operator
    sees why the upload failed, not why the clean-up did."""
    from tests.faultproxy import FaultProxy

    db = make_sample(entities=3000)
    rule = lambda method, path, headers: "403" if ("partNumber=" in path or (method == "DELETE" and "uploadId=" in path)) else None  # noqa: E731
    with FaultProxy(s3_endpoint, rule=rule) as proxy:
        proc = rem("--db-path", str(db), "backup", "create", "--upload", "--name", "cleanup",
                   env={"P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": proxy.url, "P8_BACKUP_CHUNK_SIZE_MB": "5"})
    assert proc.returncode == 1
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "UploadPart" in error[0], proc.stderr
    assert "aborting the multipart upload" in proc.stderr  # the clean-up failure is logged, not raised


# ------------------------------------------------------------------------------ 12. progress order


def test_progress_from_many_threads_only_rises_and_ends_at_100(monkeypatch):
    import prefect.artifacts

    from runtime import progress as runtime

    shown: list[float] = []
    monkeypatch.setattr(runtime, "_artifact", lambda *a, **k: "artifact-id")

    def slow_update(artifact_id, progress):
        time.sleep(0.0005 * (int(progress) % 3))  # updates take uneven time, as HTTP calls do
        shown.append(progress)

    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", slow_update)
    progress = runtime.RunProgress("parts", 1000)
    threads = [threading.Thread(target=lambda: [progress(1) for _ in range(125)]) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert shown[-1] == 99.0  # every byte counted, but the upload is not complete yet
    progress.finish()
    assert shown == sorted(shown) and len(set(shown)) == len(shown) and shown[-1] == 100.0
