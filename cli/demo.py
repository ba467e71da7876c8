"""`make demo`: the main job on an embedded default, no cloud account needed.

Builds a 100,000-entity sample database under the data directory, backs it up locally, restores
the backup into a new directory and shows the stats of both, printing each command as on-call
would type it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path


def run(*args: str) -> None:
    print(f"\n$ rem {shlex.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "cli.main", *args], check=True)


def run_json(*args: str) -> dict:
    print(f"\n$ rem {shlex.join(args)}", flush=True)
    out = subprocess.run([sys.executable, "-m", "cli.main", *args, "--json"], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)


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
    source = Path(run_json("--db-path", str(db), "backup", "create", "--name", "demo")["location"])
    run("--db-path", str(db), "backup", "list")
    restored = data / "restored-db"
    run("backup", "restore", "--source", str(source), "--target", str(restored))
    run("--db-path", str(db), "db", "stats")
    run("--db-path", str(restored), "db", "stats")
    before = run_json("--db-path", str(db), "db", "stats")
    after = run_json("--db-path", str(restored), "db", "stats")
    keys = lambda stats: {cf: v["keys"] for cf, v in stats["column_families"].items()}  # noqa: E731
    same = (before["entities_total"], keys(before)) == (after["entities_total"], keys(after))
    print(f"\nOriginal {before['entities_total']:,} entities, restored {after['entities_total']:,}; keys per column "
          f"family {'identical' if same else 'DIFFERENT'}.")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
