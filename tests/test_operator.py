"""The command line as a new on-call meets it (#26): hints that point at options that exist, one
line instead of a traceback, figures that say what they are. Run under a pseudo-terminal where a
person would see the output. Databases come from the engine-faithful writer (RocksDB 8.10)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, dump_all, in_terminal, rem


@pytest.fixture
def db(make_sample) -> Path:
    return make_sample(entities=600, tenants=2, seed=26, dim=16)


def local(tmp_path) -> dict:
    return {"P8_BACKUP_DIR": str(tmp_path / "backups")}


def test_stats_piped_into_head_ends_quietly(db):
    proc = subprocess.run(f"{os.sys.executable} -m cli.main --db-path {db} db stats | head -3", shell=True,
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert len(proc.stdout.splitlines()) == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert "AttributeError" not in proc.stderr


def test_restore_takes_a_backup_by_name_or_latest(db, tmp_path):
    env = local(tmp_path)
    rem("--db-path", str(db), "backup", "create", "--name", "first", env=env, check=True)
    from tests.engine import engine_write

    engine_write(db, [["insert", "acme", "articles", {"name": "after-first", "content": "x"}]])
    rem("--db-path", str(db), "backup", "create", "--name", "second", env=env, check=True)
    code, screen = in_terminal("--db-path", str(db), "backup", "restore", "--name", "latest", "--target",
                               str(tmp_path / "latest"), env=env)
    assert code == 0 and "Restored second" in screen, screen
    assert dump_all(tmp_path / "latest") == dump_all(db)
    code, screen = in_terminal("--db-path", str(db), "backup", "restore", "--name", "first", "--target",
                               str(tmp_path / "first"), env=env)
    assert code == 0 and "Restored first" in screen, screen
    code, screen = in_terminal("--db-path", str(db), "backup", "restore", "--target", str(tmp_path / "x"), env=env)
    assert code == 2 and "--source" in screen and "--name" in screen and "Traceback" not in screen
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rem-")]


def test_with_the_prefect_server_gone_too_backup_and_restore_still_run_and_say_so(db, tmp_path):
    from tests.helpers import free_port

    api = f"http://127.0.0.1:{free_port()}/api"  # configured, but nothing answers there
    env = {**local(tmp_path), "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "prefect")}
    made = rem("--db-path", str(db), "backup", "create", "--name", "b", "--json", env=env)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["name"] == "b"
    restored = rem("--db-path", str(db), "backup", "restore", "--name", "b", "--target", str(tmp_path / "r"), env=env)
    assert restored.returncode == 0, restored.stderr
    assert dump_all(tmp_path / "r") == dump_all(db)
    for proc in (made, restored):  # one line each: where Prefect was looked for, and what that means
        warnings = [line for line in proc.stderr.splitlines() if "Prefect" in line]
        assert len(warnings) == 1 and api in warnings[0] and "in-process" in warnings[0], proc.stderr
        assert "Traceback" not in proc.stderr
    # what works on the server itself says so in one line, and exits 2
    for args in (("fleet", "status"), ("--db-path", str(db), "deploy", "--alert-webhook-url", "http://127.0.0.1:9/x")):
        proc = rem(*args, env=env)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
        assert f"needs the Prefect server at {api}, and it did not answer" in proc.stderr, proc.stderr


def test_a_prefect_api_that_answers_at_all_is_left_to_prefect_and_only_silence_is_not(monkeypatch):
    import http.server
    import socket
    import threading

    import runtime.orchestration
    from runtime.orchestration import _unanswered
    from tests.helpers import free_port

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # Prefect Cloud without a key, say: an answer all the same
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert _unanswered(f"http://127.0.0.1:{server.server_port}/api") is None
    finally:
        server.shutdown()
    assert "refused" in _unanswered(f"http://127.0.0.1:{free_port()}/api").lower()
    assert _unanswered("127.0.0.1:4200/api")  # no scheme: not an address Prefect could use either
    # a host that drops packets: a listener whose queue is full never completes another connection
    monkeypatch.setattr(runtime.orchestration, "API_TIMEOUT_SECONDS", 1)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        queued = [socket.socket() for _ in range(3)]
        for sock in queued:
            sock.setblocking(False)
            sock.connect_ex(silent.getsockname())
        started = time.monotonic()
        assert "timed out" in _unanswered(f"http://127.0.0.1:{silent.getsockname()[1]}/api")
        assert time.monotonic() - started < 5
        for sock in queued:
            sock.close()


def test_a_pitr_restore_into_a_non_empty_output_names_the_option_it_has(db, tmp_path):
    env = local(tmp_path)
    rem("--db-path", str(db), "backup", "create", "--archive", env=env, check=True)
    archived = json.loads(rem("--db-path", str(db), "pitr", "archive", "--json", env=env, check=True).stdout)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    stamp = archived["confirmed_timestamp"]  # inside the recovery window
    code, screen = in_terminal("--db-path", str(db), "pitr", "restore", "--timestamp", stamp, "--output", str(busy),
                               env=env)
    assert code == 2 and "--output" in screen and "--overwrite" not in screen and "--target" not in screen, screen
    assert (busy / "keep.txt").read_text() == "mine" and [p.name for p in busy.iterdir()] == ["keep.txt"]


def test_missing_credentials_and_an_unreachable_endpoint_are_one_line_each(db, tmp_path):
    bare = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env = {**local(tmp_path), "P8_S3_BUCKET": "some-bucket", "P8_S3_ENDPOINT_URL": "http://127.0.0.1:1",
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none")}
    proc = subprocess.run([os.sys.executable, "-m", "cli.main", "--db-path", str(db), "pitr", "status"], cwd=REPO,
                          env={**bare, **env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no AWS credentials" in proc.stderr and "NoCredentialsError" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    started = time.monotonic()
    code, screen = in_terminal("--db-path", str(db), "backup", "create", "--upload", env=env)
    assert code == 1 and "cannot connect to http://127.0.0.1:1" in screen, screen
    assert time.monotonic() - started < 20  # named in seconds, not after a minute of silent retries


def test_estimates_are_marked_and_the_stats_say_which_count_is_which(db, tmp_path):
    env = local(tmp_path)
    made = json.loads(rem("--db-path", str(db), "backup", "create", "--json", env=env, check=True).stdout)
    code, screen = in_terminal("backup", "restore", "--source", made["location"], "--target", str(tmp_path / "r"),
                               env=env, columns=200)
    assert code == 0 and f"~{made['entity_count']:,} entities (RocksDB's estimate" in screen, screen
    code, screen = in_terminal("--db-path", str(db), "db", "stats", env=env, columns=200)
    assert code == 0 and "live entities with a vector" in screen and "rows in the embeddings column family" in screen
    assert "Logical WAL" in screen and "replication primary" in screen


def test_the_log_follower_says_what_each_pass_shipped_and_that_it_stopped(db, tmp_path):
    import pty
    import select
    import signal
    import sys

    from tests.engine import engine_write

    env = {**os.environ, **local(tmp_path), "COLUMNS": "160"}
    env.pop("PREFECT_API_URL", None)
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execvpe(sys.executable, [sys.executable, "-m", "cli.main", "--db-path", str(db), "pitr", "archive",
                                    "--follow", "--interval", "0.5"], env)
    screen, deadline, wrote = b"", time.time() + 60, False
    while time.time() < deadline and b"stopped" not in screen:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                screen += os.read(fd, 65536)
            except OSError:
                break
        if not wrote and b"shipped" in screen:
            engine_write(db, [["insert", "acme", "articles", {"name": "while-following", "content": "x"}]])
            wrote, shipped_at = True, screen.count(b"shipped")
        if wrote and screen.count(b"shipped") > shipped_at and b"interrupt" not in screen:
            os.kill(pid, signal.SIGINT)  # Ctrl-C
            screen += b"interrupt"
    _, status = os.waitpid(pid, 0)
    text = screen.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    import re

    assert re.search(r"INFO shipped [1-9]\d* batches", text) and "stopped after" in text, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text


def test_a_healthy_verify_leads_with_its_verdict_and_groups_the_info_findings(db):
    from tests.engine import engine_write

    ids = engine_write(db, [["insert", "acme", "projects", {"name": f"renamed-{i}", "status": "active"}]
                            for i in range(40)])
    engine_write(db, [["update", "acme", i, {"name": f"now-{n}"}] for n, i in enumerate(ids)])  # old key rows stay
    code, screen = in_terminal("--db-path", str(db), "db", "verify", columns=160)
    lines = [line for line in screen.splitlines() if line.strip()]
    assert code == 0 and "Verify: OK: nothing critical (40 info findings" in screen, screen
    assert screen.index("Verify: OK") < screen.index("Checked") < screen.index("Info findings by cause")
    assert len(lines) < 40, screen  # one row for the 40 old key rows, not 40 rows


@pytest.mark.parametrize("detail", [[], ["--detail"]])
def test_backup_list_never_cuts_a_name_or_a_location_at_80_columns(db, tmp_path, detail):
    env = local(tmp_path)
    name = "nightly-before-the-schema-migration-2026-12-03T020000Z"
    rem("--db-path", str(db), "backup", "create", "--name", name, env=env, check=True)
    location = json.loads(rem("--db-path", str(db), "backup", "list", "--json", env=env, check=True).stdout)[0]["location"]
    code, screen = in_terminal("--db-path", str(db), "backup", "list", *detail, env=env, columns=80)
    flat = screen.replace("\r", "").replace("\n", "")  # the terminal may wrap a long line; rich must not cut it
    assert code == 0 and name in screen and location in flat, screen
    assert "…" not in screen and "status ok" in screen and "age 0 min" in screen, screen


def test_the_demo_names_its_database_demo_on_the_command_line_too(tmp_path):
    """#26.11: the name the demo's command line shows is the one its Prefect deployments use."""
    import sys

    proc = subprocess.run([sys.executable, "-m", "cli.demo", "--no-prefect", "--entities", "2000", "--data-dir",
                           str(tmp_path / "data")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "│ demo │ demo │" in proc.stdout and "rem-db-" not in proc.stdout, proc.stdout
    assert (tmp_path / "data" / "backups" / "demo" / "backups" / "full" / "_all" / "demo" / "metadata.json").exists()
