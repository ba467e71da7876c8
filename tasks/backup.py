"""Backup steps: snapshot -> describe -> store (the layout's way) -> schemas -> metadata (last) -> tags."""

from __future__ import annotations

from rem.backup.catalog import METADATA, SCHEMAS, BackupMetadata, BackupStore, NameTaken, backup_tags
from rem.backup.create import SnapshotFacts, describe_snapshot
from rem.backup.incremental import PreviousBackup
from rem.backup.layout import Layout, layout_of
from rem.snapshot import Snapshot, take_snapshot, take_tenant_snapshot
from rem.storage import cleanup_quietly
from runtime.orchestration import task
from runtime.progress import RunProgress
from runtime.wiring import backup_store


@task("open-store", retries=0)
def open_store(cfg, upload: bool, tenant_folder: str, names: list[str]) -> tuple[BackupStore, str]:
    """The store the backup goes to, checked, and the first of the names it can claim: a run that
    fails here shows it here."""
    store = backup_store(cfg, upload)
    for name in names[:-1]:
        try:
            store.prepare(tenant_folder, name)
            return store, name
        except NameTaken:
            continue
    store.prepare(tenant_folder, names[-1])
    return store, names[-1]


@task("snapshot", retries=2, retry_delay_seconds=5)
def snapshot(db_path: str, tenant: str | None) -> Snapshot:
    """Take a consistent copy of the database (or one tenant) beside it."""
    return take_tenant_snapshot(db_path, tenant) if tenant else take_snapshot(db_path)


@task("describe-snapshot", retries=0)
def snapshot_facts(snap: Snapshot) -> SnapshotFacts:
    """What the snapshot holds (estimated keys, entities, schemas, last WAL sequence), its logs replayed to its end."""
    return describe_snapshot(snap)


@task("find-previous-backup", retries=2, retry_delay_seconds=5)
def find_previous(layout: Layout, store: BackupStore, tenant_folder: str) -> PreviousBackup | None:
    """The newest backup a new one of this layout may reuse files of (none for an archive)."""
    return layout.previous(store, tenant_folder)


@task("store-backup", retries=2, retry_delay_seconds=10)
def store_data(layout: Layout, snap: Snapshot, store: BackupStore, tenant_folder: str, name: str, level: int,
               concurrency: int, previous: PreviousBackup | None):
    """Store the snapshot the layout's way; the run is named by the layout's step (compress-and-upload,
    upload-new-ssts). A failed attempt's objects go; its claim stays for the retry."""
    db_dir = snap.path / "db"
    progress = RunProgress(layout.store_text(name), sum(p.stat().st_size for p in db_dir.rglob("*") if p.is_file()))
    try:
        stats = layout.store(db_dir, store, tenant_folder, name, level, concurrency, snap.path, previous, progress)
        progress.finish()  # the upload is complete only once the writer has closed
        return stats
    except BaseException:
        cleanup_quietly(lambda: store.discard(tenant_folder, name), f"removing the partial backup {name!r}")
        raise


@task("measure-repository", retries=2, retry_delay_seconds=5)
def measure_repository(store: BackupStore) -> int:
    """The bytes the database's backups occupy in the store, this one included."""
    return store.repository_bytes()


@task("store-schemas", retries=3, retry_delay_seconds=5)
def store_schemas(store: BackupStore, tenant_folder: str, name: str, facts: SnapshotFacts) -> None:
    """Write schemas.json beside the archive."""
    store.put_file_bytes(tenant_folder, name, SCHEMAS, facts.schemas_json)


@task("tag-metadata", retries=3, retry_delay_seconds=5)
def store_metadata(store: BackupStore, metadata: BackupMetadata) -> None:
    """Write metadata.json last (the backup becomes visible), then tag the objects."""
    store.put_file_bytes(metadata.tenant_folder, metadata.name, METADATA, metadata.model_dump_json(indent=2).encode())
    store.record_written(metadata)
    layout = layout_of(metadata)
    store.finish(metadata.tenant_folder, metadata.name, backup_tags(metadata), layout.data_file, layout.record_files)
