"""A database's backups in an ObjectStore (a local directory or an S3 bucket), in the runbook's layout

    {prefix}/{db}/backups/full/{tenant}/{name}/metadata.json | rocksdb.tar.zst | schemas.json

(locally {backup_dir}/{db}/backups/full/...; before databases had a level of their own,
{prefix}/backups/full/... and {backup_dir}/full/..., which stay readable). A whole-database backup uses the tenant folder
`_all`; tenant ids cannot start with '_'. A backup exists only once its metadata.json does:
it is written last, so an interrupted run leaves nothing `list` or `restore` would take.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from rem.backup.archive import sha256_file
from rem.backup.catalog_file import CATALOG_FILE, CatalogFile, Entries, entry_key
from rem.errors import RemError, UsageError
from rem.format import check_tenant
from rem.identity import DatabaseIdentity, claim_name
from rem.storage import ARCHIVED_CLASSES, ObjectArchived, ObjectInfo, ObjectMissing, ObjectStore, PreconditionFailed
from rem.storage.encrypted import sealed_without_key

log = logging.getLogger("rem")

ALL_TENANTS = "_all"
METADATA = "metadata.json"
ARCHIVE = "rocksdb.tar.zst"
SCHEMAS = "schemas.json"
FILES = "files.json"  # an incremental backup's file list (rem.backup.incremental)
SMALL = "small.tar.zst"  # its files other than SSTs
CLAIM = ".claim"
DATA_TAG = ("rem-class", "data")  # the objects lifecycle rules may archive: never a record listing reads
KEEP_TAG = "rem-keep"  # "no" on every backup object, "yes" on a kept backup's: lifecycle expiry spares "yes"
PRUNE_LEASE = ".prune"  # {db}/backups/.prune: a garbage collection is deleting objects
FORMAT_VERSION = 1
NAME_MAX = 128
LATEST = "latest"  # as a name to find: the newest backup (unless one is really called that)
# An S3 claim older than this whose backup never got its metadata.json was left by a run that died.
CLAIM_STALE_SECONDS = 6 * 3600
READ_THREADS = 16
FOLDER_LISTINGS_MAX = 64  # folders a look lists one by one; with more unknown to the catalog, one listing of all


class BackupMetadata(BaseModel):
    """metadata.json: everything a restore, a listing or PITR needs to know of a backup."""

    format_version: int = FORMAT_VERSION
    name: str
    kind: str = Field(description="full (whole database) or tenant")
    tenant_id: str | None = Field(description="None for a whole-database backup")
    timestamp: str = Field(description="RFC 3339 UTC time the snapshot was taken")
    size_bytes: int = Field(description="compressed archive size")
    uncompressed_bytes: int
    entity_count: int
    schema_count: int
    checksum_sha256: str
    rocksdb_version: str = Field(description="the RocksDB that wrote the database (its OPTIONS file): the engine's")
    tools_rocksdb_version: str | None = Field(default=None, description="the RocksDB our tools ran (rocksdict's)")
    schema_version: str = Field(description="SHA-256 prefix of schemas.json: changes when any schema does")
    wal_last_seq: int = Field(description="highest logical-WAL sequence inside the snapshot")
    last_sequence: int | None = Field(default=None, description="RocksDB's last sequence number in a whole-database "
                                      "snapshot: every write up to it is in the backup, none after")
    last_sequence_time: str | None = Field(default=None, description="when the snapshot held last_sequence: the "
                                           "instant a point-in-time restore from this base starts at")
    wal_last_timestamp: str | None = Field(default=None, description="time of the logical WAL's entry wal_last_seq")
    column_families: dict[str, int] = Field(description="keys per column family (see counts)")
    counts: Literal["exact", "estimated"] = Field(
        default="exact", description="exact: keys counted one by one (backups before 2026-12); estimated: RocksDB's "
                                     "estimate-num-keys, exact for a compacted column family. A restore proves its "
                                     "copy by SHA-256 of every byte, not by counts")
    files: dict[str, int] | None = Field(default=None, description="name -> size of every file in the archive "
                                         "(archive layout; an incremental backup lists its files in files.json)")
    db_name: str | None = Field(default=None, description="the database's name: the level of the store it lies under")
    db_identity: str | None = Field(default=None, description="RocksDB's IDENTITY of the database backed up")
    host: str
    db_path: str | None = Field(default=None, description="where the database was on its host")
    tool_version: str
    duration_seconds: float
    compression: str
    online: bool = Field(description="a writer held the database while it was backed up")
    layout: Literal["archive", "incremental"] = Field(
        default="archive", description="archive: one rocksdb.tar.zst; incremental: files.json naming shared "
                                       "SST objects (rem.backup.incremental); checksum_sha256 is then files.json's")
    added_bytes: int | None = Field(default=None, description="bytes this backup uploaded (incremental)")
    objects: int | None = Field(default=None, description="shared objects it references (incremental)")
    encryption: dict[str, str] | None = Field(default=None, description="how rem encrypted its objects: mode "
                                              "(kms-envelope, key-file), kek (the KMS key or key file's fingerprint "
                                              "that wraps the data key), data_key (its id), cipher; None: not by rem")
    repository_bytes: int | None = Field(default=None, description="the database's backups in the store, "
                                         "after this one")
    kept: bool = Field(default=False, description="`rem backup keep`: prune never deletes it, nor what it needs")
    keep_until: str | None = Field(default=None, description="kept up to this time (RFC 3339); None: for good")
    annotations: dict[str, str] = Field(default_factory=dict, description="`rem backup annotate`: the operator's "
                                        "key=value notes")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        try:
            return check_name(name)
        except UsageError as exc:  # pydantic reports ValueErrors as validation errors
            raise ValueError(str(exc)) from None

    @field_validator("tenant_id")
    @classmethod
    def _valid_tenant(cls, tenant: str | None) -> str | None:
        try:
            return None if tenant is None else check_tenant(tenant)
        except UsageError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _kind_matches_tenant(self) -> "BackupMetadata":
        if (self.kind == "tenant") != (self.tenant_id is not None):
            raise ValueError(f"kind {self.kind!r} does not go with tenant_id {self.tenant_id!r}")
        return self

    @property
    def tenant_folder(self) -> str:
        return self.tenant_id or ALL_TENANTS


@dataclass
class BackupRecord:
    """A backup as found: `tenant_folder` and `folder` are where its metadata.json was, and every action on
    the backup (download, delete) uses them, never the names written inside the file."""

    metadata: BackupMetadata
    location: str
    store: "BackupStore"
    tenant_folder: str
    folder: str
    archived: list[str] = field(default_factory=list)  # its objects a lifecycle rule moved to Glacier
    written: float = 0.0  # when its metadata.json was written (Unix time): newest_first's order

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def status(self) -> str:
        return "archived" if self.archived else "ok"


def backup_tags(metadata: BackupMetadata) -> dict[str, str]:
    """The tags on every object of a backup (with its rem-class, set by BackupStore.finish)."""
    return {"rem-backup": metadata.name, "rem-kind": metadata.kind, "rem-tenant": metadata.tenant_folder,
            KEEP_TAG: "yes" if metadata.kept else "no"}


class BackupNotFound(UsageError):
    pass


class BackupArchived(RemError):
    pass


class NameTaken(UsageError):
    """A backup of that name exists, or is being written."""


def backup_name(now: datetime | None = None) -> str:
    """The default name: the snapshot's UTC time, sortable, without ':' (2025-10-25T143000Z)."""
    return (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H%M%S") + "Z"


NAME_PATTERN = re.compile(rf"[A-Za-z0-9-][A-Za-z0-9._-]{{0,{NAME_MAX - 1}}}")


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        shown = name if len(name) <= 40 else name[:40] + f"... ({len(name)} characters)"
        raise UsageError(f"backup name {shown!r}: use 1 to {NAME_MAX} letters, digits, '-', '_' or '.', "
                         "not starting with '.' or '_'")
    return name


def claim_is_stale(owner: dict, max_age: float = CLAIM_STALE_SECONDS) -> bool:
    """A claim whose run is gone: its process is dead on this host, or it is older than any such run lasts."""
    if time.time() - float(owner.get("started", 0)) > max_age:
        return True
    if owner.get("host") == socket.gethostname():
        try:
            os.kill(int(owner.get("pid", 0)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError):
            return False
    return False


@dataclass(frozen=True)
class Unreadable:
    """A metadata.json that could not be read: whose backup it is, and so what its objects are, is
    unknown. Never listed, restored or deleted, and prune stops rather than guess."""

    location: str
    why: str


class UnreadableRecord(RemError):
    def __init__(self, found: list[Unreadable], done: str = "prune deleted nothing"):
        first = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        super().__init__(f"{first.location}: {first.why}{more}; {done}, since the objects of a backup whose "
                         "record cannot be read may be needed: repair or restore that file, or remove its folder by "
                         "hand if the backup is unwanted")
        self.found = found


def _parse_found(body: bytes, where: str, tenant_folder: str, folder: str,
                db: str | None) -> BackupMetadata | Unreadable | None:
    """The metadata found at where; Unreadable (with a warning) when it does not parse; None (with a
    warning) when it names another place than the one it was found in: such a record is never
    listed, restored or deleted."""
    try:
        metadata = BackupMetadata.model_validate_json(body)
    except ValueError as exc:
        why = f"not valid backup metadata ({str(exc).splitlines()[0]})"
        log.warning("skipping %s: %s", where, why)
        return Unreadable(where, why)
    return metadata if _belongs(metadata, where, tenant_folder, folder, db) else None


def _belongs(metadata: BackupMetadata, where: str, tenant_folder: str, folder: str, db: str | None) -> bool:
    """Whether a record names the place it was found in (warned of when not)."""
    if (metadata.tenant_folder, metadata.name) != (tenant_folder, folder):
        log.warning("skipping %s: it says backup %r of %r but lies in %s/%s; rem did not write it there, "
                             "so it is neither listed nor acted on", where, metadata.name, metadata.tenant_folder,
                             tenant_folder, folder)
        return False
    if db is not None and metadata.db_name not in (None, db):
        log.warning("skipping %s: it is a backup of database %r, found under %r; rem did not write it there",
                    where, metadata.db_name, db)
        return False
    return True


Folder = tuple[str, str]  # (tenant_folder, folder)


@dataclass
class StoreLook:
    """One look at a database's backups: the catalog file checked against a listing."""

    records: list[BackupRecord]
    unreadable: list[Unreadable]
    unfinished: dict[Folder, list[ObjectInfo]]  # folders without metadata.json: in progress, or left by a dead run
    guarded: list[Folder]  # folders whose metadata.json is there but names another place or does not parse
    folder_bytes: dict[Folder, int]  # of the folders listed object by object (the catalog has the others')
    entries: Entries  # the catalog's entries as read
    fresh: dict[Folder, str]  # backups read from their metadata.json (the catalog lacked or misdescribed them): ETag

    def found(self) -> list[Folder]:
        """Every folder holding a metadata.json."""
        return [(r.tenant_folder, r.folder) for r in self.records] + self.guarded


class BackupStore:
    """One database's backups in an ObjectStore: {db}/backups/full/{tenant}/{name}/{file}.
    db None is the layout before databases had a level of their own, read-only (`--from-db legacy`)."""

    def __init__(self, objects: ObjectStore, db: str | None, root: str | None = None,
                 owner: DatabaseIdentity | None = None):
        self.objects, self.db, self.owner = objects, db, owner
        self.root = root if root is not None else f"{db}/backups/full/"
        self.catalog = CatalogFile(objects, self.root.removesuffix("full/") + CATALOG_FILE)
        self._changes_unseen: bool | None = None  # see _changed_unseen
        self._parsed: dict[str, tuple[dict, BackupMetadata, str]] = {}  # catalog entries already validated
        self._read_before: dict[str, tuple[str, BackupMetadata]] = {}  # metadata.json read, by key: (ETag, it)
        self.last_look: StoreLook | None = None

    @property
    def legacy(self) -> bool:
        return self.db is None

    @property
    def local(self) -> bool:
        """Its files are on this host: restored in place, nothing to download."""
        return self.objects.local_path(self.key(ALL_TENANTS, "x", METADATA)) is not None

    def url(self) -> str:
        return self.objects.url(self.root)

    def key(self, tenant_folder: str, name: str, filename: str = "") -> str:
        return f"{self.root}{tenant_folder}/{name}/{filename}"

    def location(self, tenant_folder: str, name: str) -> str:
        return self.objects.url(self.key(tenant_folder, name))

    def exists(self, tenant_folder: str, name: str) -> bool:
        return self.objects.head(self.key(tenant_folder, name, METADATA)) is not None

    def prepare(self, tenant_folder: str, name: str) -> None:
        """Refuse a taken name and claim it (a conditional put of .claim, so two runs cannot both
        write one backup); clean what interrupted runs of this tenant left."""
        if self.legacy:
            raise UsageError(f"{self.url()} is the old layout without a database level; rem reads it, "
                             "never writes it")
        self.objects.check()
        if self.owner is not None:
            claim_name(self.objects, self.owner, write=True)
        if self.exists(tenant_folder, name):
            raise NameTaken(f"a backup named {name!r} already exists in {self.url()}; choose another --name")
        claim_key = self.key(tenant_folder, name, CLAIM)
        body = self.run_record()
        try:
            self.objects.put(claim_key, body, if_none_match=True)
        except PreconditionFailed:
            self._take_stale_claim(claim_key, body, name)
        if self.exists(tenant_folder, name):  # finished by the run whose claim was stale after all
            self.objects.delete([claim_key])
            raise NameTaken(f"a backup named {name!r} already exists in {self.url()}; choose another --name")
        self.clean_abandoned(tenant_folder)

    def run_record(self) -> bytes:
        """What a claim or a lease says of the run holding it."""
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}).encode()

    def read_claim(self, claim_key: str) -> tuple[dict, str] | None:
        """A claim's owner and ETag; None when there is none (or it is unreadable)."""
        try:
            body, etag = self.objects.get_with_etag(claim_key)
            return json.loads(body), etag
        except (ObjectMissing, ValueError):
            return None

    def _take_stale_claim(self, claim_key: str, body: bytes, name: str) -> None:
        """Replace a claim its run left behind; refuse a live one."""
        busy = NameTaken(f"a backup named {name!r} is being written right now by another run in {self.url()}; "
                         "choose another --name")
        claim = self.read_claim(claim_key)
        if claim is None or not claim_is_stale(claim[0]):
            raise busy
        try:  # only the run that read this exact stale claim may replace it
            self.objects.put(claim_key, body, if_match=claim[1])
        except PreconditionFailed:
            raise busy from None

    def live_claims(self, look: StoreLook | None = None) -> list[str]:
        """The claims of backups of this database being written right now: a run claims its folder
        before it writes anything there and releases it after metadata.json, so a live claim lies only
        in a folder without one."""
        look = look or self.look()
        return [key for key in self._claims(look) if (claim := self.read_claim(key)) is not None
                and not claim_is_stale(claim[0])]

    def _claims(self, look: StoreLook, tenant_folder: str | None = None) -> list[str]:
        return [info.key for (tenant, _), infos in look.unfinished.items() for info in infos
                if info.key.endswith("/" + CLAIM) and tenant_folder in (None, tenant)]

    def clean_abandoned(self, tenant_folder: str) -> None:
        """Remove what runs that died left in this tenant's backups: unfinished uploads with no claim
        or a stale one, then the claims and partial objects of backups that never got metadata.json.
        A concurrent run's upload and claim are left alone."""
        base = f"{self.root}{tenant_folder}/"
        abandoned: dict[str, bool] = {}

        def is_abandoned(key: str) -> bool:
            folder = key[len(base):].split("/")[0]
            if folder not in abandoned:
                claim = self.read_claim(self.key(tenant_folder, folder, CLAIM))
                abandoned[folder] = claim is None or claim_is_stale(claim[0])
            return abandoned[folder]

        self.objects.abort_uploads(base, is_abandoned)
        for key in self._claims(self.look(), tenant_folder):
            folder = key[len(base):].partition("/")[0]
            if is_abandoned(key) and not self.exists(tenant_folder, folder):
                self.objects.delete([self.key(tenant_folder, folder, f) for f in (ARCHIVE, FILES, SMALL, SCHEMAS,
                                                                                   CLAIM)])

    def archive_writer(self, tenant_folder: str, name: str, spool_dir: Path) -> AbstractContextManager[BinaryIO]:
        """The archive's sink: a file renamed into place locally, a spooled multipart upload to S3."""
        return self.objects.writer(self.key(tenant_folder, name, ARCHIVE), spool_dir)

    def put_file_bytes(self, tenant_folder: str, name: str, filename: str, data: bytes) -> None:
        self.objects.put(self.key(tenant_folder, name, filename), data)

    def finish(self, tenant_folder: str, name: str, tags: dict[str, str], data: str, records: tuple[str, ...]) -> None:
        """Tag the backup's objects; only its data (the layout's: the archive, or the small files'
        archive) is tagged `rem-class=data`, the one class lifecycle rules move to Glacier: records
        stay readable."""
        for filename in (data, *records):
            self.objects.tag(self.key(tenant_folder, name, filename),
                             {**tags, DATA_TAG[0]: DATA_TAG[1] if filename == data else "record"})

    def update_metadata(self, record: BackupRecord, **changes: Any) -> BackupMetadata:
        """Rewrite a backup's metadata.json with changes, only if nothing rewrote it since it was read."""
        key = self.key(record.tenant_folder, record.folder, METADATA)
        body, etag = self.objects.get_with_etag(key)
        updated = BackupMetadata.model_validate_json(body).model_copy(update=changes)
        try:
            new_etag = self.objects.put(key, updated.model_dump_json(indent=2).encode(), if_match=etag)
        except PreconditionFailed:
            raise RemError(f"{self.objects.url(key)} changed while it was updated; run the command again") from None
        folder = entry_key(record.tenant_folder, record.folder)

        def change(entries: Entries) -> None:
            if folder in entries:
                entries[folder] = {**entries[folder], "metadata": updated.model_dump(mode="json"), "etag": new_etag}

        self.catalog.update(change)
        return updated

    def discard(self, tenant_folder: str, name: str) -> None:
        """Remove a failed attempt's objects (the claim stays for a retry)."""
        if self.exists(tenant_folder, name):
            return
        for filename in (ARCHIVE, SMALL):
            self.objects.abort_uploads(self.key(tenant_folder, name, filename), lambda key: True)
        self.objects.delete([self.key(tenant_folder, name, f) for f in (ARCHIVE, FILES, SMALL, SCHEMAS)])

    def release(self, tenant_folder: str, name: str) -> None:
        """End this run's claim; without metadata.json the objects are an unfinished backup and go."""
        self.discard(tenant_folder, name)
        self.objects.delete([self.key(tenant_folder, name, CLAIM)])

    def list(self) -> list[BackupRecord]:
        return self.scan()[0]

    def scan(self, exact: bool = False) -> tuple[list[BackupRecord], list[Unreadable]]:
        """Every backup found (with the objects of it that are archived), and every metadata.json
        that could not be read."""
        look = self.look(exact)
        return look.records, look.unreadable

    def look(self, exact: bool = False) -> StoreLook:
        """The backups as the catalog file has them, checked against a listing of the folders: a folder
        the catalog lacks is read from its metadata.json, an entry whose folder is gone is left out.
        In a directory each entry also holds only while its metadata.json has the ETag it recorded (a stat).
        Exact (asked for, and where objects may change class or vanish without rem, as under an S3
        lifecycle rule): every object is listed, and entries are held to their ETags likewise."""
        with ThreadPoolExecutor(1, thread_name_prefix="rem-catalog-file") as beside:
            reading = beside.submit(self.catalog.read)  # one round trip or two, while the folders are listed
            entries, listed, taken = self._list_against(reading, exact)
        records: list[BackupRecord] = []
        for folder in sorted(taken):
            record = self._from_entry(folder, entries[entry_key(*folder)])
            if record is None:  # an entry that does not hold: its metadata.json is the truth
                listed.setdefault(folder, list(self.objects.list(self.key(*folder))))
            else:
                records.append(record)
        unfinished: dict[Folder, list[ObjectInfo]] = {}
        to_read: list[ObjectInfo] = []
        from_entries = {(r.tenant_folder, r.folder) for r in records}
        for folder, infos in listed.items():
            if folder in from_entries:
                continue
            meta = next((i for i in infos if i.key.endswith("/" + METADATA)), None)
            (to_read.append(meta) if meta else unfinished.__setitem__(folder, infos))
        unreadable: list[Unreadable] = []
        guarded: list[Folder] = []
        fresh: dict[Folder, str] = {}
        for info, found in zip(to_read, self.read_each(self._read, to_read)):
            folder = tuple(info.key[len(self.root):].split("/")[:2])
            if isinstance(found, BackupRecord):
                records.append(found)
                fresh[folder] = info.etag
            elif isinstance(found, Unreadable):
                unreadable.append(found)
                guarded.append(folder)
            elif self.objects.head(info.key) is not None:  # names another place (None: pruned while listed)
                guarded.append(folder)
        archived = {f: sorted(i.key for i in infos if i.storage_class in ARCHIVED_CLASSES)
                    for f, infos in listed.items()}
        for record in records:
            record.archived = archived.get((record.tenant_folder, record.folder), [])
        look = StoreLook(records, unreadable, unfinished, guarded,
                         {f: sum(i.size for i in infos) for f, infos in listed.items()}, entries, fresh)
        self.last_look = look
        return look

    def _list_against(self, reading: Future, exact: bool) -> tuple[Entries, dict[Folder, list[ObjectInfo]], set[Folder]]:
        """The catalog's entries (reading: their read under way), the folders listed object by object,
        and the folders whose entries stand (see look)."""
        listed: dict[Folder, list[ObjectInfo]] = {}
        if exact or self._changed_unseen():
            for info in self.objects.list(self.root):
                parts = info.key[len(self.root):].split("/")
                if len(parts) == 3:
                    listed.setdefault((parts[0], parts[1]), []).append(info)
            entries = reading.result()[0]
            taken = {f for f, infos in listed.items() if (entry := entries.get(entry_key(*f))) is not None
                     and any(i.key.endswith("/" + METADATA) and i.etag == entry.get("etag")
                             and i.storage_class not in ARCHIVED_CLASSES for i in infos)}
        else:
            tenants = self.objects.list_folder(self.root)[0]
            folders = [(t, f) for t, names in zip(tenants, self.read_each(
                lambda t: self.objects.list_folder(f"{self.root}{t}/")[0], tenants)) for f in names]
            entries = reading.result()[0]
            taken = {f for f in folders if entry_key(*f) in entries}
            heads = getattr(self.objects, "heads", None)  # files on this host (sealed or not): a stat each
            if heads is not None:  # an entry holds only while its metadata.json is the one it recorded
                taken = {f for f, info in zip(sorted(taken), heads([self.key(*f, METADATA) for f in sorted(taken)]))
                         if info is not None and info.etag == entries[entry_key(*f)].get("etag")}
            unknown = [f for f in folders if f not in taken]
            if len(unknown) > FOLDER_LISTINGS_MAX:  # no catalog yet: one listing beats a request per folder
                every: dict[Folder, list[ObjectInfo]] = {f: [] for f in unknown}
                for info in self.objects.list(self.root):
                    parts = info.key[len(self.root):].split("/")
                    if len(parts) == 3 and (parts[0], parts[1]) in every:
                        every[(parts[0], parts[1])].append(info)
                listed = every
            else:
                listed = dict(zip(unknown, self.read_each(lambda f: list(self.objects.list(self.key(*f))),
                                                          unknown)))
        return entries, listed, taken

    def _from_entry(self, folder: Folder, entry: dict) -> BackupRecord | None:
        """A catalog entry as a record, when it holds one of this folder's backup (parsed once per
        process: while the catalog file is unchanged, its entries are the same objects)."""
        key = entry_key(*folder)
        parsed = self._parsed.get(key)
        if parsed is None or parsed[0] is not entry:
            try:
                metadata = BackupMetadata.model_validate(entry["metadata"])
            except (ValueError, KeyError, TypeError):
                return None
            if not _belongs(metadata, f"{self.objects.url(self.catalog.key)} ({key})", *folder, self.db):
                return None
            parsed = self._parsed[key] = (entry, metadata, self.location(*folder))
        return BackupRecord(parsed[1], parsed[2], self, *folder, written=float(entry.get("written", 0)))

    def _changed_unseen(self) -> bool:
        """Whether objects here may change class or vanish without rem: an S3 lifecycle rule that moves
        or expires objects under these backups, or uploads made straight to an archive class."""
        if self._changes_unseen is None:
            rules = getattr(self.objects, "lifecycle_rules", None)
            cfg = getattr(self.objects, "cfg", None)
            if rules is None or cfg is None:
                self._changes_unseen = False
            else:
                where = self.objects.full_key(self.root)
                self._changes_unseen = getattr(cfg, "storage_class", "") in ARCHIVED_CLASSES or any(
                    rule.get("Status") == "Enabled" and (rule.get("Transitions") or rule.get("Expiration"))
                    and (where.startswith(p) or p.startswith(where)) for rule in rules()
                    for p in [_rule_prefix(rule)])
        return self._changes_unseen

    def confirmed(self, record: BackupRecord) -> BackupRecord | None:
        """The record as its metadata.json says now (what acts on a backup reads it again: the catalog
        is a cache); None when it is gone or no longer describes a backup in that folder."""
        info = self.objects.head(self.key(record.tenant_folder, record.folder, METADATA))
        found = self._read(info) if info is not None else None
        if not isinstance(found, BackupRecord):
            return None
        found.archived, found.written = record.archived, info.modified
        return found

    def record_written(self, metadata: BackupMetadata) -> None:
        """Enter a backup whose metadata.json was just written into the catalog file, with what the
        last look found that the catalog lacked (and without what it found gone)."""
        folder = (metadata.tenant_folder, metadata.name)
        infos = list(self.objects.list(self.key(*folder)))
        meta = next((i for i in infos if i.key.endswith("/" + METADATA)), None)
        if meta is None:
            return
        entry = {"metadata": metadata.model_dump(mode="json"), "etag": meta.etag, "written": meta.modified,
                 "bytes": sum(i.size for i in infos)}
        look = self.last_look

        def change(entries: Entries) -> None:
            if look is not None:
                self._reconcile(entries, look)
            entries[entry_key(*folder)] = entry

        self.catalog.update(change)

    def _reconcile(self, entries: Entries, look: StoreLook) -> None:
        """Bring entries in line with what a look found: backups read from metadata.json in, and out the
        entries it found no backup for, if they are as that look read them (an entry written since is
        of a backup it could not see: clocks are not compared, hosts' and the store's differ)."""
        found = {(r.tenant_folder, r.folder): r for r in look.records}
        for key in [k for k, e in entries.items() if tuple(k.split("/", 1)) not in found
                    and look.entries.get(k) == e]:
            del entries[key]
        for folder, etag in look.fresh.items():
            record = found[folder]
            entries[entry_key(*folder)] = {"metadata": record.metadata.model_dump(mode="json"), "etag": etag,
                                           "written": record.written, "bytes": look.folder_bytes[folder]}

    def repository_bytes(self) -> int:
        """Everything the database's backups occupy in the store: each backup's folder (the catalog's
        count, or a listing's) as the run's last look found them, and every object beside the backups
        (shared SSTs, the log archive)."""
        look = self.last_look or self.look()  # the run's own look: its folders unfinished then are listed now
        unfinished = self.read_each(lambda f: sum(i.size for i in self.objects.list(self.key(*f))), list(look.unfinished))
        own = sum(look.folder_bytes.get(f, int(look.entries.get(entry_key(*f), {}).get("bytes", 0)))
                  for f in look.found()) + sum(unfinished)
        top = self.root.removesuffix("full/")
        folders, loose = self.objects.list_folder(top)
        return own + sum(i.size for i in loose) + sum(i.size for f in folders if top + f + "/" != self.root
                                                      for i in self.objects.list(f"{top}{f}/"))

    def newest_first(self, tenant_folder: str) -> Iterator[BackupRecord]:
        """One tenant folder's backups, the most recently written first (from the last look, when this
        run took one: what may be reused is proven object by object)."""
        look = self.last_look or self.look()
        yield from sorted((r for r in look.records if r.tenant_folder == tenant_folder), key=lambda r: r.written,
                          reverse=True)

    def read_each(self, read: Callable[..., Any], items: list) -> list:
        """read(item) for every item, in order: from a bucket READ_THREADS at a time (each read waits a
        round trip; 5,000 records one after another took longer than a listing is allowed)."""
        if self.local or len(items) < 2:
            return [read(item) for item in items]
        with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="rem-catalog") as pool:
            return list(pool.map(read, items))

    def newest(self, count: int) -> list[BackupRecord]:
        """The count newest backups of every tenant folder, by metadata.json's write time (the
        recent-backups table after each backup)."""
        found = sorted(self.look().records, key=lambda r: r.written, reverse=True)[:count]
        return sorted(found, key=lambda r: r.metadata.timestamp, reverse=True)

    def _read(self, info: ObjectInfo) -> BackupRecord | Unreadable | None:
        tenant_folder, folder, _ = info.key[len(self.root):].split("/")
        known = self._read_before.get(info.key)
        if known is not None and info.etag and known[0] == info.etag:  # this run read these bytes already
            return BackupRecord(known[1], self.location(tenant_folder, folder), self, tenant_folder, folder,
                                written=info.modified)
        try:
            body = self.objects.get(info.key)
        except ObjectMissing:
            return None  # pruned while listed
        except ObjectArchived as exc:  # moved by a lifecycle rule that did not keep records readable
            why = (f"in {exc.storage_class} (a lifecycle rule moved it): restore it with "
                   f"`{self.objects.restore_hint(info.key)}`, and run `rem backup lifecycle apply` so records stay "
                   "readable")
            log.warning("skipping %s: %s", self.objects.url(info.key), why)
            return Unreadable(self.objects.url(info.key), why)
        metadata = _parse_found(body, self.objects.url(info.key), tenant_folder, folder, self.db)
        if not isinstance(metadata, BackupMetadata):
            return metadata
        self._read_before[info.key] = (info.etag, metadata)
        return BackupRecord(metadata, self.location(tenant_folder, folder), self, tenant_folder, folder,
                            written=info.modified)

    @property
    def prune_lease_key(self) -> str:
        """Held by a prune while it collects garbage (rem.backup.incremental.collection_lease)."""
        return self.root.removesuffix("full/") + PRUNE_LEASE

    def delete(self, records: list[BackupRecord]) -> list[BackupRecord]:
        """Delete backups, each only if its metadata.json still says what the caller decided on (else it
        is left, and returned, for the next prune to judge): out of the catalog file first, then
        metadata.json, so a half-deleted backup is at once invisible, never mistaken for whole."""
        found = dict(zip((entry_key(r.tenant_folder, r.folder) for r in records),
                         self.read_each(self.confirmed, records)))
        doomed = [r for r in records if (now := found[entry_key(r.tenant_folder, r.folder)]) is not None
                  and now.metadata == r.metadata]
        gone = {entry_key(r.tenant_folder, r.folder) for r in doomed}
        changed = [r for r in records if entry_key(r.tenant_folder, r.folder) not in gone]
        for record in changed:
            log.warning("not deleting %s: its metadata.json changed since it was listed (or is gone); the next prune "
                        "decides", record.location)
        look = self.last_look

        def change(entries: Entries) -> None:
            if look is not None:
                self._reconcile(entries, look)
            for key, now in found.items():
                if now is None or key in gone:
                    entries.pop(key, None)
                elif key in entries:  # the catalog said otherwise: it takes what metadata.json says
                    entries[key] = {**entries[key], "metadata": now.metadata.model_dump(mode="json")}

        if records or (look is not None and look.fresh):
            self.catalog.update(change)
        for record in doomed:
            self.objects.delete([self.key(record.tenant_folder, record.folder, METADATA)])
            self.objects.delete([self.key(record.tenant_folder, record.folder, f)
                                 for f in (ARCHIVE, FILES, SMALL, SCHEMAS, CLAIM)])
        return changed

