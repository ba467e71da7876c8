"""Local backup, restore and verify against the plain tools, and peak memory at two sizes.

For each database: `rem backup create` (incremental, the default) and `--archive` vs
`tar -I 'zstd -T0 -3' -cf` (and `-2`, ours' default level, for the same work); `rem backup restore`
of each vs `tar -I zstd -xf` (and with `sync` after it: a restore fsyncs before it swaps);
`rem db verify` vs a raw scan of `entities`. Runs alternate, the minimum of BENCH_RUNS (3) counts;
the page cache is flushed (sync) before each.

Usage: python -m benchmarks.local [ENTITIES ...]   (default 170000 660000: about 0.25 and 1 GB)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.run import raw_scan, rem, timed  # noqa: E402
from rem.stats import directory_size  # noqa: E402


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    os.sync()
    return path


def measure(db: Path, work: Path, runs: int) -> dict:
    best: dict[str, tuple[float, int]] = {}

    def keep(what: str, result: tuple[float, int]) -> None:
        if what not in best or result[0] < best[what][0]:
            best[what] = result

    sizes = {}
    for _ in range(runs):
        for layout, extra in (("incremental", []), ("archive", ["--archive"])):
            store = _fresh(work / f"backups-{layout}")
            keep(f"backup {layout}", rem("--db-path", str(db), "backup", "create", "--name", layout, *extra,
                                         env={**os.environ, "P8_BACKUP_DIR": str(store)}))
            sizes[layout] = directory_size(store)
        for level in (3, 2):
            archive = work / f"tar-{level}.tar.zst"
            _fresh(archive)
            keep(f"tar -{level}", timed(["tar", "-I", f"'zstd -T0 -{level}'", "-cf", str(archive), "-C", str(db), "."],
                                        shell=True))
            sizes[f"tar -{level}"] = archive.stat().st_size
        for layout in ("incremental", "archive"):
            source = next((work / f"backups-{layout}").glob(f"*/backups/full/_all/{layout}"))
            keep(f"restore {layout}", rem("backup", "restore", "--source", str(source), "--target",
                                          str(_fresh(work / "restored"))))
        out = _fresh(work / "untarred")
        out.mkdir()
        keep("tar -x", timed(["tar", "-I", "zstd", "-xf", str(work / "tar-3.tar.zst"), "-C", str(out)]))
        out = _fresh(work / "untarred")
        out.mkdir()
        keep("tar -x && sync", timed(["sh", "-c", f"tar -I zstd -xf {work / 'tar-3.tar.zst'} -C {out} && sync"]))
        keep("verify", rem("--db-path", str(db), "db", "verify"))
    entities, raw_s = raw_scan(db)
    return {"db_bytes": directory_size(db), "entities": int(entities), "raw_scan_s": float(raw_s),
            "best": best, "sizes": sizes}


def rows(entities: int, m: dict) -> list[tuple[str, str, str]]:
    b, gb = m["best"], m["db_bytes"] / 1e9
    tar3, tar2 = b["tar -3"][0], b["tar -2"][0]
    out = []
    for layout in ("incremental", "archive"):
        s, rss = b[f"backup {layout}"]
        out.append((f"local backup ({layout}), {gb:.2f} GB: ours vs `tar -I 'zstd -T0 -3'`",
                    f"{s:.2f} s vs {tar3:.2f} s (ratio {s / tar3:.2f}; vs `-2`, our level, {tar2:.2f} s: "
                    f"{s / tar2:.2f}); {m['sizes'][layout] / 1e6:.1f} MB vs {m['sizes']['tar -3'] / 1e6:.1f} MB; "
                    f"peak RSS {rss} MB", "ratio <= 1.0, RSS < 300 MB"))
    untar, synced = b["tar -x"][0], b["tar -x && sync"][0]
    for layout in ("incremental", "archive"):
        s, rss = b[f"restore {layout}"]
        out.append((f"local restore ({layout}), {gb:.2f} GB: ours vs `tar -I zstd -xf`",
                    f"{s:.2f} s vs {untar:.2f} s (ratio {s / untar:.2f}; vs tar then `sync` {synced:.2f} s: "
                    f"{s / synced:.2f}); peak RSS {rss} MB", "ratio <= 1.0, RSS < 300 MB"))
    s, rss = b["verify"]
    out.append((f"`rem db verify`, all checks, {m['entities']:,} entities ({gb:.2f} GB) vs a raw scan of entities",
                f"{m['entities'] / s:,.0f} vs {m['entities'] / m['raw_scan_s']:,.0f} entities/s "
                f"(ratio {m['raw_scan_s'] / s:.2f}); peak RSS {rss} MB", "ratio >= 0.4, RSS < 300 MB"))
    return out


def main(sizes: list[int]) -> list[tuple[str, str, str]]:
    runs = int(os.environ.get("BENCH_RUNS", "3"))
    table = []
    with tempfile.TemporaryDirectory(prefix="rem-bench-local-", dir=os.environ.get("BENCH_DIR")) as tmp:
        for entities in sizes:
            work = Path(tmp) / str(entities)
            work.mkdir()
            db = work / "db"
            rem("--db-path", str(db), "db", "init", "--sample", str(entities))
            table += rows(entities, measure(db, work, runs))
            shutil.rmtree(work, ignore_errors=True)
    for row in table:
        print(" | ".join(row))
    return table


if __name__ == "__main__":
    from tests.parallel import compile_sources

    compile_sources()
    result = main([int(a) for a in sys.argv[1:]] or [170000, 660000])
    Path(__file__).resolve().parent.joinpath("out").mkdir(exist_ok=True)
    Path(__file__).resolve().parent.joinpath("out", "local.json").write_text(json.dumps(result, indent=2))
