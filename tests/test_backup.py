"""Backup and restore as the user cares: bytes identical, corruption refused, targets untouched."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from tests.engine import ENGINE_PYTHON, RUN, engine_write
from tests.faultproxy import FaultProxy
from tests.helpers import REPO, db_name_of, dump_all, holding_lock, rem, snapshot_dir
from rem.db import open_db
from rem.stats import entity_totals


def create(db, *extra, env=None):
    """A backup in the runbook's archive format (one rocksdb.tar.zst), whose pipeline this file tests;
    incremental backups are tests/test_incremental.py's."""
    proc = rem("--db-path", str(db), "backup", "create", "--archive", "--json", *extra, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def s3_env(endpoint, bucket, db=None, **more):
    """S3 settings; with db, also that database's name, as on a host where it is not (or no longer) present."""
    named = {"P8_DB_NAME": db_name_of(db)} if db is not None else {}
    return {"P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": endpoint, "P8_BACKUP_CHUNK_SIZE_MB": "5", **named, **more}


def test_local_round_trip_is_byte_identical_in_every_column_family(make_sample, tmp_path):
    db = make_sample(entities=1500)
    meta = create(db)
    assert Path(meta["location"], "metadata.json").exists()
    # RocksDB's estimate, not a count: versions and deletes not yet compacted away move it either way
    assert meta["counts"] == "estimated" and abs(meta["entity_count"] - 1500) <= 1500 * 0.05
    assert set(meta["files"]) == {p.name for p in db.iterdir() if p.name not in ("LOCK", "LOG") and
                                  not p.name.startswith("LOG.old")}
    target = tmp_path / "restored"
    proc = rem("backup", "restore", "--source", meta["location"], "--target", str(target), "--json")
    assert proc.returncode == 0, proc.stderr
    assert dump_all(target) == dump_all(db)
    assert not (target / "rocksdict-config.json").exists()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".rem-")]  # no scratch left


def test_s3_round_trip_through_download_is_byte_identical(make_sample, tmp_path, s3_endpoint, bucket, s3):
    db = make_sample(entities=9000, dim=256)
    meta = create(db, "--upload", env=s3_env(s3_endpoint, bucket))
    home = f"{db_name_of(db)}/backups/full/_all/{meta['name']}/"
    assert meta["location"] == f"s3://{bucket}/{home}" and meta["db_name"] == db_name_of(db)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {home + f for f in ("metadata.json", "rocksdb.tar.zst", "schemas.json")} | {
        f"{db_name_of(db)}/database.json", f"{db_name_of(db)}/backups/.catalog.json.zst"}
    head = s3.head_object(Bucket=bucket, Key=home + "rocksdb.tar.zst")
    assert head["StorageClass"] == "STANDARD_IA" and head["ContentLength"] == meta["size_bytes"]
    assert meta["size_bytes"] > 5 * 1024 * 1024, "want a multipart upload"
    tags = s3.get_object_tagging(Bucket=bucket, Key=home + "rocksdb.tar.zst")["TagSet"]
    assert {"Key": "rem-backup", "Value": meta["name"]} in tags

    listed = json.loads(rem("backup", "list", "--json", env=s3_env(s3_endpoint, bucket, db), check=True).stdout)
    assert [row["name"] for row in listed] == [meta["name"]] and listed[0]["location"] == meta["location"]

    out = tmp_path / "restore"
    rem("backup", "download", "--name", meta["name"], "--output", str(out), env=s3_env(s3_endpoint, bucket, db), check=True)
    target = tmp_path / "restored"
    rem("backup", "restore", "--source", str(out / meta["name"]), "--target", str(target), check=True)
    assert dump_all(target) == dump_all(db)


def test_upload_without_a_bucket_names_the_variable_and_writes_nothing(make_sample):
    db = make_sample()
    before = snapshot_dir(db.parent)
    proc = rem("--db-path", str(db), "backup", "create", "--upload", env={"P8_S3_BUCKET": ""})
    assert proc.returncode == 2 and "P8_S3_BUCKET" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert snapshot_dir(db.parent) == before


