"""Kept and annotated backups, against moto on 127.0.0.1 and a live engine (RocksDB 8.10, its own process)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from tests.engine import LiveEngine
from tests.engine.scenario import ARTICLES
from tests.helpers import db_name_of, dump_all, rem


def ok(proc):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def instant() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def tags(s3, bucket, key) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}


def test_a_kept_backup_survives_a_prune_of_everything_with_the_log_it_needs_until_released(
        tmp_path, s3, s3_endpoint, bucket):
    db = tmp_path / "db"
    env = {"P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": s3_endpoint, "P8_BACKUP_CHUNK_SIZE_MB": "5",
           "P8_PITR_SEGMENT_MAX_MB": "0.02"}
    cli = ("--db-path", str(db))
    engine = LiveEngine(db, max_total_wal_size=64 * 1024)
    try:
        engine.call("register_schema", "articles", ARTICLES)
        engine.call("insert", "acme", "articles", {"slug": "base", "title": "in every backup"})
        ok(rem(*cli, "backup", "create", "--upload", "--name", "old", "--json", env=env))
        for i in range(30):
            engine.call("insert", "acme", "articles", {"slug": f"between-{i}", "title": "only in the log " * 20})
        ok(rem(*cli, "pitr", "archive", "--json", env=env))
        moment, then = instant(), engine.dump()
        engine.call("insert", "acme", "articles", {"slug": "later", "title": "after the moment"})
        ok(rem(*cli, "pitr", "archive", "--json", env=env))
        ok(rem(*cli, "backup", "create", "--upload", "--name", "middle", "--json", env=env))
        engine.call("insert", "acme", "articles", {"slug": "newest", "title": "x"})
        ok(rem(*cli, "backup", "create", "--upload", "--name", "new", "--json", env=env))
    finally:
        engine.close()

    kept = ok(rem(*cli, "backup", "keep", "old", "--until", "2099-01-31", "--json", env=env))
    assert kept["kept"] and kept["keep_until"] == "2099-01-31T00:00:00Z"
    ok(rem(*cli, "backup", "annotate", "old", "ticket=INC-4211", "why=before the schema migration", "--json",
           env=env))
    ok(rem(*cli, "backup", "annotate", "old", "scratch=1", "--json", env=env))
    ok(rem(*cli, "backup", "annotate", "old", "scratch=", "--json", env=env))  # key= removes it
    home = f"{db_name_of(db)}/backups/full/_all/"
    assert tags(s3, bucket, f"{home}old/small.tar.zst")["rem-keep"] == "yes"
    assert tags(s3, bucket, f"{home}middle/small.tar.zst")["rem-keep"] == "no"

    zero = ("backup", "prune", "--keep-daily", "0", "--keep-weekly", "0", "--keep-monthly", "0", "--json")
    result = ok(rem(*cli, *zero, env=env))
    assert sorted(r["name"] for r in result["delete"]) == ["middle"]
    assert {r["name"]: r["why"] for r in result["keep"]} == {"old": ["kept until 2099-01-31T00:00:00Z"],
                                                            "new": ["newest"]}
    listed = {r["name"]: r for r in ok(rem(*cli, "backup", "list", "--detail", "--json", env=env))}
    assert set(listed) == {"old", "new"}
    assert listed["old"]["annotations"] == {"ticket": "INC-4211", "why": "before the schema migration"}
    assert "ticket=INC-4211" in rem(*cli, "backup", "list", "--detail", env={**env, "COLUMNS": "400"}).stdout

    # the kept base still recovers the moment between it and the pruned backup: its log segments stayed
    out = tmp_path / "then"
    ok(rem(*cli, "pitr", "restore", "--timestamp", moment, "--output", str(out), "--json", env=env))
    assert dump_all(out)["entities"] == then["entities"]

    ok(rem(*cli, "backup", "keep", "old", "--release", "--json", env=env))
    assert tags(s3, bucket, f"{home}old/small.tar.zst")["rem-keep"] == "no"
    assert [r["name"] for r in ok(rem(*cli, *zero, env=env))["delete"]] == ["old"]


def test_keep_and_annotate_refuse_bad_input_in_one_line_and_change_nothing(make_sample, tmp_path):
    db = make_sample()
    env = {"P8_BACKUP_DIR": str(tmp_path / "b")}
    ok(rem("--db-path", str(db), "backup", "create", "--name", "only", "--json", env=env))
    meta = next((tmp_path / "b").rglob("metadata.json"))
    before = meta.read_bytes()
    for args in (("keep", "only", "--until", "2001-01-01"), ("keep", "only", "--until", "soon"),
                 ("keep", "missing"), ("annotate", "only", "no-equals-sign"), ("annotate", "only", "=v"),
                 ("annotate", "only", "k=" + "v" * 300)):
        proc = rem("--db-path", str(db), "backup", *args, env=env)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
    assert meta.read_bytes() == before


def test_an_unnamed_backup_in_a_second_another_took_gets_the_next_free_name(make_sample, tmp_path):
    import shutil
    from datetime import timedelta

    db = make_sample()
    env = {"P8_BACKUP_DIR": str(tmp_path / "b")}
    ok(rem("--db-path", str(db), "backup", "create", "--name", "seed", "--json", env=env))
    seed = next((tmp_path / "b").rglob("seed"))
    now = datetime.now(timezone.utc)
    for s in range(-2, 30):  # every second from just before now to half a minute on is taken
        taken = (now + timedelta(seconds=s)).strftime("%Y-%m-%dT%H%M%S") + "Z"
        shutil.copytree(seed, seed.parent / taken)
        meta = json.loads((seed.parent / taken / "metadata.json").read_text())
        (seed.parent / taken / "metadata.json").write_text(json.dumps({**meta, "name": taken}))
    made = ok(rem("--db-path", str(db), "backup", "create", "--json", env=env))
    assert made["name"].endswith("Z-2") and (seed.parent / made["name"] / "metadata.json").exists()
    assert len(list(seed.parent.iterdir())) == 34  # the seed, the 32 taken, the new one; nothing overwritten
