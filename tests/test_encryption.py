"""Client-side envelope encryption: every object rem writes is sealed on the host (AES-256-GCM, a data
key per database wrapped by moto's KMS on 127.0.0.1 or by a local key file), so the bucket alone
reads nothing and a changed object is refused. Databases from the engine-faithful writer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import zstandard

from tests.engine import LiveEngine
from tests.engine.scenario import ARTICLES
from tests.faultproxy import FaultProxy
from tests.helpers import REPO, db_name_of, digest, dump_all, rem, snapshot_dir

# Real-looking credentials: a secret that shows up anywhere in output is easy to find.
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"


def ok(proc):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def kms_key(endpoint: str) -> str:
    import boto3

    return boto3.client("kms", endpoint_url=endpoint, region_name="us-east-1").create_key()["KeyMetadata"]["KeyId"]


def kms_env(endpoint, bucket, key_id) -> dict:
    return {"P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": endpoint, "P8_BACKUP_CHUNK_SIZE_MB": "5",
            "P8_BACKUP_ENCRYPTION": "kms-envelope", "P8_KMS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": SECRET}


def key_file_env(key: Path, backups: Path) -> dict:
    return {"P8_BACKUP_ENCRYPTION": "key-file", "P8_BACKUP_KEY_FILE": str(key), "P8_BACKUP_DIR": str(backups)}


def new_key(path: Path) -> Path:
    path.write_text(os.urandom(32).hex() + "\n")
    return path


def bucket_objects(s3, bucket) -> dict[str, bytes]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for page in pages for o in page.get("Contents", [])}


def local_objects(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()
            and p.name != ".rem-store.lock"}


def readable_forms(blob: bytes) -> list[bytes]:
    """The bytes as stored, and decompressed when they are zstd (what anyone holding them could read)."""
    forms = [blob]
    try:
        forms.append(zstandard.ZstdDecompressor().stream_reader(blob).read())
    except zstandard.ZstdError:
        pass
    return forms


def needles(db: Path) -> set[bytes]:
    """What must not be readable in the store: every entity's id and every string property value of 12+ bytes."""
    found = set()
    for key, value in dump_all(db)["entities"].items():
        found.add(key.split(b":")[2])
        entity = json.loads(value)
        found.update(v.encode() for v in (entity.get("properties") or {}).values() if isinstance(v, str) and len(v) >= 12)
    return found


def leaks(objects: dict[str, bytes], wanted: set[bytes]) -> dict[str, int]:
    """Per object, how many of the wanted byte strings it shows."""
    shown = {}
    for key, blob in objects.items():
        forms = readable_forms(blob)
        count = sum(any(n in form for form in forms) for n in wanted)
        if count:
            shown[key] = count
    return shown


def test_a_key_file_backup_shows_no_tenant_data_restores_byte_for_byte_and_stays_incremental(make_sample, tmp_path):
    db = make_sample(1500, 3, 11, 16)
    wanted = needles(db)
    plain = tmp_path / "plain-backups"
    ok(rem("--db-path", str(db), "backup", "create", "--json", env={"P8_BACKUP_DIR": str(plain)}))
    # The search finds the data when it is only compressed: the same search on sealed objects means something.
    assert sum(leaks(local_objects(plain), wanted).values()) > len(wanted) // 4

    env = key_file_env(new_key(tmp_path / "backup.key"), tmp_path / "backups")
    first = ok(rem("--db-path", str(db), "backup", "create", "--name", "first", "--json", env=env))
    stored = local_objects(tmp_path / "backups")
    assert leaks(stored, wanted) == {}
    sealed = [k for k, blob in stored.items() if blob.startswith(b"REMAEAD1")]
    assert any(k.endswith(".zst") and "/sst/" in k for k in sealed) and any(k.endswith("small.tar.zst") for k in sealed)
    # readable: the records (the catalog file repeats the metadata.json files) and the wrapped keys
    assert all(k.endswith(("metadata.json", "database.json", ".catalog.json.zst")) or "/keys/" in k
               for k in set(stored) - set(sealed))
    meta = json.loads(stored[next(k for k in stored if k.endswith("metadata.json"))])
    assert meta["encryption"]["mode"] == "key-file" and meta["encryption"]["data_key"]
    assert all(os.stat(tmp_path / "backups" / k).st_mode & 0o077 == 0 for k in stored)

    second = ok(rem("--db-path", str(db), "backup", "create", "--name", "second", "--json", env=env))
    plain_second = ok(rem("--db-path", str(db), "backup", "create", "--name", "second", "--json",
                          env={"P8_BACKUP_DIR": str(plain)}))
    # no SST sealed again: only the small files and the list, as without encryption (plus headers and tags)
    assert {k for k in local_objects(tmp_path / "backups") if "/sst/" in k} == {k for k in stored if "/sst/" in k}
    assert second["added_bytes"] <= plain_second["added_bytes"] + 1024

    restored = tmp_path / "restored"
    ok(rem("--db-path", str(db), "backup", "restore", "--name", first["name"], "--target", str(restored), "--json",
           env=env))
    assert sorted(p.name for p in db.glob("*.sst")) == sorted(p.name for p in restored.glob("*.sst"))
    assert all((db / p.name).read_bytes() == p.read_bytes() for p in restored.glob("*.sst"))
    assert digest(dump_all(restored)) == digest(dump_all(db))


