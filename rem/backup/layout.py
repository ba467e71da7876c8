"""The one place a backup's layout is decided, and everything that differs between the two.

    archive       {name}/rocksdb.tar.zst: the whole database in one tar + zstd (a tenant's backup,
                  `--archive`, the runbook's format to move a database elsewhere)
    incremental   {name}/files.json + small.tar.zst, each SST stored once per database under
                  {db}/backups/sst/ (rem.backup.incremental); every whole-database backup by default

Callers ask `new_layout(...)` which one a new backup gets, `layout_of(metadata)` which one a
backup has, and then speak only the Layout interface: store, fetch, verify, extract, the files it
recorded. Nothing else looks at `metadata.layout`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from rem.backup.archive import check_free_space, extract_archive, verify_checksum, write_archive
from rem.backup.catalog import (ARCHIVE, FILES, METADATA, SCHEMAS, SMALL, BackupArchived, BackupMetadata,
                                BackupRecord, BackupStore, check_name, download_checked)
from rem.backup.incremental import (FileList, PreviousBackup, download_objects, kept_in, materialize,
                                    previous_backup, store_incremental)
from rem.errors import RemError
from rem.storage import ObjectArchived, ObjectMissing
from rem.storage.encrypted import linked_sealed
from rem.storage.local import private_file, space_checked

Progress = Callable[[int], None] | None


class Layout(Protocol):
    name: str  # as metadata.json records it
    store_step: str  # the name of the step that stores it (the task run's name in the Prefect UI)
    data_file: str  # the object lifecycle rules may move to Glacier; the others are records
    record_files: tuple[str, ...]
    keeps_files: bool  # a restore --delta can keep the target's files that match (shared SSTs, one by one)

    def store_text(self, name: str) -> str: ...

    def previous(self, store: BackupStore, tenant_folder: str) -> PreviousBackup | None: ...

    def store(self, db_dir: Path, store: BackupStore, tenant_folder: str, name: str, level: int, concurrency: int,
              spool: Path, previous: PreviousBackup | None, progress: Progress) -> Any: ...

    def metadata_fields(self, stats: Any) -> dict[str, Any]: ...

    def added_bytes(self, metadata: BackupMetadata) -> int: ...

    def download(self, record: BackupRecord, dest: Path, progress: Progress, keep_from: Path | None,
                 self_contained: bool) -> None:
        """keep_from: a database whose files matching the backup's need not be fetched (incremental only);
        self_contained: see fetch."""

    def verify(self, source: Path, metadata: BackupMetadata, while_extracting: bool) -> None: ...

    def extract(self, source: Path, work: Path, metadata: BackupMetadata, progress: Progress,
                keep_from: Path | None = None) -> Path: ...

    def recorded_files(self, source: Path, metadata: BackupMetadata) -> dict[str, int] | None: ...


class ArchiveLayout:
    name = "archive"
    store_step = "compress-and-upload"
    data_file = ARCHIVE
    record_files = (SCHEMAS, METADATA)
    keeps_files = False  # one stream: nothing to keep file by file

    def store_text(self, name: str) -> str:
        return f"Compressing and uploading backup {name}"

    def previous(self, store: BackupStore, tenant_folder: str) -> PreviousBackup | None:
        return None  # an archive is whole: it reuses nothing

    def store(self, db_dir, store, tenant_folder, name, level, concurrency, spool, previous, progress):
        """Stream the snapshot as tar + zstd into the store (chunked, parallel upload for S3)."""
        with store.archive_writer(tenant_folder, name, spool) as sink:
            return write_archive(db_dir, sink, level, progress=progress)

    def metadata_fields(self, stats) -> dict[str, Any]:
        return {"files": stats.files}

    def added_bytes(self, metadata: BackupMetadata) -> int:
        return metadata.size_bytes

    def download(self, record, dest, progress, keep_from, self_contained) -> None:
        store = record.store
        key = store.key(record.tenant_folder, record.folder, ARCHIVE)
        if self_contained or not linked_sealed(store.objects, key, dest / ARCHIVE):
            download_checked(store.objects, key, dest / ARCHIVE, record.metadata.checksum_sha256, progress)

    def verify(self, source, metadata, while_extracting) -> None:
        if not while_extracting:  # a restore checks the archive in the pass that extracts it
            verify_checksum(source / ARCHIVE, metadata.checksum_sha256)

    def extract(self, source, work, metadata, progress, keep_from=None) -> Path:
        return extract_archive(source / ARCHIVE, work, metadata.uncompressed_bytes, metadata.checksum_sha256,
                               progress)

    def recorded_files(self, source, metadata) -> dict[str, int] | None:
        return metadata.files  # None: an archive made before archives recorded them


class IncrementalLayout:
    name = "incremental"
    store_step = "upload-new-ssts"
    data_file = SMALL
    record_files = (FILES, SCHEMAS, METADATA)
    keeps_files = True

    def store_text(self, name: str) -> str:
        return f"Uploading what backup {name} adds"

    def previous(self, store: BackupStore, tenant_folder: str) -> PreviousBackup | None:
        return previous_backup(store, tenant_folder)

    def store(self, db_dir, store, tenant_folder, name, level, concurrency, spool, previous, progress):
        """Upload the SSTs the repository lacks, the small files and the file list."""
        return store_incremental(db_dir, store, tenant_folder, name, level, concurrency, spool,
                                 previous.files if previous else None, progress)

    def metadata_fields(self, stats) -> dict[str, Any]:
        return {"layout": self.name, "added_bytes": stats.added_bytes, "objects": stats.objects}

    def added_bytes(self, metadata: BackupMetadata) -> int:
        return metadata.added_bytes

    def download(self, record, dest, progress, keep_from, self_contained) -> None:
        download_objects(record.store, record, dest, progress, keep_from=keep_from, self_contained=self_contained)

    def verify(self, source, metadata, while_extracting) -> None:
        """The file list against metadata.json and the small files' archive against the list (each
        shared object is checked in the pass that places it)."""
        verify_checksum(source / FILES, metadata.checksum_sha256)
        verify_checksum(source / SMALL, file_list(source).small_sha256)

    def extract(self, source, work, metadata, progress, keep_from=None) -> Path:
        listing = file_list(source)
        kept = kept_in(listing, keep_from)  # linked, not written: they take no new space
        check_free_space(work, metadata.uncompressed_bytes - sum(e.size for e in listing.files if e.name in kept))
        db_dir = extract_archive(source / SMALL, work, listing.small_uncompressed_bytes, progress=progress)
        materialize(listing, source, db_dir, progress=progress, kept=kept)
        return db_dir

    def recorded_files(self, source, metadata) -> dict[str, int] | None:
        return {f.name: f.size for f in file_list(source).files}


def file_list(source: Path) -> FileList:
    return FileList.model_validate_json((source / FILES).read_bytes())


ARCHIVE_LAYOUT, INCREMENTAL_LAYOUT = ArchiveLayout(), IncrementalLayout()


def new_layout(tenant: str | None, archive: bool) -> Layout:
    """A whole-database backup is incremental unless archive asks for one self-contained file; a
    tenant's is always an archive (its SSTs are written for it, there is nothing to share)."""
    return ARCHIVE_LAYOUT if tenant is not None or archive else INCREMENTAL_LAYOUT


