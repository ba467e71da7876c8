"""`rem`: global options before the group, as in the runbook: `rem --db-path restored-db db stats`.

Heavy modules (Prefect, boto3, the flows) load inside the commands that need them, so that a
command typed at 3 a.m. starts in a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

from cli.output import (PAGE_ON_FAILURE, command, emit, fail, human_bytes, out, progress, quiet_prefect,
                        table_renderer)
from rem.errors import ConfigError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Maintenance for REM databases: backup, restore, PITR, verify, stats.")
db_app = typer.Typer(no_args_is_help=True, help="Database: init, stats, verify, compact, vacuum, health.")
backup_app = typer.Typer(no_args_is_help=True, help="Backups: create, list, download, restore, verify, prune, lifecycle.")
index_app = typer.Typer(no_args_is_help=True, help="Index rebuilds (HNSW, field and key indexes).")
pitr_app = typer.Typer(no_args_is_help=True, help="Point-in-time recovery: WAL archival and restore to a timestamp.")
app.add_typer(db_app, name="db")
app.add_typer(backup_app, name="backup")
app.add_typer(index_app, name="index")
app.add_typer(pitr_app, name="pitr")
lifecycle_app = typer.Typer(no_args_is_help=True, help="S3 lifecycle rules for the backup bucket.")
backup_app.add_typer(lifecycle_app, name="lifecycle")
metrics_app = typer.Typer(help="Prometheus metrics: print them, serve /metrics, or write a textfile.")
app.add_typer(metrics_app, name="metrics")

JSON_OPTION = typer.Option(False, "--json", help="Print exactly one JSON document on stdout.")
FROM_DB_OPTION = typer.Option(None, "--from-db", help="Another database's backups, by its name (see `rem backup "
                              "list --all-dbs`); legacy: the layout before databases had names")


@dataclass
class Globals:
    config: Optional[Path] = None
    flags: dict[str, Any] = field(default_factory=dict)

    def settings(self, as_json: bool = False, **more: Any):
        from rem.settings import load_settings

        try:
            return load_settings(self.config, **{**self.flags, **more})
        except ConfigError as exc:
            fail(str(exc), 2, as_json)


@app.callback()
def main_options(
    ctx: typer.Context,
    db_path: Optional[Path] = typer.Option(None, "--db-path", envvar="P8_DB_PATH", help="REM database directory"),
    config: Optional[Path] = typer.Option(None, "--config", envvar="P8_CONFIG", help="TOML settings file"),
    backup_dir: Optional[Path] = typer.Option(None, "--backup-dir", envvar="P8_BACKUP_DIR",
                                              help="Local backup directory"),
    bucket: Optional[str] = typer.Option(None, "--bucket", envvar="P8_S3_BUCKET", help="S3 bucket"),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", envvar="P8_S3_ENDPOINT_URL",
                                               help="S3 endpoint"),
    db_name: Optional[str] = typer.Option(None, "--db-name", envvar="P8_DB_NAME", help="The database's name in the "
                                          "store; default: its directory name and RocksDB IDENTITY"),
    page: bool = typer.Option(False, "--page", help="Under Prefect, page on this run's failure as on a "
                              "scheduled one's (ad-hoc runs do not page by default)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's own log lines (INFO)"),
) -> None:
    from click.core import ParameterSource

    PAGE_ON_FAILURE["page"] = page
    quiet_prefect(verbose)
    # A value typer read from the environment is left to the settings, which read it themselves, so
    # that a bad one is reported as the variable it came from, not as a flag.
    flags = {"db_path": db_path, "backup_dir": backup_dir, "s3_bucket": bucket, "s3_endpoint_url": endpoint_url,
             "db_name": db_name}
    names = {"s3_bucket": "bucket", "s3_endpoint_url": "endpoint_url"}
    ctx.obj = Globals(config if ctx.get_parameter_source("config") is not ParameterSource.ENVIRONMENT else None,
                      {k: v for k, v in flags.items()
                       if ctx.get_parameter_source(names.get(k, k)) is not ParameterSource.ENVIRONMENT})


def _finite(value: float) -> float:
    """A threshold is a finite number at least 0: nan would compare false with everything (a 1,509-hour-old
    backup read as healthy) and a negative one inverts the check."""
    import math

    if not math.isfinite(value) or value < 0:
        raise typer.BadParameter(f"{value!r}: give a finite number of at least 0")
    return value


# ---------------------------------------------------------------------------------------- db


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
    settings = ctx.obj.settings(as_json)
    with command(as_json):
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
        emit(result, as_json, lambda c: c.print(
            f"Created {result['path']}: {sample:,} entities"
            + (f" in {seconds:.1f} s ({result['entities_per_second']:,}/s)" if sample else "")))


@db_app.command("stats")
def db_stats(
    ctx: typer.Context,
    cf: Optional[str] = typer.Option(None, "--cf", help="Only this column family"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Entities, schemas, embeddings, edges, disk and WAL usage, and per column family figures."""
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        from rem.db import open_db
        from rem.stats import collect_stats

        from rem.stats import estimate_keys

        with open_db(settings.db_path, "ro") as db:
            with progress("Reading entities", estimate_keys(db, "entities") if db.has_cf("entities") else 0) as seen:
                stats = collect_stats(db, cf, seen)
        emit(stats.to_dict(), as_json, lambda c: _render_stats(c, stats))


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
    settings = ctx.obj.settings(as_json)
    chosen = tuple(name for name, on in (("embeddings", check_embeddings), ("schemas", check_schemas),
                                         ("edges", check_edges), ("indexes", check_indexes)) if on)
    with command(as_json):
        from flows.maintenance import verify_flow
        from rem.errors import CheckFailed

        try:
            data = verify_flow(list(chosen) or None, _settings_dict(settings))
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

        emit(data, as_json, render)
        if data["critical"]:
            raise typer.Exit(1)


