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
    backups = [r for r in runs if flows.get(r["flow_id"]) == "full-backup"]
    assert backups, "the backup run must be visible on the server"
    tasks = _api(prefect_api["url"], "/task_runs/filter",
                 {"task_runs": {"flow_run_id": {"any_": [backups[0]["id"]]}}})
    assert {t["name"].rsplit("-", 1)[0] for t in tasks} >= {"snapshot", "upload-new-ssts", "tag-metadata"}
    assert all(t["state_type"] == "COMPLETED" for t in tasks)
    # The restore of that backup is a run too, and it fails cleanly on a bad source.
    proc = rem("backup", "restore", "--source", str(tmp_path / "nope"), "--target", str(tmp_path / "t"), env=env)
    assert proc.returncode == 2 and "metadata.json" in proc.stderr
    assert name


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
    ok("query", "SELECT COUNT(*) FROM people")
    flows = {f["name"] for f in _api(prefect_api["url"], "/flows/filter", {})}
    assert {"full-backup", "download-backup", "restore", "verify-backup", "verify", "wal-archive"} <= flows
