"""`make bench`: speed and memory as ratios against the plain tools a user would otherwise script.

1. `rem db init --sample N` throughput (entities/s).
2. Backup of a >= 1 GB sample to moto's S3 server on 127.0.0.1: ours (`rem backup create --upload`)
   vs `tar -I 'zstd -T0 -3' -cf` + `aws s3 cp`; restore: ours (`rem backup download` + `rem backup
   restore`) vs `aws s3 cp` + `tar -I zstd -xf`. Wall time ratio and peak RSS of each process.
3. Point-in-time recovery (benchmarks/pitr.py): restore of BENCH_PITR_WRITES (1,000,000) writes past the
   base vs RocksDB's own recovery of the same logs, and archival lag at 1,000 inserts/s; the change log
   and a surgical undo (benchmarks/change_log.py); a live database's snapshot with ~60 MB unflushed in
   the engine's log vs with an empty one (benchmarks/snapshot.py; BENCH_SNAPSHOT_ENTITIES, 450000).
4. Start-up: `rem backup create` of a ~10 MB database with no Prefect API, and with a Prefect server.
5. Incremental backups (benchmarks/incremental.py) on a ~1 GB database (BENCH_INC_ENTITIES, 660000):
   first backup, an unchanged database's second, the bytes 1% of new entities add, restore, and the
   first backup restored with --delta over the changed database against a full restore.
6. Local backup, restore and verify against tar + zstd and a raw scan, with peak RSS, at ~0.25 and
   ~1 GB (benchmarks/local.py; BENCH_LOCAL_ENTITIES, 170000,660000).
7. Client-side encryption (benchmarks/encryption.py; BENCH_ENC_ENTITIES, 660000): backup and restore,
   local (key-file) and S3 (kms-envelope), each against the same command unencrypted.
8. A store at scale (benchmarks/scale.py; BENCH_SCALE_BACKUPS, 5000): list, prune --dry-run and a new
   backup's catalog overhead with 5,000 backups of one database among 50 databases, in a local store
   and in a bucket (moto).
9. The engine's insert latency while a backup runs, unlimited and with --rate-limit (benchmarks/rate_limit.py;
   BENCH_RATE_ENTITIES 330000, BENCH_RATE_MB 20).
10. A ~10 GB database (benchmarks/large.py; BENCH_LARGE_ENTITIES 10000000, BENCH_LARGE_DIM 64): init,
   backup, restore, verify, stats and export, each with its time and peak RSS.
11. A fleet (benchmarks/fleet.py; BENCH_FLEET_DATABASES 200): one `rem deploy` per database on one Prefect
   server, then `rem fleet status` and its flow run.

Sizes: BENCH_ENTITIES (default 450000, about 1 GB on disk), BENCH_DIM (128).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rem.stats import directory_size  # noqa: E402
from tests.helpers import free_port, wait_http  # noqa: E402

# Fake credentials for moto; nothing here may reach a real AWS account.
os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                  PREFECT_SERVER_ANALYTICS_ENABLED="false")
os.environ.pop("PREFECT_API_URL", None)
ENV = dict(os.environ)


def timed(cmd: list[str], env: dict | None = None, shell: bool = False) -> tuple[float, int]:
    """Wall seconds and peak RSS (MB) of one command. The RSS is GNU time's report of its own child:
    wait4 on a process forked from this one counts this process's memory too (the kernel takes the
    pre-exec image into the high-water mark), which made every figure the benchmark's own size."""
    with tempfile.NamedTemporaryFile("r") as report:
        wrapped = ["/usr/bin/time", "-f", "%M", "-o", report.name] + (["sh", "-c", " ".join(cmd)] if shell else cmd)
        started = time.perf_counter()
        proc = subprocess.run(wrapped, env=env or ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd} failed: {proc.stderr.decode()[-2000:]}")
        return elapsed, int(report.read().split()[-1]) // 1024


def raw_scan(db: Path) -> tuple[int, float]:
    """Entities in the database and the seconds a plain scan of them takes (what verify is measured against)."""
    out = subprocess.run([sys.executable, "-c", "import sys, time; sys.path.insert(0, '.');"
                          "from rem.db import open_db\nwith open_db(sys.argv[1], 'ro') as db:\n"
                          " t = time.perf_counter(); n = sum(1 for _ in db.items('entities'));"
                          " print(n, time.perf_counter() - t)", str(db)],
                         capture_output=True, text=True, check=True, cwd=REPO)
    entities, seconds = out.stdout.split()
    return int(entities), float(seconds)


