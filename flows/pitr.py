"""Point-in-time recovery: wal_archive (one archival pass) and pitr_restore (base + replay)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from flows.backup import resolve_settings
from rem.errors import UsageError
from rem.settings import Settings
from rem.scratch import remove_scratch
from rem.snapshot import take_tenant_snapshot
from tasks.pitr import check_continuity, fetch_segments, replay
from tasks.restore import check_restored, check_target, extract, put_into_place, real_target, verify_archive
from tasks.runtime import emit, flow, get_logger, task
from tasks.storage import ALL_TENANTS, all_stores, make_store, read_local_backup
from tasks.wal_archive import (RecoveryWindow, WalArchive, WalGap, archive_pass, archive_status,
                               choose_window, parse_time, recovery_windows, segments_to_replay)


def wal_archive_for(cfg: Settings, bounded: bool = False) -> WalArchive:
    bucket = cfg.pitr_bucket or cfg.s3_bucket
    if not bucket:
        raise UsageError("point-in-time recovery needs a bucket: set [pitr] bucket or P8_S3_BUCKET "
                         "(or run `rem pitr enable --bucket B`)")
    store = make_store(cfg.model_copy(update={"s3_bucket": bucket}), upload=True, bounded=bounded)
    return WalArchive(store.client, bucket, cfg.s3_prefix)


def newest_full_backup(cfg: Settings):
    records = [r for s in all_stores(cfg) for r in s.list() if r.metadata.tenant_segment == ALL_TENANTS]
    return max(records, key=lambda r: r.metadata.wal_last_seq).metadata if records else None


@task("archive-wal", retries=2, retry_delay_seconds=10)
def archive_once(cfg: Settings, archive: WalArchive):
    """Archive the WAL entries written since the last pass."""
    return archive_pass(cfg.db_path, archive, cfg.pitr_segment_max_entries, cfg.pitr_segment_max_mb << 20,
                        newest_full_backup(cfg))


@flow("wal-archive", description="One WAL archival pass: new entries -> zstd segments -> manifest (conditional).")
def wal_archive(settings: dict[str, Any] | None = None, database_block: str | None = None) -> dict[str, Any]:
    cfg = resolve_settings(settings, database_block)
    archive = wal_archive_for(cfg)
    try:
        report = archive_once(cfg, archive)
    except WalGap as exc:
        emit("rem.wal.archive.failed", cfg.db_path, {"reason": str(exc)})
        raise
    emit("rem.wal.archived", cfg.db_path, {"last_archived_sequence": report.last_archived_sequence})
    return {"ok": True, **report.__dict__, "lag_entries": report.live_latest_sequence - report.last_archived_sequence}


def plan(cfg: Settings, target_text: str, tenant: str | None) -> tuple[WalArchive, RecoveryWindow, list]:
    """The archive, the recovery window that holds the target, and the segments to replay."""
    target = parse_time(target_text)
    archive = wal_archive_for(cfg)
    manifest, _ = archive.read_manifest()
    records = [r for s in all_stores(cfg) for r in s.list()]
    window = choose_window(recovery_windows(records, manifest, tenant), target)
    return archive, window, segments_to_replay(window, target)


@flow("pitr-restore", description="Restore the newest base backup before a timestamp and replay the WAL up to it.")
def pitr_restore(timestamp: str, output: str, tenant: str | None = None,
                 settings: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = resolve_settings(settings)
    out = real_target(Path(output))
    target = parse_time(timestamp)
    archive, window, segments = plan(cfg, timestamp, tenant)
    record = window.record
    lock = check_target(out, overwrite=False, tenant=None)
    with tempfile.TemporaryDirectory(prefix="rem-pitr-") as tmp, contextlib.ExitStack() as held:
        if lock is not None:
            held.callback(lock.release)
        files = fetch_segments(archive, segments, Path(tmp) / "wal", cfg.backup_upload_concurrency)
        source = record.store.fetch(record, Path(tmp) / "base")
        metadata = read_local_backup(source)
        verify_archive(source, metadata)
        db_dir = extract(source, out, metadata)
        try:
            check_restored(db_dir, metadata)
            only = tenant if tenant else None
            report = replay(db_dir, files, metadata.wal_last_seq, target, only, sum(s.entries for s in segments))
            if tenant and metadata.tenant_id is None:
                narrowed = take_tenant_snapshot(db_dir, tenant)
                shutil.rmtree(db_dir)
                (narrowed.path / "db").rename(db_dir)
                narrowed.remove()
            check_continuity(db_dir, metadata.wal_last_seq, report.last_seq, tenant)
            put_into_place(db_dir, out)
        finally:
            remove_scratch(db_dir.parent)
    get_logger().info("restored %s to %s from base %s", out, timestamp, metadata.name)
    return {"ok": True, "output": str(out), "target": target.isoformat().replace("+00:00", "Z"),
            "base_backup": metadata.name, "base_wal_last_seq": metadata.wal_last_seq,
            "replayed_entries": report.applied, "last_replayed_seq": report.last_seq,
            "last_replayed_timestamp": report.last_timestamp, "segments": len(segments), "tenant": tenant}


@flow("pitr-verify", description="Check that everything a point-in-time restore needs is present and intact.")
def pitr_verify(timestamp: str, tenant: str | None = None, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = resolve_settings(settings)
    archive, window, segments = plan(cfg, timestamp, tenant)
    record = window.record
    with tempfile.TemporaryDirectory(prefix="rem-pitr-verify-") as tmp:
        fetch_segments(archive, segments, Path(tmp) / "wal", cfg.backup_upload_concurrency)
        source = record.store.fetch(record, Path(tmp) / "base")
        verify_archive(source, read_local_backup(source))
    last = segments[-1].last_seq if segments else window.base.wal_last_seq
    return {"ok": True, "target": timestamp, "base_backup": window.base.name, "base_location": record.location,
            "base_wal_last_seq": window.base.wal_last_seq, "segments": len(segments),
            "would_replay_through_seq_at_most": last,
            "window": {"start": window.start, "end": window.end}}


def recovery_points(cfg: Settings, tenant: str | None = None) -> list[dict[str, Any]]:
    archive = wal_archive_for(cfg)
    manifest, _ = archive.read_manifest()
    records = [r for s in all_stores(cfg) for r in s.list()]
    rows = []
    for w in recovery_windows(records, manifest, tenant):
        rows.append({"tenant": w.base.tenant_id or "(all)", "base_backup": w.base.name, "base_location": w.record.location,
                     "latest_wal": manifest.last_archived_timestamp, "latest_wal_seq": manifest.last_archived_sequence,
                     "window_start": w.start, "window_end": w.end, "window_last_seq": w.last_seq,
                     "broken": None if w.broken_after is None else
                     f"entries {w.broken_after.first_missing_seq}-{w.broken_after.last_missing_seq} missing after "
                     f"{w.broken_after.after_timestamp or 'the start'}"})
    return rows


def pitr_status(cfg: Settings) -> dict[str, Any]:
    archive = wal_archive_for(cfg)
    manifest, _ = archive.read_manifest()
    return {"enabled": cfg.pitr_enabled, "bucket": archive.bucket,
            "manifest": f"s3://{archive.bucket}/{archive.root}manifest.json", **archive_status(cfg.db_path, manifest)}
