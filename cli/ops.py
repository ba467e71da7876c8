"""The operations outside a group's own: check, tenants, drill, deploy, fleet, index, metrics, export, query."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.options import JSON_OPTION, finite, params, tenant_value
from cli import render
from cli.output import cli_run, fail, progress, show, table_renderer

index_app = typer.Typer(no_args_is_help=True, help="Index rebuilds (HNSW, field and key indexes).")
metrics_app = typer.Typer(help="Prometheus metrics: print them, serve /metrics, or write a textfile.")
fleet_app = typer.Typer(help="Every database the Prefect server schedules.")


def check(
    ctx: typer.Context,
    wal_lag_warn_seconds: float = typer.Option(3600, "--wal-lag-warn-seconds", callback=finite,
                                               help="Archive lag that fails (PITR on)"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Can this host back up and archive right now? Each store takes a write, a read and a delete; with PITR
    on, every live log is pinned and the archive is current. Writes nothing to the database; exit 1 on a failure."""
    with cli_run(ctx, as_json) as settings:
        from rem.check import as_dicts, check_lag, check_pins, check_store
        from runtime.wiring import identity, object_stores

        db = identity(settings).name
        checks = [c for objects in object_stores(settings, bounded=True) for c in check_store(objects, db)]
        checks.append(check_pins(settings.db_path, settings.pitr_enabled))
        if settings.pitr_enabled:
            from rem.wal_archive import archive_report
            from runtime.wiring import log_archive

            checks.append(check_lag(archive_report(log_archive(settings), settings.db_path, settings.pitr_enabled),
                                    wal_lag_warn_seconds))
        ok = all(c.ok is not False for c in checks)
        show({"ok": ok, "db_name": db, "checks": as_dicts(checks)}, as_json, table_renderer(
            ["CHECK", "RESULT", "DETAIL", "SECONDS"],
            [[c.name, {True: "ok", False: "FAILED", None: "skipped"}[c.ok], c.detail, c.seconds] for c in checks]))
        if not ok:
            raise typer.Exit(1)