def _rule_prefix(rule: dict) -> str:
    """The key prefix an S3 lifecycle rule applies to ('' for every key)."""
    where = rule.get("Filter", {})
    return where.get("Prefix") or where.get("And", {}).get("Prefix") or rule.get("Prefix") or ""


def download_checked(objects: ObjectStore, key: str, target: Path, sha256: str,
                     progress: Callable[[int], None] | None = None) -> None:
    """Download an object, but first drop a copy an earlier run left whose SHA-256 is not the one
    recorded: a download that resumes must never keep corrupt bytes of the right size."""
    if target.exists() and not target.with_name(target.name + ".download.json").exists() \
            and sha256_file(target) != sha256:
        log.warning("%s: an earlier download left corrupt bytes (SHA-256 is not the recorded %s): fetched again",
                    target, sha256[:16])
        target.unlink()
    objects.download(key, target, progress)


# ------------------------------------------------------------------------------ lookups


def find_backup(stores: list[BackupStore], name: str, tenant: str | None = None,
                elsewhere: Callable[[], list[BackupStore]] | None = None) -> BackupRecord:
    """The backup called name in any of the stores (one database's). When several match, the one
    local copy wins (nothing to download); otherwise the ambiguity is an error. A backup of that
    name in the stores `elsewhere` returns (other databases, the old layout; looked at only when none
    matches here) is named in the refusal, never taken."""
    check_name(name)
    if tenant is not None and tenant != ALL_TENANTS:
        check_tenant(tenant)
    every = [r for store in stores for r in store.list() if tenant is None or r.metadata.tenant_folder == tenant]
    matches = [r for r in every if r.name == name]
    if not matches and name == LATEST:  # WAL-G's LATEST: the newest whole-database backup, or --tenant's
        wanted = tenant or ALL_TENANTS
        newest = max((r for r in every if r.metadata.tenant_folder == wanted),
                     key=lambda r: (r.metadata.timestamp, r.name), default=None)
        matches = [r for r in every if newest is not None and (r.name, r.metadata.tenant_folder) ==
                   (newest.name, newest.metadata.tenant_folder)]
    if not matches:
        where = ", ".join(s.url() for s in stores)
        holder = _holder(elsewhere, name) if elsewhere else None
        if holder is not None:
            raise BackupNotFound(f"no backup named {name!r} in {where}; {holder.url()} has one, of "
                                 f"{'the old layout' if holder.legacy else 'database ' + repr(holder.db)}: "
                                 f"restore it with --from-db {holder.db or 'legacy'}")
        raise BackupNotFound(f"no backup named {name!r} in {where}; see `rem backup list`")
    local = [r for r in matches if r.store.local]
    if len(matches) == 1 or len(local) == 1:
        chosen = matches[0] if len(matches) == 1 else local[0]
        confirmed = chosen.store.confirmed(chosen)  # restored from what metadata.json says, not the catalog's copy
        if confirmed is None:
            raise BackupNotFound(f"backup {name!r} in {chosen.store.url()} was deleted or changed while it was "
                                 "looked up; see `rem backup list`")
        return confirmed
    raise UsageError(f"several backups are named {name!r}: {', '.join(r.location for r in matches)}; add --tenant")