def layout_of(metadata: BackupMetadata) -> Layout:
    return INCREMENTAL_LAYOUT if metadata.layout == INCREMENTAL_LAYOUT.name else ARCHIVE_LAYOUT


def fetch(record: BackupRecord, out_dir: Path, progress: Progress = None, keep_from: Path | None = None,
          self_contained: bool = False) -> Path:
    """The backup as a local directory: a local store's own folder (restored in place), else a
    download to out_dir/{name}/ with parallel ranged GETs (an interrupted run resumes). Unless
    self_contained (`rem backup download`: another process may read it), an encrypted local store's
    objects are linked sealed, for this process to open as it reads them."""
    store = record.store
    here = store.objects.local_path(store.key(record.tenant_folder, record.folder, METADATA))
    if here is not None:
        layout = layout_of(record.metadata)
        for filename in (layout.data_file, *layout.record_files):  # the store refuses a link out of itself
            store.objects.local_path(store.key(record.tenant_folder, record.folder, filename))
        return here.parent
    if record.archived:  # refused before anything is written to out_dir
        raise _archived(record, record.archived[0], "Glacier", len(record.archived) - 1)
    dest = out_dir / check_name(record.folder)
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        with space_checked(dest, "--output"):
            with private_file(dest / SCHEMAS) as f:
                f.write(store.objects.get(store.key(record.tenant_folder, record.folder, SCHEMAS)))
            layout_of(record.metadata).download(record, dest, progress, keep_from, self_contained)
            # metadata.json last, as on upload: a directory without it is an unfinished download.
            with private_file(dest / METADATA) as f:
                f.write(record.metadata.model_dump_json(indent=2).encode())
    except ObjectMissing as exc:
        raise RemError(f"{store.objects.url(str(exc))}: missing from the store, so backup {record.name} cannot "
                       "be downloaded; try another backup (`rem backup list`)") from None
    except ObjectArchived as exc:  # archived after it was listed
        raise _archived(record, exc.key, exc.storage_class) from None
    return dest


def _archived(record: BackupRecord, key: str, storage_class: str, more: int = 0) -> BackupArchived:
    objects = record.store.objects
    also = f" (and the same for {more} more)" if more else ""
    return BackupArchived(f"backup {record.name} is archived: {objects.url(key)} is in {storage_class} (a "
                          f"lifecycle rule moved it); restore it with `{objects.restore_hint(key)}`{also}, "
                          "then run this again once S3 has restored it (hours); `rem backup list` shows which "
                          "backups are archived")
