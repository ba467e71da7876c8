"""`rem backup ...`: create, list, fetch, restore, verify and prune backups; lifecycle rules."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.options import (BACKUP_NAME_OPTION, FROM_DB_OPTION, JSON_OPTION, RATE_LIMIT_OPTION, WHICH_TENANT_OPTION,
                         limited, params, tenant_value)
from cli import render
from cli.output import cli_run, fail, human_bytes, out, show

backup_app = typer.Typer(no_args_is_help=True, help="Backups: create, list, download, restore, verify, prune, lifecycle.")
lifecycle_app = typer.Typer(no_args_is_help=True, help="S3 lifecycle rules for the backup bucket.")
backup_app.add_typer(lifecycle_app, name="lifecycle")


@backup_app.command("create")
def backup_create(
    ctx: typer.Context,
    name: Optional[str] = typer.Option(None, "--name", help="Backup name (default: the UTC time)"),
    upload: bool = typer.Option(False, "--upload", help="Store in S3 (P8_S3_BUCKET) instead of the local directory"),
    tenant: Optional[str] = typer.Option(None, "--tenant", help="Back up only this tenant (plus the schemas)"),
    archive: bool = typer.Option(False, "--archive", help="One self-contained rocksdb.tar.zst (the runbook's "
                                 "format, to move a database elsewhere) instead of an incremental backup"),
    rate_limit: Optional[float] = RATE_LIMIT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Whole-database backups are incremental: snapshot -> the SSTs the repository lacks, uploaded once
    each -> small files -> file list -> metadata last. --archive and --tenant write one tar.zst."""
    with cli_run(ctx, as_json) as settings:
        tenant = tenant_value(tenant)
        if upload and not (settings.s3_bucket or settings.storage_block):
            fail("--upload needs a bucket: set P8_S3_BUCKET (or [backup.s3] bucket in the config, or --bucket)", 2,
                 as_json)
        from flows.backup import full_backup

        result = full_backup(params(limited(settings, rate_limit)), tenant=tenant, name=name, upload=upload,
                             archive=archive)
        show(result, as_json, lambda c: c.print(
            f"Backup {result['name']} of {result['tenant_id'] or 'the whole database'}: "
            f"{'~' if result['counts'] == 'estimated' else ''}{result['entity_count']:,} entities, "
            f"{human_bytes(result['size_bytes'])} "
            f"(from {human_bytes(result['uncompressed_bytes'])}) in {result['duration_seconds']:.1f} s\n"
            f"Location: {result['location']}\nSHA-256: {result['checksum_sha256']}"))


@backup_app.command("list")
def backup_list(ctx: typer.Context, from_db: Optional[str] = FROM_DB_OPTION,
                all_dbs: bool = typer.Option(False, "--all-dbs", help="Every database's backups in the stores"),
                detail: bool = typer.Option(False, "--detail", help="Every field of each backup's metadata: "
                                            "duration, sizes, host, online, sequence numbers, checksum, ..."),
                as_json: bool = JSON_OPTION) -> None:
    """This database's backups, local and S3 merged, newest first (and the old layout's, as db 'legacy')."""
    with cli_run(ctx, as_json) as settings:
        from rem.backup.listing import list_backups
        from runtime.observe import get_logger
        from runtime.wiring import listed_stores

        rows, unreachable, notes = list_backups(*listed_stores(settings, from_db, all_dbs), detail)
        for note in notes:
            get_logger().warning(note)
        show(rows, as_json, render.backup_list(rows, detail))
        if unreachable:
            fail("; ".join(f"{where} could not be listed ({why}): its backups are missing above"
                           for where, why in unreachable.items()), 1)


