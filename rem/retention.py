"""Backup retention: a grandfather-father-son set (restic's keep-daily/weekly/monthly semantics:
for each of the last N days, ISO weeks, months that have backups, the newest one of it is kept),
never the newest backup, never the PITR base the WAL archive names; WAL segments that only
precede the oldest kept whole-database base go with them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

from rem.backup.catalog import DATA_TAG, KEEP_TAG, BackupRecord
from rem.backup.keep import keep_reason, kept_now
from rem.wal_archive import is_base, parse_time


def newest_first(times: list[datetime], tiebreak: list[int] | None = None) -> list[int]:
    """Indexes, newest first; a backup's time has whole seconds, so of two in one second the one
    holding more writes (tiebreak: its last sequence number) is the newer."""
    return sorted(range(len(times)), key=lambda i: (times[i], tiebreak[i] if tiebreak else 0), reverse=True)


def gfs_keep(times: list[datetime], keep_daily: int, keep_weekly: int, keep_monthly: int,
             tiebreak: list[int] | None = None) -> dict[int, list[str]]:
    """Index of each kept backup -> why ("daily 2025-10-25", "weekly 2025-W43", "monthly 2025-10")."""
    order = newest_first(times, tiebreak)
    reasons: dict[int, list[str]] = {}
    for label, count, bucket in (("daily", keep_daily, lambda t: t.strftime("%Y-%m-%d")),
                                 ("weekly", keep_weekly, lambda t: "%d-W%02d" % t.isocalendar()[:2]),
                                 ("monthly", keep_monthly, lambda t: t.strftime("%Y-%m"))):
        seen: list[str] = []
        for i in order:
            key = bucket(times[i])
            if key in seen:
                continue
            if len(seen) >= count:
                break
            seen.append(key)
            reasons.setdefault(i, []).append(f"{label} {key}")
    return reasons


@dataclass
class PrunePlan:
    keep: list[tuple[BackupRecord, list[str]]] = field(default_factory=list)
    delete: list[BackupRecord] = field(default_factory=list)
    wal_segments_to_delete: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        row = lambda r: {"name": r.name, "tenant": r.metadata.tenant_folder, "created": r.metadata.timestamp,  # noqa: E731
                         "location": r.location}
        return {"keep": [{**row(r), "why": why} for r, why in self.keep], "delete": [row(r) for r in self.delete],
                "wal_segments_to_delete": len(self.wal_segments_to_delete)}


def plan_prune(records: list[BackupRecord], keep_daily: int, keep_weekly: int, keep_monthly: int,
               tenant: str | None = None, log_segments: list | None = None) -> PrunePlan:
    """GFS per tenant; with the log archive's segments, those every kept base already
    holds (at or before the oldest kept base's last sequence number) go too."""
    plan = PrunePlan()
    by_tenant: dict[str, list[BackupRecord]] = {}  # tenant None: every tenant's, each kept on its own
    for r in records:
        if tenant is None or r.metadata.tenant_folder == tenant:
            by_tenant.setdefault(r.metadata.tenant_folder, []).append(r)
    for group in by_tenant.values():
        times = [parse_time(r.metadata.timestamp) for r in group]
        sequences = [r.metadata.last_sequence or 0 for r in group]
        reasons = gfs_keep(times, keep_daily, keep_weekly, keep_monthly, sequences)
        newest = newest_first(times, sequences)[0]
        reasons.setdefault(newest, []).append("newest")
        for i, r in enumerate(group):
            if kept_now(r.metadata):
                reasons.setdefault(i, []).append(keep_reason(r.metadata))
            (plan.keep.append((r, reasons[i])) if i in reasons else plan.delete.append(r))
    plan.keep.sort(key=lambda kr: kr[0].metadata.timestamp, reverse=True)
    plan.delete.sort(key=lambda r: r.metadata.timestamp, reverse=True)
    kept_bases = [r.metadata.last_sequence for r, _ in plan.keep if is_base(r.metadata)]
    if log_segments is not None and kept_bases:
        oldest = min(kept_bases)
        plan.wal_segments_to_delete = [s.key for s in log_segments if s.last_seq <= oldest]
    return plan


def split_locked(records: list[BackupRecord]) -> tuple[list[BackupRecord], list[dict]]:
    """The backups prune may delete, and those S3 Object Lock still holds (with the date it ends):
    reported as kept until then, never an error."""
    from rem.backup.layout import layout_of

    free, locked = [], []
    for r in records:
        layout = layout_of(r.metadata)
        dates = [d for f in (layout.data_file, *layout.record_files)
                 if (d := r.store.objects.locked_until(r.store.key(r.tenant_folder, r.folder, f)))]
        if dates:
            locked.append({"name": r.name, "tenant": r.metadata.tenant_folder, "location": r.location,
                           "kept_until": max(dates).isoformat(timespec="seconds")})
        else:
            free.append(r)
    return free, locked


def segments_past_lock(archive, keys: list[str]) -> list[str]:
    """The log segments no object lock holds any more (the others wait for a later prune)."""
    return [k for k in keys if archive is None or archive.objects.locked_until(k) is None]


def drop_wal_segments(archive, keys: list[str]) -> int:
    """Remove segments from the manifest (conditional write, retried on a race), then the objects;
    a sealed page goes whole, with its object, or stays whole."""
    from rem.wal_archive import ManifestConflict

    for _ in range(20):
        manifest, etag = archive.read_manifest()
        doomed, gone_pages, kept_pages = set(keys), [], []
        for page in manifest.pages:
            inside = {s.key for s in archive.read_page(page)}
            if inside <= doomed:
                gone_pages.append(page.key)
            else:
                kept_pages.append(page)
                doomed -= inside
        manifest.pages = kept_pages
        manifest.wal_segments = [s for s in manifest.wal_segments if s.key not in doomed]
        try:
            archive.write_manifest(manifest, etag)
            break
        except ManifestConflict:
            continue
    else:
        return 0
    archive.delete(sorted(doomed) + gone_pages)
    return len(doomed)


LIFECYCLE_GLACIER_DAYS = 30
LIFECYCLE_EXPIRE_DAYS = 90


def lifecycle_rules(prefix: str, db: str, lock_days: float | None = None) -> list[dict]:
    """The runbook's rules for one database's full backups: their data (objects tagged rem-class=data:
    archives and small-file archives, never metadata.json, files.json or schemas.json, which every
    listing reads) to Glacier after 30 days; everything not kept (tagged rem-keep=no: `rem backup
    keep` sets yes) gone after 90; stale multipart uploads
    aborted after a day. Its log archive and shared SSTs are left to prune: a segment or SST still
    needed by a kept backup must never expire on its own."""
    where = f"{prefix}{db}/backups/full/"
    # Under Object Lock, expiry comes after the lock ends (S3 would only hide a locked object behind
    # a delete marker), and the versions a delete leaves go a day later.
    expire = max(LIFECYCLE_EXPIRE_DAYS, math.ceil(lock_days) + 1) if lock_days else LIFECYCLE_EXPIRE_DAYS
    return [
        {"ID": f"rem-{db}-backup-data-to-glacier", "Status": "Enabled",
         "Filter": {"And": {"Prefix": where, "Tags": [{"Key": DATA_TAG[0], "Value": DATA_TAG[1]}]}},
         "Transitions": [{"Days": LIFECYCLE_GLACIER_DAYS, "StorageClass": "GLACIER"}]},
        {"ID": f"rem-{db}-backups-expire", "Status": "Enabled",
         "Filter": {"And": {"Prefix": where, "Tags": [{"Key": KEEP_TAG, "Value": "no"}]}},
         "Expiration": {"Days": expire},
         **({"NoncurrentVersionExpiration": {"NoncurrentDays": 1}} if lock_days else {})},
        {"ID": f"rem-{db}-abort-incomplete-uploads", "Status": "Enabled", "Filter": {"Prefix": f"{prefix}{db}/"},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}},
    ]


