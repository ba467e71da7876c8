"""`rem pitr ...`: archive RocksDB's log, see its state, restore to a time."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.options import FROM_DB_OPTION, JSON_OPTION, RATE_LIMIT_OPTION, limited, params, tenant_value
from cli import render
from cli.output import cli_run, fail, human_bytes, show, table_renderer

pitr_app = typer.Typer(no_args_is_help=True, help="Point-in-time recovery: WAL archival and restore to a timestamp.")


@pitr_app.command("archive")
def pitr_archive(
    ctx: typer.Context,
    follow: bool = typer.Option(False, "--follow", help="Keep running: pin each new log at once, ship every interval"),
    interval: Optional[float] = typer.Option(None, "--interval", min=0.2,
                                             help="Seconds between shipments with --follow (default [pitr] follow_interval_seconds, 1)"),
    rate_limit: Optional[float] = RATE_LIMIT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Ship RocksDB's log to the archive: one pass (the 5-minute deployment), or --follow."""
    with cli_run(ctx, as_json) as settings:
        from flows.pitr import wal_archive

        if follow and not as_json:  # a follower says what each pass shipped, as Litestream's does
            import logging

            from runtime.observe import get_logger

            get_logger()  # the rem logger's handler, made on first use
            logging.getLogger("rem").setLevel(logging.INFO)
        result = wal_archive(params(limited(settings, rate_limit)), follow=follow, interval_seconds=interval)
        show(result, as_json, lambda c: c.print(f"Skipped: {result['skipped']}") if "skipped" in result else c.print(
            f"Archived {result['archived_batches']:,} batches in {len(result['segments'])} segment(s) "
            f"({result['passes']} pass(es)); archived through sequence {result['last_archived_sequence']}, "
            f"confirmed at {result['confirmed_timestamp']}, {result['lag_batches']:,} behind"))


