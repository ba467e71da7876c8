"""A store at scale: 5,000 backups of one database beside 49 other databases (10 backups each),
in a local store: `rem backup list` (target < 2 s), `rem backup prune --dry-run` (< 5 s) and the
catalog's overhead on a new incremental backup (its time with 5,000 backups in the store minus its
time with a few; target < 1 s). Each figure is the best of three runs. The 5,000 are copies of one real backup's records under new names,
an hour apart, all naming the same shared SSTs (what a year of hourly backups of a quiet database
looks like to the catalog). Then the same in a bucket (moto's S3 server on 127.0.0.1): the records
are copied server-side from one uploaded backup; the other databases get their records only (their
SSTs change nothing of the one listed).

The copies are made behind rem's back, so the first backup after them enters them into the catalog
file ({db}/backups/.catalog.json.zst), as the first backup after an upgrade does: its time is
reported on its own, and list, prune and the next backup are then timed as a store rem wrote.

Usage: python -m benchmarks.scale [BACKUPS] [DATABASES]   (default 5000 50)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.run import ENV, REPO, rem, save_result  # noqa: E402
from tests.helpers import free_port, wait_http  # noqa: E402


def copies(folder: Path, count: int, start: datetime) -> None:
    """count copies of a backup folder beside it, named and timed an hour apart before start."""
    meta = json.loads((folder / "metadata.json").read_text())
    for i in range(count):
        moment = start - timedelta(hours=i + 1)
        name = moment.strftime("%Y-%m-%dT%H%M%SZ")
        copy = folder.parent / name
        copy.mkdir()
        for f in folder.iterdir():
            if f.name != "metadata.json":
                (copy / f.name).hardlink_to(f)
        (copy / "metadata.json").write_text(json.dumps({**meta, "name": name, "timestamp": moment.isoformat(
            timespec="seconds").replace("+00:00", "Z")}))


RUNS = 3  # each figure is the best of three: one run can land on the setup's writeback or moto's garbage collection


def timed_list(db: Path, env: dict, backups: int) -> float:
    best = float("inf")
    for _ in range(RUNS):
        started = time.perf_counter()
        listed = json.loads(subprocess.run([sys.executable, "-m", "cli.main", "--db-path", str(db), "backup", "list",
                                            "--json"], env=env, capture_output=True, text=True, cwd=REPO).stdout)
        best = min(best, time.perf_counter() - started)
        assert len(listed) == backups, len(listed)
    return best


def best_of(db: Path, env: dict, *args: str, name: str | None = None) -> float:
    """The best of RUNS runs of a rem command (a backup: RUNS backups, named name-1, name-2, ...)."""
    return min(rem("--db-path", str(db), *args, *(("--name", f"{name}-{i}") if name else ()), env=env)[0]
               for i in range(1, RUNS + 1))


def bucket_copies(s3, bucket: str, root: str, count: int, start: datetime, into: str | None = None) -> None:
    """count copies of the backup under root (`{db}/backups/full/_all/{name}/`), made server-side,
    named and timed an hour apart before start; into: another database's folder instead."""
    meta = json.loads(s3.get_object(Bucket=bucket, Key=root + "metadata.json")["Body"].read())
    records = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=root)["Contents"]
               if not o["Key"].endswith("metadata.json")]
    folder = root.rstrip("/").rsplit("/", 1)[0] + "/"
    if into:
        folder = into + folder[folder.index("/"):]

    def one(i: int) -> None:
        moment = start - timedelta(hours=i + 1)
        name = moment.strftime("%Y-%m-%dT%H%M%SZ")
        for key in records:
            s3.copy_object(Bucket=bucket, Key=f"{folder}{name}/{key.rsplit('/', 1)[1]}",
                           CopySource={"Bucket": bucket, "Key": key})
        s3.put_object(Bucket=bucket, Key=f"{folder}{name}/metadata.json", Body=json.dumps(
            {**meta, "name": name, "timestamp": moment.isoformat(timespec="seconds").replace("+00:00", "Z")}))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(count)))


