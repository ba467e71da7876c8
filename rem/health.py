"""Health (the runbook's JSON and thresholds) and Prometheus metrics (the runbook's names)."""

from __future__ import annotations

import math
from collections.abc import Callable
import shutil
import struct
from datetime import datetime, timezone

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics

from dataclasses import dataclass, field
from pathlib import Path

from rem.backup.catalog import ALL_TENANTS, BackupStore, list_reachable
from rem.db import open_db
from rem.stats import sst_size_and_files
from rem.wal_archive import WalArchive, archive_status, parse_time

disable_created_metrics()  # only the runbook's series, no *_created twins

BACKUP_MAX_AGE_HOURS = 48
WAL_LAG_WARN_SECONDS = 3600
DISK_WARN_PERCENT = 80


@dataclass
class Watched:
    """What health and metrics look at (built from the settings by runtime.wiring.watched): the
    database, its backup stores (calls bounded to seconds) and, with PITR on, its log archive."""

    db_path: Path
    stores: list[BackupStore] = field(default_factory=list)
    stores_error: str | None = None  # why no store could be named (no database here and no name given)
    archive: WalArchive | None = None
    archive_error: str | None = None  # PITR on, but the archive could not be opened
    pitr_enabled: bool = False


def newest_backup(watched: Watched):
    """The newest complete whole-database backup in the stores that answer (None if there is none),
    and the stores that did not answer within seconds, with why."""
    if watched.stores_error is not None:  # no backups can be said to be this database's
        return None, {"database": watched.stores_error}
    records, unreachable = list_reachable(watched.stores)
    records = [r for r in records if r.metadata.tenant_folder == ALL_TENANTS]
    return (max(records, key=lambda r: r.metadata.timestamp).metadata if records else None), unreachable


def wal_archive_state(watched: Watched) -> dict | None:
    """Archive status when PITR is enabled; None when it is not; {"error": ...} when it cannot be read."""
    if not watched.pitr_enabled:
        return None
    if watched.archive_error is not None:
        return {"error": watched.archive_error}
    try:
        manifest, _ = watched.archive.read_manifest()
    except Exception as exc:  # reported as a failed check, never as a failed health command
        return {"error": error_line(exc)}
    return archive_status(watched.db_path, manifest)


def error_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def unhealed(broken_ranges: list[dict], newest) -> list[dict]:
    """The gaps no full backup has covered yet: only the newest backup can, by starting after them."""
    covered = newest.last_sequence if newest is not None and newest.last_sequence is not None else -1
    return [b for b in broken_ranges if b["last_missing_seq"] > covered]


