"""`make demo`: the main job on an embedded default, no cloud account needed.

Builds a 100,000-entity sample database under the data directory and runs the runbook's
commands against it, printing each command as on-call would type it.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path


def run(*args: str) -> None:
    print(f"\n$ rem {shlex.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "cli.main", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--entities", type=int, default=100_000)
    args = parser.parse_args()
    data = Path(args.data_dir)
    db = data / "rem-db"
    for own in (db, data / "restored-db", data / "backups"):  # the demo's own output from a previous run
        shutil.rmtree(own, ignore_errors=True)
    data.mkdir(parents=True, exist_ok=True)
    run("--db-path", str(db), "db", "init", "--sample", str(args.entities), "--tenants", "3")
    run("--db-path", str(db), "db", "stats")


if __name__ == "__main__":
    main()
