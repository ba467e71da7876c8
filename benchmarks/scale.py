"""A store at scale: 5,000 backups of one database beside 49 other databases (10 backups each),
in a local store: `rem backup list` (target < 2 s), `rem backup prune --dry-run` (< 5 s) and the
catalog's overhead on a new incremental backup (its time with 5,000 backups in the store minus its
time with one; target < 1 s). The 5,000 are copies of one real backup's records under new names,
an hour apart, all naming the same shared SSTs (what a year of hourly backups of a quiet database
looks like to the catalog).

Usage: python -m benchmarks.scale [BACKUPS] [DATABASES]   (default 5000 50)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.run import ENV, rem, save_result  # noqa: E402


def copies(folder: Path, count: int, start: datetime) -> None:
    """count copies of a backup folder beside it, named and timed an hour apart before start."""
    meta = json.loads((folder / "metadata.json").read_text())
    for i in range(count):
        moment = start - timedelta(hours=i + 1)
        name = moment.strftime("%Y-%m-%dT%H%M%SZ")
        copy = folder.parent / name
        copy.mkdir()
        for f in folder.iterdir():
            if f.name != "metadata.json":
                (copy / f.name).hardlink_to(f)
        (copy / "metadata.json").write_text(json.dumps({**meta, "name": name, "timestamp": moment.isoformat(
            timespec="seconds").replace("+00:00", "Z")}))


def main(backups: int = 5000, databases: int = 50) -> dict:
    work = Path(tempfile.mkdtemp(prefix="rem-bench-scale-"))
    try:
        db, store = work / "db", work / "store"
        env = {**ENV, "P8_BACKUP_DIR": str(store), "P8_DB_NAME": "main"}
        rem("--db-path", str(db), "db", "init", "--sample", "20000")
        rem("--db-path", str(db), "backup", "create", "--name", "seed", env=env)
        one, _ = rem("--db-path", str(db), "backup", "create", "--name", "with-one", env=env)
        seed = store / "main" / "backups" / "full" / "_all" / "seed"
        copies(seed, backups - 2, datetime.now(timezone.utc))
        for n in range(databases - 1):
            other = store / f"other-{n:02d}"
            shutil.copytree(store / "main", other, copy_function=lambda s, d: Path(d).hardlink_to(s))
            for folder in sorted((other / "backups" / "full" / "_all").iterdir())[10:]:
                shutil.rmtree(folder)
            identity = json.loads((other / "database.json").read_text())
            (other / "database.json").write_text(json.dumps({**identity, "name": other.name}))
        started = time.perf_counter()
        listed = json.loads(__import__("subprocess").run(
            [sys.executable, "-m", "cli.main", "--db-path", str(db), "backup", "list", "--json"], env=env,
            capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent).stdout)
        list_s = time.perf_counter() - started
        assert len(listed) == backups, len(listed)
        prune_s, _ = rem("--db-path", str(db), "backup", "prune", "--dry-run", env=env)
        many, _ = rem("--db-path", str(db), "backup", "create", "--name", "with-many", env=env)
        result = {"backups": backups, "databases": databases, "list_s": list_s, "prune_dry_run_s": prune_s,
                  "backup_with_one_s": one, "backup_with_many_s": many, "catalog_overhead_s": many - one}
        print(f"store with {backups:,} backups of one database among {databases}: `rem backup list` {list_s:.2f} s "
              f"(target < 2 s), `rem backup prune --dry-run` {prune_s:.2f} s (< 5 s), a new incremental backup "
              f"{many:.2f} s vs {one:.2f} s with one backup: catalog overhead {many - one:.2f} s (< 1 s)", flush=True)
        save_result("scale", result)
        return result
    finally:
        if os.environ.get("BENCH_KEEP"):
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
