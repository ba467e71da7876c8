"""Maintenance flows: compaction, vacuum, verification, health. Each publishes a report artifact."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from flows.backup import resolve_settings
from rem.db import open_db
from rem.maintenance import compact, vacuum
from rem.verify import ALL_CHECKS, verify_database
from tasks.monitoring import health
from tasks.runtime import flow, publish_report, task


def _table(rows: list[dict]) -> str:
    if not rows:
        return "(nothing)"
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines)


@task("compact", retries=0)
def compact_task(db_path: str, cf: str | None) -> list[dict]:
    """Manual compaction of one or every column family (the engine must be stopped)."""
    with open_db(db_path, "rw") as db:
        return [r.__dict__ for r in compact(db, cf)]


@flow("compaction", description="Full compaction of a REM database, size and SST files before and after.")
def compaction(cf: str | None = None, settings: dict[str, Any] | None = None) -> list[dict]:
    cfg = resolve_settings(settings)
    results = compact_task(str(cfg.db_path), cf)
    publish_report("compaction", "# Compaction\n\n" + _table(results))
    return results


def parse_age(text: str) -> timedelta:
    """'30d', '12h', '45m', '90s' -> a timedelta."""
    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
    try:
        return timedelta(**{units[text[-1]]: float(text[:-1])})
    except (KeyError, ValueError, IndexError):
        from rem.errors import UsageError

        raise UsageError(f"--older-than {text!r}: use a number and d, h, m or s (30d, 12h)") from None


@task("vacuum", retries=0)
def vacuum_task(db_path: str, cutoff: datetime, tenant: str | None, dry_run: bool) -> dict:
    """Remove soft-deleted entities older than the cutoff, everything of theirs, and orphans."""
    with open_db(db_path, "ro" if dry_run else "rw") as db:
        return vacuum(db, cutoff, tenant, dry_run).to_dict()


@flow("vacuum", description="Permanently remove soft-deleted data older than a cutoff, and orphaned rows.")
def vacuum_flow(older_than: str = "30d", tenant: str | None = None, dry_run: bool = False,
                settings: dict[str, Any] | None = None) -> dict:
    cfg = resolve_settings(settings)
    cutoff = datetime.now(timezone.utc) - parse_age(older_than)
    report = vacuum_task(str(cfg.db_path), cutoff, tenant, dry_run)
    rows = [{"column family": cf, "rows": n, "orphans": report["orphans"].get(cf, 0)} for cf, n in report["rows"].items()]
    publish_report("vacuum", f"# Vacuum {'(dry run)' if dry_run else ''}\n\n{report['entities']} entities, "
                             f"{report['bytes_reclaimed']} bytes reclaimed\n\n" + _table(rows))
    return report


@task("verify", retries=0)
def verify_task(db_path: str, checks: tuple[str, ...]) -> dict:
    """Read-only integrity check."""
    with open_db(db_path, "ro") as db:
        return verify_database(db, checks).to_dict()


@flow("verify", description="Integrity verification through a read-only handle (safe on a live database).")
def verify_flow(checks: list[str] | None = None, settings: dict[str, Any] | None = None) -> dict:
    cfg = resolve_settings(settings)
    report = verify_task(str(cfg.db_path), tuple(checks or ALL_CHECKS))
    publish_report("verify", f"# Verify\n\nCritical: {report['critical']}\n\n"
                             + _table([{"finding": k, "count": v} for k, v in report["by_category"].items()]))
    return report


@flow("health", description="Health of a REM database: rocksdb, wal archive, backups, embeddings, disk.")
def health_flow(settings: dict[str, Any] | None = None) -> dict:
    result = health(resolve_settings(settings))
    publish_report("health", f"# Health: {result['status']}\n\n"
                             + _table([{"check": k, **{"status": v["status"]}} for k, v in result["checks"].items()]))
    return result
