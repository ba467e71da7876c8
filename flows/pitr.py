"""Point-in-time recovery from RocksDB's own log: wal_archive (a pass, or the follower) and
pitr_restore (a base backup plus the archived log, replayed by RocksDB's own recovery)."""

from __future__ import annotations

import contextlib
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rem.backup.catalog import read_local_backup
from rem.change_log import ChangeFilter, summarize, summary_line
from rem.undo import (UndoPlan, check_record_name, decode_record, encode_record, plan_undo, record_name,
                      select, undo_key, undo_state)
from rem.backup.incremental import linked_files
from rem.backup.layout import fetch, layout_of
from rem.backup.restore import check_target, real_target
from rem.db import is_database, open_db
from rem.errors import DatabaseNotFound, RemError, UsageError
from rem.identity import claim_name
from rem.pitr import ArchiverBusy, LogPins, Pinner, check_log_options, format_micros
from rem.query import QUERY_MEMORY_MB, QUERY_TIMEOUT_SECONDS, check_query, run_query
from rem.reports import pitr_report, undo_report
from rem.storage import ObjectMissing
from rem.settings import Settings
from rem.tenant import tenant_difference
from rem.wal_archive import (PassReport, WalArchive, WalGap, archive_report, gap_message, micros, parse_time,
                             log_plan, restore_plan)
from runtime.observe import get_logger, publish_report, publish_table, send_event
from runtime.orchestration import flow
from runtime.orchestration import wait_for_approval as wait_for_approval_in_ui
from runtime.wiring import all_stores, identity, log_archive, resolve_settings
from tasks.pitr import (apply_undo, archive_once, check_pieces, decode_log, fetch_segments, narrow_to_tenant,
                        place_archived_logs, recover, save_undo_record)
from tasks.restore import put_into_place, unpacked, verify_archive

HEARTBEAT_SECONDS = 60  # a follower passing every second still emits one event a minute


def _stop_on_sigterm(stop: threading.Event) -> None:
    """systemd's stop (SIGTERM), or Ctrl-C at a terminal, ends the follower after one last pass."""
    with contextlib.suppress(ValueError):  # not the main thread: the caller stops it
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())


@flow("wal-archive", description="Ship RocksDB's log to S3: one pass, or a follower that pins every new log.")
def wal_archive(settings: dict[str, Any] | None = None, database_block: str | None = None, follow: bool = False,
                interval_seconds: float | None = None, stop: threading.Event | None = None) -> dict[str, Any]:
    """One archival pass over RocksDB's log, or the follower.

    Args:
        settings: Settings as the command line passes them (leave empty in a deployment: the blocks say where).
        database_block: The REM Database block of the database (rem-db-{db}): its path, name and storage block.
        follow: Keep running: pin each new log at once and ship every interval, until cancelled.
        interval_seconds: Seconds between the follower's shipments; empty: [pitr] follow_interval_seconds.
        stop: Set to end the follower (in-process callers only).
    """
    cfg = resolve_settings(settings, database_block)
    interval = interval_seconds or cfg.pitr_follow_interval_seconds
    if not is_database(cfg.db_path):
        raise DatabaseNotFound(str(cfg.db_path))  # before anything is created beside it
    check_log_options(cfg.db_path)
    archive = log_archive(cfg)
    pins = LogPins(cfg.db_path)
    try:
        pins.lock()
    except ArchiverBusy as exc:
        if follow:
            raise
        get_logger().info("%s: this pass has nothing to do", exc)  # the follower ships; no page for that
        return {"ok": True, "skipped": str(exc), "passes": 0, "archived_batches": 0, "segments": []}
    totals = {"passes": 0, "failed_passes": 0, "archived_batches": 0, "segments": [], "gaps": []}
    try:
        claim_name(archive.objects, identity(cfg), write=True)
        if follow:
            report = _follow(cfg, archive, pins, interval, stop or threading.Event(), totals)
        else:
            report = archive_once(cfg, archive, pins)
            _account(cfg, report, totals)
            if report.new_gaps:
                raise WalGap(gap_message(report.new_gaps[0]))
            send_event("rem.wal.archived", cfg, _beat(report))
            publish_report("wal-archive", pitr_report(archive_report(archive, cfg.db_path, cfg.pitr_enabled)),
                           description=f"Log archive of {archive.db} after one pass")
    finally:
        pins.unlock()
    return {"ok": True, **totals, "last_archived_sequence": report.last_archived_sequence,
            "last_archived_timestamp": report.last_archived_timestamp,
            "confirmed_timestamp": report.confirmed_timestamp, "live_last_sequence": report.live_last_sequence,
            "lag_batches": report.lag_batches, "gaps": [g.model_dump() for g in totals["gaps"]]}


