"""`rem db verify` throughput: entities checked per second against a raw scan of the same data.

Usage: python -m benchmarks.verify DB_PATH
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rem.db import open_db  # noqa: E402
from rem.verify import verify_database  # noqa: E402


def main(path: str) -> dict:
    with open_db(path, "ro") as db:
        started = time.perf_counter()
        raw = sum(1 for _ in db.items("entities"))
        raw_rate = raw / (time.perf_counter() - started)
        only_entities = verify_database(db, ("schemas", "embeddings"))
        everything = verify_database(db)
    n = only_entities.checked["entities"]
    result = {"entities": n, "raw_per_s": raw_rate, "entity_checks_per_s": n / only_entities.seconds,
              "all_checks_per_s": n / everything.seconds}
    print(f"verify {n:,} entities: raw scan {raw_rate:,.0f}/s; decode + schema + vectors {result['entity_checks_per_s']:,.0f}/s "
          f"(ratio {result['entity_checks_per_s'] / raw_rate:.2f}); all checks incl. edges, indexes, WAL "
          f"{result['all_checks_per_s']:,.0f}/s (ratio {result['all_checks_per_s'] / raw_rate:.2f})")
    return result


if __name__ == "__main__":
    main(sys.argv[1])
