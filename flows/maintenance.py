"""Maintenance flows: compaction, vacuum, verification, health. Each publishes a report artifact."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from flows.backup import resolve_settings
from rem.db import open_db
from rem.maintenance import compact, compaction_bytes, vacuum
from rem.reports import table, verify_report
from rem.stats import estimate_keys
from rem.verify import ALL_CHECKS, rows_to_check, verify_database
from tasks.monitoring import health
from rem.errors import CheckFailed
from tasks.runtime import RunProgress, emit, flow, publish_report, task, writer_slot


@task("compact", retries=0)
def compact_task(db_path: str, cf: str | None) -> list[dict]:
    """Manual compaction of one or every column family (the engine must be stopped)."""
    with writer_slot(db_path), open_db(db_path, "rw") as db:
        progress = RunProgress("Compacting", compaction_bytes(db, cf))
        results = [r.__dict__ for r in compact(db, cf, progress)]
        progress.finish()
        return results


@flow("compaction", description="Full compaction of a REM database, size and SST files before and after.")
def compaction(cf: str | None = None, settings: dict[str, Any] | None = None) -> list[dict]:
    cfg = resolve_settings(settings)
    results = compact_task(str(cfg.db_path), cf)
    publish_report("compaction", "# Compaction\n\n" + table(results))
    return results


def parse_age(text: str) -> timedelta:
    """'30d', '12h', '45m', '90s' -> a timedelta: finite, not negative (a cutoff in the future would
    remove entities soft-deleted a moment ago), and one a date can go back by."""
    import math

    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
    try:
        number = float(text[:-1])
        if not math.isfinite(number) or number < 0:
            raise ValueError(text)
        age = timedelta(**{units[text[-1]]: number})
        datetime.now(timezone.utc) - age  # noqa: B018 - raises OverflowError past year 1
        return age
    except (KeyError, ValueError, IndexError, OverflowError):
        from rem.errors import UsageError

        raise UsageError(f"--older-than {text!r}: use a number of at least 0 and d, h, m or s (30d, 12h), "
                         "no more than about 700,000 days") from None


@task("vacuum", retries=0)
def vacuum_task(db_path: str, cutoff: datetime, tenant: str | None, dry_run: bool, orphans: bool = False) -> dict:
    """Remove soft-deleted entities older than the cutoff and everything of theirs (and orphans, if asked)."""
    with writer_slot(db_path), open_db(db_path, "ro" if dry_run else "rw") as db:
        progress = RunProgress("Vacuum: finding what goes", estimate_keys(db, "entities"), "entities")
        report = vacuum(db, cutoff, tenant, dry_run, orphans=orphans, progress=progress).to_dict()
        progress.finish()
        return report


@flow("vacuum", description="Permanently remove soft-deleted data older than a cutoff, and orphaned rows.")
def vacuum_flow(older_than: str = "30d", tenant: str | None = None, dry_run: bool = False,
                settings: dict[str, Any] | None = None, orphans: bool = False) -> dict:
    cfg = resolve_settings(settings)
    cutoff = datetime.now(timezone.utc) - parse_age(older_than)
    report = vacuum_task(str(cfg.db_path), cutoff, tenant, dry_run, orphans)
    rows = [{"column family": cf, "rows": n, "orphans": report["orphans"].get(cf, 0)} for cf, n in report["rows"].items()]
    publish_report("vacuum", f"# Vacuum {'(dry run)' if dry_run else ''}\n\n{report['entities']} entities, "
                             f"{report['bytes_reclaimed']} bytes reclaimed\n\n" + table(rows))
    return report


@task("verify", retries=0)
def verify_task(db_path: str, checks: tuple[str, ...]) -> dict:
    """Read-only integrity check."""
    with open_db(db_path, "ro") as db:
        progress = RunProgress("Verifying", rows_to_check(db, checks), "rows")
        report = verify_database(db, checks, progress=progress).to_dict()
        progress.finish()
        return report


@flow("verify", description="Integrity verification through a read-only handle (safe on a live database).")
def verify_flow(checks: list[str] | None = None, settings: dict[str, Any] | None = None,
                database_block: str | None = None) -> dict:
    """Integrity check; a critical finding fails the run (and pages).

    Args:
        checks: Which checks: embeddings, schemas, edges, indexes; empty: all of them.
        settings: Settings as the command line passes them (leave empty in a deployment: the blocks say where).
        database_block: The REM Database block of the database (rem-db-{db}): its path, name and storage block.
    """
    cfg = resolve_settings(settings, database_block)
    report = verify_task(str(cfg.db_path), tuple(checks or ALL_CHECKS))
    publish_report("verify", verify_report(report), description=f"Integrity check of {cfg.db_path}: "
                   + ("nothing critical" if report["ok"] else f"{report['critical']} critical finding(s)"))
    if not report["ok"]:  # a check that finds damage fails its run: the state is red and the failure pages
        worst = next((i for i in report["issues"] if i["severity"] == "critical"), None)
        message = f"verify found {report['critical']} critical finding(s) in {cfg.db_path}" + (
            f"; first: {worst['category']}: {worst['message']} ({worst['cf']} {worst['key']}); fix: {worst['fix']}"
            if worst else "")
        emit("rem.verify.failed", cfg, {"critical": report["critical"], "first": message})
        raise CheckFailed(message, report)
    emit("rem.verify.passed", cfg, {"checked": report["checked"]})
    return report


@flow("health", description="Health of a REM database: rocksdb, wal archive, backups, embeddings, disk.")
def health_flow(settings: dict[str, Any] | None = None, database_block: str | None = None) -> dict:
    result = health(resolve_settings(settings, database_block))
    publish_report("health", f"# Health: {result['status']}\n\n"
                             + table([{"check": k, **{"status": v["status"]}} for k, v in result["checks"].items()]))
    return result


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


@flow("index-rebuild", description="Rebuild key and field index rows and HNSW vector indexes.")
def index_rebuild(kind: str = "all", schema_name: str | None = None, settings: dict[str, Any] | None = None) -> dict:
    # Not `schema`: Prefect builds a pydantic model of a flow's and task's parameters, and a field
    # named schema shadows BaseModel.schema (a UserWarning on every run).
    from rem.errors import UsageError

    if kind not in ("hnsw", "fields", "keys", "all"):
        raise UsageError(f"--type {kind!r}: use hnsw, fields, keys or all (keys and hnsw; the engine never "
                         "writes the indexes column family, so fields is only rebuilt when named)")
    cfg = resolve_settings(settings)
    result: dict[str, Any] = {}
    if kind in ("keys", "all"):
        result["keys"] = rebuild_rows_task(str(cfg.db_path), "key_index", schema_name)
    if kind == "fields":
        result["fields"] = rebuild_rows_task(str(cfg.db_path), "indexes", schema_name)
    if kind in ("hnsw", "all"):
        result["hnsw"] = build_hnsw_task(str(cfg.db_path), schema_name)
    publish_report("index-rebuild", "# Index rebuild\n\n" + table(
        [r for r in (result.get("keys"), result.get("fields")) if r]) + "\n\n" + table(
        [{k: v for k, v in b.items() if k != "path"} for b in result.get("hnsw", [])]))
    return result


@flow("weekly-maintenance", description="Vacuum, then compaction: the weekly job (the engine must be stopped).")
def weekly_maintenance(older_than: str = "30d", settings: dict[str, Any] | None = None,
                       database_block: str | None = None) -> dict:
    """Vacuum, then compaction.

    Args:
        older_than: Soft-deleted entities older than this go for good: a number and d, h, m or s (30d).
        settings: Settings as the command line passes them (leave empty in a deployment: the blocks say where).
        database_block: The REM Database block of the database (rem-db-{db}): its path, name and storage block.
    """
    cfg = resolve_settings(settings, database_block).model_dump(mode="json")
    return {"vacuum": vacuum_flow(older_than, None, False, cfg), "compaction": compaction(None, cfg)}


@flow("health-and-metrics", description="Health check, and the Prometheus textfile for node_exporter.")
def health_and_metrics(textfile: str | None = None, settings: dict[str, Any] | None = None,
                       database_block: str | None = None) -> dict:
    """Health check and Prometheus figures.

    Args:
        textfile: Write the Prometheus text here for node_exporter's textfile collector; empty: none.
        settings: Settings as the command line passes them (leave empty in a deployment: the blocks say where).
        database_block: The REM Database block of the database (rem-db-{db}): its path, name and storage block.
    """
    cfg = resolve_settings(settings, database_block)
    result = health_flow(cfg.model_dump(mode="json"))
    if textfile:
        from prometheus_client import write_to_textfile

        from tasks.monitoring import metrics_registry

        write_to_textfile(textfile, metrics_registry(cfg))
    return result