def _follow(cfg: Settings, archive: WalArchive, pins: LogPins, interval: float, stop: threading.Event,
            totals: dict) -> PassReport:
    """Pass after pass until stopped, then one last; the pinner keeps every new log all along, so a
    pass that fails (S3 away) loses nothing: it is logged, reported at most once a minute, retried."""
    pinner = Pinner(pins)
    _stop_on_sigterm(stop)
    pinner.start()
    report, last_beat, last_failure, final = None, 0.0, 0.0, False
    try:
        while True:
            began = time.monotonic()
            try:  # plain calls, not task runs: one a second would flood the Prefect UI
                report = archive_once.fn(cfg, archive, pins)
            except UsageError:
                raise
            except Exception as exc:
                totals["failed_passes"] += 1
                get_logger().error("log archival pass failed, next try in %g s: %s", interval, exc)
                if time.monotonic() - last_failure >= HEARTBEAT_SECONDS:
                    send_event("rem.wal.archive.failed", cfg, {"reason": f"{type(exc).__name__}: {exc}"})
                    last_failure = time.monotonic()
            else:
                _account(cfg, report, totals)
                beat = time.monotonic() - last_beat >= min(HEARTBEAT_SECONDS, interval)
                if report.archived_batches or beat or final:  # each pass that ships, else once a minute
                    get_logger().info("%s %d batches in %d segment(s); archived through sequence %s, %d batches "
                                      "behind", "shipped" if report.archived_batches else "following: shipped",
                                      report.archived_batches, len(report.segments), report.last_archived_sequence,
                                      report.lag_batches)
                if beat:
                    send_event("rem.wal.archived", cfg, _beat(report))
                    send_event("rem.wal.follower.alive", cfg, _beat(report))
                    last_beat = time.monotonic()
            if final:
                break
            final = stop.wait(max(0.0, interval - (time.monotonic() - began)))  # stopped: one last pass
    finally:
        pinner.stopped.set()
        pinner.join()
    get_logger().info("the log follower stopped after %d passes (%d failed)", totals["passes"],
                      totals["failed_passes"])
    if report is None:
        raise RemError(f"none of {totals['failed_passes']} archival passes succeeded; the pins in {pins.dir} "
                       "keep the logs until one does")
    return report


def _beat(report: PassReport) -> dict:
    return {"last_archived_sequence": report.last_archived_sequence,
            "confirmed_timestamp": report.confirmed_timestamp, "lag_batches": report.lag_batches}


def _account(cfg: Settings, report: PassReport, totals: dict) -> None:
    totals["passes"] += 1
    totals["segments"] += report.segments
    totals["archived_batches"] += report.archived_batches
    totals["gaps"] += report.new_gaps
    for gap in report.new_gaps:
        send_event("rem.wal.archive.failed", cfg, {"reason": gap_message(gap)})
        get_logger().error(gap_message(gap))


@flow("pitr-restore", description="A base backup plus the archived log up to a time, replayed by RocksDB itself.")
def pitr_restore(timestamp: str, output: str | None = None, tenant: str | None = None,
                 settings: dict[str, Any] | None = None, from_db: str | None = None,
                 dry_run: bool = False) -> dict[str, Any]:
    """A new database at output as it was at timestamp; with dry_run only the plan, and for a tenant
    what the restore would change against the live database (recovered in scratch, removed after)."""
    cfg = resolve_settings(settings)
    target = parse_time(timestamp)
    plan = restore_plan(all_stores(cfg, from_db=from_db), log_archive(cfg, from_db=from_db), target)
    if dry_run:
        return _preview(cfg, plan, timestamp, tenant, settings, from_db)
    if output is None:
        raise UsageError("give --output DIR (a new or empty directory), or --dry-run for the plan only")
    out = real_target(Path(output))
    archive, window, segments = plan.archive, plan.window, plan.segments
    lock = check_target(out, overwrite=False, tenant=None, option="--output", can_overwrite=False)
    with tempfile.TemporaryDirectory(prefix="rem-pitr-") as tmp, contextlib.ExitStack() as held:
        if lock is not None:
            held.callback(lock.release)
        pieces = fetch_segments(archive, segments, Path(tmp) / "wal", cfg.backup_upload_concurrency)
        with _unpacked_base(cfg, window.record, Path(tmp) / "base", out) as base:
            metadata, db_dir = base.metadata, base.db_dir
            placed = place_archived_logs(db_dir, pieces, metadata.last_sequence, micros(target))
            recover(db_dir, placed.last_sequence)
            if tenant:
                db_dir = narrow_to_tenant(db_dir, tenant)
            put_into_place(db_dir, out)
    get_logger().info("restored %s to %s from base %s", out, timestamp, metadata.name)
    return {"ok": True, "output": str(out), "target": target.isoformat().replace("+00:00", "Z"),
            "base_backup": metadata.name, "base_last_sequence": metadata.last_sequence,
            "replayed_batches": placed.batches, "last_sequence": placed.last_sequence,
            "last_replayed_timestamp": format_micros(placed.last_time_us) if placed.last_time_us else None,
            "logs": placed.logs, "segments": len(segments),
            "tenant": tenant}


