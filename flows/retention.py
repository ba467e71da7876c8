"""Retention (grandfather-father-son prune) and scheduled recovery drills."""

from __future__ import annotations

import json
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flows.backup import full_backup
from runtime.wiring import resolve_settings
from rem.db import open_db
from rem.stats import collect_stats
from rem.verify import verify_database
from tasks.restore import put_into_place, unpacked
from rem.backup.incremental import collect_garbage
from rem.retention import drop_wal_segments, plan_prune, segments_past_lock, split_locked
from rem.backup.layout import fetch
from rem.reports import drill_report
from runtime.observe import publish_report, send_event
from runtime.orchestration import flow
from rem.backup.catalog import UnreadableRecord, find_backup
from rem.errors import CheckFailed
from rem.identity import claim_name
from runtime.wiring import all_stores, identity, log_archive


def _archive_and_manifest(cfg):
    archive = log_archive(cfg)
    manifest, etag = archive.read_manifest()
    return archive, (manifest if etag else None)


@flow("prune", description="Keep a grandfather-father-son set of backups; delete the rest, local and S3.")
def prune(keep_daily: int | None = None, keep_weekly: int | None = None, keep_monthly: int | None = None,
          tenant: str | None = None, dry_run: bool = False, settings: dict[str, Any] | None = None,
          database_block: str | None = None) -> dict:
    """Grandfather-father-son retention, then the garbage no kept backup needs.

    Args:
        keep_daily: Keep the newest backup of each of the last N days that have one (empty: [backup] keep_daily, 7).
        keep_weekly: Of each of the last N ISO weeks (empty: [backup] keep_weekly, 4).
        keep_monthly: Of each of the last N months (empty: [backup] keep_monthly, 3).
        tenant: Only this tenant's backups (_all: whole-database ones); empty: every tenant, each on its own.
        dry_run: Report the plan only; delete nothing.
        settings: Settings as the command line passes them (leave empty in a deployment: the blocks say where).
        database_block: The REM Database block of the database (rem-db-{db}): its path, name and storage block.
    """
    cfg = resolve_settings(settings, database_block)
    keep_daily = cfg.backup_keep_daily if keep_daily is None else keep_daily
    keep_weekly = cfg.backup_keep_weekly if keep_weekly is None else keep_weekly
    keep_monthly = cfg.backup_keep_monthly if keep_monthly is None else keep_monthly
    stores = all_stores(cfg)
    me = identity(cfg)
    for store in stores:  # a database configured with another's name must not prune that one's backups
        claim_name(store.objects, me, write=False)
    records, unreadable = [], []
    for store in stores:  # an unreadable record is an unknown backup: nothing is deleted while one exists
        found, bad = store.scan(exact=not dry_run)  # what is deleted is judged on every object as it is now
        records += found
        unreadable += bad
    if unreadable:
        raise UnreadableRecord(unreadable)
    archive, manifest = _archive_and_manifest(cfg)
    plan = plan_prune(records, keep_daily, keep_weekly, keep_monthly, tenant,
                      archive.all_segments(manifest) if manifest else None)
    plan.delete, locked = split_locked(plan.delete)
    plan.wal_segments_to_delete = segments_past_lock(archive, plan.wal_segments_to_delete)
    result = {"dry_run": dry_run, **plan.to_dict(), "locked": locked}
    if not dry_run:
        changed = [r for store in stores for r in store.delete([r for r in plan.delete if r.store is store])]
        result["not_deleted_changed"] = [r.name for r in changed]
        if plan.wal_segments_to_delete and archive is not None:
            drop_wal_segments(archive, plan.wal_segments_to_delete)
    # The shared SSTs no remaining backup names (and what interrupted runs left) go after the backups.
    result["garbage"] = {store.url(): collect_garbage(store, cfg.backup_gc_grace_hours * 3600,
                                                           dry_run=dry_run).__dict__ for store in stores}
    publish_report("prune", f"# Prune {'(dry run)' if dry_run else ''}\n\nkept {len(plan.keep)}, "
                            f"deleted {len(plan.delete)}, WAL segments deleted {len(plan.wal_segments_to_delete)}"
                            + "".join(f"\n- {r['name']}: kept until {r['kept_until']} (object lock)" for r in locked))
    return result


def _per_schema_live(db_path) -> dict[str, int]:
    with open_db(db_path, "ro") as db:
        return {name: d.live for name, d in collect_stats(db).schemas_detail.items()}


@flow("recovery-drill", description="Backup -> download -> restore -> verify -> compare counts -> clean up.")
def recovery_drill(settings: dict[str, Any] | None = None, backup: str | None = None,
                   database_block: str | None = None, storage_block: str | None = None) -> dict:
    """Backup, download, restore, verify and compare; a failed drill fails the run (and pages).

    Args:
        settings: Settings as the command line passes them (leave empty in a deployment: the blocks say where).
        backup: Drill this existing backup; empty: take a fresh one first.
        database_block: The REM Database block of the database (rem-db-{db}): its path, name and storage block.
        storage_block: A REM Backup Storage block to use instead of the one the database block names.
    """
    cfg = resolve_settings(settings, database_block)
    started = time.monotonic()
    result: dict[str, Any] = {"started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "db_path": str(cfg.db_path), "backup": backup, "passed": False, "reason": None}
    try:
        if backup is None:
            backup = full_backup(cfg.model_dump(mode="json"), upload=True, storage_block=storage_block)["name"]
            result["backup"] = backup
        record = find_backup(all_stores(cfg), backup)
        with tempfile.TemporaryDirectory(prefix="rem-drill-") as tmp:
            source = fetch(record, Path(tmp) / "download")
            target = Path(tmp) / "restored"
            with unpacked(source, target) as base:
                put_into_place(base.db_dir, target)
            with open_db(target, "ro") as db:
                report = verify_database(db)
            if report.critical:
                raise RuntimeError(f"verify found {report.critical} critical issue(s) in the restored copy")
            restored, live = _per_schema_live(target), _per_schema_live(cfg.db_path)
            result["counts"] = {"restored": restored, "live": live}
            if restored != live:
                differ = {k: (restored.get(k), live.get(k)) for k in set(restored) | set(live)
                          if restored.get(k) != live.get(k)}
                raise RuntimeError(f"entity counts per schema differ, restored vs live: {differ}")
        result["passed"] = True
    except Exception as exc:  # a drill reports its failure; it is a result, not a crash
        result["reason"] = str(exc)
    result["seconds"] = round(time.monotonic() - started, 2)
    log = cfg.local_backup_dir / identity(cfg).name / "drill-log.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(json.dumps(result) + "\n")
    result["log"] = str(log)
    send_event("rem.drill.passed" if result["passed"] else "rem.drill.failed", cfg,
         {"backup": result["backup"], "reason": result["reason"]})
    publish_report("recovery-drill", drill_report(result), description=f"Recovery drill of {cfg.db_path}: "
                   + ("passed" if result["passed"] else f"FAILED: {result['reason']}"))
    if not result["passed"]:  # a drill that fails fails its run: the state is red and the failure pages
        raise CheckFailed(f"recovery drill of backup {result['backup']} failed: {result['reason']}", result)
    return result
