"""`rem db ...`: create, inspect, check and maintain the database itself."""

from __future__ import annotations

from typing import Optional

import typer

from cli.options import CF_OPTION, JSON_OPTION, finite, params, tenant_value
from cli import render
from cli.output import cli_run, fail, human_bytes, progress, show, table_renderer

db_app = typer.Typer(no_args_is_help=True, help="Database: init, stats, verify, compact, vacuum, health.")


@db_app.command("init")
def db_init(
    ctx: typer.Context,
    sample: int = typer.Option(0, "--sample", min=0, help="Sample entities to create"),
    tenants: int = typer.Option(3, "--tenants", min=1, help="Sample tenants"),
    seed: int = typer.Option(42, "--seed", help="Same seed, same database"),
    embedding_dim: int = typer.Option(128, "--embedding-dim", min=1, max=4096, help="Embedding dimension"),
    replication: str = typer.Option("standalone", "--replication", help="standalone (the engine's default) or "
                                    "primary (also the logical WAL the engine writes then)"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create a REM database with all nine column families, optionally filled with what percolate-rocks would
    write: schemas, entities of the sample and built-in schemas, upserts, updates, soft and hard deletes, edges."""
    with cli_run(ctx, as_json) as settings:
        import time

        from rem.db import init_db
        from rem.sample import REPLICATION_MODES, create_sample

        if replication not in REPLICATION_MODES:  # bad input even when nothing would be written with it
            fail(f"--replication {replication!r}: use {' or '.join(REPLICATION_MODES)}", 2, as_json)
        started = time.perf_counter()
        if sample:
            with progress("Creating sample", sample) as advance:
                summary = create_sample(settings.db_path, sample, tenants, seed, embedding_dim, progress=advance,
                                        replication=replication)
            result = {"ok": True, **summary.__dict__}
        else:
            init_db(settings.db_path).close()
            result = {"ok": True, "path": str(settings.db_path), "entities": 0}
        seconds = time.perf_counter() - started
        result.update(seconds=round(seconds, 3), entities_per_second=round(sample / seconds) if sample else None)
        show(result, as_json, lambda c: c.print(
            f"Created {result['path']}: {sample:,} entities"
            + (f" in {seconds:.1f} s ({result['entities_per_second']:,}/s)" if sample else "")))


@db_app.command("stats")
def db_stats(
    ctx: typer.Context,
    cf: Optional[str] = CF_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Entities, schemas, embeddings, edges, disk and WAL usage, and per column family figures."""
    with cli_run(ctx, as_json) as settings:
        from rem.db import open_db
        from rem.stats import collect_stats

        from rem.stats import estimate_keys

        with open_db(settings.db_path, "ro") as db:
            with progress("Reading entities", estimate_keys(db, "entities") if db.has_cf("entities") else 0) as seen:
                stats = collect_stats(db, cf, seen)
        show(stats.to_dict(), as_json, lambda c: render.stats(c, stats))


@db_app.command("verify")
def db_verify(
    ctx: typer.Context,
    check_embeddings: bool = typer.Option(False, "--check-embeddings", help="Vector dimensions and finite values"),
    check_schemas: bool = typer.Option(False, "--check-schemas", help="Entities against their JSON Schema"),
    check_edges: bool = typer.Option(False, "--check-edges", help="Twins in both edge CFs, both ends exist"),
    check_indexes: bool = typer.Option(False, "--check-indexes", help="Key and field index rows"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Integrity check through a read-only handle (safe on a live database); exit 1 on anything critical.
    Every value is decoded; with no --check-* flag every check runs (and WAL continuity)."""
    chosen = tuple(name for name, on in (("embeddings", check_embeddings), ("schemas", check_schemas),
                                         ("edges", check_edges), ("indexes", check_indexes)) if on)
    with cli_run(ctx, as_json) as settings:
        from flows.maintenance import verify_flow
        from rem.errors import CheckFailed

        try:
            data = verify_flow(list(chosen) or None, params(settings))
        except CheckFailed as failed:  # the run failed; the findings are still the answer
            data = failed.result

        show(data, as_json, lambda c: render.verify(c, data))
        if data["critical"]:
            raise typer.Exit(1)


@db_app.command("compact")
def db_compact(
    ctx: typer.Context,
    cf: Optional[str] = CF_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Full compaction (the engine must be stopped): size and SST files per column family, before and after."""
    with cli_run(ctx, as_json) as settings:
        from flows.maintenance import compaction

        rows = compaction(cf, params(settings))
        show(rows, as_json, table_renderer(
            ["COLUMN FAMILY", "SIZE BEFORE", "SIZE AFTER", "SST BEFORE", "SST AFTER", "SECONDS"],
            [[r["cf"], human_bytes(r["size_before"]), human_bytes(r["size_after"]), r["sst_files_before"],
              r["sst_files_after"], f"{r['seconds']:.2f}"] for r in rows]))


@db_app.command("vacuum")
def db_vacuum(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="Report what would go; write nothing"),
    older_than: str = typer.Option("30d", "--older-than", help="Soft-deleted before now minus this (30d, 12h)"),
    tenant: Optional[str] = typer.Option(None, "--tenant", help="Only this tenant"),
    orphans: bool = typer.Option(False, "--orphans", help="Also rows whose entity is gone (key and edge rows "
                                 "the engine's hard_delete leaves)"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Permanently remove soft-deleted entities older than the cutoff with every row of theirs (key rows of
    current and old keys, edge rows); with --orphans, also rows whose entity is gone."""
    with cli_run(ctx, as_json) as settings:
        tenant = tenant_value(tenant)
        from flows.maintenance import vacuum_flow

        report = vacuum_flow(older_than, tenant, dry_run, params(settings), orphans)
        show(report, as_json, lambda c: c.print(
            f"{'Would remove' if dry_run else 'Removed'} {report['entities']:,} entities soft-deleted before "
            f"{report['cutoff']}; rows per column family {report['rows']} (orphans {report['orphans']}); "
            f"{human_bytes(report['bytes_reclaimed'])} reclaimed"))


@db_app.command("health")
def db_health(
    ctx: typer.Context,
    backup_max_age_hours: float = typer.Option(48, "--backup-max-age-hours", callback=finite,
                                               help="Older backup: critical"),
    wal_lag_warn_seconds: float = typer.Option(3600, "--wal-lag-warn-seconds", callback=finite,
                                               help="More lag: warning"),
    disk_warn_percent: float = typer.Option(80, "--disk-warn-percent", callback=finite, help="Fuller disk: warning"),
    as_json: bool = JSON_OPTION,
) -> None:
    """The runbook's health JSON; exit 0 healthy, 1 degraded or unhealthy."""
    with cli_run(ctx, as_json) as settings:
        from rem.health import health
        from runtime.wiring import watched

        result = health(watched(settings), backup_max_age_hours, wal_lag_warn_seconds, disk_warn_percent)
        show(result, True)
        if result["status"] != "healthy":
            raise typer.Exit(1)
