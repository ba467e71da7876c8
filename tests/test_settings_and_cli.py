import json

import pytest

from rem.errors import ConfigError
from rem.settings import load_settings
from tests.helpers import holding_lock, rem, snapshot_dir


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
