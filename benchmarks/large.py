"""A database of about 10 GB (BENCH_LARGE_ENTITIES, 10,000,000 entities of BENCH_LARGE_DIM, 64,
dimensions): each runbook command's time and peak RSS, against the plain tool where there is one.

`rem db init` vs its own target (30,000 entities/s); `rem backup create` (local, incremental) vs
`tar -I 'zstd -T0 -3' -cf`; `rem backup restore` vs `tar -I zstd -xf`; `rem db verify` vs a raw
scan of `entities` (and its memory: flat, under 300 MB); `rem db stats`; `rem export` of one tenant.
One run each (a run of everything takes about half an hour on 2 cores).

Usage: python -m benchmarks.large [ENTITIES]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.run import raw_scan, rem, save_result, target, timed  # noqa: E402
from rem.stats import directory_size  # noqa: E402

RSS_TARGET_MB = 300


def main(entities: int, dim: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="rem-bench-large-", dir=os.environ.get("BENCH_DIR")) as tmp:
        work = Path(tmp)
        db, store = work / "db", work / "backups"
        env = {**os.environ, "P8_BACKUP_DIR": str(store)}
        m: dict = {"entities": entities, "dim": dim}
        m["init"] = rem("--db-path", str(db), "db", "init", "--sample", str(entities), "--embedding-dim", str(dim))
        m["db_bytes"] = directory_size(db)
        m["backup"] = rem("--db-path", str(db), "backup", "create", "--name", "large", env=env)
        m["backup_bytes"] = directory_size(store)
        archive = work / "db.tar.zst"
        m["tar"] = timed(["tar", "-I", "'zstd -T0 -3'", "-cf", str(archive), "-C", str(db), "."], shell=True)
        m["tar_bytes"] = archive.stat().st_size
        source = next(store.glob("*/backups/full/_all/large"))
        m["restore"] = rem("backup", "restore", "--source", str(source), "--target", str(work / "restored"), env=env)
        shutil.rmtree(work / "restored")
        (work / "untarred").mkdir()
        m["untar"] = timed(["tar", "-I", "zstd", "-xf", str(archive), "-C", str(work / "untarred")])
        shutil.rmtree(work / "untarred")
        archive.unlink()
        m["verify"] = rem("--db-path", str(db), "db", "verify")
        m["scanned"], m["raw_scan_s"] = raw_scan(db)
        m["stats"] = rem("--db-path", str(db), "db", "stats")
        m["export"] = rem("--db-path", str(db), "export", "--tenant", "acme", "--output", str(work / "export"))
        m["export_bytes"] = directory_size(work / "export")
    save_result("large", m)
    return m


def rows(m: dict) -> list[tuple[str, str, str]]:
    gb = m["db_bytes"] / 1e9
    where = f"{gb:.1f} GB, {m['entities']:,} entities"

    def rss(step: str) -> str:
        mb = m[step][1]
        return f"peak RSS {mb} MB" + ("" if mb < RSS_TARGET_MB else " (**over 300 MB**)")

    init_rate = m["entities"] / m["init"][0]
    out = [(f"`rem db init --sample {m['entities']:,} --embedding-dim {m['dim']}` ({gb:.1f} GB)",
            f"{init_rate:,.0f} entities/s ({m['init'][0]:.0f} s); {rss('init')}",
            target(">= 30,000 entities/s", init_rate >= 30_000))]
    for step, tool, tool_step in (("backup", "`tar -I 'zstd -T0 -3' -cf`", "tar"), ("restore", "`tar -I zstd -xf`", "untar")):
        s, t = m[step][0], m[tool_step][0]
        out.append((f"`rem backup {'create' if step == 'backup' else 'restore'}` (local, incremental), {where}, vs {tool}",
                    f"{s:.0f} s vs {t:.0f} s (ratio {s / t:.2f}); {rss(step)}", "ratio <= 1.0, RSS < 300 MB"))
    ratio = m["raw_scan_s"] / m["verify"][0]
    out.append((f"`rem db verify`, all checks, {where}, vs a raw scan of entities",
                f"{m['verify'][0]:.0f} s vs {m['raw_scan_s']:.0f} s (ratio {ratio:.2f}); {rss('verify')}",
                target("ratio >= 0.4", ratio >= 0.4) + "; RSS < 300 MB"))
    out.append((f"`rem db stats`, {where}", f"{m['stats'][0]:.1f} s; {rss('stats')}", "RSS < 300 MB"))
    out.append((f"`rem export --tenant acme` (a third of the entities), {where}",
                f"{m['export'][0]:.0f} s, {m['export_bytes'] / 1e9:.2f} GB of Parquet; {rss('export')}", "RSS < 300 MB"))
    return out


if __name__ == "__main__":
    measured = main(int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("BENCH_LARGE_ENTITIES", "10000000")),
                    int(os.environ.get("BENCH_LARGE_DIM", "64")))
    for row in rows(measured):
        print(" | ".join(row))