def bytes_written(*args: str, env: dict, io_file: Path) -> int:
    """rem run in a fresh process, as by rem(), and the bytes that process handed to write calls
    (/proc's wchar, read as it exits)."""
    code = ("import atexit, os, runpy, sys\n"
            "atexit.register(lambda: open(os.environ['REM_TEST_IO'], 'w').write(open('/proc/self/io').read()))\n"
            "runpy.run_module('cli.main', run_name='__main__', alter_sys=True)\n")
    ok(subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, timeout=300,
                      env={**os.environ, **env, "REM_TEST_IO": str(io_file)}))
    return int(next(line.split()[1] for line in io_file.read_text().splitlines() if line.startswith("wchar:")))


@pytest.fixture
def other_filesystem(tmp_path):
    """A folder on another filesystem than tmp_path (tmpfs), removed afterwards."""
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the tests' folder")
    folder = Path(tempfile.mkdtemp(prefix="rem-test-", dir="/dev/shm"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("layout, store_on", [("incremental", "same"), ("archive", "same"), ("incremental", "other")])
def test_a_key_file_restore_writes_the_data_once_and_refuses_a_changed_object_before_the_target(
        make_sample, tmp_path, request, layout, store_on):
    """A local encrypted store's objects are opened as the restore reads them, as a plain store's are
    read in place: no opened copy is written first (it doubled what a restore wrote and took 1.4x as
    long); every chunk is still authenticated before its bytes are used. Backups usually live on
    another disk than the database: there too."""
    db = make_sample(1500, 3, 11, 16)
    stores = request.getfixturevalue("other_filesystem") if store_on == "other" else tmp_path
    plain, sealed = stores / "plain-backups", stores / "backups"
    env = key_file_env(new_key(tmp_path / "backup.key"), sealed)
    archive = ["--archive"] if layout == "archive" else []
    ok(rem("--db-path", str(db), "backup", "create", "--name", "b", *archive, "--json",
           env={"P8_BACKUP_DIR": str(plain)}))
    ok(rem("--db-path", str(db), "backup", "create", "--name", "b", *archive, "--json", env=env))
    data_objects = [p for p in sealed.rglob("*.zst") if "/sst/" in str(p) or p.name == "rocksdb.tar.zst"]
    stored = sum(p.stat().st_size for p in data_objects)
    written = {}
    for name, store_env in (("plain", {"P8_BACKUP_DIR": str(plain)}), ("sealed", env)):
        target = tmp_path / f"restored-{name}"
        written[name] = bytes_written("--db-path", str(db), "backup", "restore", "--name", "b", "--target",
                                      str(target), "--json", env=store_env, io_file=tmp_path / f"{name}.io")
        assert digest(dump_all(target)) == digest(dump_all(db))
        assert all((db / p.name).read_bytes() == p.read_bytes() for p in target.glob("*.sst"))
    # the sealed restore writes what the plain one does, plus the small files opened: not the data twice
    assert written["sealed"] - written["plain"] < stored // 4, (written, stored)
    assert ok(rem("--db-path", str(db), "backup", "verify", "--name", "b", "--json", env=env))["ok"]

    # one flipped byte in one data object: refused naming it, nothing restored, the store's file as it was
    victim = max(data_objects, key=lambda p: p.stat().st_size)
    body = bytearray(victim.read_bytes())
    body[len(body) // 2] ^= 1
    victim.write_bytes(bytes(body))
    proc = rem("--db-path", str(db), "backup", "restore", "--name", "b", "--target", str(tmp_path / "no"), env=env)
    assert proc.returncode == 1 and victim.name in proc.stderr and "authentication" in proc.stderr, proc.stderr
    assert not (tmp_path / "no").exists() and victim.read_bytes() == bytes(body)
    assert not [p for p in tmp_path.glob(".rem-*") if p.is_dir()]
    proc = rem("--db-path", str(db), "backup", "verify", "--name", "b", env=env)
    assert proc.returncode == 1 and victim.name in proc.stderr and "authentication" in proc.stderr, proc.stderr


def test_a_fetch_retried_into_its_own_folder_links_again_and_restores(make_sample, tmp_path, monkeypatch):
    """The download step retries into the folder its first try left (a tenant's or --archive backup:
    one linked rocksdb.tar.zst): the retry replaces its own link and the restore still opens it."""
    from rem.backup.layout import fetch
    from runtime.wiring import find_record, resolve_settings
    from tasks.restore import unpacked

    db = make_sample(300, 2, 15, 16)
    env = key_file_env(new_key(tmp_path / "backup.key"), tmp_path / "backups")
    ok(rem("--db-path", str(db), "backup", "create", "--archive", "--name", "a", "--json", env=env))
    for name, value in {**env, "P8_DB_PATH": str(db)}.items():
        monkeypatch.setenv(name, value)
    record = find_record(resolve_settings(None), "a", None, None)
    sources = [fetch(record, tmp_path / "download") for _ in range(2)]
    assert sources[0] == sources[1] and (sources[1] / "rocksdb.tar.zst").read_bytes().startswith(b"REMAEAD1")
    with unpacked(sources[1], tmp_path / "trial") as base:
        assert digest(dump_all(base.db_dir)) == digest(dump_all(db))


def test_a_downloaded_encrypted_backup_restores_in_a_process_without_the_key(make_sample, tmp_path):
    """`rem backup download` is for another process, or another host: its objects are opened into it."""
    db = make_sample(1500, 3, 11, 16)
    env = key_file_env(new_key(tmp_path / "backup.key"), tmp_path / "backups")
    ok(rem("--db-path", str(db), "backup", "create", "--name", "b", "--json", env=env))
    path = Path(ok(rem("--db-path", str(db), "backup", "download", "--name", "b", "--output", str(tmp_path / "d"),
                       "--json", env=env))["path"])
    assert all(not p.read_bytes().startswith(b"REMAEAD1") for p in path.rglob("*") if p.is_file())
    elsewhere = {"P8_BACKUP_DIR": str(tmp_path / "elsewhere")}
    ok(rem("--db-path", str(db), "backup", "restore", "--source", str(path), "--target", str(tmp_path / "r"),
           "--json", env=elsewhere))
    assert digest(dump_all(tmp_path / "r")) == digest(dump_all(db))
    # a sealed object copied in from the store by hand is one line, and nothing is restored
    copied = next((path / "objects").iterdir())
    copied.write_bytes(next((tmp_path / "backups").rglob(copied.name)).read_bytes())
    proc = rem("--db-path", str(db), "backup", "restore", "--source", str(path), "--target", str(tmp_path / "no"),
               env=elsewhere)
    assert proc.returncode == 1 and "is sealed and this process holds no key" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "no").exists()


@pytest.fixture
def sealed_pair(make_sample, tmp_path, s3_endpoint, bucket):
    """A database with two kms-envelope backups in the bucket (the second after more engine writes)."""
    from tests.engine import engine_write

    db = make_sample(600, 2, 12, 16)
    key_id = kms_key(s3_endpoint)
    env = kms_env(s3_endpoint, bucket, key_id)
    first = ok(rem("--db-path", str(db), "backup", "create", "--upload", "--name", "first", "--json", env=env))
    engine_write(db, [["insert", "acme", "articles", {"uri": f"later-{i}", "title": "t" * 40}] for i in range(50)])
    second = ok(rem("--db-path", str(db), "backup", "create", "--upload", "--name", "second", "--json", env=env))
    return db, env, key_id, first, second


def _restore_refused(db, env, name, target: Path, *named: str) -> None:
    proc = rem("--db-path", str(db), "backup", "restore", "--name", name, "--target", str(target), env=env)
    assert proc.returncode != 0
    assert all(n in proc.stderr for n in named), proc.stderr
    assert not target.exists()


@pytest.mark.parametrize("damage", ["flip", "truncate", "swap"])
def test_a_changed_truncated_or_swapped_object_is_refused_by_name_and_the_target_untouched(
        sealed_pair, s3, bucket, tmp_path, damage):
    db, env, _, first, second = sealed_pair
    home = f"{db_name_of(db)}/backups/full/_all/"
    victim = f"{home}{second['name']}/small.tar.zst"
    body = s3.get_object(Bucket=bucket, Key=victim)["Body"].read()
    if damage == "flip":
        body = body[:200] + bytes([body[200] ^ 1]) + body[201:]
    elif damage == "truncate":
        body = body[:-16]
    else:  # the other backup's object, whole and sealed with the same data key, under this name
        body = s3.get_object(Bucket=bucket, Key=f"{home}{first['name']}/small.tar.zst")["Body"].read()
    s3.put_object(Bucket=bucket, Key=victim, Body=body)
    _restore_refused(db, env, second["name"], tmp_path / "target", "small.tar.zst", "refused")
    # the first backup is untouched by it and still restores
    ok(rem("--db-path", str(db), "backup", "restore", "--name", first["name"], "--target", str(tmp_path / "ok"),
           "--json", env=env))


def disabled_keys_refused(endpoint: str):
    """KMS as AWS runs it: Decrypt and GenerateDataKey with a disabled key fail (DisabledException).
    moto 5.2 records the key's state but still decrypts, so a proxy in front of it answers for it:
    it asks moto which key a request uses and refuses the request when that key is disabled."""
    import base64

    import boto3

    kms = boto3.client("kms", endpoint_url=endpoint, region_name="us-east-1")

    def rule(method, path, body):
        if not body.startswith(b"{"):
            return None
        request = json.loads(body)
        if "CiphertextBlob" in request:
            used = kms.decrypt(CiphertextBlob=base64.b64decode(request["CiphertextBlob"]),
                               EncryptionContext=request.get("EncryptionContext", {}))["KeyId"]
        elif "KeyId" in request and "KeySpec" in request:
            used = request["KeyId"]
        else:
            return None
        return "kms-disabled" if kms.describe_key(KeyId=used)["KeyMetadata"]["KeyState"] == "Disabled" else None

    return FaultProxy(endpoint, body_rule=rule)


def test_the_bucket_alone_reads_nothing_and_a_disabled_kms_key_is_one_line_that_writes_nothing(
        sealed_pair, s3, s3_endpoint, bucket, tmp_path):
    import boto3

    db, env, key_id, first, _ = sealed_pair
    stored = bucket_objects(s3, bucket)
    assert leaks(stored, needles(db)) == {}
    keys = [k for k in stored if "/keys/" in k]
    assert len(keys) == 1
    wrapped = json.loads(stored[keys[0]])["wrapped"]

    # without the KMS key, the wrapped data key is all there is: the backup cannot be read
    with disabled_keys_refused(s3_endpoint) as kms:
        target = tmp_path / "t"
        restore = ["--db-path", str(db), "backup", "restore", "--name", first["name"], "--target", str(target)]
        ok(rem(*restore, "--json", env={**env, "P8_KMS_ENDPOINT_URL": kms.url}))  # through the proxy: it works
        import shutil

        shutil.rmtree(target)
        boto3.client("kms", endpoint_url=s3_endpoint, region_name="us-east-1").disable_key(KeyId=key_id)
        before = snapshot_dir(db)
        proc = rem(*restore, env={**env, "P8_KMS_ENDPOINT_URL": kms.url})
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "KMS Decrypt" in proc.stderr and "DisabledException" in proc.stderr and "enable the key" in proc.stderr
    assert not target.exists() and snapshot_dir(db) == before
    assert bucket_objects(s3, bucket) == stored
    for out in (proc.stdout, proc.stderr):
        assert wrapped not in out and SECRET not in out


def test_rekey_rewraps_the_data_key_under_a_new_kms_key_without_rewriting_a_backup(
        sealed_pair, s3, s3_endpoint, bucket, tmp_path):
    import boto3

    db, env, old_key, first, second = sealed_pair
    data = {k: v for k, v in bucket_objects(s3, bucket).items() if "/keys/" not in k}
    new_key_id = kms_key(s3_endpoint)
    result = ok(rem("--db-path", str(db), "backup", "rekey", "--kms-key-id", new_key_id, "--json", env=env))
    assert [k["to"].endswith(new_key_id) for k in result["rewrapped"]] == [True]
    after = bucket_objects(s3, bucket)
    assert {k: v for k, v in after.items() if "/keys/" not in k} == data  # not one data object rewritten
    boto3.client("kms", endpoint_url=s3_endpoint, region_name="us-east-1").disable_key(KeyId=old_key)
    with disabled_keys_refused(s3_endpoint) as kms:
        moved = {**env, "P8_KMS_KEY_ID": new_key_id, "P8_KMS_ENDPOINT_URL": kms.url}
        restored = tmp_path / "restored"
        ok(rem("--db-path", str(db), "backup", "restore", "--name", second["name"], "--target", str(restored),
               "--json", env=moved))
        # before the rekey the same disabled key would have refused it: the proxy does refuse the old key
        assert any(r.outcome == "kms-disabled" for r in kms.requests) is False
        refused = rem("--db-path", str(db), "backup", "create", "--upload", "--name", "third", env={
            **env, "P8_KMS_ENDPOINT_URL": kms.url})  # still configured with the old key: it cannot make a data key
        assert refused.returncode == 2 and "DisabledException" in refused.stderr, refused.stderr
    assert digest(dump_all(restored)) == digest(dump_all(db))


def test_a_wrong_key_file_is_one_line_naming_both_keys_and_nothing_is_written(make_sample, tmp_path):
    db = make_sample(300, 2, 13, 16)
    env = key_file_env(new_key(tmp_path / "right.key"), tmp_path / "backups")
    made = ok(rem("--db-path", str(db), "backup", "create", "--json", env=env))
    stored = local_objects(tmp_path / "backups")
    wrong = {**env, "P8_BACKUP_KEY_FILE": str(new_key(tmp_path / "wrong.key"))}
    proc = rem("--db-path", str(db), "backup", "restore", "--name", made["name"], "--target", str(tmp_path / "t"),
               env=wrong)
    assert proc.returncode == 2 and "wrong.key" in proc.stderr and made["encryption"]["kek"] in proc.stderr
    assert not (tmp_path / "t").exists() and local_objects(tmp_path / "backups") == stored
    assert (tmp_path / "right.key").read_text().strip() not in proc.stderr + proc.stdout


def test_point_in_time_restore_from_a_sealed_archive_equals_the_live_database_then(
        tmp_path, s3, s3_endpoint, bucket):
    db = tmp_path / "db"
    engine = LiveEngine(db, max_total_wal_size=64 * 1024)
    try:
        env = {**kms_env(s3_endpoint, bucket, kms_key(s3_endpoint)), "P8_PITR_SEGMENT_MAX_MB": "0.02"}
        engine.call("register_schema", "articles", ARTICLES)
        for i in range(20):
            engine.call("insert", "acme", "articles", {"slug": f"secret-slug-{i:04d}", "title": "before the base"})
        ok(rem("--db-path", str(db), "backup", "create", "--upload", "--json", env=env))
        for i in range(40):
            engine.call("insert", "acme", "articles", {"slug": f"secret-slug-after-{i:04d}", "title": "in the log"})
        ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
        from datetime import datetime, timezone

        moment = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
        state = engine.dump()
        engine.call("insert", "acme", "articles", {"slug": "secret-slug-too-late", "title": "after"})
        ok(rem("--db-path", str(db), "pitr", "archive", "--json", env=env))
    finally:
        engine.close()
    stored = bucket_objects(s3, bucket)
    segments = [k for k in stored if "/segments/" in k]
    assert segments and all(stored[k].startswith(b"REMAEAD1") for k in segments)
    assert leaks(stored, {b"secret-slug-after-0001", b"secret-slug-too-late", b"in the log"}) == {}
    out = tmp_path / "then"
    ok(rem("--db-path", str(db), "pitr", "restore", "--timestamp", moment, "--output", str(out), "--json", env=env))
    restored = dump_all(out)
    assert {cf: restored[cf] for cf in state} == state


def _prefect(url: str, path: str, body: dict):
    import urllib.request

    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _everything_prefect_holds(url: str) -> str:
    """Every artifact, log line, event and flow run (parameters, state messages) on the server, as text."""
    found = [_prefect(url, "/artifacts/filter", {"limit": 200}), _prefect(url, "/flow_runs/filter", {"limit": 200}),
             _prefect(url, "/task_runs/filter", {"limit": 200}), _prefect(url, "/events/filter", {"limit": 50})]
    offset = 0
    while page := _prefect(url, "/logs/filter", {"limit": 200, "offset": offset}):
        found.append(page)
        offset += len(page)
    return json.dumps(found)


def test_no_key_wrapped_key_or_credential_shows_in_any_output_log_artifact_or_event(
        make_sample, tmp_path, s3, s3_endpoint, bucket, prefect_api):
    import base64

    import boto3

    db = make_sample(400, 2, 14, 16)
    access_key = "AKIAIOSFODNN7REMTEST"
    env = {**kms_env(s3_endpoint, bucket, kms_key(s3_endpoint)), "AWS_ACCESS_KEY_ID": access_key,
           "PREFECT_API_URL": prefect_api["url"], "PREFECT_HOME": prefect_api["home"],
           "P8_BACKUP_DIR": str(tmp_path / "local")}
    cli = ("--db-path", str(db))
    outputs = []

    def run(*args, expect=0):
        proc = rem(*cli, *args, env=env)
        assert proc.returncode == expect, (args, proc.stderr)
        outputs.append(proc.stdout + proc.stderr)
        return proc

    name = json.loads(run("backup", "create", "--upload", "--json").stdout)["name"]
    run("backup", "create", "--json")  # the local store: sealed with the same database's data key
    run("backup", "list", "--detail", "--json")
    run("backup", "list", "--detail")
    run("backup", "verify", "--name", name, "--json")
    run("backup", "restore", "--name", name, "--target", str(tmp_path / "r"), "--json")
    run("pitr", "archive", "--json")
    run("check", "--json")
    run("drill", "--backup", name, "--json")
    run("backup", "rekey", "--kms-key-id", kms_key(s3_endpoint), "--json")
    with disabled_keys_refused(s3_endpoint) as kms:  # a failure's message and its run on the server
        for key in boto3.client("kms", endpoint_url=s3_endpoint, region_name="us-east-1").list_keys()["Keys"]:
            boto3.client("kms", endpoint_url=s3_endpoint, region_name="us-east-1").disable_key(KeyId=key["KeyId"])
        env["P8_KMS_ENDPOINT_URL"] = kms.url
        run("backup", "restore", "--name", name, "--target", str(tmp_path / "r2"), expect=2)
        run("backup", "create", "--upload", "--name", "refused", expect=2)

    doc = json.loads(s3.get_object(Bucket=bucket, Key=next(
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"] if "/keys/" in o["Key"]))["Body"].read())
    wrapped = base64.b64decode(doc["wrapped"])
    for key in boto3.client("kms", endpoint_url=s3_endpoint, region_name="us-east-1").list_keys()["Keys"]:
        boto3.client("kms", endpoint_url=s3_endpoint, region_name="us-east-1").enable_key(KeyId=key["KeyId"])
    plaintext = boto3.client("kms", endpoint_url=s3_endpoint, region_name="us-east-1").decrypt(
        CiphertextBlob=wrapped, EncryptionContext={"rem-db": doc["db"], "rem-data-key": doc["id"]})["Plaintext"]
    secrets = {"AWS secret": SECRET, "AWS access key": access_key, "wrapped key": doc["wrapped"],
               "wrapped key (hex)": wrapped.hex(), "data key (hex)": plaintext.hex(),
               "data key (base64)": base64.b64encode(plaintext).decode()}
    server = _everything_prefect_holds(prefect_api["url"])
    assert "full-backup" in server and name in server  # the runs, their artifacts and logs are there to search
    for what, secret in secrets.items():
        for i, text in enumerate(outputs):
            assert secret not in text, f"{what} in the output of command {i}"
        assert secret not in server, f"{what} on the Prefect server"


def test_sealed_objects_open_by_range_and_refuse_reordered_renamed_or_unsealed_chunks(tmp_path):
    from rem.storage.encrypted import CHUNK, HEADER, TAG, EncryptedObjectStore, ObjectTampered
    from rem.storage.keys import DataKeys, KeyFileWrap
    from rem.storage.local import LocalObjectStore

    inner = LocalObjectStore(tmp_path / "store")
    store = EncryptedObjectStore(inner, DataKeys(inner, KeyFileWrap(new_key(tmp_path / "k"))))
    body = os.urandom(3 * CHUNK + 12345)
    key = "db/backups/sst/x.zst"
    with store.writer(key, None) as sink:
        for i in range(0, len(body), 100_000):  # written in pieces that straddle the chunks
            sink.write(body[i:i + 100_000])
    raw = inner.get(key)
    assert len(raw) == HEADER.size + len(body) + 4 * TAG and body[:64] not in raw
    for start, end in ((0, 0), (5, CHUNK), (CHUNK - 1, CHUNK), (2 * CHUNK + 7, len(body) - 1), (0, len(body) - 1)):
        assert store.get(key, start, end) == body[start:end + 1]
    store.download(key, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == body

    sealed = CHUNK + TAG
    chunks = [raw[HEADER.size + i * sealed:HEADER.size + (i + 1) * sealed] for i in range(4)]
    for bad in (raw[:HEADER.size] + chunks[1] + chunks[0] + chunks[2] + chunks[3],  # reordered
                raw[:HEADER.size] + b"".join(chunks[:3])):  # cut at a chunk boundary
        inner.put(key, bad)
        with pytest.raises(ObjectTampered, match="x.zst"):
            store.get(key)
    inner.put("db/backups/sst/y.zst", raw)  # whole and sealed, but under another name
    with pytest.raises(ObjectTampered, match="y.zst"):
        store.get("db/backups/sst/y.zst")


def test_rekey_to_a_new_key_file_and_the_old_one_no_longer_opens(make_sample, tmp_path):
    db = make_sample(300, 2, 15, 16)
    env = key_file_env(new_key(tmp_path / "old.key"), tmp_path / "backups")
    made = ok(rem("--db-path", str(db), "backup", "create", "--name", "b", "--json", env=env))
    sst = {k: v for k, v in local_objects(tmp_path / "backups").items() if "/keys/" not in k}
    result = ok(rem("--db-path", str(db), "backup", "rekey", "--key-file", str(new_key(tmp_path / "new.key")),
                    "--json", env=env))
    assert len(result["rewrapped"]) == 1 and result["rewrapped"][0]["from"] == made["encryption"]["kek"]
    assert {k: v for k, v in local_objects(tmp_path / "backups").items() if "/keys/" not in k} == sst
    moved = {**env, "P8_BACKUP_KEY_FILE": str(tmp_path / "new.key")}
    ok(rem("--db-path", str(db), "backup", "restore", "--name", "b", "--target", str(tmp_path / "r"), "--json",
           env=moved))
    assert digest(dump_all(tmp_path / "r")) == digest(dump_all(db))
    refused = rem("--db-path", str(db), "backup", "restore", "--name", "b", "--target", str(tmp_path / "r2"), env=env)
    assert refused.returncode == 2 and "old.key" in refused.stderr


def test_a_backup_made_before_encryption_was_turned_on_still_restores(make_sample, tmp_path):
    db = make_sample(300, 2, 16, 16)
    backups = tmp_path / "backups"
    ok(rem("--db-path", str(db), "backup", "create", "--name", "before", "--json", env={"P8_BACKUP_DIR": str(backups)}))
    env = key_file_env(new_key(tmp_path / "k"), backups)
    after = ok(rem("--db-path", str(db), "backup", "create", "--name", "after", "--json", env=env))
    assert after["encryption"]["mode"] == "key-file"
    # the SSTs the unencrypted backup stored are stored again, sealed: the encrypted one names no plaintext
    objects = {k: v for k, v in local_objects(backups).items() if "/sst/" in k}
    assert objects and all(v.startswith(b"REMAEAD1") for v in objects.values())
    listed = {r["name"]: r for r in ok(rem("--db-path", str(db), "backup", "list", "--detail", "--json", env=env))}
    assert listed["before"]["encryption"] is None and listed["after"]["encryption"]["mode"] == "key-file"
    # unsealed objects are refused where sealed ones belong, until the operator says to trust them
    refused = rem("--db-path", str(db), "backup", "restore", "--name", "before", "--target", str(tmp_path / "no"),
                  env=env)
    assert refused.returncode == 1 and "not encrypted" in refused.stderr and "P8_BACKUP_ALLOW_PLAINTEXT" in \
        refused.stderr and not (tmp_path / "no").exists()
    for name, extra in (("before", {"P8_BACKUP_ALLOW_PLAINTEXT": "1"}), ("after", {})):
        ok(rem("--db-path", str(db), "backup", "restore", "--name", name, "--target", str(tmp_path / name), "--json",
               env={**env, **extra}))
        assert digest(dump_all(tmp_path / name)) == digest(dump_all(db))


def test_a_plaintext_backup_planted_in_an_encrypted_bucket_is_refused(sealed_pair, s3, bucket, tmp_path):
    """Someone who can write to the bucket but has no key puts a backup of their own beside the sealed
    ones (metadata.json is readable, so it is easy to copy one): a restore of it is refused."""
    from tests.engine import engine_write

    db, env, _, first, _ = sealed_pair
    planted_db = tmp_path / "planted-db"
    import shutil

    shutil.copytree(db, planted_db)
    engine_write(planted_db, [["insert", "acme", "articles", {"uri": "planted", "title": "attacker's row"}]])
    plain = {k: v for k, v in env.items() if k not in ("P8_BACKUP_ENCRYPTION", "P8_KMS_KEY_ID")}
    ok(rem("--db-path", str(planted_db), "--db-name", "attacker", "backup", "create", "--upload", "--name",
           "planted", "--json", env=plain))
    victim = db_name_of(db)
    for key, body in bucket_objects(s3, bucket).items():  # copied in with the bucket's credentials alone
        if key.startswith("attacker/backups/"):
            if key.endswith(".json"):
                body = body.replace(b"attacker/", f"{victim}/".encode()).replace(b'"attacker"', f'"{victim}"'.encode())
            s3.put_object(Bucket=bucket, Key=victim + key[len("attacker"):], Body=body)
    listed = {r["name"] for r in ok(rem("--db-path", str(db), "backup", "list", "--json", env=env))}
    assert "planted" in listed  # it looks like one of the database's backups
    proc = rem("--db-path", str(db), "backup", "restore", "--name", "planted", "--target", str(tmp_path / "t"),
               env=env)
    assert proc.returncode == 1 and "not encrypted" in proc.stderr and not (tmp_path / "t").exists()


def test_an_uploaded_export_is_sealed_and_opens_with_the_data_key(make_sample, tmp_path, s3, s3_endpoint, bucket):
    import pyarrow.parquet as pq

    from rem.storage.encrypted import EncryptedObjectStore
    from runtime.wiring import remote_store
    from rem.settings import Settings

    db = make_sample(300, 2, 18, 16)
    env = kms_env(s3_endpoint, bucket, kms_key(s3_endpoint))
    ok(rem("--db-path", str(db), "export", "--tenant", "acme", "--schemas", "people", "--output", str(tmp_path / "x"),
           "--upload", "--json", env=env))
    key = next(k for k in bucket_objects(s3, bucket) if k.endswith("people.parquet"))
    raw = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert raw.startswith(b"REMAEAD1") and b"PAR1" not in raw
    cfg = Settings(db_path=db, s3_bucket=bucket, s3_endpoint_url=s3_endpoint, backup_encryption="kms-envelope",
                   kms_key_id=env["P8_KMS_KEY_ID"])
    store = remote_store(cfg)
    assert isinstance(store, EncryptedObjectStore)
    store.download(key, tmp_path / "people.parquet")
    assert pq.read_table(tmp_path / "people.parquet").equals(pq.read_table(tmp_path / "x"))  # one schema: a file