def test_one_flipped_byte_is_refused_by_checksum_and_the_target_is_untouched(make_sample, tmp_path):
    db = make_sample()
    meta = create(db)
    archive = Path(meta["location"], "rocksdb.tar.zst")
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    target = make_sample(seed=99)  # an existing database that must survive the failed restore
    before = snapshot_dir(target)
    proc = rem("backup", "restore", "--source", meta["location"], "--target", str(target), "--overwrite")
    assert proc.returncode == 1 and "SHA-256 checksum mismatch" in proc.stderr
    assert snapshot_dir(target) == before
    fresh = tmp_path / "fresh"
    assert rem("backup", "restore", "--source", meta["location"], "--target", str(fresh)).returncode == 1
    assert not fresh.exists()


def _crafted_backup(tmp_path, good_meta: dict, members: list[tarfile.TarInfo]) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(b"pwned") if info.isfile() else None)
    archive = zstandard.ZstdCompressor().compress(raw.getvalue())
    import hashlib

    folder = tmp_path / "crafted"
    folder.mkdir()
    (folder / "rocksdb.tar.zst").write_bytes(archive)
    (folder / "schemas.json").write_text("[]")
    meta = {**good_meta, "checksum_sha256": hashlib.sha256(archive).hexdigest(), "size_bytes": len(archive)}
    meta.pop("location")
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 5
    return info


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize("members,fragment", [
    ([_file("rocksdb/../../escaped")], "rocksdb/../../escaped"),
    ([_file("/tmp/absolute-escape")], "/tmp/absolute-escape"),
    ([_link("rocksdb/CURRENT", "/etc/passwd")], "link"),
    ([_file("rocksdb/000001.sst"), _link("rocksdb/000002.sst", "rocksdb/000001.sst", tarfile.LNKTYPE)], "link"),
])
def test_crafted_archives_with_matching_checksums_are_refused(make_sample, tmp_path, members, fragment):
    db = make_sample()
    crafted = _crafted_backup(tmp_path, create(db), members)
    target = tmp_path / "target"
    proc = rem("backup", "restore", "--source", str(crafted), "--target", str(target))
    assert proc.returncode == 1 and fragment in proc.stderr and "refused" in proc.stderr
    assert not target.exists()
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/absolute-escape").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rem-")]


def test_non_empty_target_needs_overwrite_and_overwrite_quarantines_until_verified(make_sample, tmp_path):
    db = make_sample()
    meta = create(db)
    target = make_sample(seed=3)
    before = snapshot_dir(target)
    proc = rem("backup", "restore", "--source", meta["location"], "--target", str(target))
    assert proc.returncode == 2 and "--overwrite" in proc.stderr and snapshot_dir(target) == before
    rem("backup", "restore", "--source", meta["location"], "--target", str(target), "--overwrite", check=True)
    assert dump_all(target) == dump_all(db)
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".rem-quarantine")]


LIVE_WRITER = """
import sys, time
sys.path.insert(0, sys.argv[3])
from writer import Engine
engine = Engine(sys.argv[1])  # the engine, running: it holds the lock and its memtables
ids = [engine.insert("acme", "notes", {"key": f"live-{i:06d}", "text": "acknowledged"}) for i in range(int(sys.argv[2]))]
engine.delete("acme", ids[0])
unflushed = sum(r.property_int_value("rocksdb.num-entries-active-mem-table") or 0 for r in engine.readers.values())
print(ids[0], unflushed, engine.db.latest_sequence_number(), flush=True)
time.sleep(120)
"""