@contextlib.contextmanager
def _unpacked_base(cfg: Settings, record, download: Path, out: Path):
    """The base backup fetched into download and unpacked beside out, unchecked (the log's replay or
    decode that follows is its check). From a bucket, stored file by file, the live database's files
    that match it are linked instead of fetched (a delta restore; in a local store the files are on
    this host already)."""
    keeps_live = not record.store.local and layout_of(record.metadata).keeps_files
    with linked_files(cfg.db_path if keeps_live else None, out) as keep_from:
        source = fetch(record, download, keep_from=keep_from)
        with unpacked(source, out, check=False, keep_from=keep_from) as base:
            yield base


@flow("pitr-verify", description="Check the base, every segment and their continuity, without writing a database.")
def pitr_verify(timestamp: str, tenant: str | None = None, settings: dict[str, Any] | None = None,
                from_db: str | None = None) -> dict[str, Any]:
    cfg = resolve_settings(settings)
    target = parse_time(timestamp)
    plan = restore_plan(all_stores(cfg, from_db=from_db), log_archive(cfg, from_db=from_db), target)
    archive, window, segments = plan.archive, plan.window, plan.segments
    with tempfile.TemporaryDirectory(prefix="rem-pitr-verify-") as tmp:
        pieces = fetch_segments(archive, segments, Path(tmp) / "wal", cfg.backup_upload_concurrency)
        source = fetch(window.record, Path(tmp) / "base")
        verify_archive(source, read_local_backup(source))
        batches, last = check_pieces(pieces, window.base.last_sequence, micros(target))
    return {"ok": True, "target": timestamp, **plan_figures(plan), "batches": batches,
            "would_replay_through_sequence": last, "tenant": tenant,
            "window": {"start": window.start, "end": window.end}}


@flow("pitr-log", description="Every change the archived log holds in a time range, in the engine's terms.")
def pitr_log(start: str, end: str, tenant: str | None = None, schema: str | None = None,
             entity_ids: list[str] | None = None, key: str | None = None, detail: bool = False,
             settings: dict[str, Any] | None = None, from_db: str | None = None,
             database_block: str | None = None) -> dict[str, Any]:
    """The writes of (start, end]: a summary by second, tenant, kind and schema, and with detail each one.

    Args:
        start: Changes after this time; without a zone it is UTC.
        end: Changes up to and including this time.
        tenant: Only this tenant's changes.
        schema: Only changes to entities of this schema.
        entity_ids: Only changes to these entities.
        key: Only changes to the entity with this key (uri, key field, key or name).
        detail: List each change, not only the summary.
        settings: Settings as the command line passes them (leave empty in a deployment).
        from_db: Another database's archive, by its name.
        database_block: The REM Database block of the database (rem-db-{db}).
    """
    cfg = resolve_settings(settings, database_block)
    t1, t2 = parse_time(start), parse_time(end)
    with tempfile.TemporaryDirectory(prefix="rem-pitr-log-") as tmp:
        plan, changes = _decoded(cfg, t1, t2, ChangeFilter(tenant, schema, tuple(entity_ids or ()), key), from_db,
                                 Path(tmp))
    summary = summarize(changes)
    publish_table("pitr-log", [{**row, "what": summary_line(row)} for row in summary],
                  description=f"{len(changes):,} changes from {start} to {end} in the log archive of {plan.archive.db}")
    return {"ok": True, "from": t1.isoformat().replace("+00:00", "Z"), "to": t2.isoformat().replace("+00:00", "Z"),
            "base_backup": plan.window.base.name, "segments": len(plan.segments), "changes_total": len(changes),
            "summary": summary, **({"changes": [c.to_dict() for c in changes]} if detail else {})}


