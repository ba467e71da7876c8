"""`make test`: the suite as two pytest processes at once, one per core, split by file.

Each process has its own session fixtures (moto, a Prefect server, samples) and its own basetemp.
Plain processes rather than pytest-xdist: a test that forks a multiprocessing pool (sample, verify)
is as safe as in a serial run, with no execnet threads in the process to hold a lock across the fork.
The first shard is named (the slowest files, about half the time); every other file is in the second,
so a new test file always runs. `python -m pytest` still runs everything in one process.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# Seconds each took alone (pytest --store-durations, 2026-12-04): 117 + 64 + 43 + 22 + 20 + 15 + 6 of
# 568, then test_keep and test_object_lock (about 35 s together) when #24 added 60 s to the second.
FIRST = ["test_deployments.py", "test_pitr.py", "test_backup.py", "test_fleet.py", "test_incremental.py",
         "test_operator.py", "test_verify.py", "test_keep.py", "test_object_lock.py"]


def shards() -> list[list[str]]:
    first = [str(TESTS / name) for name in FIRST]
    return [first, [str(TESTS), *(f"--ignore={path}" for path in first)]]


def main(extra: list[str]) -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rem-tests-") as tmp:
        runs = []
        for n, args in enumerate(shards(), 1):
            log = open(Path(tmp) / f"shard-{n}.log", "w+")
            proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                     f"--basetemp={tmp}/shard-{n}", *args, *extra],
                                    stdout=log, stderr=subprocess.STDOUT)
            runs.append((n, proc, log))
        codes = []
        for n, proc, log in runs:
            codes.append(proc.wait())
            log.seek(0)
            print(f"===== shard {n} of {len(runs)} (exit {codes[-1]}) =====", flush=True)
            sys.stdout.write(log.read())
            log.close()
    failed = [n for n, code in enumerate(codes, 1) if code]
    print(f"===== {len(runs)} shards in {time.monotonic() - started:.0f} s: "
          f"{'shard ' + ', '.join(map(str, failed)) + ' failed' if failed else 'all passed'} =====")
    return max(codes)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