@db_app.command("compact")
def db_compact(
    ctx: typer.Context,
    cf: Optional[str] = typer.Option(None, "--cf", help="Only this column family"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Full compaction (the engine must be stopped): size and SST files per column family, before and after."""
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        from flows.maintenance import compaction

        rows = compaction(cf, _settings_dict(settings))
        emit(rows, as_json, table_renderer(
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
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        tenant = _tenant(tenant)
        from flows.maintenance import vacuum_flow

        report = vacuum_flow(older_than, tenant, dry_run, _settings_dict(settings), orphans)
        emit(report, as_json, lambda c: c.print(
            f"{'Would remove' if dry_run else 'Removed'} {report['entities']:,} entities soft-deleted before "
            f"{report['cutoff']}; rows per column family {report['rows']} (orphans {report['orphans']}); "
            f"{human_bytes(report['bytes_reclaimed'])} reclaimed"))


@db_app.command("health")
def db_health(
    ctx: typer.Context,
    backup_max_age_hours: float = typer.Option(48, "--backup-max-age-hours", callback=_finite,
                                               help="Older backup: critical"),
    wal_lag_warn_seconds: float = typer.Option(3600, "--wal-lag-warn-seconds", callback=_finite,
                                               help="More lag: warning"),
    disk_warn_percent: float = typer.Option(80, "--disk-warn-percent", callback=_finite, help="Fuller disk: warning"),
    as_json: bool = JSON_OPTION,
) -> None:
    """The runbook's health JSON; exit 0 healthy, 1 degraded or unhealthy."""
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        from tasks.monitoring import health

        result = health(settings, backup_max_age_hours, wal_lag_warn_seconds, disk_warn_percent)
        emit(result, True)
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


# ------------------------------------------------------------------------------------ backup


def _tenant(value: Optional[str], allow_all: bool = False) -> Optional[str]:
    """--tenant as given: absent means every tenant; anything given ('' too) must name one."""
    from rem.format import check_tenant

    if value is None or (allow_all and value == "_all"):
        return value
    return check_tenant(value)


def _settings_dict(settings) -> dict:
    return settings.model_dump(mode="json")


@backup_app.command("create")
def backup_create(
    ctx: typer.Context,
    name: Optional[str] = typer.Option(None, "--name", help="Backup name (default: the UTC time)"),
    upload: bool = typer.Option(False, "--upload", help="Store in S3 (P8_S3_BUCKET) instead of the local directory"),
    tenant: Optional[str] = typer.Option(None, "--tenant", help="Back up only this tenant (plus the schemas)"),
    archive: bool = typer.Option(False, "--archive", help="One self-contained rocksdb.tar.zst (the runbook's "
                                 "format, to move a database elsewhere) instead of an incremental backup"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Whole-database backups are incremental: snapshot -> the SSTs the repository lacks, uploaded once
    each -> small files -> file list -> metadata last. --archive and --tenant write one tar.zst."""
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        tenant = _tenant(tenant)
        if upload and not (settings.s3_bucket or settings.storage_block):
            fail("--upload needs a bucket: set P8_S3_BUCKET (or [backup.s3] bucket in the config, or --bucket)", 2,
                 as_json)
        from flows.backup import full_backup

        result = full_backup(_settings_dict(settings), tenant=tenant, name=name, upload=upload, archive=archive)
        emit(result, as_json, lambda c: c.print(
            f"Backup {result['name']} of {result['tenant_id'] or 'the whole database'}: "
            f"{'~' if result['counts'] == 'estimated' else ''}{result['entity_count']:,} entities, "
            f"{human_bytes(result['size_bytes'])} "
            f"(from {human_bytes(result['uncompressed_bytes'])}) in {result['duration_seconds']:.1f} s\n"
            f"Location: {result['location']}\nSHA-256: {result['checksum_sha256']}"))


def _age(created: str) -> str:
    """How long ago, as pgBackRest's info says it: 40 min, 5 h, 3 d."""
    from datetime import datetime, timezone

    seconds = (datetime.now(timezone.utc) - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds()
    return f"{seconds / 60:.0f} min" if seconds < 3600 else f"{seconds / 3600:.0f} h" if seconds < 172800 \
        else f"{seconds / 86400:.0f} d"


@backup_app.command("list")
def backup_list(ctx: typer.Context, from_db: Optional[str] = FROM_DB_OPTION,
                all_dbs: bool = typer.Option(False, "--all-dbs", help="Every database's backups in the stores"),
                detail: bool = typer.Option(False, "--detail", help="Every field of each backup's metadata: "
                                            "duration, sizes, host, online, sequence numbers, checksum, ..."),
                as_json: bool = JSON_OPTION) -> None:
    """This database's backups, local and S3 merged, newest first (and the old layout's, as db 'legacy')."""
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        from flows.restore import list_backups

        rows, unreachable = list_backups(_settings_dict(settings), from_db, all_dbs, detail)
        locations = [f"{r['name']}: {r['location']}" for r in rows]
        if detail:
            render = table_renderer(
                ["DB", "NAME", "TENANT", "CREATED", "AGE", "STATUS", "TOOK", "SIZE", "STORED", "ADDED", "ENTITIES",
                 "HOST", "ONLINE", "LAYOUT", "LAST SEQUENCE", "SHA-256"],
                [[r["db"], r["name"], r["tenant_id"] or "(all)", r["created"], _age(r["created"]), r["status"],
                  f"{r['duration_seconds']:.1f} s", human_bytes(r["uncompressed_bytes"]), human_bytes(r["size_bytes"]),
                  human_bytes(r["added_bytes"]), f"{r['entity_count']:,}{'~' if r['counts'] == 'estimated' else ''}",
                  r["host"], "yes" if r["online"] else "no", r["layout"], r["last_sequence"],
                  r["checksum_sha256"][:16]] for r in rows], "No backups found.", whole=("NAME",), after=locations)
        else:
            render = table_renderer(
                ["DB", "NAME", "TENANT", "CREATED", "AGE", "SIZE", "ADDED", "STATUS"],
                [[r["db"], r["name"], r["tenant_id"] or "(all)", r["created"], _age(r["created"]),
                  human_bytes(r["logical_bytes"]), human_bytes(r["added_bytes"]), r["status"]]
                 for r in rows], "No backups found.", whole=("NAME",), after=locations)
        emit(rows, as_json, render)
        if unreachable:
            fail("; ".join(f"{where} could not be listed ({why}): its backups are missing above"
                           for where, why in unreachable.items()), 1)


@backup_app.command("download")
def backup_download(
    ctx: typer.Context,
    name: str = typer.Option(..., "--name", help="Backup name (see `rem backup list`)"),
    output: Path = typer.Option(..., "--output", help="Directory; the backup goes to OUTPUT/NAME/"),
    tenant: Optional[str] = typer.Option(None, "--tenant", help="Disambiguate a name used by several tenants"),
    from_db: Optional[str] = FROM_DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Download a backup (parallel ranged GETs; an interrupted download resumes)."""
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        tenant = _tenant(tenant)
        from flows.restore import download_backup

        result = download_backup(name, str(output), _settings_dict(settings), tenant, from_db=from_db)
        emit(result, as_json, lambda c: c.print(f"Downloaded {name} to {result['path']}"))


@backup_app.command("restore")
def backup_restore(
    ctx: typer.Context,
    source: Optional[Path] = typer.Option(None, "--source", help="Backup directory (as written by create or "
                                          "download)"),
    name: Optional[str] = typer.Option(None, "--name", help="Or a backup's name in the stores (`latest`: the newest); "
                                       "an S3 one is downloaded beside the target first"),
    tenant: Optional[str] = typer.Option(None, "--tenant", help="With --name: the tenant's backup"),
    from_db: Optional[str] = FROM_DB_OPTION,
    target: Optional[Path] = typer.Option(None, "--target", help="Database directory (default: --db-path)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty target (kept in quarantine "
                                   "until the restored copy verifies)"),
    rebuild_indexes: bool = typer.Option(False, "--rebuild-indexes", help="Then rebuild key, field and HNSW indexes"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Verify the checksum, extract safely, check every column family, then put into place."""
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        if (source is None) == (name is None):
            fail("give the backup with --source DIR (a backup directory) or --name NAME (one in the stores, "
                 "`latest` for the newest; see `rem backup list`)", 2, as_json)
        from flows.restore import restore, restore_named

        if name is not None:
            result = restore_named(name, str(target or settings.db_path), overwrite, _settings_dict(settings),
                                   _tenant(tenant), from_db)
        else:
            result = restore(str(source), str(target or settings.db_path), overwrite)
        if rebuild_indexes:
            from flows.maintenance import index_rebuild

            restored = settings.model_copy(update={"db_path": Path(result["target"])})
            result["index_rebuild"] = index_rebuild("all", None, _settings_dict(restored))
        emit(result, as_json, lambda c: c.print(
            f"Restored {result['name']} into {result['target']}: "
            + (f"~{result['entity_count']:,} entities (RocksDB's estimate; `rem db stats` counts them), "
               if result["counts"] == "estimated" else f"{result['entity_count']:,} entities, ")
            + 
            f"checksum verified" + (" (repaired, nothing dropped)" if result["repaired"] else "")))


@backup_app.command("verify")
def backup_verify(
    ctx: typer.Context,
    name: str = typer.Option(..., "--name", help="Backup name (see `rem backup list`)"),
    tenant: Optional[str] = typer.Option(None, "--tenant", help="Disambiguate a name used by several tenants"),
    from_db: Optional[str] = FROM_DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Checksum plus a trial restore into a temporary directory; the live database is not touched."""
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        tenant = _tenant(tenant)
        from flows.restore import verify_backup

        result = verify_backup(name, _settings_dict(settings), tenant, from_db)
        emit(result, as_json, lambda c: c.print(
            f"Backup {name} verified: checksum matches, trial restore holds {result['entity_count']:,} entities"))


@backup_app.command("takeover")
def backup_takeover(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Make this database the owner of its name: for a copy restored to replace the original for good
    (its disk is gone). The original's next backup or prune is then refused."""
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        from tasks.storage import identity, take_over

        me = identity(settings)
        replaced = take_over(settings)
        emit({"ok": True, "db_name": me.name, "host": me.host, "path": me.path, "stores": replaced}, as_json,
             lambda c: c.print("\n".join(
                 f"{r['store']}: now {me.host}:{me.path}" + (f" (was {r['previous'].get('host')}:"
                                                            f"{r['previous'].get('path')})" if r["previous"] else "")
                 for r in replaced)))


@backup_app.command("prune")
def backup_prune(
    ctx: typer.Context,
    keep_daily: int = typer.Option(7, "--keep-daily", min=0),
    keep_weekly: int = typer.Option(4, "--keep-weekly", min=0),
    keep_monthly: int = typer.Option(3, "--keep-monthly", min=0),
    tenant: Optional[str] = typer.Option(None, "--tenant", help="Only this tenant's backups (`_all`: whole-database)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan only"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Keep a grandfather-father-son set (never the newest, never the PITR base); delete the rest, local and S3."""
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        tenant = _tenant(tenant, allow_all=True)
        from flows.retention import prune

        def render_plan(console, plan) -> None:
            from rich.table import Table
            from rich.text import Text

            table = Table("ACTION", "NAME", "TENANT", "CREATED", "WHY")
            for row in plan["keep"]:
                table.add_row("keep", row["name"], row["tenant"], row["created"], ", ".join(row["why"]))
            for row in plan["delete"]:
                table.add_row(Text("delete", style="red"), row["name"], row["tenant"], row["created"], "")
            console.print(table)
            console.print(f"WAL segments to delete (older than the oldest kept base): {plan['wal_segments_to_delete']}")

        args = (keep_daily, keep_weekly, keep_monthly, tenant)
        plan = prune(*args, dry_run=True, settings=_settings_dict(settings))
        if not as_json:
            render_plan(out, plan)  # the plan is shown before anything is deleted
        if dry_run:
            emit(plan, as_json)
            return
        result = prune(*args, dry_run=False, settings=_settings_dict(settings))
        emit(result, as_json, lambda c: c.print(f"Deleted {len(result['delete'])} backup(s), kept {len(result['keep'])}."))


@lifecycle_app.command("apply")
def lifecycle_apply(
    ctx: typer.Context,
    keep_monthly: int = typer.Option(3, "--keep-monthly", min=0, help="To explain how prune and expiry combine"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Install the runbook's rules: Glacier after 30 days, expiry after 90, stale uploads aborted after 1."""
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        if not settings.s3_bucket:
            fail("lifecycle rules need a bucket: set P8_S3_BUCKET (or --bucket)", 2, as_json)
        from flows.retention import apply_lifecycle

        result = apply_lifecycle(settings, keep_monthly=keep_monthly)
        emit(result, as_json, lambda c: [c.print(f"Lifecycle rules installed on s3://{result['bucket']}:"),
                                         *[c.print(f"  {r['ID']}") for r in result["rules"]],
                                         *[c.print(f"- {n}") for n in result["notes"]]])


@app.command("check")
def check(
    ctx: typer.Context,
    wal_lag_warn_seconds: float = typer.Option(3600, "--wal-lag-warn-seconds", callback=_finite,
                                               help="Archive lag that fails (PITR on)"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Can this host back up and archive right now? Each store takes a write, a read and a delete; with PITR
    on, every live log is pinned and the archive is current. Writes nothing to the database; exit 1 on a failure."""
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        from rem.check import as_dicts, check_lag, check_pins, check_store
        from tasks.storage import identity, object_stores

        db = identity(settings).name
        checks = [c for objects in object_stores(settings, bounded=True) for c in check_store(objects, db)]
        checks.append(check_pins(settings.db_path, settings.pitr_enabled))
        if settings.pitr_enabled:
            from flows.pitr import pitr_status

            checks.append(check_lag(pitr_status(settings), wal_lag_warn_seconds))
        ok = all(c.ok is not False for c in checks)
        emit({"ok": ok, "db_name": db, "checks": as_dicts(checks)}, as_json, table_renderer(
            ["CHECK", "RESULT", "DETAIL", "SECONDS"],
            [[c.name, {True: "ok", False: "FAILED", None: "skipped"}[c.ok], c.detail, c.seconds] for c in checks]))
        if not ok:
            raise typer.Exit(1)


@app.command("tenants")
def tenants(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """The database's tenants with their entity counts (keys counted; read-only, safe on a live database)."""
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        from rem.db import open_db
        from rem.stats import estimate_keys
        from rem.tenant import tenant_entity_counts

        with open_db(settings.db_path, "ro") as db, progress("Counting entities", estimate_keys(db, "entities")) as seen:
            counts = tenant_entity_counts(db, seen)
        emit([{"tenant": t, "entities": n} for t, n in counts.items()], as_json,
             table_renderer(["TENANT", "ENTITIES"], [[t, f"{n:,}"] for t, n in counts.items()],
                            empty="No entities."))


@app.command("drill")
def drill(
    ctx: typer.Context,
    backup: Optional[str] = typer.Option(None, "--backup", help="Drill this existing backup instead of a new one"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Recovery drill: backup with upload -> download -> restore to a temporary directory -> verify -> compare
    counts per schema with the live database -> clean up; logged either way; exit 1 on failure."""
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        if backup is None and not settings.s3_bucket:
            fail("a drill uploads a fresh backup: set P8_S3_BUCKET (or give --backup NAME)", 2, as_json)
        from flows.retention import recovery_drill
        from rem.errors import CheckFailed

        try:
            result = recovery_drill(_settings_dict(settings), backup)
        except CheckFailed as failed:  # the run failed; the drill's report is still the answer
            result = failed.result
        emit(result, as_json, lambda c: c.print(
            f"Drill {'PASSED' if result['passed'] else 'FAILED'} on backup {result['backup']} "
            f"in {result['seconds']} s" + (f": {result['reason']}" if result["reason"] else "")
            + f"\nLogged to {result['log']}"))
        if not result["passed"]:
            raise typer.Exit(1)


@app.command("deploy")
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
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        from deployments.deploy import deploy_everything

        result = deploy_everything(work_pool, work_queue, settings, alert_webhook_url, notification_block)
        emit(result, as_json, lambda c: c.print(
            f"Work pool {work_pool} ({result['work_pool_status']}), queue {work_queue}; "
            f"{len(result['deployments'])} deployments; automations: "
            + ", ".join(f"{k} ({v})" for k, v in result["automations"].items())))


fleet_app = typer.Typer(help="Every database the Prefect server schedules.")
app.add_typer(fleet_app, name="fleet")


@fleet_app.command("status")
def fleet_status_command(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Host, last successful backup and its age, PITR lag, last verify, health and next run of every
    database; exit 1 when any breaches the runbook's thresholds."""
    with command(as_json):
        from flows.fleet import fleet_status

        result = fleet_status()
        emit(result, as_json, table_renderer(
            ["DB", "STATUS", "WHY", "HOST", "LAST BACKUP", "AGE H", "PITR LAG S", "VERIFY", "DRILL", "HEALTH",
             "NEXT RUN"],
            [[r["db"], r["status"], r["why"] or "-", r["host"] or "?", r["last_backup"] or "never",
              str(r["backup_age_hours"]), str(r["pitr_lag_seconds"]), r["last_verify"] or "-", r["last_drill"] or "-",
              r["health"], r["next_run"] or "-"] for r in result["databases"]],
            "No database is deployed on this server: `rem deploy` on each database host."))
        if not result["ok"]:
            raise typer.Exit(1)


# ------------------------------------------------------------------------------------- index


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
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        from flows.maintenance import index_rebuild

        result = index_rebuild(kind, schema, _settings_dict(settings))

        def render(console) -> None:
            for name in ("keys", "fields"):
                if name in result:
                    r = result[name]
                    console.print(f"{r['cf']}: {r['written']:,} rows written, {r['removed']:,} removed")
            if "hnsw" in result:
                from rich.table import Table

                table = Table("TENANT", "SCHEMA", "VECTORS", "DIM", "RECALL@10", "SECONDS")
                for b in result["hnsw"]:
                    table.add_row(b["tenant"], b["schema"], f"{b['vectors']:,}", str(b["dimensions"]),
                                  "n/a" if b["recall_at_10"] is None else f"{b['recall_at_10']:.3f}",
                                  f"{b['seconds']:.2f}")
                console.print(table)

        emit(result, as_json, render)


# ----------------------------------------------------------------------------------- metrics


@metrics_app.callback(invoke_without_command=True)
def metrics_print(
    ctx: typer.Context,
    textfile: Optional[Path] = typer.Option(None, "--textfile", help="Write atomically here (node_exporter)"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Print the metrics in Prometheus text format (or write them to --textfile)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        from prometheus_client import generate_latest, write_to_textfile

        from tasks.monitoring import metrics_registry

        registry = metrics_registry(settings)
        if textfile:
            write_to_textfile(str(textfile), registry)
        if as_json:
            emit({s.name + ("{" + ",".join(f'{k}="{v}"' for k, v in s.labels.items()) + "}" if s.labels else ""):
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
    settings = ctx.obj.settings()
    with command(False):
        from socketserver import ThreadingMixIn
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

        from prometheus_client import generate_latest

        from tasks.monitoring import metrics_registry

        def app_(environ, start_response):
            if environ.get("PATH_INFO") != "/metrics":
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"see /metrics\n"]
            body = generate_latest(metrics_registry(settings))
            start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")])
            return [body]

        class Server(ThreadingMixIn, WSGIServer):
            """A thread per scrape: an idle or slow client never blocks the others."""
            daemon_threads = True

        class Handler(WSGIRequestHandler):
            timeout = 10  # seconds a client may stay silent before its connection is dropped

            def log_message(self, *args):
                pass

        server = make_server(host, port, app_, server_class=Server, handler_class=Handler)
        from cli.output import err

        err.print(f"Serving http://{host}:{server.server_port}/metrics")
        server.serve_forever()


@pitr_app.command("archive")
def pitr_archive(
    ctx: typer.Context,
    follow: bool = typer.Option(False, "--follow", help="Keep running: pin each new log at once, ship every interval"),
    interval: Optional[float] = typer.Option(None, "--interval", min=0.2,
                                             help="Seconds between shipments with --follow (default [pitr] follow_interval_seconds, 1)"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Ship RocksDB's log to the archive: one pass (the 5-minute deployment), or --follow."""
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        from flows.pitr import wal_archive

        if follow and not as_json:  # a follower says what each pass shipped, as Litestream's does
            import logging

            from tasks.runtime import get_logger

            get_logger()  # the rem logger's handler, made on first use
            logging.getLogger("rem").setLevel(logging.INFO)
        result = wal_archive(_settings_dict(settings), follow=follow, interval_seconds=interval)
        emit(result, as_json, lambda c: c.print(f"Skipped: {result['skipped']}") if "skipped" in result else c.print(
            f"Archived {result['archived_batches']:,} batches in {len(result['segments'])} segment(s) "
            f"({result['passes']} pass(es)); archived through sequence {result['last_archived_sequence']}, "
            f"confirmed at {result['confirmed_timestamp']}, {result['lag_batches']:,} behind"))


@pitr_app.command("status")
def pitr_status_command(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Archive lag in seconds and in batches behind the live database."""
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        from flows.pitr import pitr_status

        status = pitr_status(settings)
        lag = "n/a" if status["lag_seconds"] is None else f"{status['lag_seconds']:.0f} s"
        emit(status, as_json, lambda c: c.print(
            f"PITR {'enabled' if status['enabled'] else 'not enabled'}; archive {status['manifest']}\n"
            f"Live database at sequence {status['live_last_sequence']:,}, archived through "
            f"{status['last_archived_sequence']} (confirmed {status['confirmed_timestamp']}); lag "
            f"{status['lag_batches']} batches, {lag}"
            + (f"\nBroken: {status['broken_ranges']}" if status["broken_ranges"] else "")))


@pitr_app.command("list-recovery-points")
def pitr_list(ctx: typer.Context, from_db: Optional[str] = FROM_DB_OPTION, as_json: bool = JSON_OPTION) -> None:
    """BASE BACKUP, RECOVERY WINDOW and what breaks it, for every usable base backup."""
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        from flows.pitr import recovery_points

        rows = recovery_points(settings, from_db)
        emit(rows, as_json, table_renderer(
            ["BASE BACKUP", "BASE SEQUENCE", "RECOVERY WINDOW", "BROKEN"],
            [[r["base_backup"], str(r["base_last_sequence"]), f"{r['window_start']} to {r['window_end']}",
              r["broken"]] for r in rows], "No base backups: take one with `rem backup create --upload`."))


@pitr_app.command("restore")
def pitr_restore_command(
    ctx: typer.Context,
    timestamp: str = typer.Option(..., "--timestamp", help="Target time; without a zone it is UTC"),
    output: Path = typer.Option(..., "--output", help="New database directory (must be empty or absent)"),
    tenant: Optional[str] = typer.Option(None, "--tenant", help="Keep only this tenant's rows"),
    from_db: Optional[str] = FROM_DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Newest base backup at or before the target, then the archived log replayed up to it by RocksDB."""
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        tenant = _tenant(tenant)
        from flows.pitr import pitr_restore

        result = pitr_restore(timestamp, str(output), tenant, _settings_dict(settings), from_db)
        emit(result, as_json, lambda c: c.print(
            f"Restored {result['output']} to {result['target']}: base {result['base_backup']} + "
            f"{result['replayed_batches']:,} batches replayed by RocksDB (through sequence {result['last_sequence']:,})"))


@pitr_app.command("verify")
def pitr_verify_command(
    ctx: typer.Context,
    timestamp: str = typer.Option(..., "--timestamp", help="Target time; without a zone it is UTC"),
    tenant: Optional[str] = typer.Option(None, "--tenant"),
    from_db: Optional[str] = FROM_DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Check the base backup, every segment a restore needs and their continuity; writes no database."""
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        tenant = _tenant(tenant)
        from flows.pitr import pitr_verify

        result = pitr_verify(timestamp, tenant, _settings_dict(settings), from_db)
        emit(result, as_json, lambda c: c.print(
            f"A restore to {timestamp} would start from {result['base_backup']} (sequence "
            f"{result['base_last_sequence']:,}) and replay {result['batches']:,} batches from {result['segments']} "
            "verified segment(s)"))


@pitr_app.command("enable")
def pitr_enable(
    ctx: typer.Context,
    bucket: str = typer.Option(..., "--bucket", help="Bucket for the WAL archive"),
    interval: int = typer.Option(300, "--interval", min=10, help="Seconds between archival passes"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Write the pitr settings table to the config file every command reads (--config, P8_CONFIG, or the
    database's own beside it: {db_path}.rem.toml)."""
    import tomllib

    with command(as_json):
        import tomli_w

        from rem.settings import config_file

        path = config_file(ctx.obj.config, ctx.obj.flags.get("db_path"))
        data = tomllib.loads(path.read_text()) if path.exists() else {}
        data.setdefault("pitr", {}).update(enabled=True, bucket=bucket, interval_seconds=interval)
        from rem.settings import load_settings

        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(tomli_w.dumps(data))
        try:
            settings = load_settings(tmp, **ctx.obj.flags)  # refuse to write a file the next command could not read
        except Exception:
            tmp.unlink()
            raise
        tmp.replace(path)
        from tasks.runtime import prefect_api_url

        if prefect_api_url():
            from prefect.client.orchestration import get_client

            from deployments.deploy import enable_pitr_automations, set_wal_archive_schedule

            with get_client(sync_client=True) as client:
                from tasks.storage import identity

                deployment = "wal-archive deployment: " + set_wal_archive_schedule(client, identity(settings).name,
                                                                                   interval, True)
                deployment += "; automations: " + ", ".join(f"{k} ({v})" for k, v in
                                                             enable_pitr_automations(client).items())
        else:
            deployment = "no Prefect API configured: `rem deploy` will schedule wal-archive at this interval"
        result = {"ok": True, "config": str(path), "pitr": data["pitr"], "deployment": deployment}
        emit(result, as_json, lambda c: c.print(f"PITR enabled in {path}: bucket {bucket}, every {interval} s. "
                                                 f"{result['deployment']}."))


@app.command("export")
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
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        tenant = _tenant(tenant)
        if fmt != "parquet":
            fail(f"--format {fmt!r}: only parquet is supported", 2, as_json)
        if upload and not settings.s3_bucket:
            fail("--upload needs a bucket: set P8_S3_BUCKET (or --bucket)", 2, as_json)
        from flows.export import tenant_export

        wanted = [s.strip() for s in schemas.split(",") if s.strip()] if schemas else None
        result = tenant_export(tenant, str(output) if output else None, wanted, upload, include_deleted,
                               _settings_dict(settings))
        emit(result, as_json, lambda c: [c.print(
            f"{f['schema']}: {f['rows']:,} rows -> {f.get('uploaded') or f['path']}"
            + (f" ({f['nulled_values']} values did not fit their type)" if f["nulled_values"] else ""))
            for f in result["files"]])


@app.command("query")
def query(
    ctx: typer.Context,
    sql: str = typer.Argument(..., help='Read-only SQL; tables are schema names: "SELECT COUNT(*) FROM articles"'),
    tenant: Optional[str] = typer.Option(None, "--tenant", help="Only this tenant's entities"),
    include_deleted: bool = typer.Option(False, "--include-deleted", help="Include soft-deleted entities"),
    memory_limit_mb: int = typer.Option(1024, "--memory-limit-mb", min=64, help="DuckDB's memory for the query"),
    timeout: float = typer.Option(60, "--timeout", min=0.1, max=86400, help="Seconds before the query is stopped"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Read-only SQL (DuckDB) over the database's schemas; works on a live or a restored database."""
    settings = ctx.obj.settings(as_json)
    with command(as_json):
        tenant = _tenant(tenant)
        from flows.export import run_query

        result = run_query(sql, str(settings.db_path), tenant, include_deleted, memory_mb=memory_limit_mb,
                           timeout=timeout)
        emit(result, as_json, table_renderer(result["columns"], result["rows"]))


def _moved_before_command(argv: list[str], option: str) -> list[str]:
    """argv with a global option (and its value) moved to the front, where it belongs."""
    takes_value = option not in ("--page", "--verbose", "-v")
    for i, arg in enumerate(argv):
        if arg == option or arg.startswith(option + "="):
            width = 2 if takes_value and arg == option else 1
            return argv[i:i + width] + argv[:i] + argv[i + width:]
    return argv


def main() -> None:
    import shlex
    import sys

    from typer import rich_utils

    try:  # typer 0.20+ carries its own copy of click, and keeps Abort in typer.exceptions
        from typer._click import exceptions as click
        from typer.exceptions import Abort
    except ImportError:
        from click import exceptions as click
        from click.exceptions import Abort

    try:
        code = app(standalone_mode=False)
    except click.NoSuchOption as exc:
        globals_ = {name for param in typer.main.get_command(app).params for name in param.opts}
        if exc.option_name in globals_:  # `rem db stats --db-path X`: say where it goes
            fixed = " ".join(shlex.quote(a) for a in ["rem", *_moved_before_command(sys.argv[1:], exc.option_name)])
            exc.message = f"{exc.option_name} is a global option: give it before the command, as in: {fixed}"
        rich_utils.rich_format_error(exc)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        rich_utils.rich_format_error(exc)
        sys.exit(exc.exit_code)
    except Abort:
        print("Aborted!", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