def _holder(elsewhere: Callable[[], list[BackupStore]], name: str) -> BackupStore | None:
    """The first of the other stores holding a backup of that name; an unreachable one only loses the hint."""
    try:
        for other in elsewhere():
            if any(r.name == name for r in other.list()):
                return other
    except Exception:  # noqa: BLE001 - the refusal being built is the error to report
        return None
    return None


def read_local_backup(source: Path) -> BackupMetadata:
    """The metadata of a backup directory (as written by create or download)."""
    meta = source / METADATA
    if not meta.exists():
        raise UsageError(f"{source}: no {METADATA} here (not a backup, or an unfinished download); "
                         "give --source the directory `rem backup download` wrote")
    try:
        metadata = BackupMetadata.model_validate_json(meta.read_bytes())
    except ValueError as exc:
        raise RemError(f"{meta}: unreadable backup metadata ({str(exc).splitlines()[0]})") from None
    sealed = [p.name for p in (source / ARCHIVE, source / SMALL, source / FILES) if sealed_without_key(p)]
    if sealed:
        raise UsageError(f"{source / sealed[0]} is encrypted as it lies in the store: restore it with --name "
                         f"{metadata.name} (the store opens it with the data key), or `rem backup download` it first")
    return metadata


def list_reachable(stores: list) -> tuple[list[BackupRecord], dict[str, str]]:
    """Every backup in the stores that answer, and for each one that does not, why."""
    records: list[BackupRecord] = []
    failed: dict[str, str] = {}

    def listed(store) -> list[BackupRecord] | Exception:
        try:
            return store.list()
        except Exception as exc:  # one unreachable store must not hide the others' backups
            return exc

    with ThreadPoolExecutor(max(1, len(stores)), thread_name_prefix="rem-stores") as pool:  # each waits on its own
        for store, found in zip(stores, list(pool.map(listed, stores))):
            if isinstance(found, Exception):
                failed[store.url()] = f"{type(found).__name__}: {str(found).splitlines()[0] if str(found) else ''}"
            else:
                records.extend(found)
    return records, failed