@backup_app.command("download")
def backup_download(
    ctx: typer.Context,
    name: str = BACKUP_NAME_OPTION,
    output: Path = typer.Option(..., "--output", help="Directory; the backup goes to OUTPUT/NAME/"),
    tenant: Optional[str] = WHICH_TENANT_OPTION,
    from_db: Optional[str] = FROM_DB_OPTION,
    rate_limit: Optional[float] = RATE_LIMIT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Download a backup (parallel ranged GETs; an interrupted download resumes)."""
    with cli_run(ctx, as_json) as settings:
        tenant = tenant_value(tenant)
        from flows.restore import download_backup

        result = download_backup(name, str(output), params(limited(settings, rate_limit)), tenant, from_db=from_db)
        show(result, as_json, lambda c: c.print(f"Downloaded {name} to {result['path']}"))


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
    delta: bool = typer.Option(False, "--delta", help="Over the database at the target: keep its files that "
                               "match the backup's (size and SHA-256), fetch and write only the rest (implies "
                               "--overwrite)"),
    rate_limit: Optional[float] = RATE_LIMIT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Verify the checksum, extract safely, check every column family, then put into place."""
    with cli_run(ctx, as_json) as settings:
        if (source is None) == (name is None):
            fail("give the backup with --source DIR (a backup directory) or --name NAME (one in the stores, "
                 "`latest` for the newest; see `rem backup list`)", 2, as_json)
        from flows.restore import restore, restore_named

        if name is not None:
            result = restore_named(name, str(target or settings.db_path), overwrite,
                                   params(limited(settings, rate_limit)), tenant_value(tenant), from_db, delta)
        else:
            result = restore(str(source), str(target or settings.db_path), overwrite, delta)
        if rebuild_indexes:
            from flows.maintenance import index_rebuild

            restored = settings.model_copy(update={"db_path": Path(result["target"])})
            result["index_rebuild"] = index_rebuild("all", None, params(restored))
        show(result, as_json, lambda c: c.print(
            f"Restored {result['name']} into {result['target']}: "
            + (f"~{result['entity_count']:,} entities (RocksDB's estimate; `rem db stats` counts them), "
               if result["counts"] == "estimated" else f"{result['entity_count']:,} entities, ")
            + "checksum verified" + (" (repaired, nothing dropped)" if result["repaired"] else "")
            + (f"; kept {result['delta']['kept_files']} files ({human_bytes(result['delta']['kept_bytes'])}) of the "
               "target that matched" if "delta" in result else "")))


@backup_app.command("verify")
def backup_verify(
    ctx: typer.Context,
    name: str = BACKUP_NAME_OPTION,
    tenant: Optional[str] = WHICH_TENANT_OPTION,
    from_db: Optional[str] = FROM_DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Checksum plus a trial restore into a temporary directory; the live database is not touched."""
    with cli_run(ctx, as_json) as settings:
        tenant = tenant_value(tenant)
        from flows.restore import verify_backup

        result = verify_backup(name, params(settings), tenant, from_db)
        show(result, as_json, lambda c: c.print(
            f"Backup {name} verified: checksum matches, trial restore holds {result['entity_count']:,} entities"))


@backup_app.command("takeover")
def backup_takeover(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Make this database the owner of its name: for a copy restored to replace the original for good
    (its disk is gone). The original's next backup or prune is then refused."""
    with cli_run(ctx, as_json) as settings:
        from runtime.wiring import identity, take_over

        me = identity(settings)
        replaced = take_over(settings)
        show({"ok": True, "db_name": me.name, "host": me.host, "path": me.path, "stores": replaced}, as_json,
             lambda c: c.print("\n".join(
                 f"{r['store']}: now {me.host}:{me.path}" + (f" (was {r['previous'].get('host')}:"
                                                            f"{r['previous'].get('path')})" if r["previous"] else "")
                 for r in replaced)))


@backup_app.command("keep")
def backup_keep(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The backup (`latest`: the newest)"),
    until: Optional[str] = typer.Option(None, "--until", help="Keep it up to this date (default: for good)"),
    release: bool = typer.Option(False, "--release", help="Stop keeping it: prune's rules apply again"),
    tenant: Optional[str] = WHICH_TENANT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Keep a backup: prune never deletes it, nor the SSTs and log segments it needs, and S3 lifecycle
    expiry spares it."""
    with cli_run(ctx, as_json) as settings:
        from rem.backup.keep import keep_reason, set_keep
        from runtime.wiring import find_record

        record = find_record(settings, name, tenant_value(tenant), None)
        updated = set_keep(record, until, release)
        show({"ok": True, "name": updated.name, "tenant_id": updated.tenant_id, "kept": updated.kept,
              "keep_until": updated.keep_until, "location": record.location}, as_json,
             lambda c: c.print(f"Backup {updated.name}: " + (keep_reason(updated) if updated.kept else
                                                              "no longer kept; prune's rules apply")))


@backup_app.command("annotate")
def backup_annotate(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The backup (`latest`: the newest)"),
    pairs: list[str] = typer.Argument(..., help="key=value (key= removes the key)"),
    tenant: Optional[str] = WHICH_TENANT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Attach key=value notes to a backup (why it was taken, a ticket): shown by `backup list --detail`."""
    with cli_run(ctx, as_json) as settings:
        from rem.backup.keep import annotate
        from runtime.wiring import find_record

        record = find_record(settings, name, tenant_value(tenant), None)
        updated = annotate(record, pairs)
        show({"ok": True, "name": updated.name, "tenant_id": updated.tenant_id, "annotations": updated.annotations},
             as_json, lambda c: c.print(f"Backup {updated.name}: " + (" ".join(
                 f"{k}={v}" for k, v in sorted(updated.annotations.items())) or "no annotations")))


@backup_app.command("rekey")
def backup_rekey(
    ctx: typer.Context,
    kms_key_id: Optional[str] = typer.Option(None, "--kms-key-id", help="The new KMS key (id, ARN or alias)"),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help="The new 32-byte key file"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Wrap this database's data keys again under a new KMS key or key file (the current one must still
    unwrap them); no backup, segment or export is rewritten. Then point the settings at the new key."""
    with cli_run(ctx, as_json) as settings:
        from runtime.wiring import rekey

        stores = rekey(settings, kms_key_id, str(key_file) if key_file else None)
        result = {"ok": True, "stores": stores, "rewrapped": [k for s in stores for k in s["rewrapped"]],
                  "next": "set P8_KMS_KEY_ID (or [backup] kms_key_id, or the REM Backup Encryption block) to the new "
                          "key" if kms_key_id else "set P8_BACKUP_KEY_FILE (or [backup] key_file) to the new file"}
        show(result, as_json, lambda c: [c.print(f"{s['store']}: {len(s['rewrapped'])} data key(s) rewrapped "
                                                 f"under {s['rewrapped'][0]['to'] if s['rewrapped'] else '-'}")
                                         for s in stores] + [c.print(f"Next: {result['next']}.")])


@backup_app.command("prune")
def backup_prune(
    ctx: typer.Context,
    keep_daily: Optional[int] = typer.Option(None, "--keep-daily", min=0, help="Default: [backup] keep_daily (7)"),
    keep_weekly: Optional[int] = typer.Option(None, "--keep-weekly", min=0, help="Default: [backup] keep_weekly (4)"),
    keep_monthly: Optional[int] = typer.Option(None, "--keep-monthly", min=0,
                                               help="Default: [backup] keep_monthly (3)"),
    tenant: Optional[str] = typer.Option(None, "--tenant", help="Only this tenant's backups (`_all`: whole-database)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan only"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Keep a grandfather-father-son set (never the newest, never the PITR base); delete the rest, local and S3."""
    with cli_run(ctx, as_json) as settings:
        tenant = tenant_value(tenant, allow_all=True)
        from flows.retention import prune

        args = (keep_daily, keep_weekly, keep_monthly, tenant)
        plan = prune(*args, dry_run=True, settings=params(settings))
        if not as_json:
            render.prune_plan(out, plan)  # the plan is shown before anything is deleted
        if dry_run:
            show(plan, as_json)
            return
        result = prune(*args, dry_run=False, settings=params(settings))
        show(result, as_json, lambda c: c.print(f"Deleted {len(result['delete'])} backup(s), kept {len(result['keep'])}."))


@lifecycle_app.command("apply")
def lifecycle_apply(
    ctx: typer.Context,
    keep_monthly: int = typer.Option(3, "--keep-monthly", min=0, help="To explain how prune and expiry combine"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Install the runbook's rules: Glacier after 30 days, expiry after 90, stale uploads aborted after 1."""
    with cli_run(ctx, as_json) as settings:
        if not settings.s3_bucket:
            fail("lifecycle rules need a bucket: set P8_S3_BUCKET (or --bucket)", 2, as_json)
        from rem.retention import apply_lifecycle
        from runtime.wiring import identity, remote_store

        result = apply_lifecycle(remote_store(settings), identity(settings).name, keep_monthly=keep_monthly,
                                 lock_days=settings.lock_days if settings.backup_object_lock != "none" else None)
        show(result, as_json, lambda c: [c.print(f"Lifecycle rules installed on s3://{result['bucket']}:"),
                                         *[c.print(f"  {r['ID']}") for r in result["rules"]],
                                         *[c.print(f"- {n}") for n in result["notes"]]])