def in_bucket(backups: int, databases: int) -> dict:
    """The same store in moto's S3: list, prune --dry-run and a new uploaded backup's overhead."""
    import boto3

    work = Path(tempfile.mkdtemp(prefix="rem-bench-scale-s3-"))
    port = free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_http(endpoint + "/moto-api/", 30)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="scale")
        db = work / "db"
        env = {**ENV, "P8_S3_BUCKET": "scale", "P8_S3_ENDPOINT_URL": endpoint, "P8_DB_NAME": "main"}
        rem("--db-path", str(db), "db", "init", "--sample", "20000")
        rem("--db-path", str(db), "backup", "create", "--upload", "--name", "seed", env=env)
        one = best_of(db, env, "backup", "create", "--upload", name="with-one")
        now = datetime.now(timezone.utc)
        bucket_copies(s3, "scale", "main/backups/full/_all/seed/", backups - 2 - RUNS, now)
        identity = json.loads(s3.get_object(Bucket="scale", Key="main/database.json")["Body"].read())
        for n in range(databases - 1):
            bucket_copies(s3, "scale", "main/backups/full/_all/seed/", 10, now, into=f"other-{n:02d}")
            s3.put_object(Bucket="scale", Key=f"other-{n:02d}/database.json",
                          Body=json.dumps({**identity, "name": f"other-{n:02d}"}))
        # The copies were made behind rem's back: the first backup after them enters them into the
        # catalog file (once, as after an upgrade from a version without one).
        first, _ = rem("--db-path", str(db), "backup", "create", "--upload", "--name", "builds-catalog", env=env)
        list_s = timed_list(db, env, backups)
        prune_s = best_of(db, env, "backup", "prune", "--dry-run")
        many = best_of(db, env, "backup", "create", "--upload", name="with-many")
        return {"backups": backups, "databases": databases, "list_s": list_s, "prune_dry_run_s": prune_s,
                "backup_with_one_s": one, "backup_with_many_s": many, "catalog_overhead_s": many - one,
                "backup_building_catalog_s": first}
    finally:
        moto.terminate()
        moto.wait()
        shutil.rmtree(work, ignore_errors=True)


def main(backups: int = 5000, databases: int = 50) -> dict:
    work = Path(tempfile.mkdtemp(prefix="rem-bench-scale-"))
    try:
        db, store = work / "db", work / "store"
        env = {**ENV, "P8_BACKUP_DIR": str(store), "P8_DB_NAME": "main"}
        rem("--db-path", str(db), "db", "init", "--sample", "20000")
        rem("--db-path", str(db), "backup", "create", "--name", "seed", env=env)
        one = best_of(db, env, "backup", "create", name="with-one")
        seed = store / "main" / "backups" / "full" / "_all" / "seed"
        copies(seed, backups - 2 - RUNS, datetime.now(timezone.utc))
        keep = {p.name for p in sorted((store / "main" / "backups" / "full" / "_all").iterdir())[:10]}
        for n in range(databases - 1):  # links to the ten oldest backups and the shared SSTs of main: the same
            other = store / f"other-{n:02d}"  # store as a copy of all and a delete, without 250,000 links churned
            shutil.copytree(store / "main", other, copy_function=lambda s, d: Path(d).hardlink_to(s),
                            ignore=lambda where, names: [x for x in names if Path(where).name == "_all"
                                                         and x not in keep])
            identity = json.loads((other / "database.json").read_text())
            (other / "database.json").write_text(json.dumps({**identity, "name": other.name}))
        os.sync()  # the copies' writeback is the setup's, not the commands'
        first, _ = rem("--db-path", str(db), "backup", "create", "--name", "builds-catalog", env=env)
        list_s = timed_list(db, env, backups)
        prune_s = best_of(db, env, "backup", "prune", "--dry-run")
        many = best_of(db, env, "backup", "create", name="with-many")
        result = {"backups": backups, "databases": databases, "list_s": list_s, "prune_dry_run_s": prune_s,
                  "backup_with_one_s": one, "backup_with_many_s": many, "catalog_overhead_s": many - one,
                  "backup_building_catalog_s": first}
        print(f"store with {backups:,} backups of one database among {databases}: `rem backup list` {list_s:.2f} s "
              f"(target < 2 s), `rem backup prune --dry-run` {prune_s:.2f} s (< 5 s), a new incremental backup "
              f"{many:.2f} s vs {one:.2f} s with 1-3 backups: catalog overhead {many - one:.2f} s (< 1 s); the backup "
              f"that entered the 5,000 into the catalog file {first:.2f} s (once)", flush=True)
        result["s3"] = s3 = in_bucket(backups, databases)
        print(f"the same in a bucket (moto): `rem backup list` {s3['list_s']:.2f} s, `rem backup prune --dry-run` "
              f"{s3['prune_dry_run_s']:.2f} s, a new uploaded incremental backup {s3['backup_with_many_s']:.2f} s vs "
              f"{s3['backup_with_one_s']:.2f} s: catalog overhead {s3['catalog_overhead_s']:.2f} s; the backup that "
              f"entered them into the catalog file {s3['backup_building_catalog_s']:.2f} s (once)", flush=True)
        save_result("scale", result)
        return result
    finally:
        if os.environ.get("BENCH_KEEP"):
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
