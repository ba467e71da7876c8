"""`make test`: the suite as three pytest processes at once on the machine's two cores.

Each process has its own session fixtures (moto, samples) and its own basetemp, and chooses its
tests at collection (REM_TEST_SHARD, read by conftest.py):
- "prefect": every test that needs the Prefect server (the `prefect_api` fixture, directly or
  through another fixture), so the suite starts one server, not one per process. Those tests spend
  much of their time waiting on the server, its workers and its automations: the other two
  processes use that time.
- "first": the rest of the files named in FIRST (about half of what is left, by time).
- "rest": everything else, so a new test file always runs.
Plain processes rather than pytest-xdist: a test that forks a multiprocessing pool (sample, verify)
is as safe as in a serial run, with no execnet threads in the process to hold a lock across the fork.
`python -m pytest` still runs everything in one process.
"""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# Seconds each file's tests without the Prefect server took with three shards (2026-12-07):
# pitr 167, hostile 138, backup 96, incremental 55, fleet 48, keep 30 and object_lock about 20 of
# about 1000. object_lock moved here when two fresh-clone runs ended with "rest" alone for 35-45 s
# (prefect 563-566 s, first 561-575 s, rest 606-610 s), one core idle.
FIRST = ["test_pitr.py", "test_hostile.py", "test_backup.py", "test_incremental.py", "test_fleet.py", "test_keep.py",
         "test_object_lock.py"]
SHARDS = ["prefect", "first", "rest"]


def shard_of(fixturenames: list[str], filename: str) -> str:
    if "prefect_api" in fixturenames:
        return "prefect"
    return "first" if filename in FIRST else "rest"


def compile_sources() -> None:
    """Byte-compile the project once, as installing a package does. With PYTHONDONTWRITEBYTECODE set
    (it is on this project's development machines) nothing caches a compiled module, so each of the
    suite's 600-odd command-line runs (and each engine writer) compiled the modules it imports from
    source again, about 60 ms of CPU a run, and the benchmarks timed that compile too."""
    for package in ("rem", "cli", "runtime", "flows", "tasks", "blocks", "deployments", "tests"):
        compileall.compile_dir(TESTS.parent / package, quiet=1)


def main(extra: list[str]) -> int:
    started = time.monotonic()
    compile_sources()
    with tempfile.TemporaryDirectory(prefix="rem-tests-") as tmp:
        runs = []
        for name in SHARDS:
            log = open(Path(tmp) / f"shard-{name}.log", "w+")
            proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                     f"--basetemp={tmp}/shard-{name}", str(TESTS), *extra],
                                    stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "REM_TEST_SHARD": name})
            runs.append((name, proc, log))
        codes = []
        for name, proc, log in runs:
            codes.append(proc.wait())
            log.seek(0)
            print(f"===== shard {name} (exit {codes[-1]}) =====", flush=True)
            sys.stdout.write(log.read())
            log.close()
    failed = [name for (name, _, _), code in zip(runs, codes) if code]
    print(f"===== {len(runs)} shards in {time.monotonic() - started:.0f} s: "
          f"{'shard ' + ', '.join(failed) + ' failed' if failed else 'all passed'} =====")
    return max(codes)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