def _sample_vectors(db, limit: int = 200) -> tuple[int, int, set[int]]:
    checked = bad = 0
    dims: set[int] = set()
    if not db.has_cf("embeddings"):
        return 0, 0, dims
    for _, value in db.items("embeddings"):
        values = struct.unpack(f"<{len(value) // 4}f", value[: len(value) // 4 * 4])
        dims.add(len(values))
        bad += len(value) % 4 != 0 or not all(math.isfinite(v) for v in values)
        checked += 1
        if checked >= limit:
            break
    return checked, bad, dims


def health(watched: Watched, backup_max_age_hours: float = BACKUP_MAX_AGE_HOURS,
           wal_lag_warn_seconds: float = WAL_LAG_WARN_SECONDS, disk_warn_percent: float = DISK_WARN_PERCENT) -> dict:
    """The runbook's health document: status healthy | degraded | unhealthy, and a check per part."""
    checks: dict[str, dict] = {}
    try:
        with open_db(watched.db_path, "ro") as db:
            checks["rocksdb"] = {"status": "ok", "column_families": len(db.cf_names)}
            checked, bad, dims = _sample_vectors(db)
    except Exception as exc:  # the database does not open: everything else is moot
        checks["rocksdb"] = {"status": "critical", "message": str(exc)}
        checked, bad, dims = 0, 0, set()
    checks["embeddings"] = ({"status": "ok", "sampled": checked, "dimensions": sorted(dims)} if not bad and len(dims) <= 1
                            else {"status": "warning", "sampled": checked, "invalid": bad, "dimensions": sorted(dims),
                                  "message": "run `rem db verify --check-embeddings`"})
    now = datetime.now(timezone.utc)
    last, unreachable = newest_backup(watched)
    age_hours = (now - parse_time(last.timestamp)).total_seconds() / 3600 if last else None
    checks["storage"] = ({"status": "critical", "unreachable": unreachable,
                          "message": "backup storage did not answer: its backups were not checked"}
                         if unreachable else {"status": "ok"})
    if last is None:
        checks["backup"] = {"status": "critical", "message": "no backup found: `rem backup create --upload`"}
    elif age_hours > backup_max_age_hours:
        checks["backup"] = {"status": "critical", "age_hours": round(age_hours, 2), "last": last.name,
                            "message": f"newest backup is older than {backup_max_age_hours:g} h"}
    else:
        checks["backup"] = {"status": "ok", "age_hours": round(age_hours, 2), "last": last.name}
    archive = wal_archive_state(watched)
    lag = archive["lag_seconds"] if archive else None
    if archive is None:
        checks["wal"] = {"status": "ok", "pitr": "disabled"}
    elif "error" in archive:
        lag = None
        checks["wal"] = {"status": "critical", "message": f"WAL archive not readable: {archive['error']}"}
    elif broken := unhealed(archive["broken_ranges"], last):
        checks["wal"] = {"status": "critical", "lag_seconds": lag, "broken_ranges": broken,
                         "message": "log records were gone before they were archived: take a full backup"}
    elif lag is None or lag > wal_lag_warn_seconds:
        checks["wal"] = {"status": "warning", "lag_seconds": lag, "lag_batches": archive["lag_batches"],
                         "message": f"log archive lags more than {wal_lag_warn_seconds:g} s"}
    else:
        checks["wal"] = {"status": "ok", "lag_seconds": lag, "lag_batches": archive["lag_batches"]}
    usage = shutil.disk_usage(watched.db_path if watched.db_path.exists() else watched.db_path.parent)
    disk_percent = round(usage.used / usage.total * 100, 2)
    checks["disk"] = {"status": "warning" if disk_percent > disk_warn_percent else "ok", "usage_percent": disk_percent}
    states = {c["status"] for c in checks.values()}
    status = "unhealthy" if "critical" in states else "degraded" if "warning" in states else "healthy"
    return {"status": status, "last_backup": last.timestamp if last else None,
            "wal_archive_lag_sec": lag, "disk_usage_percent": disk_percent, "checks": checks}


def metrics_registry(watched: Watched) -> CollectorRegistry:
    """The runbook's metrics, collected now, in a registry of their own."""
    registry = CollectorRegistry()
    last, unreachable = newest_backup(watched)
    Gauge("rem_backup_storage_reachable", "1 when every backup store answered this scrape, else 0",
          registry=registry).set(0 if unreachable else 1)
    Gauge("rem_backup_last_success_timestamp", "Unix time of the newest complete backup",
          registry=registry).set(parse_time(last.timestamp).timestamp() if last else 0)
    Gauge("rem_backup_duration_seconds", "Duration of the newest complete backup",
          registry=registry).set(last.duration_seconds if last else 0)
    Gauge("rem_backup_size_bytes", "Compressed size of the newest complete backup",
          registry=registry).set(last.size_bytes if last else 0)
    Gauge("rem_backup_repository_bytes", "Bytes the database's backups occupied in the store after the newest one "
          "(shared SSTs counted once)", registry=registry).set(last.repository_bytes or last.size_bytes if last else 0)
    archive = wal_archive_state(watched)
    lag = Gauge("rem_wal_archive_lag_seconds", "Seconds the WAL archive is behind the live WAL", registry=registry)
    failures = Counter("rem_wal_archive_failures", "WAL archival passes stopped by a gap", registry=registry)
    # NaN, not 0, when PITR is off or the lag is unknown: "no lag" must never be claimed by default.
    readable = archive is not None and "error" not in archive
    lag.set(archive["lag_seconds"] if readable and archive["lag_seconds"] is not None else float("nan"))
    if readable:
        failures.inc(archive["failures"])
    size = Gauge("rem_db_size_bytes", "SST bytes per column family", ["cf"], registry=registry)
    keys = Gauge("rem_db_keys_total", "Keys per column family (RocksDB estimate)", ["cf"], registry=registry)
    pending = Gauge("rem_db_compaction_pending_bytes", "Bytes RocksDB estimates compaction still has to rewrite",
                    registry=registry)
    with open_db(watched.db_path, "ro") as db:
        total_pending = 0
        for cf in db.cf_names:
            if cf == "default":
                continue
            size.labels(cf).set(sst_size_and_files(db, cf)[0])
            keys.labels(cf).set(db.cf(cf).property_int_value("rocksdb.estimate-num-keys") or 0)
            total_pending += db.cf(cf).property_int_value("rocksdb.estimate-pending-compaction-bytes") or 0
        pending.set(total_pending)
    return registry


def metrics_server(host: str, port: int, collect: Callable[[], CollectorRegistry]):
    """A /metrics HTTP server (call serve_forever): each scrape collects fresh figures, on a thread of
    its own, so an idle or slow client never blocks the others."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import generate_latest

    def app(environ, start_response):
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"see /metrics\n"]
        body = generate_latest(collect())
        start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")])
        return [body]

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class Handler(WSGIRequestHandler):
        timeout = 10  # seconds a client may stay silent before its connection is dropped

        def log_message(self, *args):
            pass

    return make_server(host, port, app, server_class=Server, handler_class=Handler)
