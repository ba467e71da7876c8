import json
import os
import subprocess
import sys

import pytest

from rem.errors import ConfigError
from rem.settings import load_settings
from tests.helpers import REPO, holding_lock, rem, snapshot_dir


def test_flags_beat_environment_beat_file(tmp_path, monkeypatch):
    cfg = tmp_path / "rem.toml"
    cfg.write_text('db_path = "/from/file"\n[backup]\ncompression = 5\nchunk_size_mb = 8\n[backup.s3]\nbucket = "file-bucket"\n')
    monkeypatch.setenv("P8_BACKUP_COMPRESSION", "7")
    s = load_settings(cfg, backup_compression=9)
    assert (s.backup_compression, s.backup_chunk_size_mb, s.s3_bucket) == (9, 8, "file-bucket")
    assert load_settings(cfg).backup_compression == 7
    monkeypatch.delenv("P8_BACKUP_COMPRESSION")
    assert load_settings(cfg).backup_compression == 5
    assert str(load_settings(cfg).db_path) == "/from/file"


@pytest.mark.parametrize("text,fragments", [
    ("[backup]\ncompresion = 3\n", ["rem.toml", "[backup] compresion", "compression, chunk_size_mb"]),
    ("[backup]\ncompression = 40\n", ["rem.toml", "[backup] compression", "22"]),
    ('[backup]\nencryption = "rot13"\n', ["[backup] encryption", "AES256", "aws:kms"]),
    ('[backup.s3]\nstorage_class = "CHEAP"\n', ["[backup.s3] storage_class", "STANDARD_IA"]),
    ("[nonsense]\nx = 1\n", ["rem.toml", "nonsense"]),
])
def test_bad_file_values_name_the_file_the_key_and_what_is_accepted(tmp_path, text, fragments):
    cfg = tmp_path / "rem.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_bad_config_exits_2_with_one_line(tmp_path, make_sample):
    cfg = tmp_path / "rem.toml"
    cfg.write_text("[pitr]\ninterval_seconds = 0\n")
    proc = rem("--config", str(cfg), "--db-path", str(make_sample()), "db", "stats")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "interval_seconds" in proc.stderr
    proc = rem("--db-path", str(make_sample()), "db", "stats", env={"P8_BACKUP_CHUNK_SIZE_MB": "1"})
    assert proc.returncode == 2 and "P8_BACKUP_CHUNK_SIZE_MB" in proc.stderr


def test_every_runbook_group_exists():
    proc = rem("--help", check=True)
    for group in ("backup", "db", "index", "pitr", "export", "query"):
        assert group in proc.stdout


def test_a_misplaced_global_option_or_an_unknown_one_is_a_usage_error_that_says_what_to_type(make_sample):
    db = make_sample()
    before = snapshot_dir(db)
    moved = rem("db", "stats", "--db-path", str(db))
    assert moved.returncode == 2 and "--db-path is a global option" in moved.stderr, moved.stderr
    assert f"rem --db-path {db} db stats" in " ".join(moved.stderr.replace("│", " ").split())  # the line to type
    unknown = rem("--db-path", str(db), "db", "stats", "--no-such-flag")
    assert unknown.returncode == 2 and "No such option: --no-such-flag" in unknown.stderr, unknown.stderr
    assert "Traceback" not in moved.stderr + unknown.stderr and snapshot_dir(db) == before


def test_json_mode_prints_exactly_one_document_even_on_failure(tmp_path):
    proc = rem("--db-path", str(tmp_path / "missing"), "db", "stats", "--json")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["ok"] is False and "missing" in proc.stderr


def test_read_write_open_while_another_process_writes_names_the_path_and_the_lock(make_sample):
    from rem.db import lock_is_held, open_db
    from rem.errors import DatabaseLocked

    path = make_sample()
    assert not lock_is_held(path)
    with holding_lock(path):
        before = snapshot_dir(path)
        assert lock_is_held(path)
        with pytest.raises(DatabaseLocked) as info:
            open_db(path, "rw")
        assert str(path) in str(info.value) and "writer holds its lock" in str(info.value)
        assert snapshot_dir(path) == before


def test_pitr_enable_writes_the_config_every_later_command_reads_without_being_told(tmp_path, s3_endpoint, bucket):
    """#26.4: one config file per database, beside it, read by every command that names the database."""
    from tests.engine.sample import engine_sample

    db = tmp_path / "db"
    engine_sample(db, 200, 1, 4, 8)
    env = {"P8_DB_PATH": str(db), "P8_S3_ENDPOINT_URL": s3_endpoint, "P8_BACKUP_DIR": str(tmp_path / "b")}
    env_without_config = {k: v for k, v in os.environ.items() if k != "P8_CONFIG"}
    enabled = json.loads(rem("pitr", "enable", "--bucket", bucket, "--json", env={**env_without_config, **env},
                             check=True).stdout)
    assert enabled["config"] == str(tmp_path / "db.rem.toml") and not (db / "db.rem.toml").exists()
    for args in (["pitr", "status", "--json"], ["--db-path", str(db), "pitr", "status", "--json"]):
        status = json.loads(rem(*args, env={**env_without_config, **env}, check=True).stdout)
        assert status["enabled"] is True, args
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    status = subprocess.run([sys.executable, "-m", "cli.main", "--db-path", str(db), "pitr", "status", "--json"],
                            cwd=elsewhere, env={**env_without_config, **env, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and json.loads(status.stdout)["enabled"] is True, status.stderr