def _decoded(cfg: Settings, t1, t2, keep: ChangeFilter, from_db: str | None, tmp: Path):
    """The plan for (t1, t2] and the changes in it that keep accepts, decoded against the base
    (fetched as a point-in-time restore fetches it: _unpacked_base)."""
    plan = log_plan(all_stores(cfg, from_db=from_db), log_archive(cfg, from_db=from_db), t1, t2)
    pieces = fetch_segments(plan.archive, plan.segments, tmp / "wal", cfg.backup_upload_concurrency)
    with _unpacked_base(cfg, plan.window.record, tmp / "base", tmp / "base-db") as base:
        changes = decode_log(pieces, base.db_dir, base.metadata.last_sequence, micros(t1), micros(t2), keep)
    return plan, changes


@flow("pitr-undo", description="Put back what the writes of a time range changed, and nothing else.")
def pitr_undo(start: str, end: str, tenant: str | None = None, schema: str | None = None,
              entity_ids: list[str] | None = None, dry_run: bool = False, force: bool = False,
              settings: dict[str, Any] | None = None, database_block: str | None = None,
              wait_for_approval: bool = False, approval_timeout_seconds: int = 3600) -> dict[str, Any]:
    """Every key the writes of (start, end] wrote (within the filter) back at its value at start;
    every other write, and every write after end, left alone. A key written again after end is a
    conflict: listed, and left unless force. The engine must be stopped (the database's lock is held).

    Args:
        start: Undo the writes after this time; without a zone it is UTC.
        end: ... up to and including this time.
        tenant: Only this tenant's writes.
        schema: Only writes to entities of this schema (with their key and edge rows).
        entity_ids: Only writes to these entities (with their key and edge rows).
        dry_run: Show what would be written, and the conflicts; write nothing.
        force: Put back conflicting keys too (the later writes to them are lost).
        settings: Settings as the command line passes them (leave empty in a deployment).
        database_block: The REM Database block of the database (rem-db-{db}).
        wait_for_approval: Publish the preview and pause until someone approves it in the Prefect UI.
        approval_timeout_seconds: Past this without an answer the run fails and nothing is written.
    """
    cfg = resolve_settings(settings, database_block)
    t1, t2 = parse_time(start), parse_time(end)
    with tempfile.TemporaryDirectory(prefix="rem-undo-") as tmp:
        plan, changes = _decoded(cfg, t1, t2, ChangeFilter(tenant), None, Path(tmp))
    chosen = select(changes, tenant, schema, tuple(entity_ids or ()))
    about = {"db_name": plan.archive.db, "from": format_micros(micros(t1)), "to": format_micros(micros(t2)), "tenant": tenant,
             "schema": schema, "entity_ids": entity_ids or []}

    def planned(live, force: bool, dry_run: bool) -> tuple[UndoPlan, dict[str, Any]]:
        undo = plan_undo(chosen, live.get_many)
        writes = undo.writes(force)
        return undo, {"ok": True, **about, "dry_run": dry_run, "force": force, "changes": len(chosen),
                      "keys": len(undo.keys), "to_write": len(writes), "already": sum(k.state == "already" for k in
                                                                                      undo.keys),
                      "conflicts": [k.to_dict() for k in undo.conflicts], "record": None, "bytes_written": 0,
                      "writes": [k.to_dict() for k in writes]}

    if wait_for_approval and not dry_run:
        with open_db(cfg.db_path, "ro") as live:
            _, preview = planned(live, force, True)
        markdown = undo_report(preview)
        publish_report("pitr-undo", markdown, description=f"Undo preview of {start} to {end}: waiting for approval")
        approved, force = wait_for_approval_in_ui(markdown, approval_timeout_seconds)
        if not approved:
            get_logger().warning("undo of %s to %s rejected: nothing written", start, end)
            return {**preview, "approved": False}
    with open_db(cfg.db_path, "ro" if dry_run else "rw") as live:  # rw: the lock, from the plan to the write
        undo, result = planned(live, force, dry_run)
        writes = undo.writes(force)
        if wait_for_approval and not dry_run:
            result["approved"] = True
            if {(w["cf"], w["key"], w["state"]) for w in result["writes"] + result["conflicts"]} != \
                    {(w["cf"], w["key"], w["state"]) for w in preview["writes"] + preview["conflicts"]}:
                raise RemError("the database changed between the approved preview and the undo: nothing written; "
                               "run the undo again for a new preview")
        if dry_run or not writes:
            return result
        name = record_name()
        body = encode_record([(k.cf, k.key, k.live, k.start) for k in writes], {**about, "record": name})
        result["record"] = name
        result["record_location"] = save_undo_record(plan.archive.objects, undo_key(plan.archive, name), body)
        result["bytes_written"] = apply_undo(live, [(k.cf, k.key, k.start) for k in writes])
    publish_report("pitr-undo", undo_report(result), description=f"Undo of {start} to {end} in {cfg.db_path}: "
                   f"{len(writes):,} keys written, {len(result['conflicts']):,} conflicts")
    get_logger().info("undo %s wrote %d keys (record %s)", about, len(writes), name)
    return result