@pitr_app.command("status")
def pitr_status_command(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Archive lag in seconds and in batches behind the live database."""
    with cli_run(ctx, as_json) as settings:
        from rem.wal_archive import archive_report
        from runtime.wiring import log_archive

        status = archive_report(log_archive(settings), settings.db_path, settings.pitr_enabled)
        lag = "n/a" if status["lag_seconds"] is None else f"{status['lag_seconds']:.0f} s"
        show(status, as_json, lambda c: c.print(
            f"PITR {'enabled' if status['enabled'] else 'not enabled'}; archive {status['manifest']}\n"
            f"Live database at sequence {status['live_last_sequence']:,}, archived through "
            f"{status['last_archived_sequence']} (confirmed {status['confirmed_timestamp']}); lag "
            f"{status['lag_batches']} batches, {lag}"
            + (f"\nBroken: {status['broken_ranges']}" if status["broken_ranges"] else "")))


@pitr_app.command("list-recovery-points")
def pitr_list(ctx: typer.Context, from_db: Optional[str] = FROM_DB_OPTION, as_json: bool = JSON_OPTION) -> None:
    """BASE BACKUP, RECOVERY WINDOW and what breaks it, for every usable base backup."""
    with cli_run(ctx, as_json) as settings:
        from rem.wal_archive import recovery_points
        from runtime.wiring import all_stores, log_archive

        rows = recovery_points(all_stores(settings, from_db=from_db), log_archive(settings, from_db=from_db))
        show(rows, as_json, table_renderer(
            ["BASE BACKUP", "BASE SEQUENCE", "RECOVERY WINDOW", "BROKEN"],
            [[r["base_backup"], str(r["base_last_sequence"]), f"{r['window_start']} to {r['window_end']}",
              r["broken"]] for r in rows], "No base backups: take one with `rem backup create --upload`."))


@pitr_app.command("log")
def pitr_log_command(
    ctx: typer.Context,
    start: str = typer.Option(..., "--from", help="Changes after this time; without a zone it is UTC"),
    end: str = typer.Option(..., "--to", help="Changes up to and including this time"),
    tenant: Optional[str] = typer.Option(None, "--tenant", help="Only this tenant's changes"),
    schema: Optional[str] = typer.Option(None, "--schema", help="Only entities of this schema"),
    entity: Optional[list[str]] = typer.Option(None, "--entity", help="Only this entity (repeat for more)"),
    key: Optional[str] = typer.Option(None, "--key", help="Only the entity with this key (uri, key field, key, name)"),
    detail: bool = typer.Option(False, "--detail", help="Each change, not only the summary by second"),
    from_db: Optional[str] = FROM_DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Every change the archived log holds in a time range, decoded from RocksDB's WriteBatches into the
    engine's terms; reads only the store (base backups and segments), never the live database."""
    with cli_run(ctx, as_json) as settings:
        tenant = tenant_value(tenant)
        from flows.pitr import pitr_log

        result = pitr_log(start, end, tenant, schema, entity, key, detail, params(settings), from_db)
        show(result, as_json, lambda c: render.change_log(c, result))


@pitr_app.command("undo")
def pitr_undo_command(
    ctx: typer.Context,
    start: Optional[str] = typer.Option(None, "--from", help="Undo the writes after this time (UTC without a zone)"),
    end: Optional[str] = typer.Option(None, "--to", help="... up to and including this time"),
    tenant: Optional[str] = typer.Option(None, "--tenant", help="Only this tenant's writes"),
    schema: Optional[str] = typer.Option(None, "--schema", help="Only entities of this schema"),
    entity: Optional[list[str]] = typer.Option(None, "--entity", help="Only this entity (repeat for more)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be written and the conflicts; write nothing"),
    force: bool = typer.Option(False, "--force", help="Also put back keys written again after --to (those writes "
                               "are lost)"),
    revert: Optional[str] = typer.Option(None, "--revert", help="Undo an undo: the record it printed"),
    wait_for_approval: bool = typer.Option(False, "--wait-for-approval", help="Under Prefect: publish the preview "
                                           "and wait until someone approves it in the Prefect UI"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Put every key the writes of a range wrote back at its value at --from, and leave every other write
    alone, including every write after --to; the engine must be stopped. Saves a record first (--revert)."""
    with cli_run(ctx, as_json) as settings:
        tenant = tenant_value(tenant)
        from flows.pitr import pitr_undo, pitr_undo_revert

        if revert is not None:
            result = pitr_undo_revert(revert, force, dry_run, params(settings))
        elif start is None or end is None:
            fail("give the range with --from T1 --to T2 (see `rem pitr log`), or --revert RECORD", 2, as_json)
        else:
            result = pitr_undo(start, end, tenant, schema, entity, dry_run, force, params(settings),
                               wait_for_approval=wait_for_approval)
        show(result, as_json, lambda c: render.undo(c, result))


@pitr_app.command("restore")
def pitr_restore_command(
    ctx: typer.Context,
    timestamp: str = typer.Option(..., "--timestamp", help="Target time; without a zone it is UTC"),
    output: Optional[Path] = typer.Option(None, "--output", help="New database directory (must be empty or absent)"),
    tenant: Optional[str] = typer.Option(None, "--tenant", help="Keep only this tenant's rows"),
    from_db: Optional[str] = FROM_DB_OPTION,
    dry_run: bool = typer.Option(False, "--dry-run", help="The plan only (and with --tenant what would change "
                                 "against the live database); nothing is written"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Newest base backup at or before the target, then the archived log replayed up to it by RocksDB."""
    with cli_run(ctx, as_json) as settings:
        tenant = tenant_value(tenant)
        from flows.pitr import pitr_restore

        if output is None and not dry_run:
            fail("give --output DIR (a new or empty directory), or --dry-run for the plan only", 2, as_json)
        result = pitr_restore(timestamp, str(output) if output else None, tenant, params(settings), from_db, dry_run)
        show(result, as_json, lambda c: render.restore_preview(c, result) if dry_run else c.print(
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
    with cli_run(ctx, as_json) as settings:
        tenant = tenant_value(tenant)
        from flows.pitr import pitr_verify

        result = pitr_verify(timestamp, tenant, params(settings), from_db)
        show(result, as_json, lambda c: c.print(
            f"A restore to {timestamp} would start from {result['base_backup']} (sequence "
            f"{result['base_last_sequence']:,}) and replay {result['batches']:,} batches from {result['segments']} "
            f"verified segment(s): {human_bytes(result['bytes_to_fetch'])} fetched, about "
            f"{human_bytes(result['database_bytes_after'])} of database after"))


@pitr_app.command("enable")
def pitr_enable(
    ctx: typer.Context,
    bucket: str = typer.Option(..., "--bucket", help="Bucket for the WAL archive"),
    interval: int = typer.Option(300, "--interval", min=10, help="Seconds between archival passes"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Write the pitr settings table to the config file every command reads (--config, P8_CONFIG, or the
    database's own beside it: {db_path}.rem.toml)."""
    with cli_run(ctx, as_json, settings=False):
        from deployments.deploy import schedule_pitr
        from rem.settings import config_file, enable_pitr
        from runtime.wiring import identity

        path = config_file(ctx.obj.config, ctx.obj.flags.get("db_path"))
        table, settings = enable_pitr(path, bucket, interval, **ctx.obj.flags)
        result = {"ok": True, "config": str(path), "pitr": table,
                  "deployment": schedule_pitr(identity(settings).name, interval)}
        show(result, as_json, lambda c: c.print(f"PITR enabled in {path}: bucket {bucket}, every {interval} s. "
                                                 f"{result['deployment']}."))
