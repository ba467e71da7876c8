"""Point-in-time recovery from RocksDB's own log, against moto on 127.0.0.1 and a live engine (the
test writer under RocksDB 8.10, tests/engine). `python -m benchmarks.pitr [WRITES] [LAG_SECONDS]`.

1. Restore: a base backup, then WRITES (default 1,000,000) single-put WriteBatches archived by the
   follower; `rem pitr restore` to a point after the last one, end to end (download, checks, base,
   logs placed, RocksDB's recovery and flush, swap), against RocksDB's own recovery of the same
   base and logs opened directly (open read-write, flush, close). Target ratio <= 1.2.
2. Archival lag: the engine inserts 1,000 entities a second for LAG_SECONDS (default 30) while the
   follower ships every second; for each write, the time from its acknowledgement to a manifest
   that holds it. Target: at most one interval plus 2 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.engine import ENGINE_PYTHON, RUN  # noqa: E402
from tests.helpers import free_port, wait_http  # noqa: E402

os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                  PREFECT_SERVER_ANALYTICS_ENABLED="false")
os.environ.pop("PREFECT_API_URL", None)
INTERVAL = 1.0

PUTS = """
import json, sys, time
sys.path.insert(0, sys.argv[2])
from writer import Engine, now_rfc3339
engine = Engine(sys.argv[1])
for i in range(int(sys.argv[3])):
    engine._put("entities", b"entity:bench:%012d" % i, json.dumps({"id": i, "modified_at": now_rfc3339()}).encode())
print(engine.db.latest_sequence_number(), flush=True)
engine.close()
"""

STEADY = """
import sys, time
sys.path.insert(0, sys.argv[2])
from writer import Engine
engine = Engine(sys.argv[1])
rate, seconds = int(sys.argv[3]), float(sys.argv[4])
started = time.time()
i = 0
while time.time() - started < seconds:
    due = started + i / rate
    if due > time.time():
        time.sleep(due - time.time())
    engine.insert("acme", "resources", {"uri": f"steady-{i:08d}", "content": "x" * 200})
    i += 1
    if i % 50 == 0:
        print(engine.db.latest_sequence_number(), time.time(), flush=True)
