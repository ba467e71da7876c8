"""Snapshot time of a live database with ~60 MB unflushed in the engine's log, against the same
database with an empty log (issue 12's target: within 2x; the merge-diff snapshot rescanned every
column family instead). `python -m benchmarks.snapshot [ENTITIES]`.

The engine is the test writer under RocksDB 8.10 (tests/engine), holding its writes in its memtable.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rem.sample import create_sample  # noqa: E402
from rem.snapshot import take_snapshot  # noqa: E402
from rem.stats import directory_size  # noqa: E402
from tests.engine import ENGINE_PYTHON, RUN  # noqa: E402

HOLDER = """
import sys, time
sys.path.insert(0, sys.argv[2])
from writer import Engine
engine = Engine(sys.argv[1])
i = 0
while sum(r.property_int_value("rocksdb.cur-size-active-mem-table") or 0 for r in engine.readers.values()) < 60 << 20:
    engine.insert("acme", "notes", {"key": f"live-{i:08d}", "text": "x" * 900})
    i += 1
print(i, flush=True)
time.sleep(600)
"""


def timed_snapshots(db: Path, runs: int = 9) -> float:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        snap = take_snapshot(db)
        seconds.append(time.perf_counter() - started)
        snap.remove()
    return statistics.median(seconds)


def main(entities: int = 450_000) -> dict:
    work = Path(tempfile.mkdtemp(prefix="rem-snapshot-bench-"))
    try:
        db = work / "db"
        create_sample(db, entities, 3, 1, 128)
        empty = timed_snapshots(db)
        holder = subprocess.Popen([str(ENGINE_PYTHON), "-c", HOLDER, str(db), str(RUN.parent)], stdout=subprocess.PIPE,
                                  text=True)
        try:
            written = int(holder.stdout.readline())
            unflushed = sum(p.stat().st_size for p in db.glob("*.log"))
            loaded = timed_snapshots(db)
        finally:
            holder.kill()
            holder.wait()
        result = {"database_bytes": directory_size(db), "unflushed_log_bytes": unflushed, "writes": written,
                  "empty_log_s": empty, "loaded_log_s": loaded, "ratio": loaded / empty}
        print(f"snapshot of a {directory_size(db) / 1e9:.2f} GB database: {empty:.2f} s with an empty log, "
              f"{loaded:.2f} s with {unflushed / 1e6:.0f} MB unflushed ({written:,} writes held by the engine); "
              f"ratio {loaded / empty:.2f} (target <= 2)")
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 450_000)
