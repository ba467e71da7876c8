"""What a backup costs the engine, with and without `--rate-limit`: the engine (RocksDB 8.10 in its
own process, tests/engine) inserts one entity at a time, and each insert's latency is timed while
nothing else runs, while `rem backup create` runs unlimited, and while it runs at BENCH_RATE_MB
(default 20) MB/s. p50 and p99 of each, and each backup's time.

Usage: python -m benchmarks.rate_limit [ENTITIES] [RATE_MB]   (default 330000: about 0.5 GB; 20)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.run import ENV, rem, save_result  # noqa: E402
from tests.engine import LiveEngine  # noqa: E402


def _inserting(engine: LiveEngine, stop: threading.Event, into: list[float]) -> None:
    i = 0
    while not stop.is_set():
        started = time.perf_counter()
        engine.call("insert", "acme", "resources", {"uri": f"during-{time.time_ns()}-{i}", "content": "x" * 200})
        into.append(time.perf_counter() - started)
        i += 1
        time.sleep(0.002)


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def main(entities: int = 330_000, rate_mb: float = 20.0) -> dict:
    work = Path(tempfile.mkdtemp(prefix="rem-bench-rate-"))
    try:
        db = work / "db"
        rem("--db-path", str(db), "db", "init", "--sample", str(entities))
        engine = LiveEngine(db)
        result: dict = {"entities": entities, "rate_mb": rate_mb}
        try:
            for label, extra in (("idle", None), ("unlimited", []), ("limited", ["--rate-limit", str(rate_mb)])):
                latencies: list[float] = []
                stop = threading.Event()
                writer = threading.Thread(target=_inserting, args=(engine, stop, latencies))
                writer.start()
                started = time.perf_counter()
                if extra is None:
                    time.sleep(5)
                else:
                    store = work / f"store-{label}"
                    proc = subprocess.run([sys.executable, "-m", "cli.main", "--db-path", str(db), "backup", "create",
                                           "--name", label, *extra], env={**ENV, "P8_BACKUP_DIR": str(store)},
                                          cwd=REPO, capture_output=True, text=True)
                    if proc.returncode:
                        raise RuntimeError(proc.stderr)
                seconds = time.perf_counter() - started
                stop.set()
                writer.join()
                result[label] = {"seconds": seconds, "inserts": len(latencies),
                                 "p50_ms": 1000 * _percentile(latencies, 0.50),
                                 "p99_ms": 1000 * _percentile(latencies, 0.99)}
        finally:
            engine.close()
        for label in ("idle", "unlimited", "limited"):
            r = result[label]
            print(f"engine insert latency, {label}{f' ({rate_mb:g} MB/s)' if label == 'limited' else ''}: "
                  f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms over {r['inserts']:,} inserts"
                  + (f"; the backup took {r['seconds']:.1f} s" if label != "idle" else ""), flush=True)
        save_result("rate_limit", result)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 330_000, float(args[1]) if len(args) > 1 else float(os.environ.get(
        "BENCH_RATE_MB", "20")))
