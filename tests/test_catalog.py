"""The catalog file ({db}/backups/.catalog.json.zst) in a bucket: listings read it instead of a
metadata.json per backup, yet see what it lacks or lost, and nothing that acts on a backup (a restore,
prune) trusts it over metadata.json. Databases come from the engine-faithful writer (RocksDB 8.10);
S3 is moto's server, requests counted through a proxy."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import zstandard

from tests.engine import engine_write
from tests.faultproxy import FaultProxy
from tests.helpers import REPO, db_name_of, dump_all, rem
from tests.test_backup import s3_env
from tests.test_incremental import backup, writes


def metadata_gets(proxy: FaultProxy) -> int:
    return sum(1 for r in proxy.requests if r.method == "GET" and r.path.split("?")[0].endswith("/metadata.json"))


def file_list_gets(proxy: FaultProxy) -> int:
    return sum(1 for r in proxy.requests if r.method == "GET" and r.path.split("?")[0].endswith("/files.json"))


def listed(db, env) -> dict[str, dict]:
    proc = rem("--db-path", str(db), "backup", "list", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return {b["name"]: b for b in json.loads(proc.stdout)}


def copy_backup(s3, bucket: str, folder: str, name: str, moment: datetime) -> None:
    """A copy of the backup in folder under a new name, made server-side (as a year of backups of a
    quiet database looks: every copy names the same shared SSTs)."""
    meta = json.loads(s3.get_object(Bucket=bucket, Key=folder + "metadata.json")["Body"].read())
    home = folder.rstrip("/").rsplit("/", 1)[0] + f"/{name}/"
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=folder)["Contents"]:
        if not obj["Key"].endswith("metadata.json"):
            s3.copy_object(Bucket=bucket, Key=home + obj["Key"].rsplit("/", 1)[1],
                           CopySource={"Bucket": bucket, "Key": obj["Key"]})
    s3.put_object(Bucket=bucket, Key=home + "metadata.json", Body=json.dumps(
        {**meta, "name": name, "timestamp": moment.isoformat(timespec="seconds").replace("+00:00", "Z")}))


def catalog(s3, bucket, db) -> dict:
    body = s3.get_object(Bucket=bucket, Key=f"{db_name_of(db)}/backups/.catalog.json.zst")["Body"].read()
    return json.loads(zstandard.ZstdDecompressor().decompress(body))["backups"]


def put_catalog(s3, bucket, db, entries: dict) -> None:
    body = zstandard.ZstdCompressor().compress(json.dumps({"format": 1, "backups": entries}).encode())
    s3.put_object(Bucket=bucket, Key=f"{db_name_of(db)}/backups/.catalog.json.zst", Body=body)


def truth(s3, bucket, db) -> dict[str, dict]:
    """Every backup as its metadata.json says, read straight from the bucket."""
    prefix = f"{db_name_of(db)}/backups/full/"
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", []) if o["Key"].endswith("/metadata.json")]
    return {m["name"]: m for m in (json.loads(s3.get_object(Bucket=bucket, Key=k)["Body"].read()) for k in keys)}


def test_a_bucket_is_listed_from_the_catalog_and_what_it_lacks_or_lost_is_still_seen(make_sample, s3_endpoint,
                                                                                       bucket, s3):
    db = make_sample(entities=800)
    env = s3_env(s3_endpoint, bucket, db, P8_BACKUP_GC_GRACE_HOURS="0")
    backup(db, env, "--upload", "--name", "seed")
    seed = f"{db_name_of(db)}/backups/full/_all/seed/"
    start = datetime.now(timezone.utc) - timedelta(days=2)
    with ThreadPoolExecutor(8) as pool:  # more than a look lists folder by folder: the one listing of all is taken
        list(pool.map(lambda i: copy_backup(s3, bucket, seed, f"c{i:02d}", start - timedelta(hours=i)), range(66)))
    # Copies rem did not write: the catalog lacks them, so a listing reads each one's metadata.json.
    assert set(listed(db, env)) == {"seed"} | {f"c{i:02d}" for i in range(66)}
    backup(db, env, "--upload", "--name", "newest")  # a writer: the catalog takes in what its look found
    assert set(catalog(s3, bucket, db)) == {f"_all/{n}" for n in truth(s3, bucket, db)}

    with FaultProxy(s3_endpoint) as proxy:
        via = s3_env(proxy.url, bucket, db, P8_BACKUP_GC_GRACE_HOURS="0")
        shown = listed(db, via)
        assert metadata_gets(proxy) == 0  # 68 backups, not one metadata.json read
        assert {n: (b["created"], b["checksum_sha256"]) for n, b in shown.items()} == {
            n: (m["timestamp"], m["checksum_sha256"]) for n, m in truth(s3, bucket, db).items()}

        # Deleted behind rem's back: gone from the listing. Copied in behind its back: read, once.
        for obj in s3.list_objects_v2(Bucket=bucket, Prefix=seed.replace("seed", "c05"))["Contents"]:
            s3.delete_object(Bucket=bucket, Key=obj["Key"])
        copy_backup(s3, bucket, seed, "late", start + timedelta(hours=1))
        proxy.requests.clear()
        shown = listed(db, via)
        assert "c05" not in shown and "late" in shown and set(shown) == set(truth(s3, bucket, db))
        assert metadata_gets(proxy) == 1

        # prune's dry run reads file lists newest first and stops once every shared SST is named.
        proxy.requests.clear()
        plan = json.loads(rem("--db-path", str(db), "backup", "prune", "--dry-run", "--json", env=via,
                              check=True).stdout)
        assert [g["deleted_objects"] for url, g in plan["garbage"].items() if url.startswith("s3://")] == [0]
        assert file_list_gets(proxy) <= 16
        # An SST no backup names: every list is read, and it is the one found.
        orphan = f"{db_name_of(db)}/backups/sst/{'ab' * 32}.zst"
        s3.put_object(Bucket=bucket, Key=orphan, Body=b"no backup names this")
        proxy.requests.clear()
        plan = json.loads(rem("--db-path", str(db), "backup", "prune", "--dry-run", "--json", env=via,
                              check=True).stdout)
        assert [g["deleted_objects"] for url, g in plan["garbage"].items() if url.startswith("s3://")] == [1]
        assert file_list_gets(proxy) == len(truth(s3, bucket, db))

    # The catalog lost (a failed update, a deleted object): every backup is still listed.
    s3.delete_object(Bucket=bucket, Key=f"{db_name_of(db)}/backups/.catalog.json.zst")
    assert set(listed(db, env)) == set(truth(s3, bucket, db))


def test_restore_and_prune_act_on_metadata_json_not_on_a_stale_or_forged_catalog(make_sample, tmp_path, s3_endpoint,
                                                                                bucket, s3):
    db = make_sample(entities=600)
    env = s3_env(s3_endpoint, bucket, db)
    moments = {}
    for round_, name in enumerate(("b1", "b2", "b3")):
        if round_:
            engine_write(db, writes(round_, 40))
        backup(db, env, "--upload", "--name", name)
        moments[name] = dump_all(db)
    before_keep = catalog(s3, bucket, db)
    rem("--db-path", str(db), "backup", "keep", "b1", env=env, check=True)
    assert catalog(s3, bucket, db)["_all/b1"]["metadata"]["kept"] is True
    # The catalog as it was before the keep (an update lost), and b2's entry forged: another checksum
    # and counts. Neither may change what is restored or deleted.
    forged = {**before_keep}
    forged["_all/b2"] = {**forged["_all/b2"], "metadata": {**forged["_all/b2"]["metadata"],
                                                           "checksum_sha256": "0" * 64, "entity_count": 1}}
    put_catalog(s3, bucket, db, forged)

    out = tmp_path / "b2"
    rem("--db-path", str(db), "backup", "restore", "--name", "b2", "--target", str(out), env=env, check=True)
    assert dump_all(out) == moments["b2"]

    def prune() -> dict:
        return json.loads(rem("--db-path", str(db), "backup", "prune", "--keep-daily", "1", "--keep-weekly", "0",
                              "--keep-monthly", "0", "--json", env=env, check=True).stdout)

    # The plan, made from the forged entry, would delete b2; its metadata.json says otherwise, so it
    # stays, and the catalog takes the truth. b1 is kept, as its metadata.json says.
    first = prune()
    assert {r["name"] for r in first["delete"]} == {"b2"} and first["not_deleted_changed"] == ["b2"]
    assert set(truth(s3, bucket, db)) == {"b1", "b2", "b3"}
    assert catalog(s3, bucket, db)["_all/b2"]["metadata"] == truth(s3, bucket, db)["b2"]
    assert catalog(s3, bucket, db)["_all/b1"]["metadata"]["kept"] is True  # prune's exact look mended it
    second = prune()
    assert {r["name"] for r in second["delete"]} == {"b2"} and second["not_deleted_changed"] == []
    assert set(truth(s3, bucket, db)) == {"b1", "b3"} and set(catalog(s3, bucket, db)) == {"_all/b1", "_all/b3"}
    out = tmp_path / "b1"
    rem("--db-path", str(db), "backup", "restore", "--name", "b1", "--target", str(out), env=env, check=True)
    assert dump_all(out) == moments["b1"]


def test_two_backups_at_once_both_enter_the_catalog(make_sample, s3_endpoint, bucket, s3):
    db = make_sample(entities=600)
    env = s3_env(s3_endpoint, bucket, db)
    backup(db, env, "--upload", "--name", "first")
    runs = [subprocess.Popen([sys.executable, "-m", "cli.main", "--db-path", str(db), "backup", "create", "--upload",
                              "--name", name], cwd=REPO, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for name in ("left", "right")]
    for run in runs:
        assert run.wait(300) == 0, run.stderr.read()
    assert set(catalog(s3, bucket, db)) == {"_all/first", "_all/left", "_all/right"}
    with FaultProxy(s3_endpoint) as proxy:
        assert set(listed(db, s3_env(proxy.url, bucket, db))) == {"first", "left", "right"}
        assert metadata_gets(proxy) == 0