def test_online_backup_keeps_every_acknowledged_unflushed_write_and_leaves_the_directory_as_it_was(make_sample, tmp_path):
    db = make_sample()
    writer = subprocess.Popen([str(ENGINE_PYTHON), "-c", LIVE_WRITER, str(db), "300", str(RUN.parent)],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        first, unflushed, live_sequence = writer.stdout.readline().split()
        assert int(unflushed) >= 600, "the engine's writes must still sit in its memtable"
        before, log_before = snapshot_dir(db), (db / "LOG").read_bytes()
        meta = create(db)
        after = snapshot_dir(db)
        # RocksDB's info log is the running engine's: it appends a stats dump on its own timer, which
        # can fall during the backup. rem never writes it, so it may only have grown by the engine's lines.
        assert (db / "LOG").read_bytes().startswith(log_before)
        assert {k: v for k, v in after.items() if k != "LOG"} == {k: v for k, v in before.items() if k != "LOG"}
        assert meta["online"] is True
        # A physical copy: the engine's own last sequence number, the base point-in-time recovery needs.
        assert meta["last_sequence"] == int(live_sequence)
    finally:
        writer.kill()
        writer.wait()
    target = tmp_path / "restored"
    rem("backup", "restore", "--source", meta["location"], "--target", str(target), check=True)
    from rem.db import open_db

    with open_db(target, "ro") as restored_db:
        assert restored_db.rdict.latest_sequence_number() == int(live_sequence)
    restored = dump_all(target)
    assert restored == dump_all(db)  # the writer is gone: its WAL replays into the source view
    live = [v for v in restored["entities"].values() if json.loads(v)["properties"].get("text") == "acknowledged"]
    assert len(live) == 300
    assert json.loads(restored["entities"][f"entity:acme:{first}".encode()])["deleted_at"] is not None


def test_a_log_damaged_before_its_end_fails_the_backup_where_rocksdb_stops_replaying_and_keeps_nothing(tmp_path):
    """The snapshot reads its last sequence number from the logs' tails; RocksDB's replay, when the
    backup is described, stops at a damaged record before that. Recording either number would be
    wrong: RocksDB's loses the writes after the damage, the tail's names writes a restore lacks."""
    from rem.rocksdb_log import BLOCK_SIZE, HEADER, parse_write_batch, read_log

    db = tmp_path / "db"
    engine_write(db, [["insert", "acme", "resources", {"uri": f"u-{i}", "content": "x" * 300}] for i in range(300)],
                 crash=True)  # a killed engine: every write is in its log only
    log = max(db.glob("*.log"), key=lambda p: p.stat().st_size)
    data = bytearray(log.read_bytes())
    records = read_log(bytes(data)).records
    victim = next(r for r in records[len(records) // 3:] if r.offset % BLOCK_SIZE + HEADER + 40 < BLOCK_SIZE)
    data[victim.offset + HEADER + 30] ^= 0x01  # inside the batch: its checksum no longer matches
    log.write_bytes(bytes(data))
    replayable, last = parse_write_batch(victim.payload).sequence - 1, parse_write_batch(records[-1].payload).last_sequence
    before = snapshot_dir(db)
    env = {"P8_BACKUP_DIR": str(tmp_path / "backups")}
    for layout in ([], ["--archive"]):
        proc = rem("--db-path", str(db), "backup", "create", *layout, env=env)
        assert proc.returncode == 1, proc.stderr
        assert f"only up to sequence {replayable:,}, not to its last write {last:,}" in proc.stderr, proc.stderr
    assert json.loads(rem("--db-path", str(db), "backup", "list", "--json", env=env, check=True).stdout) == []
    assert not list((tmp_path / "backups").rglob("metadata.json"))
    assert snapshot_dir(db) == before


def test_tenant_backup_holds_only_that_tenant_and_restore_replaces_only_its_rows(make_sample, tmp_path):
    db = make_sample(entities=1500, tenants=3)
    meta = create(db, "--tenant", "globex")
    assert meta["kind"] == "tenant" and meta["tenant_id"] == "globex"
    assert "/backups/full/globex/" in meta["location"]
    fresh = tmp_path / "fresh"
    rem("backup", "restore", "--source", meta["location"], "--target", str(fresh), check=True)
    rows = dump_all(fresh)
    original = dump_all(db)
    assert not rows["keys"] and not rows["bm25_index"]  # database-wide: never split by tenant
    for cf in ("entities", "key_index", "indexes", "embeddings"):
        tenants = {k.split(b":")[1] for k in rows[cf]}
        assert tenants <= {b"globex", b"default"}, cf
        want = {k: v for k, v in original[cf].items() if k.split(b":")[1] == b"globex"}
        assert {k: v for k, v in rows[cf].items() if k.split(b":")[1] == b"globex"} == want, cf
    globex_ids = {k.split(b":")[2] for k in rows["entities"] if k.startswith(b"entity:globex:")}
    assert rows["edges"] and all(k.split(b":")[1] in globex_ids for k in rows["edges"])
    assert all(json.loads(v)["op"].popitem()[1]["tenant_id"] == "globex" for v in rows["wal"].values())

    # Into the existing database: change globex and acme, restore globex, only globex comes back.
    victim = next(k for k in original["entities"] if k.startswith(b"entity:globex:")).split(b":")[2].decode()
    other = next(k for k in original["entities"] if k.startswith(b"entity:acme:")).split(b":")[2].decode()
    engine_write(db, [["delete", "globex", victim], ["delete", "acme", other]])
    changed = dump_all(db)
    rem("backup", "restore", "--source", meta["location"], "--target", str(db), "--overwrite", check=True)
    after = dump_all(db)
    for cf in after:
        if cf == "wal":
            assert after[cf] == changed[cf]  # the shared log is not rewritten
            continue
        is_globex = (lambda k: k.split(b":")[1:2] == [b"globex"]) if cf not in ("edges", "edges_reverse") else \
            (lambda k, cf=cf: k.split(b":")[1 if cf == "edges" else 3] in globex_ids)
        assert {k: v for k, v in after[cf].items() if not is_globex(k)} == \
               {k: v for k, v in changed[cf].items() if not is_globex(k)}, f"other tenants changed in {cf}"
        assert {k: v for k, v in after[cf].items() if is_globex(k)} == \
               {k: v for k, v in original[cf].items() if is_globex(k)}, f"globex not restored in {cf}"


def test_verify_checks_the_checksum_and_trial_restores_without_touching_the_database(make_sample, tmp_path):
    db = make_sample()
    meta = create(db)
    before = snapshot_dir(db.parent)
    proc = rem("--db-path", str(db), "backup", "verify", "--name", meta["name"], "--json")
    assert proc.returncode == 0, proc.stderr
    with open_db(db, "ro") as live:  # the trial copy is counted key by key: the database's exact count
        assert json.loads(proc.stdout)["entity_count"] == entity_totals(live)[0]
    assert snapshot_dir(db.parent) == before
    archive = Path(meta["location"], "rocksdb.tar.zst")
    archive.write_bytes(archive.read_bytes()[:-10] + b"0123456789")
    proc = rem("--db-path", str(db), "backup", "verify", "--name", meta["name"])
    assert proc.returncode == 1 and "checksum" in proc.stderr


def test_restore_refuses_a_target_another_process_holds(make_sample, tmp_path):
    db = make_sample()
    meta = create(db)
    target = make_sample(seed=4)
    with holding_lock(target):
        before = snapshot_dir(target)
        proc = rem("backup", "restore", "--source", meta["location"], "--target", str(target), "--overwrite")
        assert proc.returncode == 1 and "writer holds its lock" in proc.stderr
        assert snapshot_dir(target) == before


def test_backup_and_restore_survive_20_percent_of_s3_requests_failing(make_sample, tmp_path, s3_endpoint, bucket):
    db = make_sample(entities=9000, dim=256)
    with FaultProxy(s3_endpoint, fault_rate=0.2, seed=11) as proxy:
        env = s3_env(proxy.url, bucket, db)
        meta = create(db, "--upload", env=env)
        out = tmp_path / "dl"
        rem("backup", "download", "--name", meta["name"], "--output", str(out), env=env, check=True)
        target = tmp_path / "restored"
        proc = rem("backup", "restore", "--source", str(out / meta["name"]), "--target", str(target), "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["checksum_sha256"] == meta["checksum_sha256"]
        assert proxy.faults() >= 3, "the proxy must actually have injected faults"
    assert dump_all(target) == dump_all(db)


def test_an_interrupted_upload_leaves_no_backup_no_parts_and_the_rerun_succeeds(make_sample, tmp_path, s3_endpoint,
                                                                                bucket, s3):
    db = make_sample(entities=9000, dim=256)
    fail_part_2 = lambda method, path, headers: "403" if method == "PUT" and "partNumber=2" in path else None
    with FaultProxy(s3_endpoint, rule=fail_part_2) as proxy:
        proc = rem("--db-path", str(db), "backup", "create", "--archive", "--upload", "--name", "nightly",
                   env=s3_env(proxy.url, bucket))
        assert proc.returncode == 1
        assert any("partNumber=1" in r.path for r in proxy.requests if r.method == "PUT")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])] == [
        f"{db_name_of(db)}/database.json"]  # the name's owner record: no backup, no part
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    env = s3_env(s3_endpoint, bucket, db)
    assert json.loads(rem("backup", "list", "--json", env=env, check=True).stdout) == []
    meta = create(db, "--upload", "--name", "nightly", env=env)
    assert meta["name"] == "nightly"


def test_a_killed_upload_is_cleaned_up_by_the_next_run(make_sample, tmp_path, s3_endpoint, bucket, s3):
    db = make_sample(entities=9000, dim=256)
    import threading

    release, stalled = threading.Event(), threading.Event()

    def stall_part_2(method, path, headers):
        if "partNumber=2" in path:
            stalled.set()  # the proxy lists a request only once the rule returns: say so from here
            release.wait(60)

    with FaultProxy(s3_endpoint, rule=stall_part_2) as proxy:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "--db-path", str(db), "backup", "create",
                                 "--archive", "--upload"], cwd=REPO, env={**os.environ, **s3_env(proxy.url, bucket)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert stalled.wait(60), "the upload never reached its second part"
        proc.kill()
        proc.wait()
        release.set()
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), "the kill must leave an incomplete upload"
    env = s3_env(s3_endpoint, bucket, db)
    assert json.loads(rem("backup", "list", "--json", env=env, check=True).stdout) == []
    meta = create(db, "--upload", env=env)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    # The killed run's claim went with its upload: only the new backup's three files remain.
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    home = f"{db_name_of(db)}/backups/full/_all/{meta['name']}/"
    assert keys == {home + f for f in ("metadata.json", "rocksdb.tar.zst", "schemas.json")} | {
        f"{db_name_of(db)}/database.json", f"{db_name_of(db)}/backups/.catalog.json.zst"}


