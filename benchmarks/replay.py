"""Replay speed: `replay_entries` (JSON lines -> the engine's semantics -> write batches) against
writing exactly the rows it produces with raw rocksdict WriteBatches, on the same data, in one run.

Usage: python -m benchmarks.replay [ENTITIES]   (default 100000)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from rocksdict import WriteBatch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rem.db import init_db, open_db  # noqa: E402
from rem.sample import create_sample  # noqa: E402
from tasks.pitr import replay_entries  # noqa: E402

FAR_FUTURE = datetime(9999, 1, 1, tzinfo=timezone.utc)


def main(entities: int = 100_000) -> dict:
    work = Path(tempfile.mkdtemp(prefix="rem-replay-bench-"))
    try:
        source = work / "source"
        create_sample(source, entities, 3, 1, 64, replication="primary")  # a primary logs its writes
        with open_db(source, "ro") as db:
            lines = [v for _, v in db.items("wal")]
            rows = {cf: list(db.items(cf)) for cf in db.cf_names if cf not in ("default", "embeddings", "keys",
                                                                              "bm25_index")}
        base_seq = 5  # a base backup that holds the first five entries
        ours_db = work / "ours"
        init_db(ours_db).close()
        replay_entries(ours_db, lines[:base_seq], 0, FAR_FUTURE)
        started = time.perf_counter()
        report = replay_entries(ours_db, lines[base_seq:], base_seq, FAR_FUTURE)
        ours = time.perf_counter() - started

        raw_db = work / "raw"
        init_db(raw_db).close()
        with open_db(raw_db, "rw") as db:
            handles = {cf: db.handle(cf) for cf in rows}
            started = time.perf_counter()
            batch, count = WriteBatch(raw_mode=True), 0
            for cf, items in rows.items():
                for key, value in items:
                    batch.put(key, value, handles[cf])
                    count += 1
                    if count % 10_000 == 0:
                        db.write(batch)
                        batch = WriteBatch(raw_mode=True)
            db.write(batch)
            db.flush_all()
            raw = time.perf_counter() - started
        n = report.applied
        result = {"entries": n, "ours_entries_per_s": n / ours, "raw_entries_per_s": n / raw, "ratio": raw / ours}
        print(f"replay {n:,} entries: ours {n / ours:,.0f}/s ({ours:.1f} s), raw WriteBatch of the same rows "
              f"{n / raw:,.0f}/s ({raw:.1f} s), ratio {raw / ours:.2f}")
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)


LAG_WRITER = """
import sys, time
from rem.db import open_db
from rem.writer import RemWriter
db = open_db(sys.argv[1], "rw")
w = RemWriter(db, replication="primary")
rate, seconds = int(sys.argv[2]), float(sys.argv[3])
start = time.time(); i = 0
while time.time() - start < seconds:
    w.insert("acme", "notes", {"key": f"lag-{i:08d}", "text": "steady"})
    i += 1
    time.sleep(max(0.0, start + i / rate - time.time()))
print(i, flush=True)
"""


def pitr_end_to_end(endpoint: str, entities: int = 100_000, rate: int = 200, seconds: float = 20.0) -> list[str]:
    """`rem pitr restore` to a point `entities` entries past the base, and archival lag under load."""
    import json
    import os
    import subprocess

    import boto3

    from rem.writer import RemWriter

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="pitr-bench")
    env = {**os.environ, "P8_S3_BUCKET": "pitr-bench", "P8_S3_ENDPOINT_URL": endpoint}
    work = Path(tempfile.mkdtemp(prefix="rem-pitr-bench-"))
    lines = []
    try:
        db_path = work / "db"
        create_sample(db_path, 0, 1, 1, 16, replication="primary")
        rem = lambda *a: subprocess.run([sys.executable, "-m", "cli.main", "--db-path", str(db_path), *a, "--json"],  # noqa: E731
                                        env=env, cwd=REPO, check=True, capture_output=True, text=True).stdout
        json.loads(rem("backup", "create", "--upload"))
        with open_db(db_path, "rw") as db:
            w = RemWriter(db, replication="primary")
            for start in range(0, entities, 5000):
                with w.batch():
                    for i in range(start, min(entities, start + 5000)):
                        w.insert("acme", "articles", {"uri": f"u:{i}", "title": "t", "status": "draft"})
            db.flush_all()
        archived = json.loads(rem("pitr", "archive"))
        started = time.perf_counter()
        out = json.loads(rem("pitr", "restore", "--timestamp", archived["last_archived_timestamp"], "--output",
                             str(work / "out")))
        seconds_restore = time.perf_counter() - started
        lines.append(f"| `rem pitr restore` to a point {out['replayed_entries']:,} entries past the base "
                     f"({len(archived['segments'])} segments) | {seconds_restore:.1f} s "
                     f"({out['replayed_entries'] / seconds_restore:,.0f} entries/s end to end) | |")

        writer = subprocess.Popen([sys.executable, "-c", LAG_WRITER, str(db_path), str(rate), str(seconds)],
                                  cwd=REPO, stdout=subprocess.PIPE, text=True)
        lags = []
        deadline = time.time() + seconds
        while time.time() < deadline:
            time.sleep(1.0)
            rem("pitr", "archive")
            status = json.loads(rem("pitr", "status"))
            lags.append((status["lag_entries"], status["lag_seconds"] or 0.0))
        written = int(writer.stdout.readline())
        writer.wait()
        lines.append(f"| archival lag, writer at {rate} entries/s for {seconds:.0f} s, a pass every ~1 s | "
                     f"max {max(l[0] for l in lags)} entries behind, median {sorted(l[0] for l in lags)[len(lags) // 2]};"
                     f" {written:,} written | < 1 h lag (alert threshold) |")
        return lines
    finally:
        shutil.rmtree(work, ignore_errors=True)
