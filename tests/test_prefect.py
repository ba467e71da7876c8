"""The same flows under Prefect: blocks meet Prefect's standard suite, runs appear on a real server."""

import json
import time
import urllib.request

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from blocks import BackupEncryption, BackupStorage, RemDatabase
from tests.helpers import rem


class _OfflineBlockSuite(BlockStandardTestSuite):
    def test_has_a_valid_image(self, block) -> None:
        # Prefect's version downloads the logo from the internet; tests here never leave 127.0.0.1.
        assert str(block._logo_url).startswith("https://")


class TestRemDatabaseBlock(_OfflineBlockSuite):
    @pytest.fixture
    def block(self):
        return RemDatabase


class TestBackupStorageBlock(_OfflineBlockSuite):
    @pytest.fixture
    def block(self):
        return BackupStorage


class TestBackupEncryptionBlock(_OfflineBlockSuite):
    @pytest.fixture
    def block(self):
        return BackupEncryption


def test_encryption_block_becomes_upload_extra_args():
    assert BackupEncryption(mode="AES256").extra_args() == {"ServerSideEncryption": "AES256"}
    kms = BackupEncryption(mode="aws:kms", kms_key_id="arn:aws:kms:us-east-1:1:key/abc")
    assert kms.extra_args() == {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "arn:aws:kms:us-east-1:1:key/abc"}
    with pytest.raises(ValueError, match="kms_key_id"):
        BackupEncryption(mode="aws:kms")


