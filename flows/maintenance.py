"""Maintenance flows: compaction, vacuum, verification, health. Each publishes a report artifact."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from rem.errors import CheckFailed
from rem.health import health
from rem.maintenance import parse_age
from rem.reports import table, verify_report
from rem.verify import ALL_CHECKS
from runtime.observe import publish_report, send_event
from runtime.orchestration import flow
from runtime.wiring import resolve_settings, watched
from tasks.maintenance import build_hnsw_task, compact_task, rebuild_rows_task, vacuum_task, verify_task


@flow("compaction", description="Full compaction of a REM database, size and SST files before and after.")
def compaction(cf: str | None = None, settings: dict[str, Any] | None = None) -> list[dict]:
    cfg = resolve_settings(settings)
    results = compact_task(str(cfg.db_path), cf)
    publish_report("compaction", "# Compaction\n\n" + table(results))
    return results


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
        send_event("rem.verify.failed", cfg, {"critical": report["critical"], "first": message})
        raise CheckFailed(message, report)
    send_event("rem.verify.passed", cfg, {"checked": report["checked"]})
    return report


@flow("health", description="Health of a REM database: rocksdb, wal archive, backups, embeddings, disk.")
def health_flow(settings: dict[str, Any] | None = None, database_block: str | None = None) -> dict:
    result = health(watched(resolve_settings(settings, database_block)))
    publish_report("health", f"# Health: {result['status']}\n\n"
                             + table([{"check": k, **{"status": v["status"]}} for k, v in result["checks"].items()]))
    return result


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

        from rem.health import metrics_registry

        write_to_textfile(textfile, metrics_registry(watched(cfg)))
    return result
