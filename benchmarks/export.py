"""`rem export` throughput: Parquet rows written per second against a raw scan of the same entities.

Usage: python -m benchmarks.export DB_PATH TENANT
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rem.db import open_db  # noqa: E402
from rem.export import export_tenant, schema_layouts  # noqa: E402
from rem.format import entity_prefix  # noqa: E402


def main(path: str, tenant: str) -> dict:
    with open_db(path, "ro") as db, tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        raw = sum(1 for _ in db.items("entities", entity_prefix(tenant)))
        raw_rate = raw / (time.perf_counter() - started)
        started = time.perf_counter()
        layouts = schema_layouts(db)
        stats = export_tenant(db, layouts, tenant, {name: Path(tmp) / f"{name}.parquet" for name in layouts})
        rows = sum(s.rows for s in stats.values())
        rate = rows / (time.perf_counter() - started)
    print(f"export {rows:,} rows of {tenant}: {rate:,.0f} rows/s; raw scan {raw_rate:,.0f} entities/s "
          f"(ratio {rate / raw_rate:.2f})")
    return {"rows": rows, "rows_per_s": rate, "raw_per_s": raw_rate}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