@flow("pitr-undo-revert", description="Put back what an undo replaced, from the record it saved.")
def pitr_undo_revert(record: str, force: bool = False, dry_run: bool = False,
                     settings: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = resolve_settings(settings)
    archive = log_archive(cfg)
    where = undo_key(archive, check_record_name(record))
    try:
        body = archive.objects.get(where)
    except ObjectMissing:
        raise UsageError(f"no undo record {record!r} at {archive.objects.url(where)}; the name is the one "
                         "`rem pitr undo` printed") from None
    doc, saved = decode_record(body, archive.objects.url(where))
    with open_db(cfg.db_path, "ro" if dry_run else "rw") as live:
        states = []
        for (cf, key, before, after) in saved:
            now = live.get(cf, key)
            states.append((cf, key, before, now, undo_state(now, before, after)))
        writes = [s for s in states if s[4] == "undo" or (force and s[4] == "conflict")]
        result = {"ok": True, "reverted": record, "dry_run": dry_run, "keys": len(saved), "to_write": len(writes),
                  "already": sum(s[4] == "already" for s in states), "record": None, "bytes_written": 0,
                  "conflicts": [{"cf": cf, "key": key.decode(errors="replace")} for cf, key, _, _, st in states
                                if st == "conflict"]}
        if dry_run or not writes:
            return result
        name = record_name()
        result["record"] = name
        result["record_location"] = save_undo_record(archive.objects, undo_key(archive, name), encode_record(
            [(cf, key, now, before) for cf, key, before, now, _ in writes], {"db_name": archive.db, "record": name,
                                                                              "reverts": record}))
        result["bytes_written"] = apply_undo(live, [(cf, key, before) for cf, key, before, _, _ in writes])
    return result


def _preview(cfg: Settings, plan, timestamp: str, tenant: str | None, settings, from_db) -> dict[str, Any]:
    """What a restore to timestamp would fetch and make; for a tenant, what it would change in the live
    database's entities (the state at timestamp recovered in scratch, compared, removed)."""
    result = {"ok": True, "dry_run": True, "target": format_micros(micros(parse_time(timestamp))),
              "tenant": tenant, **plan_figures(plan)}
    if tenant:
        with at_instant(timestamp, tenant, settings, from_db) as then_dir, \
                open_db(then_dir, "ro") as then, open_db(cfg.db_path, "ro") as now:
            result["changes"] = tenant_difference(then, now, tenant)
    return result


def plan_figures(plan) -> dict[str, Any]:
    """What a restore plan fetches and makes: its base, segments, bytes to fetch, the database's size after."""
    base = plan.window.base
    return {"base_backup": base.name, "base_location": plan.window.record.location,
            "base_last_sequence": base.last_sequence, "segments": len(plan.segments),
            "batches_at_most": sum(s.batches for s in plan.segments),
            "bytes_to_fetch": base.size_bytes + sum(s.size_bytes for s in plan.segments),
            "database_bytes_after": base.uncompressed_bytes + sum(s.end_offset - s.start_offset
                                                                  for s in plan.segments)}


@contextlib.contextmanager
def at_instant(timestamp: str, tenant: str | None, settings, from_db: str | None = None):
    """The database (or one tenant's rows) as it was at timestamp, recovered in scratch and removed when done."""
    with tempfile.TemporaryDirectory(prefix="rem-as-of-") as tmp:
        out = Path(tmp) / "db"
        pitr_restore(timestamp, str(out), tenant, settings, from_db)
        yield out


@flow("query-as-of", description="Read-only SQL over the database (or a tenant) as it was at a time.")
def query_as_of(timestamp: str, sql: str, tenant: str | None = None, include_deleted: bool = False,
                memory_mb: int = QUERY_MEMORY_MB, timeout: float = QUERY_TIMEOUT_SECONDS,
                settings: dict[str, Any] | None = None) -> dict[str, Any]:
    check_query(sql)  # a query that cannot run is refused before anything is fetched
    with at_instant(timestamp, tenant, settings) as then:
        result = run_query(sql, str(then), tenant, include_deleted, memory_mb=memory_mb, timeout=timeout)
    return {**result, "as_of": format_micros(micros(parse_time(timestamp)))}