def replaced_rule_ids(db: str) -> set[str]:
    """Rules earlier versions installed for the database, replaced by lifecycle_rules: the first moved
    metadata.json to Glacier too, which made every listing fail once it had."""
    return {f"rem-{db}-backups-glacier-then-expire"}


def lifecycle_notes(keep_daily: int, keep_weekly: int, keep_monthly: int) -> list[str]:
    notes = [f"Backup data moves to Glacier after {LIFECYCLE_GLACIER_DAYS} days: restoring an older backup needs an "
             "S3 restore request first (hours; `rem backup list` marks it archived and download names the command), "
             "so daily and weekly restores stay fast. metadata.json, files.json, schemas.json and shared SSTs stay "
             "in their class, so listing, prune and health never need a restore.",
             f"S3 deletes every backup object after {LIFECYCLE_EXPIRE_DAYS} days, whatever prune keeps, except a kept "
             "backup's (`rem backup keep`: tagged rem-keep=yes) and those written before backups carried the tag "
             "(left to prune); prune removes backups earlier, and never the newest or the PITR base (which "
             "lifecycle would still expire: keep it to spare it)."]
    if keep_monthly * 31 > LIFECYCLE_EXPIRE_DAYS:
        notes.append(f"--keep-monthly {keep_monthly} asks for about {keep_monthly * 31} days, beyond the "
                     f"{LIFECYCLE_EXPIRE_DAYS}-day expiry: the oldest monthlies will be expired by S3.")
    return notes


def apply_lifecycle(objects, db: str, keep_daily: int = 7, keep_weekly: int = 4, keep_monthly: int = 3,
                    lock_days: float | None = None) -> dict:
    """Install the runbook's lifecycle rules for one database's backups in the bucket (replacing its
    own rules, keeping every other database's and every rule rem did not write)."""
    ours = lifecycle_rules(objects.prefix, db, lock_days)
    mine = {r["ID"] for r in ours} | replaced_rule_ids(db)
    objects.set_lifecycle_rules([r for r in objects.lifecycle_rules() if r.get("ID") not in mine] + ours)
    return {"bucket": objects.cfg.bucket, "rules": ours,
            "notes": lifecycle_notes(keep_daily, keep_weekly, keep_monthly)}