print("done", flush=True)
engine.close()
"""


def cli(db: Path, env: dict, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "cli.main", "--db-path", str(db), *args, "--json"], env=env,
                          cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"rem {' '.join(args)}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def follower(db: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli.main", "--db-path", str(db), "pitr", "archive", "--follow",
                             "--interval", str(INTERVAL), "--json"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen) -> dict:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(err[-2000:])
    return json.loads(out)


def manifest(s3, bucket: str, db: Path) -> dict:
    from rem.identity import derived_name

    try:
        key = f"{derived_name(db)}/backups/wal/_all/manifest.json"
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return {}


def wait_for(s3, bucket: str, db: Path, sequence: int, after: str = "") -> None:
    while True:
        m = manifest(s3, bucket, db)
        if (m.get("last_archived_sequence") or 0) >= sequence and (m.get("confirmed_timestamp") or "") > after:
            return
        time.sleep(0.1)


def engine_db(db: Path) -> None:
    """A small engine database: the base."""
    from tests.engine import engine_write

    engine_write(db, [["insert", "acme", "resources", {"uri": f"base-{i}", "content": "b"}] for i in range(100)])


def restore_benchmark(work: Path, env: dict, s3, bucket: str, writes: int) -> dict:
    import zstandard

    from rem.db import open_db
    from rem.pitr import Piece, place_logs

    db = work / "db"
    engine_db(db)
    # The archive layout: the direct recovery below extracts it with tar (an incremental base's SSTs
    # are separate objects); point-in-time restore reads either.
    base = cli(db, env, "backup", "create", "--upload", "--archive")
    follow = follower(db, env)
    writer = subprocess.run([str(ENGINE_PYTHON), "-c", PUTS, str(db), str(RUN.parent), str(writes)], check=True,
                            capture_output=True, text=True)
    last = int(writer.stdout.split()[0])
    after = (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat(timespec="microseconds")[:-6] + "Z"
    time.sleep(1.2)
    wait_for(s3, bucket, db, last, after)
    stop(follow)

    started = time.perf_counter()
    result = cli(db, env, "pitr", "restore", "--timestamp", after, "--output", str(work / "ours"))
    ours = time.perf_counter() - started
    assert result["last_sequence"] == last, result

    # RocksDB's own recovery of the same base and the same logs, opened directly.
    direct = work / "direct"
    direct.mkdir()
    cli(db, env, "backup", "download", "--name", base["name"], "--output", str(work / "base"))
    subprocess.run(["tar", "-I", "zstd", "-xf", str(work / "base" / base["name"] / "rocksdb.tar.zst"), "-C",
                    str(direct)], check=True)
    db_dir = direct / "rocksdb" if (direct / "rocksdb").is_dir() else direct
    pieces = []
    for seg in manifest(s3, bucket, db)["wal_segments"]:
        raw = s3.get_object(Bucket=bucket, Key=seg["key"])["Body"].read()
        pieces.append(Piece.decode(zstandard.ZstdDecompressor().decompressobj().decompress(raw)))
    place_logs(db_dir, pieces, base["last_sequence"], 2**62)
    log_bytes = sum(p.stat().st_size for p in db_dir.glob("*.log"))
    started = time.perf_counter()
    with open_db(db_dir, "rw") as handle:
        handle.flush_all()
    rocksdb = time.perf_counter() - started
    return {"writes": writes, "log_bytes": log_bytes, "segments": result["segments"], "ours_s": ours,
            "rocksdb_s": rocksdb, "ratio": ours / rocksdb}


def lag_benchmark(work: Path, env: dict, s3, bucket: str, seconds: float, rate: int = 1000) -> dict:
    db = work / "lagdb"
    engine_db(db)
    follow = follower(db, env)
    wait_for(s3, bucket, db, 1)
    writer = subprocess.Popen([str(ENGINE_PYTHON), "-c", STEADY, str(db), str(RUN.parent), str(rate), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    written: list[tuple[int, float]] = []
    archived: list[tuple[int, float]] = []

    def read_writer() -> None:
        for line in writer.stdout:
            if line.strip() != "done":
                seq, at = line.split()
                written.append((int(seq), float(at)))

    reader = threading.Thread(target=read_writer, daemon=True)
    reader.start()
    while reader.is_alive() or not written or archived[-1][0] < written[-1][0]:
        archived.append(((manifest(s3, bucket, db).get("last_archived_sequence") or 0), time.time()))
        time.sleep(0.05)
    writer.wait()
    stop(follow)
    lags = []
    for seq, at in written:
        shipped = next(t for s, t in archived if s >= seq)
        lags.append(max(0.0, shipped - at))
    lags.sort()
    return {"rate": rate, "seconds": seconds, "writes": len(written) * 50, "max_lag_s": lags[-1],
            "p50_lag_s": lags[len(lags) // 2], "interval_s": INTERVAL}


@contextmanager
def moto_buckets(prefix: str):
    """A moto server on 127.0.0.1 and a work directory; yields (work, s3, env_for(name)): a new
    bucket per name and the environment the commands use it with."""
    import boto3

    port = free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("BENCH_DIR")))
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_http(endpoint + "/moto-api/", 30, moto)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

        def env_for(name: str) -> tuple[str, dict]:
            bucket = f"{prefix.strip('-')}-{name}"
            s3.create_bucket(Bucket=bucket)
            return bucket, {**os.environ, "P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": endpoint,
                            "P8_BACKUP_DIR": str(work / f"backups-{name}")}

        yield work, s3, env_for
    finally:
        moto.terminate()
        moto.wait()
        shutil.rmtree(work, ignore_errors=True)


def main(writes: int = 1_000_000, lag_seconds: float = 30) -> dict:
    results = {}
    with moto_buckets("rem-pitr-bench-") as (work, s3, env_for):
        for name in ("restore", "lag"):
            bucket, env = env_for(name)
            if name == "restore":
                results[name] = r = restore_benchmark(work, env, s3, bucket, writes)
                print(f"PITR restore of {r['writes']:,} writes ({r['log_bytes'] / 1e6:.0f} MB of log, "
                      f"{r['segments']} segments): {r['ours_s']:.1f} s end to end vs RocksDB's own recovery of the "
                      f"same logs {r['rocksdb_s']:.1f} s: ratio {r['ratio']:.2f} (target <= 1.2)", flush=True)
            else:
                results[name] = r = lag_benchmark(work, env, s3, bucket, lag_seconds)
                print(f"archival lag at {r['rate']:,} inserts/s for {r['seconds']:.0f} s, follower every "
                      f"{r['interval_s']:.0f} s: max {r['max_lag_s']:.2f} s, median {r['p50_lag_s']:.2f} s "
                      f"(target <= {r['interval_s'] + 2:.0f} s)", flush=True)
    return results


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000, float(sys.argv[2]) if len(sys.argv) > 2 else 30)