def save_result(name: str, result) -> None:
    """A benchmark's figures as benchmarks/out/{name}.json, for the README and the next run to compare."""
    out = REPO / "benchmarks" / "out"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))


def target(text: str, met: bool) -> str:
    return f"{text}: " + ("met" if met else "**not met**")


def rem(*args: str, env: dict | None = None) -> tuple[float, int]:
    return timed([sys.executable, "-m", "cli.main", *args], env)


def main() -> None:
    if not shutil.which("zstd") or not os.path.exists("/usr/bin/time"):
        sys.exit("make bench needs the zstd command for the baseline and GNU time for peak memory: "
                 "apt-get install zstd time")
    from tests.parallel import compile_sources

    compile_sources()  # as an installed package is: each timed command must not compile rem's modules
    entities = int(os.environ.get("BENCH_ENTITIES", "450000"))
    dim = int(os.environ.get("BENCH_DIM", "128"))
    work = Path(tempfile.mkdtemp(prefix="rem-bench-"))
    rows: list[tuple[str, str, str]] = []
    try:
        # 1. init throughput
        db = work / "db"
        seconds, rss = rem("--db-path", str(db), "db", "init", "--sample", str(entities), "--embedding-dim", str(dim))
        size = directory_size(db)
        rows.append((f"`rem db init --sample {entities}`", f"{entities / seconds:,.0f} entities/s "
                     f"({seconds:.1f} s, {size / 1e9:.2f} GB, peak RSS {rss} MB)", "30,000 entities/s"))

        # 2. backup / restore vs tar + zstd + aws s3 cp, one moto server for both
        port = free_port()
        moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        endpoint = f"http://127.0.0.1:{port}"
        try:
            wait_http(endpoint + "/moto-api/", 30)
            import boto3

            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
            s3env = {**ENV, "P8_S3_BUCKET": "bench", "P8_S3_ENDPOINT_URL": endpoint}
            ours_b, ours_b_rss = rem("--db-path", str(db), "backup", "create", "--upload", "--name", "bench", env=s3env)
            archive = work / "base.tar.zst"
            tar_s, tar_rss = timed(["tar", "-I", "'zstd -T0 -3'", "-cf", str(archive), "-C", str(db), "."], shell=True)
            cp_s, cp_rss = timed(["aws", "--endpoint-url", endpoint, "s3", "cp", str(archive), "s3://bench/base.tar.zst"])
            base_b = tar_s + cp_s
            rows.append(("backup to S3: ours vs tar+zstd -T0 -3 + aws s3 cp",
                         f"{ours_b:.1f} s vs {base_b:.1f} s (ratio {ours_b / base_b:.2f}); peak RSS {ours_b_rss} MB "
                         f"vs {max(tar_rss, cp_rss)} MB", "ratio <= 1.0, RSS < 300 MB"))

            dl = work / "dl"
            ours_d, ours_d_rss = rem("--db-path", str(db), "backup", "download", "--name", "bench", "--output", str(dl),
                                     env=s3env)
            ours_r, ours_r_rss = rem("backup", "restore", "--source", str(dl / "bench"), "--target",
                                     str(work / "restored"), env=s3env)
            get_s, get_rss = timed(["aws", "--endpoint-url", endpoint, "s3", "cp", "s3://bench/base.tar.zst",
                                    str(work / "fetched.tar.zst")])
            (work / "untarred").mkdir()
            untar_s, untar_rss = timed(["tar", "-I", "zstd", "-xf", str(work / "fetched.tar.zst"), "-C",
                                        str(work / "untarred")])
            ours_restore, base_restore = ours_d + ours_r, get_s + untar_s
            rows.append(("restore from S3: ours (download + verified restore) vs aws s3 cp + tar -I zstd -xf",
                         f"{ours_restore:.1f} s vs {base_restore:.1f} s (ratio {ours_restore / base_restore:.2f}); "
                         f"peak RSS {max(ours_d_rss, ours_r_rss)} MB vs {max(get_rss, untar_rss)} MB",
                         "ratio <= 1.0, RSS < 300 MB"))
        finally:
            moto.terminate()
            moto.wait()

        # 3. point-in-time recovery from RocksDB's own log (its own moto and engine)
        from benchmarks.pitr import main as pitr_bench

        pitr = pitr_bench(int(os.environ.get("BENCH_PITR_WRITES", "1000000")))
        r = pitr["restore"]
        rows.append((f"PITR restore of {r['writes']:,} writes past the base ({r['log_bytes'] / 1e6:.0f} MB of log) "
                     "vs RocksDB's own recovery of the same logs", f"{r['ours_s']:.1f} s vs {r['rocksdb_s']:.1f} s "
                     f"(ratio {r['ratio']:.2f})", "ratio <= 1.2"))
        lag = pitr["lag"]
        rows.append((f"archival lag, {lag['rate']:,} inserts/s for {lag['seconds']:.0f} s, follower every "
                     f"{lag['interval_s']:.0f} s", f"max {lag['max_lag_s']:.2f} s, median {lag['p50_lag_s']:.2f} s",
                     f"<= {lag['interval_s'] + 2:.0f} s"))

        # 3b. the change log and the undo of a burst (their own moto, engine and database)
        from benchmarks.change_log import main as change_log_bench

        log = change_log_bench(int(os.environ.get("BENCH_LOG_CHANGES", "1000000")),
                               int(os.environ.get("BENCH_UNDO_ENTITIES", "660000")),
                               int(os.environ.get("BENCH_UNDO_BURST", "10000")))
        r = log["log"]
        rows.append((f"`rem pitr log` over {r['changes']:,} archived changes, end to end, vs the raw parse of the "
                     "same segments", f"{r['rate']:,.0f} vs {r['raw_rate']:,.0f} changes/s (ratio "
                     f"{r['rate'] / r['raw_rate']:.2f})", ">= 300,000 changes/s"))
        r = log["undo"]
        rows.append((f"`rem pitr undo` of {r['burst']:,} soft deletes, {r['db_bytes'] / 1e9:.2f} GB database, vs a "
                     "tenant point-in-time restore", f"{r['undo_s']:.1f} s vs {r['tenant_pitr_s']:.1f} s (ratio "
                     f"{r['ratio']:.2f}); {r['keys_written']:,} keys, {r['bytes_written'] / 1e6:.1f} MB written",
                     "ratio <= 1.0"))

        # 3c. a snapshot of a live database with its log full (its own engine and database)
        from benchmarks.snapshot import main as snapshot_bench

        snap = snapshot_bench(int(os.environ.get("BENCH_SNAPSHOT_ENTITIES", "450000")))
        rows.append((f"snapshot of a live {snap['database_bytes'] / 1e9:.2f} GB database with "
                     f"{snap['unflushed_log_bytes'] / 1e6:.0f} MB unflushed in the engine's log vs with an empty log",
                     f"{snap['loaded_log_s']:.2f} s vs {snap['empty_log_s']:.2f} s (ratio {snap['ratio']:.2f}; "
                     "medians of 9)", target("ratio <= 2", snap["ratio"] <= 2)))

        # 4. start-up on a ~10 MB database, without and with a Prefect API
        small = work / "small"
        rem("--db-path", str(small), "db", "init", "--sample", "4500")
        local_s, _ = rem("--db-path", str(small), "backup", "create")
        home = work / "prefect-home"
        home.mkdir()
        pport = free_port()
        penv = {**ENV, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false"}
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                                   str(pport)], env=penv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_http(f"http://127.0.0.1:{pport}/api/health", 90)
            served_s, _ = rem("--db-path", str(small), "backup", "create",
                              env={**penv, "PREFECT_API_URL": f"http://127.0.0.1:{pport}/api"})
        finally:
            server.terminate()
            server.wait()
        rows.append(("`rem backup create`, 10 MB database, no Prefect API (in-process)", f"{local_s:.2f} s", "< 3 s"))
        rows.append(("`rem backup create`, 10 MB database, PREFECT_API_URL set (run on the server)",
                     f"{served_s:.2f} s", "appears in the UI"))
        # 5. incremental backups (their own moto and database)
        from benchmarks.incremental import main as incremental_bench

        rows += incremental_bench(int(os.environ.get("BENCH_INC_ENTITIES", "660000")))
        # 6. local backup, restore and verify at two sizes (their own databases)
        from benchmarks.local import main as local_bench

        rows += local_bench([int(n) for n in os.environ.get("BENCH_LOCAL_ENTITIES", "170000,660000").split(",")])
        # 7. client-side encryption's cost, locally and in S3 (its own database and moto)
        from benchmarks.encryption import main as encryption_bench

        enc = encryption_bench(int(os.environ.get("BENCH_ENC_ENTITIES", "660000")))
        for where, sealed in (("local", "key-file"), ("S3", "kms-envelope")):
            for step in ("backup", "restore"):
                ratio = enc[f"{step}_{where}_ratio"]
                rows.append((f"{step}, {where}, {enc['db_bytes'] / 1e9:.2f} GB, {sealed} vs unencrypted",
                             f"{enc[f'{step} {where} {sealed}']:.1f} s vs {enc[f'{step} {where} plain']:.1f} s "
                             f"(ratio {ratio:.2f})", "ratio <= 1.10" + (": met" if ratio <= 1.10 else ": **not met**")))
        # 9. what a backup costs the engine's writes, with and without --rate-limit
        from benchmarks.rate_limit import main as rate_bench

        rl = rate_bench(int(os.environ.get("BENCH_RATE_ENTITIES", "330000")), float(os.environ.get("BENCH_RATE_MB", "20")))
        rows.append((f"engine insert latency (p50 / p99) while `rem backup create` runs, unlimited vs "
                     f"`--rate-limit {rl['rate_mb']:g}` (idle: {rl['idle']['p50_ms']:.2f} / {rl['idle']['p99_ms']:.2f} ms)",
                     f"{rl['unlimited']['p50_ms']:.2f} / {rl['unlimited']['p99_ms']:.2f} ms vs {rl['limited']['p50_ms']:.2f}"
                     f" / {rl['limited']['p99_ms']:.2f} ms (backup {rl['unlimited']['seconds']:.1f} s vs "
                     f"{rl['limited']['seconds']:.1f} s)", "measured (#25)"))
        # 8. a store at scale: 5,000 backups of one database among 50 databases (local store)
        from benchmarks.scale import main as scale_bench

        sc = scale_bench(int(os.environ.get("BENCH_SCALE_BACKUPS", "5000")))
        for store, figures in (("local store", sc), ("bucket (moto's S3)", sc["s3"])):
            where = f"{store}, {figures['backups']:,} backups of one database among {figures['databases']}"
            rows += [(f"`rem backup list`, {where}", f"{figures['list_s']:.2f} s", target("< 2 s", figures["list_s"] < 2)),
                     (f"`rem backup prune --dry-run`, {where}", f"{figures['prune_dry_run_s']:.2f} s",
                      target("< 5 s", figures["prune_dry_run_s"] < 5)),
                     (f"a new incremental backup's overhead from the catalog, {where}",
                      f"{figures['catalog_overhead_s']:.2f} s ({figures['backup_with_many_s']:.2f} s vs "
                      f"{figures['backup_with_one_s']:.2f} s with 1-3 backups; each the best of 3)",
                      target("< 1 s", figures["catalog_overhead_s"] < 1)),
                     (f"the first backup after the 5,000 were copied in behind rem's back (it enters them into the "
                      f"catalog file, once, as after an upgrade), {where}", f"{figures['backup_building_catalog_s']:.2f} s",
                      "measured")]
        # 10. a 10 GB database: each runbook command's time and peak RSS (its own database)
        from benchmarks.large import main as large_bench, rows as large_rows

        rows += large_rows(large_bench(int(os.environ.get("BENCH_LARGE_ENTITIES", "10000000")),
                                       int(os.environ.get("BENCH_LARGE_DIM", "64"))))
        # 11. 200 databases deployed on one Prefect server (its own server)
        from benchmarks.fleet import main as fleet_bench, rows as fleet_rows

        rows += fleet_rows(fleet_bench(int(os.environ.get("BENCH_FLEET_DATABASES", "200"))))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = ["| what | figure | target |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    text = "\n".join(table)
    print(text)
    out = REPO / "benchmarks" / "out"
    out.mkdir(exist_ok=True)
    (out / "latest.md").write_text(text + "\n")
    (out / "latest.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
