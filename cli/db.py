"""`rem db ...`: create, inspect, check and maintain the database itself."""

from __future__ import annotations

from typing import Optional

import typer

from cli.options import CF_OPTION, JSON_OPTION, finite, params, tenant_value
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
        show(stats.to_dict(), as_json, lambda c: _render_stats(c, stats))


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

        def render(console) -> None:
            from rich.table import Table

            infos = {k.split(":", 1)[1]: n for k, n in data["by_category"].items() if k.startswith("info:") and n}
            if data["critical"]:
                console.print(f"Verify: FAILED: {data['critical']:,} critical finding(s)", style="bold red")
            else:
                console.print("Verify: OK: nothing critical" + (f" ({sum(infos.values()):,} info findings: states "
                              "the engine's own write paths leave)" if infos else ""), style="bold green")
            console.print(f"Checked {', '.join(f'{n:,} {cf}' for cf, n in data['checked'].items())} "
                          f"in {data['seconds']:.1f} s")
            serious = [i for i in data["issues"] if i["severity"] != "info"]
            if serious:
                table = Table("SEVERITY", "CATEGORY", "ENTITY", "WHERE", "PROBLEM", "FIX")
                for issue in serious[:200]:
                    table.add_row(issue["severity"], issue["category"], issue["entity_id"] or "",
                                  f"{issue['cf']} {issue['key']}", issue["message"], issue["fix"])
                console.print(table)
            if infos:  # hundreds of rows of one cause say less than one row with its count
                first = {}
                for issue in data["issues"]:
                    if issue["severity"] == "info":
                        first.setdefault(issue["category"], issue)
                table = Table("INFO", "COUNT", "FOR EXAMPLE", "WHY / FIX", title="Info findings by cause")
                for category, count in infos.items():
                    example = first.get(category)
                    table.add_row(category, f"{count:,}", example["message"] if example else "",
                                  example["fix"] if example else "")
                console.print(table)
            console.print("`--json` lists every finding.")

        show(data, as_json, render)
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


def _render_stats(console, stats) -> None:
    from rich.table import Table

    console.print(f"Database:    {stats.path}")
    console.print(f"Entities:    {stats.entities_total:,} ({stats.entities_live:,} live, "
                  f"{stats.entities_soft_deleted:,} soft-deleted)")
    console.print(f"Schemas:     {stats.schemas:,}")
    inline = sum(d.with_embedding for d in stats.schemas_detail.values())
    console.print(f"Embeddings:  {inline:,} live entities with a vector (inline, as the engine keeps them); "
                  f"{stats.embeddings:,} rows in the embeddings column family (the engine never writes it)")
    console.print(f"Edges:       {stats.edges:,}")
    console.print(f"Disk usage:  {human_bytes(stats.disk_usage_bytes)}")
    console.print(f"Logical WAL: {stats.wal_entries:,} entries, {human_bytes(stats.wal_size_bytes)}, latest sequence "
                  f"{stats.wal_latest_seq:,} (the wal column family, written only by a replication primary; "
                  "RocksDB's own sequence numbers, which backups record, are another count)")
    table = Table("Column family", "Keys", "Size", "SST files", "Levels", "Compression", "Ratio",
                  title="Column families")
    for name, cf in stats.column_families.items():
        levels = " ".join(f"{lvl}:{human_bytes(n)}" for lvl, n in cf.level_sizes.items())
        table.add_row(name, f"{cf.keys:,}", human_bytes(cf.size_bytes), str(cf.sst_files), levels, cf.compression,
                      f"{cf.compression_ratio:.2f}x" if cf.compression_ratio else "")
    console.print(table)
    schemas = Table("Schema", "Live", "Soft-deleted", "Entity bytes", "Embedding coverage", title="Schemas")
    for name, detail in stats.schemas_detail.items():
        coverage = detail.embedding_coverage
        schemas.add_row(name, f"{detail.live:,}", f"{detail.soft_deleted:,}", human_bytes(detail.bytes),
                        "" if coverage is None else f"{coverage:.1%}")
    console.print(schemas)
