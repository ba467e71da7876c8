"""Incremental backups against moto on 127.0.0.1 (`python -m benchmarks.incremental [ENTITIES]`).

1. First backup: `rem backup create --upload` vs `tar -I 'zstd -T0 -3' -cf` + `aws s3 cp` (ratio).
2. Second backup of the unchanged database: its bytes and time as fractions of the first's.
3. After 1% of the entities are written again through the engine (its own flush on close, and the
   compactions RocksDB runs on its own): the bytes the next backup adds, against the full backup
   and against the new SST bytes plus the small files.
4. Restore: `rem backup download` + `rem backup restore` vs `aws s3 cp` + `tar -I zstd -xf`.
5. Delta restore: the first backup ("last night's") restored with `--delta` over the database after
   those writes, against a full restore of it: the bytes fetched from the bucket (counted by a proxy
   both go through), the time, and the two results compared file by file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.run import ENV, rem, target, timed
from rem.stats import directory_size
from tests.engine import engine_write
from tests.faultproxy import FaultProxy
from tests.helpers import database_files, free_port, wait_http


def backup(db: Path, env: dict) -> tuple[float, dict]:
    """Wall time of the whole command (process start included, as for the tools it is compared with)."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "cli.main", "--db-path", str(db), "backup", "create", "--upload",
                          "--json"], env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, json.loads(out.stdout)


def ssts(db: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in db.glob("*.sst")}


def restored_through_proxy(endpoint: str, env: dict, *args: str) -> tuple[float, int]:
    """The wall time of `rem ARGS` (a restore) and the bytes it fetched from the bucket."""
    import boto3

    with FaultProxy(endpoint) as proxy:
        seconds, _ = rem(*args, env={**env, "P8_S3_ENDPOINT_URL": proxy.url})
    return seconds, proxy.fetched_bytes(boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1"), "bench")


def main(entities: int = 450_000) -> list[tuple[str, str, str]]:
    work = Path(tempfile.mkdtemp(prefix="rem-bench-inc-"))
    port = free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    rows = []
    try:
        wait_http(endpoint + "/moto-api/", 30)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
        env = {**ENV, "P8_S3_BUCKET": "bench", "P8_S3_ENDPOINT_URL": endpoint}
        db = work / "db"
        rem("--db-path", str(db), "db", "init", "--sample", str(entities))
        size = directory_size(db)

        first_s, first = backup(db, env)
        archive = work / "base.tar.zst"
        tar_s, _ = timed(["tar", "-I", "'zstd -T0 -3'", "-cf", str(archive), "-C", str(db), "."], shell=True)
        cp_s, _ = timed(["aws", "--endpoint-url", endpoint, "s3", "cp", str(archive), "s3://bench/base.tar.zst"])
        rows.append((f"first backup of a {size / 1e9:.2f} GB database: `rem backup create --upload` vs "
                     "`tar -I 'zstd -T0 -3'` + `aws s3 cp`",
                     f"{first_s:.1f} s vs {tar_s + cp_s:.1f} s (ratio {first_s / (tar_s + cp_s):.2f}); "
                     f"{first['added_bytes'] / 1e6:.0f} MB vs {archive.stat().st_size / 1e6:.0f} MB", "ratio <= 1.0"))

        second_s, second = backup(db, env)
        rows.append(("second backup of the unchanged database",
                     f"{second['added_bytes'] / 1e3:.0f} kB ({second['added_bytes'] / first['added_bytes']:.3%} of "
                     f"the first's bytes), {second_s:.2f} s ({second_s / first_s:.1%} of its time)",
                     "< 1% of the bytes, < 10% of the time"))

        before = ssts(db)
        changed = entities // 100
        engine_write(db, [["insert", "acme", "articles", {"name": f"bench-change-{i}", "content": "changed " * 40}]
                          for i in range(changed)])
        after = ssts(db)
        new_sst = sum(size for name, size in after.items() if name not in before)
        third_s, third = backup(db, env)
        rows.append((f"after {changed:,} engine writes (1% of the entities; its flush, RocksDB's own compactions): "
                     "bytes the next backup adds", f"{third['added_bytes'] / 1e6:.1f} MB = "
                     f"{third['added_bytes'] / first['added_bytes']:.1%} of the full backup, "
                     f"{third['added_bytes'] / new_sst:.2f}x the {new_sst / 1e6:.1f} MB of new SSTs "
                     f"({len(set(after) - set(before))} files), in {third_s:.1f} s",
                     "<= the new SSTs + the small files"))

        dl = work / "dl"
        dl_s, _ = rem("--db-path", str(db), "backup", "download", "--name", third["name"], "--output", str(dl),
                      env=env)
        restore_s, _ = rem("backup", "restore", "--source", str(dl / third["name"]), "--target",
                           str(work / "restored"), env=env)
        get_s, _ = timed(["aws", "--endpoint-url", endpoint, "s3", "cp", "s3://bench/base.tar.zst",
                          str(work / "fetched.tar.zst")])
        (work / "untarred").mkdir()
        untar_s, _ = timed(["tar", "-I", "zstd", "-xf", str(work / "fetched.tar.zst"), "-C", str(work / "untarred")])
        ours, theirs = dl_s + restore_s, get_s + untar_s
        rows.append(("restore of an incremental backup: `rem backup download` + `rem backup restore` vs "
                     "`aws s3 cp` + `tar -I zstd -xf`", f"{ours:.1f} s vs {theirs:.1f} s (ratio {ours / theirs:.2f})",
                     "ratio <= 1.0"))

        full = work / "full"
        full_s, full_bytes = restored_through_proxy(endpoint, env, "--db-path", str(db), "backup", "restore", "--name",
                                                    first["name"], "--target", str(full))
        delta_s, delta_bytes = restored_through_proxy(endpoint, env, "--db-path", str(db), "backup", "restore", "--name",
                                                      first["name"], "--target", str(db), "--delta")
        same = database_files(db) == database_files(full)
        share = delta_bytes / full_bytes
        rows.append((f"`rem backup restore --delta` of the first backup over the database after the {changed:,} "
                     "writes, vs a full restore of it (both through a proxy that counts the bytes fetched)",
                     f"fetched {delta_bytes / 1e6:.1f} MB of {full_bytes / 1e6:.0f} MB ({share:.1%}) in {delta_s:.1f} s "
                     f"vs {full_s:.1f} s; " + ("identical file by file" if same else "**files differ**"),
                     target("<= 5% of the bytes, byte-identical", share <= 0.05 and same)))
    finally:
        moto.terminate()
        moto.wait()
        shutil.rmtree(work, ignore_errors=True)
    return rows


if __name__ == "__main__":
    table = ["| what | figure | target |", "|---|---|---|"] + [
        f"| {a} | {b} | {c} |" for a, b, c in main(int(sys.argv[1]) if len(sys.argv) > 1 else 450_000)]
    print("\n".join(table))
