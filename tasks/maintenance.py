"""Maintenance steps: compaction, vacuum, verification and index rebuilds, each under the
database's writer slot when it writes."""

from __future__ import annotations

from datetime import datetime

from rem.db import open_db
from rem.maintenance import compact, compaction_bytes, vacuum
from rem.stats import estimate_keys
from rem.verify import rows_to_check, verify_database
from runtime.orchestration import task, writer_slot
from runtime.progress import RunProgress


@task("compact", retries=0)
def compact_task(db_path: str, cf: str | None) -> list[dict]:
    """Manual compaction of one or every column family (the engine must be stopped)."""
    with writer_slot(db_path), open_db(db_path, "rw") as db:
        progress = RunProgress("Compacting", compaction_bytes(db, cf))
        results = [r.__dict__ for r in compact(db, cf, progress)]
        progress.finish()
        return results


@task("vacuum", retries=0)
def vacuum_task(db_path: str, cutoff: datetime, tenant: str | None, dry_run: bool, orphans: bool = False) -> dict:
    """Remove soft-deleted entities older than the cutoff and everything of theirs (and orphans, if asked)."""
    with writer_slot(db_path), open_db(db_path, "ro" if dry_run else "rw") as db:
        progress = RunProgress("Vacuum: finding what goes", estimate_keys(db, "entities"), "entities")
        report = vacuum(db, cutoff, tenant, dry_run, orphans=orphans, progress=progress).to_dict()
        progress.finish()
        return report


@task("verify", retries=0)
def verify_task(db_path: str, checks: tuple[str, ...]) -> dict:
    """Read-only integrity check."""
    with open_db(db_path, "ro") as db:
        progress = RunProgress("Verifying", rows_to_check(db, checks), "rows")
        report = verify_database(db, checks, progress=progress).to_dict()
        progress.finish()
        return report


@task("rebuild-index-rows", retries=0)
def rebuild_rows_task(db_path: str, cf: str, schema_name: str | None) -> dict:
    """Missing key rows written (key_index), or the indexes CF rebuilt (the engine must be stopped)."""
    from rem.indexes import rebuild_field_rows, rebuild_key_rows

    rebuild = rebuild_key_rows if cf == "key_index" else rebuild_field_rows
    with writer_slot(db_path), open_db(db_path, "rw") as db:
        return rebuild(db, schema_name).__dict__


@task("build-hnsw", retries=0)
def build_hnsw_task(db_path: str, schema_name: str | None) -> list[dict]:
    """HNSW index per tenant and schema, stored beside the database (read-only: safe while live)."""
    from rem.indexes import build_hnsw

    with open_db(db_path, "ro") as db:
        return [b.__dict__ for b in build_hnsw(db, schema_name)]
