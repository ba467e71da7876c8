"""`rem pitr log` and `rem pitr undo` at scale, against moto on 127.0.0.1 and a live engine (the test
writer under RocksDB 8.10, tests/engine). `python -m benchmarks.change_log [CHANGES] [ENTITIES] [BURST]`.

1. Log: a base backup, then engine inserts (an entity write and a key row each: two changes) until
   CHANGES (default 1,000,000) changes are archived by the follower; `rem pitr log` over all of them,
   end to end (segments and base fetched, every write decoded against the value before it), against
   the raw parse of the same segments (RocksDB's log records and WriteBatches, nothing decoded).
   Target: >= 300,000 changes/s.
2. Undo: `rem db init --sample ENTITIES` (default 660,000: about 1 GB), a base backup, then the
   engine soft-deletes BURST (default 10,000) entities of one tenant and writes elsewhere after;
   `rem pitr undo` of the burst vs `rem pitr restore --tenant` of that tenant to the burst's start.
   Target ratio <= 1.0; the bytes the undo writes are printed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.pitr import cli, engine_db, follower, manifest, moto_buckets, stop, wait_for  # noqa: E402
from benchmarks.run import save_result  # noqa: E402
from tests.engine import ENGINE_PYTHON, RUN  # noqa: E402

INSERTS = """
import sys
sys.path.insert(0, sys.argv[2])
from writer import Engine
engine = Engine(sys.argv[1])
for i in range(int(sys.argv[3])):
    engine.insert("acme", "resources", {"uri": f"log-{i:09d}", "content": "x" * 100})
print(engine.db.latest_sequence_number(), flush=True)
engine.close()
"""

BURST = """
import json, sys
sys.path.insert(0, sys.argv[2])
from writer import Engine
engine = Engine(sys.argv[1])
tenant, count = sys.argv[3], int(sys.argv[4])
ids = []
it = engine.db.get_column_family("entities").keys(from_key=f"entity:{tenant}:".encode())
for key in it:
    if not key.startswith(f"entity:{tenant}:".encode()):
        break
    value = json.loads(engine.db.get_column_family("entities")[key])
    if value["deleted_at"] is None and value["entity_type"] != "schemas":
        ids.append(key.decode().split(":")[2])
    if len(ids) == count:
        break
del it
print(json.dumps({"mode": sys.argv[5]}), flush=True)
if sys.argv[5] == "burst":
    for entity in ids:
        engine.delete(tenant, entity)
else:
    for i in range(200):
        engine.insert(tenant, "resources", {"uri": f"after-{i}", "content": "good"})
print(engine.db.latest_sequence_number(), flush=True)
engine.close()
"""


def instant() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def log_benchmark(work: Path, env: dict, s3, bucket: str, changes: int) -> dict:
    import zstandard

    from rem.pitr import Piece
    from rem.rocksdb_log import parse_write_batch, read_log

    db = work / "logdb"
    engine_db(db)
    cli(db, env, "backup", "create", "--upload")
    start = instant()
    follow = follower(db, env)
    writer = subprocess.run([str(ENGINE_PYTHON), "-c", INSERTS, str(db), str(RUN.parent), str(changes // 2)],
                            check=True, capture_output=True, text=True)
    last = int(writer.stdout.split()[0])
    time.sleep(1.2)
    end = instant()
    wait_for(s3, bucket, db, last, end)
    stop(follow)
    started = time.perf_counter()
    result = cli(db, env, "pitr", "log", "--from", start, "--to", end)
    ours = time.perf_counter() - started
    # The ceiling: the same segments' log records and WriteBatches parsed, nothing else.
    pieces = [Piece.decode(zstandard.ZstdDecompressor().decompressobj().decompress(
        s3.get_object(Bucket=bucket, Key=seg["key"])["Body"].read())) for seg in manifest(s3, bucket, db)["wal_segments"]]
    started = time.perf_counter()
    parsed = 0
    for piece in pieces:
        lead = piece.start % (32 * 1024)
        for record in read_log(bytes(lead) + piece.data, start=lead).records:
            parsed += parse_write_batch(record.payload).count
    raw = time.perf_counter() - started
    return {"changes": result["changes_total"], "parsed": parsed, "ours_s": ours, "raw_s": raw,
            "rate": result["changes_total"] / ours, "raw_rate": parsed / raw}


def undo_benchmark(work: Path, env: dict, s3, bucket: str, entities: int, burst: int) -> dict:
    db = work / "undodb"
    subprocess.run([sys.executable, "-m", "cli.main", "--db-path", str(db), "db", "init", "--sample", str(entities)],
                   cwd=REPO, env=env, check=True, capture_output=True)
    from rem.sample import tenant_names

    tenant = tenant_names(3)[0]
    cli(db, env, "backup", "create", "--upload")
    follow = follower(db, env)
    time.sleep(1.5)
    start = instant()
    for mode in ("burst", "after"):
        out = subprocess.run([str(ENGINE_PYTHON), "-c", BURST, str(db), str(RUN.parent), tenant, str(burst), mode],
                             check=True, capture_output=True, text=True).stdout.split("\n")
        last = int(out[1])
        if mode == "burst":
            time.sleep(0.05)
            end = instant()
            time.sleep(0.05)
    time.sleep(1.2)
    confirmed = instant()
    wait_for(s3, bucket, db, last, confirmed)
    stop(follow)
    started = time.perf_counter()
    restore = cli(db, env, "pitr", "restore", "--timestamp", start, "--tenant", tenant, "--output", str(work / "t"))
    tenant_pitr = time.perf_counter() - started
    started = time.perf_counter()
    undo = cli(db, env, "pitr", "undo", "--from", start, "--to", end, "--tenant", tenant)
    ours = time.perf_counter() - started
    assert undo["to_write"] >= burst, undo  # every soft delete taken back (its entity row at least)
    return {"entities": entities, "burst": burst, "db_bytes": sum(p.stat().st_size for p in db.iterdir()),
            "keys_written": undo["to_write"], "bytes_written": undo["bytes_written"], "undo_s": ours,
            "tenant_pitr_s": tenant_pitr, "ratio": ours / tenant_pitr, "replayed": restore["replayed_batches"]}


def main(changes: int = 1_000_000, entities: int = 660_000, burst: int = 10_000) -> dict:
    results = {}
    with moto_buckets("rem-changelog-bench-") as (work, s3, env_for):
        if changes:
            bucket, env = env_for("log")
            results["log"] = r = log_benchmark(work, env, s3, bucket, changes)
            print(f"`rem pitr log` over {r['changes']:,} archived changes: {r['ours_s']:.1f} s end to end, "
                  f"{r['rate']:,.0f} changes/s (target >= 300,000) vs the raw parse of the same segments "
                  f"{r['raw_rate']:,.0f} changes/s: ratio {r['rate'] / r['raw_rate']:.2f}", flush=True)
        bucket, env = env_for("undo")
        results["undo"] = r = undo_benchmark(work, env, s3, bucket, entities, burst)
        print(f"`rem pitr undo` of {r['burst']:,} soft deletes in a {r['db_bytes'] / 1e9:.2f} GB database: "
              f"{r['undo_s']:.1f} s vs a tenant point-in-time restore {r['tenant_pitr_s']:.1f} s: ratio "
              f"{r['ratio']:.2f} (target <= 1.0); {r['keys_written']:,} keys, {r['bytes_written']:,} bytes written",
              flush=True)
    save_result("change_log", results)
    return results


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main(*args)