def tenants(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """The database's tenants with their entity counts (keys counted; read-only, safe on a live database)."""
    with cli_run(ctx, as_json) as settings:
        from rem.db import open_db
        from rem.stats import estimate_keys
        from rem.tenant import tenant_entity_counts

        with open_db(settings.db_path, "ro") as db, progress("Counting entities", estimate_keys(db, "entities")) as seen:
            counts = tenant_entity_counts(db, seen)
        show([{"tenant": t, "entities": n} for t, n in counts.items()], as_json,
             table_renderer(["TENANT", "ENTITIES"], [[t, f"{n:,}"] for t, n in counts.items()],
                            empty="No entities."))


def drill(
    ctx: typer.Context,
    backup: Optional[str] = typer.Option(None, "--backup", help="Drill this existing backup instead of a new one"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Recovery drill: backup with upload -> download -> restore to a temporary directory -> verify -> compare
    counts per schema with the live database -> clean up; logged either way; exit 1 on failure."""
    with cli_run(ctx, as_json) as settings:
        if backup is None and not settings.s3_bucket:
            fail("a drill uploads a fresh backup: set P8_S3_BUCKET (or give --backup NAME)", 2, as_json)
        from flows.retention import recovery_drill
        from rem.errors import CheckFailed

        try:
            result = recovery_drill(params(settings), backup)
        except CheckFailed as failed:  # the run failed; the drill's report is still the answer
            result = failed.result
        show(result, as_json, lambda c: c.print(
            f"Drill {'PASSED' if result['passed'] else 'FAILED'} on backup {result['backup']} "
            f"in {result['seconds']} s" + (f": {result['reason']}" if result["reason"] else "")
            + f"\nLogged to {result['log']}"))
        if not result["passed"]:
            raise typer.Exit(1)


def deploy(
    ctx: typer.Context,
    work_pool: str = typer.Option("rem", "--work-pool", help="Process work pool (created if missing)"),
    work_queue: str = typer.Option("default", "--work-queue", help="This database host's own queue"),
    alert_webhook_url: Optional[str] = typer.Option(None, "--alert-webhook-url", envvar="P8_ALERT_WEBHOOK_URL",
                                                    help="Webhook the automations notify"),
    notification_block: Optional[str] = typer.Option(None, "--notification-block",
                                                     help="An existing notification block (slug/name) instead"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Register block types, create the work pool, deploy every schedule in prefect.yaml, sync automations."""
    with cli_run(ctx, as_json) as settings:
        from deployments.deploy import deploy_everything

        result = deploy_everything(work_pool, work_queue, settings, alert_webhook_url, notification_block)
        show(result, as_json, lambda c: c.print(
            f"Work pool {work_pool} ({result['work_pool_status']}), queue {work_queue}; "
            f"{len(result['deployments'])} deployments; automations: "
            + ", ".join(f"{k} ({v})" for k, v in result["automations"].items())))


@fleet_app.command("status")
def fleet_status_command(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Host, last successful backup and its age, PITR lag, last verify, health and next run of every
    database; exit 1 when any breaches the runbook's thresholds."""
    with cli_run(ctx, as_json, settings=False):
        from runtime.orchestration import prefect_server

        prefect_server("rem fleet status")  # before the flow is defined: one line, not a warning and an error
        from flows.fleet import fleet_status

        result = fleet_status()
        show(result, as_json, table_renderer(
            ["DB", "STATUS", "WHY", "HOST", "LAST BACKUP", "AGE H", "PITR LAG S", "VERIFY", "DRILL", "HEALTH",
             "NEXT RUN"],
            [[r["db"], r["status"], r["why"] or "-", r["host"] or "?", r["last_backup"] or "never",
              str(r["backup_age_hours"]), str(r["pitr_lag_seconds"]), r["last_verify"] or "-", r["last_drill"] or "-",
              r["health"], r["next_run"] or "-"] for r in result["databases"]],
            "No database is deployed on this server: `rem deploy` on each database host."))
        if not result["ok"]:
            raise typer.Exit(1)


@index_app.command("rebuild")
def index_rebuild_command(
    ctx: typer.Context,
    kind: str = typer.Option("all", "--type", help="keys, hnsw, fields, or all (keys and hnsw)"),
    schema: Optional[str] = typer.Option(None, "--schema", help="Only this schema"),
    as_json: bool = JSON_OPTION,
) -> None:
    """keys: write the current key's row for entities that have none (nothing removed); hnsw: an index per tenant
    and schema beside the database, with recall@10; fields: the indexes column family, which the engine never
    writes (only when named). Keys and fields need the engine stopped."""
    with cli_run(ctx, as_json) as settings:
        from flows.maintenance import index_rebuild

        result = index_rebuild(kind, schema, params(settings))

        show(result, as_json, lambda c: render.index_rebuild(c, result))


@metrics_app.callback(invoke_without_command=True)
def metrics_print(
    ctx: typer.Context,
    textfile: Optional[Path] = typer.Option(None, "--textfile", help="Write atomically here (node_exporter)"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Print the metrics in Prometheus text format (or write them to --textfile)."""
    if ctx.invoked_subcommand is not None:
        return
    with cli_run(ctx, as_json) as settings:
        from prometheus_client import generate_latest, write_to_textfile

        from rem.health import metrics_registry
        from runtime.wiring import watched

        registry = metrics_registry(watched(settings))
        if textfile:
            write_to_textfile(str(textfile), registry)
        if as_json:
            show({s.name + ("{" + ",".join(f'{k}="{v}"' for k, v in s.labels.items()) + "}" if s.labels else ""):
                  s.value for metric in registry.collect() for s in metric.samples}, True)
        elif not textfile:
            import sys

            sys.stdout.write(generate_latest(registry).decode())


@metrics_app.command("serve")
def metrics_serve(
    ctx: typer.Context,
    port: int = typer.Option(9464, "--port", min=1, max=65535, help="Port for /metrics"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on"),
) -> None:
    """Serve /metrics; each scrape collects fresh figures."""
    with cli_run(ctx, False) as settings:
        from rem.health import metrics_registry, metrics_server
        from runtime.wiring import watched

        server = metrics_server(host, port, lambda: metrics_registry(watched(settings)))
        from cli.output import err

        err.print(f"Serving http://{host}:{server.server_port}/metrics")
        server.serve_forever()


def export(
    ctx: typer.Context,
    tenant: str = typer.Option(..., "--tenant", help="Tenant to export"),
    fmt: str = typer.Option("parquet", "--format", help="parquet (the only format)"),
    output: Optional[Path] = typer.Option(None, "--output", help="Directory, or a file when one schema is asked for"),
    schemas: Optional[str] = typer.Option(None, "--schemas", help="Comma-separated schema names (default: all)"),
    upload: bool = typer.Option(False, "--upload", help="Also store in S3 under exports/{tenant}/{timestamp}/"),
    include_deleted: bool = typer.Option(False, "--include-deleted", help="Include soft-deleted entities"),
    as_json: bool = JSON_OPTION,
) -> None:
    """One Parquet file per schema, written in record batches (memory stays flat)."""
    with cli_run(ctx, as_json) as settings:
        tenant = tenant_value(tenant)
        if fmt != "parquet":
            fail(f"--format {fmt!r}: only parquet is supported", 2, as_json)
        if upload and not settings.s3_bucket:
            fail("--upload needs a bucket: set P8_S3_BUCKET (or --bucket)", 2, as_json)
        from flows.export import tenant_export

        wanted = [s.strip() for s in schemas.split(",") if s.strip()] if schemas else None
        result = tenant_export(tenant, str(output) if output else None, wanted, upload, include_deleted,
                               params(settings))
        show(result, as_json, lambda c: [c.print(
            f"{f['schema']}: {f['rows']:,} rows -> {f.get('uploaded') or f['path']}"
            + (f" ({f['nulled_values']} values did not fit their type)" if f["nulled_values"] else ""))
            for f in result["files"]])


def query(
    ctx: typer.Context,
    sql: str = typer.Argument(..., help='Read-only SQL; tables are schema names: "SELECT COUNT(*) FROM articles"'),
    tenant: Optional[str] = typer.Option(None, "--tenant", help="Only this tenant's entities"),
    include_deleted: bool = typer.Option(False, "--include-deleted", help="Include soft-deleted entities"),
    memory_limit_mb: int = typer.Option(1024, "--memory-limit-mb", min=64, help="DuckDB's memory for the query"),
    timeout: float = typer.Option(60, "--timeout", min=0.1, max=86400, help="Seconds before the query is stopped"),
    as_of: Optional[str] = typer.Option(None, "--as-of", help="Over the state at this time, recovered from the "
                                        "backups and the log archive into scratch (removed afterwards)"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Read-only SQL (DuckDB) over the database's schemas; works on a live or a restored database."""
    with cli_run(ctx, as_json) as settings:
        tenant = tenant_value(tenant)
        if as_of is not None:
            from flows.pitr import query_as_of

            result = query_as_of(as_of, sql, tenant, include_deleted, memory_limit_mb, timeout, params(settings))
        else:
            from rem.query import run_query

            result = run_query(sql, str(settings.db_path), tenant, include_deleted, memory_mb=memory_limit_mb,
                               timeout=timeout)
        show(result, as_json, table_renderer(result["columns"], result["rows"]))