def _api(url: str, path: str, body: dict) -> list | dict:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_command_line_runs_appear_on_the_prefect_server_when_one_is_configured(make_sample, prefect_api, tmp_path):
    db = make_sample()
    env = {"PREFECT_API_URL": prefect_api["url"], "PREFECT_HOME": prefect_api["home"]}
    proc = rem("--db-path", str(db), "backup", "create", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    name = json.loads(proc.stdout)["name"]
    runs = _api(prefect_api["url"], "/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
    flows = {f["id"]: f["name"] for f in _api(prefect_api["url"], "/flows/filter", {})}
    from tests.helpers import db_name_of

    # This backup's run: named for its database and tagged with it (the session's server holds others').
    backups = [r for r in runs if flows.get(r["flow_id"]) == "full-backup" and f"db:{db_name_of(db)}" in r["tags"]]
    assert backups, "the backup run must be visible on the server, tagged with its database"
    assert backups[0]["name"].startswith(f"full-backup/{db_name_of(db)} ") and "adhoc" in backups[0]["tags"]
    tasks = _api(prefect_api["url"], "/task_runs/filter",
                 {"task_runs": {"flow_run_id": {"any_": [backups[0]["id"]]}}})
    assert {t["name"].rsplit("-", 1)[0] for t in tasks} >= {"snapshot", "upload-new-ssts", "tag-metadata"}
    assert all(t["state_type"] == "COMPLETED" for t in tasks)
    # The restore of that backup is a run too, and it fails cleanly on a bad source.
    proc = rem("backup", "restore", "--source", str(tmp_path / "nope"), "--target", str(tmp_path / "t"), env=env)
    assert proc.returncode == 2 and "metadata.json" in proc.stderr
    # A typo under Prefect is the same one line as without it: the traceback stays in the run's logs.
    proc = rem("--db-path", str(db), "backup", "verify", "--name", "no-such-backup", env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()  # nothing of Prefect's after it or before it, a busy server too
    assert len(lines) == 1 and lines[0].startswith("error: no backup named 'no-such-backup'"), lines
    assert name


def _loads_prefect(proc) -> bool:
    """Whether the command's process imported Prefect (its -X importtime lines, on stderr)."""
    modules = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return any(m == "prefect" or m.startswith("prefect.") for m in modules)


def test_with_a_prefect_api_a_command_that_runs_no_flow_does_not_load_prefect(make_sample, prefect_api, tmp_path):
    # Importing Prefect is about 1.1 s of CPU: `rem backup list` took 1.46 s instead of 0.34 s on
    # every host with a Prefect API configured, where no run was ever made of it.
    db = make_sample()
    env = {"PREFECT_API_URL": prefect_api["url"], "PREFECT_HOME": prefect_api["home"],
           "P8_BACKUP_DIR": str(tmp_path / "backups"), "PYTHONPROFILEIMPORTTIME": "1"}
    made = rem("--db-path", str(db), "backup", "create", "--json", env=env)
    assert made.returncode == 0 and _loads_prefect(made), made.stderr[-2000:]  # a flow: a run on the server
    name = json.loads(made.stdout)["name"]
    for args in (("backup", "list"), ("check",), ("db", "stats"), ("pitr", "status")):
        proc = rem("--db-path", str(db), *args, env=env)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        assert not _loads_prefect(proc), args
    assert name in rem("--db-path", str(db), "backup", "list", env=env).stdout


def test_without_a_prefect_api_a_10_mb_backup_finishes_in_under_3_seconds(tmp_path):
    from rem.sample import create_sample
    from rem.stats import directory_size

    db = tmp_path / "db"
    create_sample(db, 6500, 3, 1, 128)
    assert 8e6 < directory_size(db) < 14e6
    started = time.perf_counter()
    proc = rem("--db-path", str(db), "backup", "create", "--json")
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 3.0, f"rem backup create took {elapsed:.2f} s"


def test_the_runbook_commands_work_as_runs_on_the_server(make_sample, prefect_api, tmp_path, s3_endpoint, bucket):
    db = make_sample()
    env = {"PREFECT_API_URL": prefect_api["url"], "PREFECT_HOME": prefect_api["home"], "P8_S3_BUCKET": bucket,
           "P8_S3_ENDPOINT_URL": s3_endpoint, "P8_BACKUP_DIR": str(tmp_path / "backups")}

    def ok(*args):
        proc = rem("--db-path", str(db), *args, env=env)
        assert proc.returncode == 0, f"rem {' '.join(args)}: {proc.stderr[-2000:]}"
        return proc.stdout

    name = json.loads(ok("backup", "create", "--upload", "--json"))["name"]
    assert name in ok("backup", "list")
    ok("backup", "download", "--name", name, "--output", str(tmp_path / "dl"))
    ok("backup", "restore", "--source", str(tmp_path / "dl" / name), "--target", str(tmp_path / "restored"))
    ok("backup", "verify", "--name", name)
    ok("db", "verify")
    ok("pitr", "archive")
    from tests.helpers import db_name_of

    archive = _latest_artifact(prefect_api["url"], f"wal-archive-{db_name_of(db)}")
    status = json.loads(ok("pitr", "status", "--json"))
    for field, value in [("database", db_name_of(db)), ("archived through sequence", status["last_archived_sequence"]),
                         ("gaps", "none")]:
        assert f"| {field} | {value} |" in archive["data"], (field, archive["data"])
    assert "| lag | " in archive["data"] and archive["description"].startswith("Log archive of ")
    ok("query", "SELECT COUNT(*) FROM people")
    flows = {f["name"] for f in _api(prefect_api["url"], "/flows/filter", {})}
    assert {"full-backup", "download-backup", "restore", "verify-backup", "verify", "wal-archive"} <= flows


def _latest_artifact(url: str, key: str) -> dict:
    found = _api(url, "/artifacts/filter", {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1})
    assert found, f"no artifact {key!r} on the server"
    return found[0]


def test_artifacts_say_what_an_operator_acts_on(make_sample, prefect_api, tmp_path):
    """Backup, recent backups, restore and verify artifacts on a real server, field by field."""
    import socket

    from tests.helpers import db_name_of

    db = make_sample()
    name = db_name_of(db)
    env = {"PREFECT_API_URL": prefect_api["url"], "PREFECT_HOME": prefect_api["home"],
           "P8_BACKUP_DIR": str(tmp_path / "backups")}
    proc = rem("--db-path", str(db), "backup", "create", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(proc.stdout)
    # Prefect's INFO lines stay off the console unless asked for with -v
    assert "INFO" not in proc.stderr and "Finished in state" not in proc.stderr

    backup = _latest_artifact(prefect_api["url"], f"backup-{name}")
    text = backup["data"]
    for field, value in [("database", name), ("host", socket.gethostname()), ("tenant", "all tenants"),
                         ("online", "no"), ("layout", "incremental"), ("location", meta["location"]),
                         ("SHA-256", meta["checksum_sha256"]), ("duration", f"{meta['duration_seconds']:.1f} s")]:
        assert f"| {field} | " in text and value in text.split(f"| {field} | ", 1)[1].split("\n")[0], (field, text)
    assert " MB |" in text or " KB |" in text  # human units, not raw byte counts
    assert f"{meta['uncompressed_bytes'] / meta['size_bytes']:.2f}x" in text
    assert backup["description"].startswith(f"Backup {meta['name']} of {name}")

    recent = _latest_artifact(prefect_api["url"], f"recent-backups-{name}")
    rows = json.loads(recent["data"]) if isinstance(recent["data"], str) else recent["data"]
    assert rows[0]["name"] == meta["name"] and rows[0]["location"] == meta["location"]
    assert rows[0]["duration"].endswith(" s") and rows[0]["compressed"].endswith("B") and recent["description"]

    proc = rem("backup", "restore", "--source", meta["location"], "--target", str(tmp_path / "restored"), env=env)
    assert proc.returncode == 0, proc.stderr
    restore = _latest_artifact(prefect_api["url"], "restore")["data"]
    assert f"| into | {tmp_path / 'restored'} |" in restore and meta["checksum_sha256"] in restore

    proc = rem("--db-path", str(db), "db", "verify", env=env)
    assert proc.returncode == 0, proc.stderr
    verify = _latest_artifact(prefect_api["url"], f"verify-{name}")
    assert verify["data"].startswith("# Verify: OK: nothing critical")
    assert "## Rows checked" in verify["data"] and "| entities |" in verify["data"]
    assert "## Worst findings" in verify["data"] and verify["description"].endswith("nothing critical")


def test_a_long_command_shows_its_bar_on_a_terminal_and_nothing_when_piped(make_sample, tmp_path):
    """Under a pseudo-terminal `rem backup restore` draws a bar with its total, rate and time left;
    piped, stderr carries none of it."""
    import os

    from tests.helpers import in_terminal

    db = make_sample(entities=3000)
    env = {**os.environ, "P8_BACKUP_DIR": str(tmp_path / "backups"), "COLUMNS": "160"}
    env.pop("PREFECT_API_URL", None)
    meta = json.loads(rem("--db-path", str(db), "backup", "create", "--json", env=env, check=True).stdout)
    code, text = in_terminal("backup", "restore", "--source", meta["location"], "--target", str(tmp_path / "tty"),
                             env=env, columns=160, timeout=60)
    assert code == 0, text[-2000:]
    assert f"Restoring backup {meta['name']}" in text
    assert " of " in text and "MB" in text  # the total, in human units
    assert "Restored" in text
    piped = rem("backup", "restore", "--source", meta["location"], "--target", str(tmp_path / "piped"), env=env)
    assert piped.returncode == 0 and "Restoring backup" not in piped.stderr


DATABASE_BLOCK_RUN = """
import json, sys
from blocks.backup import BackupEncryption, RemDatabase
db, backups, key = sys.argv[1:4]
BackupEncryption(mode="key-file", key_file=key).save("rem-encryption-t", overwrite=True)
RemDatabase(path=db, backup_dir=backups, db_name="sealed", encryption_block="rem-encryption-t").save(
    "rem-db-sealed", overwrite=True)
from flows.backup import full_backup
from flows.retention import recovery_drill
made = full_backup(name="by-block", database_block="rem-db-sealed")
print(json.dumps({"made": made["encryption"], "drill": recovery_drill(backup="by-block", database_block="rem-db-sealed")}))
"""


def test_a_database_block_naming_an_encryption_block_seals_and_opens_every_flow_of_it(make_sample, prefect_api,
                                                                                     tmp_path):
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    db = make_sample()
    key = tmp_path / "backup.key"
    key.write_text(os.urandom(32).hex())
    backups = tmp_path / "backups"
    env = {**os.environ, "PREFECT_API_URL": prefect_api["url"], "PREFECT_HOME": prefect_api["home"]}
    env.pop("P8_BACKUP_ENCRYPTION", None)  # nothing but the blocks says how
    proc = subprocess.run([sys.executable, "-c", DATABASE_BLOCK_RUN, str(db), str(backups), str(key)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["made"]["mode"] == "key-file" and result["drill"]["passed"]
    ssts = list(backups.rglob("sst/*.zst"))
    assert ssts and all(p.read_bytes().startswith(b"REMAEAD1") for p in ssts)