def test_an_interrupted_download_resumes_without_fetching_finished_parts_again(make_sample, tmp_path, s3_endpoint,
                                                                               bucket):
    db = make_sample(entities=9000, dim=256)
    env = s3_env(s3_endpoint, bucket, db)
    meta = create(db, "--upload", env=env)
    assert meta["size_bytes"] > 5 * 1024 * 1024
    parts = -(-meta["size_bytes"] // (5 * 1024 * 1024))
    archive_gets = lambda proxy: [r for r in proxy.requests
                                  if r.method == "GET" and "rocksdb.tar.zst" in r.path and r.outcome == "ok"]
    # Serve only the first part; every other range is refused, so the run stops part-way.
    first_only = lambda method, path, headers: "403" if method == "GET" and "rocksdb.tar.zst" in path and \
        not headers.get("Range", "").startswith("bytes=0-") else None
    out = tmp_path / "dl"
    with FaultProxy(s3_endpoint, rule=first_only) as proxy:
        proc = rem("backup", "download", "--name", meta["name"], "--output", str(out), env=s3_env(proxy.url, bucket, db))
        assert proc.returncode == 1
        assert len(archive_gets(proxy)) == 1
    folder = out / meta["name"]
    assert not (folder / "metadata.json").exists(), "an unfinished download must not look like a backup"
    with FaultProxy(s3_endpoint) as proxy:
        rem("backup", "download", "--name", meta["name"], "--output", str(out), env=s3_env(proxy.url, bucket, db),
            check=True)
        resumed = archive_gets(proxy)
    assert len(resumed) == parts - 1 and not any(r.range.startswith("bytes=0-") for r in resumed)
    target = tmp_path / "restored"
    rem("backup", "restore", "--source", str(folder), "--target", str(target), check=True)
    assert dump_all(target) == dump_all(db)


def _rebuilt_backup(tmp_path, meta: dict, damage) -> Path:
    """A copy of a backup whose database files were changed by damage(db_dir), re-archived with a
    matching checksum (as if the files had been bad when the backup was taken)."""
    import hashlib

    from rem.backup.archive import extract_archive, write_archive

    work = tmp_path / "rebuild"
    db_dir = extract_archive(Path(meta["location"], "rocksdb.tar.zst"), work / "x", meta["uncompressed_bytes"])
    damage(db_dir)
    folder = tmp_path / "damaged"
    folder.mkdir()
    with open(folder / "rocksdb.tar.zst", "wb") as sink:
        stats = write_archive(db_dir, sink)
    (folder / "schemas.json").write_bytes(Path(meta["location"], "schemas.json").read_bytes())
    data = {k: v for k, v in meta.items() if k != "location"}
    data.update(checksum_sha256=stats.sha256, size_bytes=stats.size_bytes)
    assert hashlib.sha256((folder / "rocksdb.tar.zst").read_bytes()).hexdigest() == stats.sha256
    (folder / "metadata.json").write_text(json.dumps(data))
    return folder


def test_a_copy_that_will_not_open_is_repaired_and_restored_when_nothing_is_lost(make_sample, tmp_path):
    db = make_sample()
    source = _rebuilt_backup(tmp_path, create(db), lambda d: (d / "CURRENT").unlink())
    target = tmp_path / "restored"
    proc = rem("backup", "restore", "--source", str(source), "--target", str(target), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["repaired"] is True
    restored, original = dump_all(target), dump_all(db)
    assert {cf: len(rows) for cf, rows in restored.items()} == {cf: len(rows) for cf, rows in original.items()}
    assert restored["entities"] == original["entities"]


def count_keys_per_cf(db: Path) -> dict[str, int]:
    """Exact keys per column family, as backups recorded them before they recorded RocksDB's estimates."""
    return {cf: len(rows) for cf, rows in dump_all(db).items() if cf != "default"}


def test_a_repair_that_drops_data_is_refused_naming_what_it_dropped(make_sample, tmp_path):
    db = make_sample()

    def lose_largest_table(d: Path) -> None:
        (d / "CURRENT").unlink()
        max(d.glob("*.sst"), key=lambda p: p.stat().st_size).unlink()

    create_meta = create(db)
    source = _rebuilt_backup(tmp_path, create_meta, lose_largest_table)
    target = make_sample(seed=21)
    before = snapshot_dir(target)
    proc = rem("backup", "restore", "--source", str(source), "--target", str(target), "--overwrite")
    assert proc.returncode == 1
    # The backup recorded every file: the missing table is named before any repair is tried.
    largest = max(meta_files := create_meta["files"], key=meta_files.get)
    assert "does not match its metadata" in proc.stderr and f"files missing or of another size than recorded: " \
        f"{largest}" in proc.stderr
    assert snapshot_dir(target) == before

    # A backup made before archives recorded their files: the repair runs and what it dropped is counted.
    legacy = json.loads((source / "metadata.json").read_text())
    del legacy["files"]
    with open_db(db, "ro") as opened:
        entities = entity_totals(opened)[0]
    legacy.update(counts="exact", column_families=count_keys_per_cf(db), entity_count=entities)
    (source / "metadata.json").write_text(json.dumps(legacy))
    proc = rem("backup", "restore", "--source", str(source), "--target", str(target), "--overwrite")
    assert proc.returncode == 1
    assert "repaired copy" in proc.stderr and "keys missing" in proc.stderr
    assert snapshot_dir(target) == before


def test_an_archive_holds_only_what_a_restore_accepts(make_sample, tmp_path):
    """rocksdict leaves rocksdict-config.json in directories it opens (seen under load in a tenant
    snapshot): a backup must never carry a file its own restore would refuse."""
    from rem.backup.archive import extract_archive, write_archive

    db = make_sample()
    (db / "rocksdict-config.json").write_text("{}")
    (db / "notes.txt").write_text("not the database's")
    with open(tmp_path / "a.tar.zst", "wb") as sink:
        stats = write_archive(db, sink)
    restored = extract_archive(tmp_path / "a.tar.zst", tmp_path / "out", stats.uncompressed_bytes)
    assert sorted(p.name for p in restored.iterdir()) == sorted(
        p.name for p in db.iterdir() if p.name not in ("rocksdict-config.json", "notes.txt"))
    assert dump_all(restored) == dump_all(db)


def _sized(name: str, size: int) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = size
    return info, bytes(size)


@pytest.mark.parametrize("case", ["junk name", "past uncompressed_bytes", "no room"])
def test_extraction_is_bounded_by_names_size_and_free_space(make_sample, tmp_path, case):
    """A crafted archive with a recomputed checksum used to restore a 2 GB junk file into the
    database (a 10 GB one filled the volume): names, size and free space are checked first."""
    import hashlib

    db = make_sample()
    good = create(db)
    members = {"junk name": [_sized("rocksdb/junk.bin", 4096)],
               "past uncompressed_bytes": [_sized("rocksdb/000001.sst", 2 << 20), _sized("rocksdb/000002.sst", 2 << 20)],
               "no room": [_sized("rocksdb/000001.sst", 4096)]}[case]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
    archive = zstandard.ZstdCompressor().compress(raw.getvalue())
    folder = tmp_path / "crafted"
    folder.mkdir()
    (folder / "rocksdb.tar.zst").write_bytes(archive)
    (folder / "schemas.json").write_text("[]")
    meta = {k: v for k, v in good.items() if k != "location"}
    meta.update(checksum_sha256=hashlib.sha256(archive).hexdigest(), size_bytes=len(archive),
                uncompressed_bytes={"no room": 10**15, "past uncompressed_bytes": 3 << 20}.get(case, 1 << 20))
    (folder / "metadata.json").write_text(json.dumps(meta))
    target = make_sample(seed=5)
    before = snapshot_dir(target)
    proc = rem("backup", "restore", "--source", str(folder), "--target", str(target), "--overwrite")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    expected = {"junk name": "rocksdb/junk.bin", "past uncompressed_bytes": "rocksdb/000002.sst",
                "no room": "no space left"}[case]
    assert expected in proc.stderr
    assert snapshot_dir(target) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rem-restore-")]


def test_a_rate_limited_backup_moves_no_faster_than_its_limit_and_restores_the_same(make_sample, tmp_path):
    import time

    from tests.helpers import digest

    db = make_sample(4000, 2, 17, 64)
    store = tmp_path / "b"
    started = time.monotonic()
    made = json.loads(rem("--db-path", str(db), "backup", "create", "--name", "slow", "--rate-limit", "0.5", "--json",
                          env={"P8_BACKUP_DIR": str(store)}, check=True).stdout)
    took = time.monotonic() - started
    stored = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    assert stored > 1_000_000  # enough to be paced: at 0.5 MB/s well over the limiter's 0.25 s burst
    assert took >= stored / 500_000 - 0.25, (took, stored)
    rem("--db-path", str(db), "backup", "restore", "--name", made["name"], "--target", str(tmp_path / "r"),
        "--rate-limit", "50", env={"P8_BACKUP_DIR": str(store)}, check=True)
    assert digest(dump_all(tmp_path / "r")) == digest(dump_all(db))
