"""Incremental backups: each SST stored once per database, a backup is a list of files.

    {db}/backups/sst/{sha256}.zst                     an SST (or blob file), zstd, named by its content's SHA-256
    {db}/backups/full/_all/{name}/files.json          every file of the snapshot: name, size, SHA-256, object
    {db}/backups/full/_all/{name}/small.tar.zst       the files that change: MANIFEST, CURRENT, OPTIONS, logs
    {db}/backups/full/_all/{name}/schemas.json | metadata.json (last)

RocksDB never changes an SST once written, so a backup uploads only the SSTs the repository does
not hold yet (or holds other than a backup recorded them: size and the store's ETag), plus the
small files; each backup is still logically full (any one restores alone).
An object's name is its content's SHA-256, so two files with the same bytes are one object, a
file number reused after a restore can never alias another file, and a restore checks every byte
against the name it asked for. A backup's files.json is what metadata.json's checksum covers.

Garbage: prune removes backups (metadata.json first), then the objects no remaining files.json
references, only objects older than the grace period, and only under its lease: it writes
{db}/backups/.prune, then looks for claims (a backup being written) and defers if it finds one; a
backup writes its claim, then waits while a lease exists, before it lists the objects it may reuse
(collection_lease). A backup also re-lists the objects it references before its metadata.json is
written and uploads again any that went meanwhile.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import shutil
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import zstandard
from pydantic import BaseModel, Field

from rem.backup.archive import COPY_BUFFER, ROCKSDB_FILE, CountingWriter, write_archive
from rem.backup.catalog import (CLAIM, FILES, READ_THREADS, SMALL, BackupRecord, BackupStore, StoreLook,
                                Unreadable, UnreadableRecord,
                                claim_is_stale, download_checked)
from rem.errors import RemError
from rem.scratch import remove_scratch, scratch_dir
from rem.storage import ObjectInfo, ObjectMissing, PreconditionFailed, cleanup_quietly
from rem.storage.encrypted import encryption_of, linked_sealed, open_object_file
from rem.storage.local import private_file

SHARED = re.compile(r"^\d+\.(sst|blob)$")
OBJECT_KEY = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}/backups/sst/[0-9a-f]{64}\.zst$")
log = logging.getLogger("rem")
GRACE_SECONDS = 6 * 3600  # an unreferenced object younger than this may belong to a backup being written


class FileEntry(BaseModel):
    name: str
    size: int
    sha256: str
    object: str | None = Field(description="the shared object holding it; None: inside small.tar.zst")
    stored_bytes: int = 0
    etag: str | None = Field(None, description="the store's fingerprint of the object when this backup proved it: a "
                             "later backup reuses the object only while the store still shows it")
    ino: int = Field(0, description="inode and mtime when backed up: an unchanged SST is not hashed again")
    mtime_ns: int = 0


class FileList(BaseModel):
    format_version: int = 1
    files: list[FileEntry]
    small_sha256: str
    small_bytes: int
    small_uncompressed_bytes: int

    @property
    def objects(self) -> set[str]:
        return {f.object for f in self.files if f.object}


class ObjectCorrupt(RemError):
    def __init__(self, key: str, why: str):
        super().__init__(f"{key}: {why}")
        self.key = key


@dataclass
class IncrementalStats:
    sha256: str  # of files.json
    size_bytes: int  # everything this backup needs, as stored
    uncompressed_bytes: int  # the database's files
    added_bytes: int  # what this backup uploaded
    objects: int


def sst_root(db: str) -> str:
    return f"{db}/backups/sst/"


def object_key(db: str, sha256: str) -> str:
    return f"{sst_root(db)}{sha256}.zst"


def hash_file(path: Path) -> str:
    st = path.stat()
    return _digest(str(path), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=4096)
def _digest(path: str, size: int, mtime_ns: int, ino: int) -> str:
    """Keyed by the file's identity too: a snapshot's file hashed to decide reuse is not read again to list it."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_files(store: BackupStore, tenant_folder: str, name: str) -> FileList:
    return FileList.model_validate_json(store.objects.get(store.key(tenant_folder, name, FILES)))


@dataclass
class PreviousBackup:
    """The newest incremental backup and its file list: what a new one may reuse."""

    record: BackupRecord
    files: FileList


def previous_backup(store: BackupStore, tenant_folder: str) -> PreviousBackup | None:
    """The newest incremental backup and its file list: its hashes spare hashing unchanged SSTs again.
    Read newest first, so a repository of a year of backups costs one listing and a GET or two, not a
    GET per backup."""
    sealing = encryption_of(store.objects, store.db) is not None
    for record in store.newest_first(tenant_folder):
        if record.metadata.layout != "incremental":
            continue
        if (record.metadata.encryption is not None) != sealing:
            # encryption turned on (or off) since: none of its objects is reused, each is stored again
            # the new way, so an encrypted backup never names a plaintext object
            return None
        try:
            return PreviousBackup(record, read_files(store, record.tenant_folder, record.folder))
        except (ObjectMissing, ValueError):
            continue
    return None


def unchanged_since(listing: FileList, snap_dir: Path) -> bool:
    """The snapshot holds exactly the files the list names: SSTs by name, size, inode and mtime (the
    snapshot hard-links them, and RocksDB never rewrites one), the others by SHA-256."""
    files = {p.name: p for p in snap_dir.iterdir() if p.is_file() and ROCKSDB_FILE.match(p.name)}
    if set(files) != {f.name for f in listing.files}:
        return False
    for entry in listing.files:
        st = files[entry.name].stat()
        if entry.object:
            if (st.st_size, st.st_ino, st.st_mtime_ns) != (entry.size, entry.ino, entry.mtime_ns):
                return False
        elif st.st_size != entry.size or hash_file(files[entry.name]) != entry.sha256:
            return False
    return True


def _compress(objects, key: str, path: Path, level: int, spool: Path) -> int:
    with objects.writer(key, spool) as sink:
        counted = CountingWriter(sink)
        with zstandard.ZstdCompressor(level=level).stream_writer(counted, closefd=False) as zw, open(path, "rb") as f:
            while chunk := f.read(COPY_BUFFER):
                zw.write(chunk)
    return counted.size


def store_incremental(snap_dir: Path, store: BackupStore, tenant_folder: str, name: str, level: int, concurrency: int,
                      spool: Path, earlier: FileList | None, progress: Callable[[int], None] | None = None
                      ) -> IncrementalStats:
    """Upload the SSTs the repository lacks (in parallel), the small files as one tar.zst, and files.json."""
    db = store.db
    files = sorted(p for p in snap_dir.iterdir() if p.is_file() and ROCKSDB_FILE.match(p.name))
    shared = [p for p in files if SHARED.match(p.name)]
    known = {(f.name, f.size, f.ino, f.mtime_ns): f.sha256 for f in earlier.files if f.object} if earlier else {}

    def identify(path: Path) -> FileEntry:
        st = path.stat()
        sha = known.get((path.name, st.st_size, st.st_ino, st.st_mtime_ns)) or hash_file(path)
        return FileEntry(name=path.name, size=st.st_size, sha256=sha, object=object_key(db, sha), ino=st.st_ino,
                         mtime_ns=st.st_mtime_ns)

    # What dead runs left: SST uploads begun before this run's claim, when the look taken just after
    # that claim (prepare's) saw no other live one. A run that began uploading earlier claimed earlier,
    # so that look saw its claim; the store's clock, not ours, and a second's margin for its rounding.
    look = store.last_look or store.look()
    mine = [i for i in look.unfinished.get((tenant_folder, name), []) if i.key.endswith("/" + CLAIM)]
    if mine and all(key.split("/")[-2] == name for key in store.live_claims(look)):
        store.objects.abort_uploads(sst_root(db), lambda key: True, started_before=mine[0].modified - 1)
    wait_for_collection(store)  # this run's claim is written: from here no prune starts deleting
    recorded = {f.object: f for f in earlier.files if f.object} if earlier else {}
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="rem-sst") as pool:
        entries = list(pool.map(identify, shared))
        have = {i.key: i for i in store.objects.list(sst_root(db))}
        added = _upload_unproven(store, entries, have, recorded, set(), snap_dir, level, spool, pool, progress)
        # Objects a prune removed (or anything replaced) while this ran go up again: nothing this list
        # names may be missing or other than what was uploaded or proven.
        have = {i.key: i for i in store.objects.list(sst_root(db))}
        again = _upload_unproven(store, entries, have, recorded, set(added), snap_dir, level, spool, pool, None)
        added.update(again)
    for entry in entries:
        info = store.objects.head(entry.object) if entry.object in again else have.get(entry.object)
        entry.stored_bytes, entry.etag = (info.size, info.etag) if info else (added.get(entry.object, 0), None)
    # What this backup reuses stays locked as long as what it uploaded (kopia's --extend-object-locks).
    store.objects.extend_lock(sorted({e.object for e in entries} - set(added)))

    with store.objects.writer(store.key(tenant_folder, name, SMALL), spool) as sink:
        small = write_archive(snap_dir, sink, level, include=lambda p: not SHARED.match(p.name), progress=progress)
    others = [FileEntry(name=p.name, size=p.stat().st_size, sha256=hash_file(p), object=None) for p in files
              if not SHARED.match(p.name)]
    listing = FileList(files=entries + others, small_sha256=small.sha256, small_bytes=small.size_bytes,
                       small_uncompressed_bytes=small.uncompressed_bytes)
    body = listing.model_dump_json(indent=1).encode()
    store.put_file_bytes(tenant_folder, name, FILES, body)
    unique = {e.object: e.stored_bytes for e in entries}
    return IncrementalStats(sha256=hashlib.sha256(body).hexdigest(), size_bytes=sum(unique.values()) + small.size_bytes,
                            uncompressed_bytes=sum(p.stat().st_size for p in files),
                            added_bytes=sum(added.values()) + small.size_bytes + len(body),
                            objects=len(unique))


def reusable(info: ObjectInfo | None, recorded: FileEntry | None) -> bool:
    """An object in the store is reused only when it is the one a backup proved: the store's
    fingerprint (ETag) as recorded then, or, in lists written before ETags were, the recorded size.
    A corrupted, truncated or replaced object, or one no list vouches for, is uploaded again."""
    if info is None or recorded is None:
        return False
    return info.etag == recorded.etag if recorded.etag else info.size == recorded.stored_bytes


def _upload_unproven(store: BackupStore, entries: list[FileEntry], have: dict[str, ObjectInfo],
                     recorded: dict[str, FileEntry], uploaded: set[str], snap_dir: Path, level: int, spool: Path,
                     pool: ThreadPoolExecutor, progress) -> dict[str, int]:
    """Upload every entry's object the store lacks, or holds other than recorded (what this run
    uploaded itself is proven by being there)."""
    def proven(e: FileEntry) -> bool:
        return e.object in have and (e.object in uploaded or reusable(have[e.object], recorded.get(e.object)))

    todo = {e.object: e for e in entries if not proven(e)}
    if progress:
        progress(sum(e.size for e in entries if e.object not in todo))

    def upload(entry: FileEntry) -> tuple[str, int]:
        stored = _compress(store.objects, entry.object, snap_dir / entry.name, level, spool)
        if progress:
            progress(entry.size)
        return entry.object, stored

    return dict(pool.map(upload, todo.values()))


def object_source(source: Path, key: str) -> Path:
    """Where a downloaded backup keeps an object (objects/), or, for a backup read in place from a
    local store ({root}/{db}/backups/full/{tenant}/{name}), the store's own copy."""
    if not OBJECT_KEY.match(key):
        raise ObjectCorrupt(key, "not an object name rem writes; the file list is not trustworthy")
    downloaded = source / "objects" / key.rpartition("/")[2]
    if downloaded.exists():
        return downloaded
    root = source.parents[4]
    in_store = root / key
    if not os.path.realpath(in_store).startswith(os.path.realpath(root) + os.sep):
        raise ObjectCorrupt(key, f"{in_store} is a symbolic link out of the backup directory; the store follows "
                                 "none: replace the link with the file itself")
    return in_store


def decompress_checked(path: Path, entry: FileEntry, out=None) -> None:
    """Decompress an object (into out, when given), refusing it unless it holds exactly the entry's
    bytes: its size and SHA-256."""
    digest, size, key = hashlib.sha256(), 0, entry.object
    try:
        with open_object_file(path) as raw:
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=COPY_BUFFER)
            while chunk := reader.read(COPY_BUFFER):
                size += len(chunk)
                if size > entry.size:
                    raise ObjectCorrupt(key, f"holds more than the {entry.size} bytes of {entry.name}")
                digest.update(chunk)
                if out is not None:
                    out.write(chunk)
    except zstandard.ZstdError as exc:
        raise ObjectCorrupt(key, f"not readable zstd ({exc})") from None
    if size != entry.size or digest.hexdigest() != entry.sha256:
        raise ObjectCorrupt(key, f"SHA-256 checksum mismatch for {entry.name}: the object is corrupt")


def kept_in(listing: FileList, target: Path | None) -> dict[str, Path]:
    """The shared files the backup names that target already holds byte for byte (its recorded size
    and SHA-256; a restore --delta keeps them instead of fetching them, as RocksDB's kVerifyChecksum
    restore and pgBackRest's --delta do). A file is read to be hashed once per process."""
    if target is None or not target.is_dir():
        return {}
    found = {}
    for entry in listing.files:
        path = target / entry.name
        if entry.object and path.is_file() and not path.is_symlink() and path.stat().st_size == entry.size \
                and hash_file(path) == entry.sha256:
            found[entry.name] = path
    return found


@contextmanager
def linked_files(db: Path | None, near: Path) -> Iterator[Path | None]:
    """Hard links to a database's SSTs and blobs (never rewritten once written), taken at once into
    scratch beside near: a restore keeps those that match its backup instead of fetching them, and a
    live engine's compactions cannot delete them from under it. None when there is no database at db
    or its files are on another filesystem than near."""
    if db is None or not (db / "CURRENT").is_file():
        yield None
        return
    hold = scratch_dir(near, "hold")
    try:
        for entry in os.scandir(db):
            if SHARED.match(entry.name):
                try:
                    os.link(entry.path, hold / entry.name)
                except FileNotFoundError:
                    continue  # compacted away since the scan
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    log.info("%s is on another filesystem than %s: every file is fetched", db, near)
                    yield None
                    return
        yield hold
    finally:
        remove_scratch(hold)


def _keep(path: Path, into: Path) -> None:
    """A kept file into the new database: a hard link (SSTs are never rewritten), else a copy."""
    try:
        os.link(path, into)
    except OSError:
        shutil.copyfile(path, into)


def materialize(listing: FileList, source: Path, db_dir: Path, concurrency: int = 4,
                progress: Callable[[int], None] | None = None, kept: dict[str, Path] | None = None) -> None:
    """Decompress every shared file into db_dir, refusing any whose bytes are not the SHA-256 asked for;
    the files kept (kept_in: a delta restore's target holds them byte for byte) are linked from there instead."""
    kept = kept or {}

    def place(entry: FileEntry) -> None:
        if entry.name in kept:
            _keep(kept[entry.name], db_dir / entry.name)
            if progress:
                progress(entry.size)
            return
        key = entry.object
        path = object_source(source, key)
        if not path.exists():
            raise ObjectCorrupt(key, "missing from the repository")
        try:
            with open(db_dir / entry.name, "xb") as out:
                decompress_checked(path, entry, out)
                os.fsync(out.fileno())  # here, in parallel with the other objects, not in a pass after them
        except ObjectCorrupt as exc:
            if path.is_relative_to(source):  # a downloaded copy: the store's may be whole
                raise ObjectCorrupt(key, f"{str(exc).split(': ', 1)[1]}; the downloaded copy {path} is the one at "
                                         "fault: delete it and run `rem backup download` again") from None
            raise
        if progress:
            progress(entry.size)

    for entry in listing.files:
        if entry.object and not (SHARED.match(entry.name) and "/" not in entry.name):
            raise ObjectCorrupt(entry.object, f"file name {entry.name!r} is not one RocksDB writes")
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="rem-restore") as pool:
        for future in [pool.submit(place, e) for e in listing.files if e.object]:
            future.result()


def dependents(store: BackupStore, key: str) -> list[str]:
    """The backups whose file list names the object."""
    names = []
    for record in store.list():
        if record.metadata.layout == "incremental":
            try:
                if key in read_files(store, record.tenant_folder, record.folder).objects:
                    names.append(record.name)
            except (ObjectMissing, ValueError):
                continue
    return sorted(names)


def needed_by(record: BackupRecord, exc: ObjectCorrupt) -> ObjectCorrupt:
    """A shared object's fault named with every backup that needs it, and what mends it."""
    users = dependents(record.store, exc.key)
    return ObjectCorrupt(exc.key, f"{str(exc).split(': ', 1)[1]}; backups that need it: {', '.join(users)}; "
                                  "take a new backup: it uploads again every object the store no longer holds as a "
                                  "backup recorded it (size and ETag), if the database still has that SST; where "
                                  "the bytes changed in place with neither, remove "
                                  f"{record.store.objects.url(exc.key)} first")


@dataclass
class GarbageReport:
    deferred: str | None
    deleted_objects: int
    deleted_bytes: int
    kept_young: int
    leftovers: int
    kept_locked: int = 0  # unreferenced, but under S3 Object Lock: deleted by a prune after the date
    locked_until: str | None = None  # the latest of those dates


def unlocked(objects, keys: list[str]) -> tuple[list[str], list]:
    """The keys whose objects are not locked now, and the lock end dates of those that are."""
    free, dates = [], []
    for key in keys:
        until = objects.locked_until(key)
        (dates.append(until) if until else free.append(key))
    return free, dates


# A prune's collection takes seconds to minutes; a lease older than this was left by one that died.
LEASE_STALE_SECONDS = 3600
LEASE_POLL_SECONDS = 0.5


@contextmanager
def collection_lease(store: BackupStore) -> Iterator[str | None]:
    """Hold the store's prune lease while garbage is found and deleted: yields None when held, or
    why not. With a backup's claim this is the two-flag protocol: a prune writes its lease, then
    looks for claims; a backup writes its claim, then waits out any lease (wait_for_collection)
    before it lists the objects it may reuse. On a strongly consistent store (S3, a directory) one
    of the two always sees the other, so no backup reuses an object a prune is deleting, however
    slowly the deletes go."""
    key, body = store.prune_lease_key, store.run_record()
    try:
        store.objects.put(key, body, if_none_match=True)
    except PreconditionFailed:
        held = store.read_claim(key)
        if held is not None and not claim_is_stale(held[0], LEASE_STALE_SECONDS):
            yield f"another prune is collecting garbage ({held[0].get('host')}, pid {held[0].get('pid')})"
            return
        try:  # only the run that read this exact stale lease may replace it
            store.objects.put(key, body, **({"if_match": held[1]} if held else {"if_none_match": True}))
        except PreconditionFailed:
            yield "another prune is collecting garbage"
            return
    try:
        yield None
    finally:
        cleanup_quietly(lambda: store.objects.delete([key]), f"removing the prune lease {store.objects.url(key)}")


def wait_for_collection(store: BackupStore, poll: float = LEASE_POLL_SECONDS) -> None:
    """Called by a backup after its claim is written, before it lists the objects: wait while a
    prune holds the lease (it saw no claim, so it may be deleting objects this backup would reuse)."""
    said = False
    while (held := store.read_claim(store.prune_lease_key)) is not None and \
            not claim_is_stale(held[0], LEASE_STALE_SECONDS):
        if not said:
            log.info("waiting for the prune on %s (pid %s) to finish deleting objects in %s", held[0].get("host"),
                     held[0].get("pid"), store.url())
            said = True
        time.sleep(poll)


def collect_garbage(store: BackupStore, grace_seconds: float = GRACE_SECONDS, now: float | None = None,
                    dry_run: bool = False) -> GarbageReport:
    """Delete the objects no backup's file list names, and what interrupted runs left of backups
    without metadata.json; nothing while a backup is being written (its claim is live), nothing
    younger than the grace period, and nothing any files.json beside a metadata.json names, read or
    not. An interrupted collection is finished by the next. A dry run takes no lease."""
    now = time.time() if now is None else now
    # A dry run only reports: the look prune's own plan was made from serves (a real run looks again, exactly).
    look = store.last_look if dry_run and store.last_look is not None else store.look(exact=not dry_run)
    if busy := store.live_claims(look):
        return GarbageReport(f"a backup is being written ({busy[0]}); collected by the next prune", 0, 0, 0, 0)
    with nullcontext() if dry_run else collection_lease(store) as refused:
        if refused:
            return GarbageReport(f"{refused}; collected by the next prune", 0, 0, 0, 0)
        if not dry_run:  # looked at again under the lease: a backup may have claimed a name before it saw it
            look = store.look(exact=True)
        if busy := store.live_claims(look):
            return GarbageReport(f"a backup started while garbage was being found ({busy[0]}); collected by the "
                                 "next prune", 0, 0, 0, 0)
        leftovers = [i.key for infos in look.unfinished.values() if all(now - i.modified > grace_seconds
                                                                         for i in infos) for i in infos]
        candidates, young = {}, 0
        for info in store.objects.list(sst_root(store.db)):
            if now - info.modified <= grace_seconds:
                young += 1
            else:
                candidates[info.key] = info
        garbage = [candidates[key] for key in unreferenced(store, look, set(candidates))]
        leftovers, locked_leftovers = unlocked(store.objects, leftovers)
        free, locked = unlocked(store.objects, [i.key for i in garbage])
        garbage = [i for i in garbage if i.key in set(free)]
        locked += locked_leftovers
        if not dry_run:
            store.objects.delete(leftovers)
            store.objects.delete(i.key for i in garbage)
    return GarbageReport(None, len(garbage), sum(i.size for i in garbage), young, len(leftovers), len(locked),
                         max(locked).isoformat(timespec="seconds") if locked else None)


def unreferenced(store: BackupStore, look: StoreLook, candidates: set[str]) -> set[str]:
    """The candidates no file list beside a metadata.json names. Lists are read newest backup first,
    READ_THREADS at a time, and reading stops once every candidate is named: what is left unread can
    only name objects already known to be needed (a store of 5,000 backups sharing their SSTs reads
    a batch, not 5,000 lists)."""
    order = {(r.tenant_folder, r.folder): r.written for r in look.records}
    archives = {(r.tenant_folder, r.folder) for r in look.records if r.metadata.layout == "archive"}
    folders = sorted((f for f in look.found() if f not in archives), key=lambda f: order.get(f, float("inf")),
                     reverse=True)
    left = set(candidates)
    for start in range(0, len(folders), READ_THREADS):
        if not left:
            break
        batch = folders[start:start + READ_THREADS]
        for named in store.read_each(lambda folder: _listed_objects(store, *folder), batch):
            left -= named
    return left


def _listed_objects(store: BackupStore, tenant_folder: str, folder: str) -> set[str]:
    """The objects a backup folder's files.json names; an unreadable list stops the collection."""
    try:
        return read_files(store, tenant_folder, folder).objects
    except ObjectMissing:
        return set()  # a folder without a file list names no shared object
    except ValueError as exc:
        raise UnreadableRecord([Unreadable(store.objects.url(store.key(tenant_folder, folder, FILES)),
                                           f"not a readable file list ({str(exc).splitlines()[0]})")],
                               "prune deleted no shared object") from None


def download_objects(store: BackupStore, record, dest: Path, progress: Callable[[int], None] | None = None,
                     concurrency: int = 4, keep_from: Path | None = None, self_contained: bool = True) -> None:
    """files.json, small.tar.zst and every object the list names into dest (objects/), in parallel;
    an object already there with its stored size is not fetched again (an interrupted run resumes),
    nor one whose file keep_from holds byte for byte (restore --delta). Unless self_contained (dest
    is for this process's restore), an encrypted local store's objects are linked sealed, opened as
    the restore reads them rather than opened into dest first."""
    body = store.objects.get(store.key(record.tenant_folder, record.folder, FILES))
    listing = FileList.model_validate_json(body)
    with private_file(dest / FILES) as f:
        f.write(body)
    download_checked(store.objects, store.key(record.tenant_folder, record.folder, SMALL), dest / SMALL,
                     listing.small_sha256, progress)
    (dest / "objects").mkdir(exist_ok=True, mode=0o700)
    kept = kept_in(listing, keep_from)
    entries = {e.object: e for e in listing.files if e.object and e.name not in kept}
    wanted = {key: e.stored_bytes for key, e in entries.items()}

    def whole(target: Path, key: str) -> bool:
        """A copy an earlier run left is kept only when it holds exactly the file's bytes."""
        if not (target.exists() and target.stat().st_size == wanted[key]):
            return False
        try:
            decompress_checked(target, entries[key])
            return True
        except ObjectCorrupt:
            log.warning("%s: an earlier download left corrupt bytes: fetched again", target)
            return False

    def fetch(key: str) -> None:
        if not OBJECT_KEY.match(key):
            raise ObjectCorrupt(key, "not an object name rem writes; the file list is not trustworthy")
        target = dest / "objects" / key.rpartition("/")[2]
        if not whole(target, key):
            target.unlink(missing_ok=True)
            try:
                if self_contained or not linked_sealed(store.objects, key, target):
                    store.objects.download(key, target)
            except ObjectMissing:
                raise ObjectCorrupt(key, "missing from the repository") from None
        if progress:
            progress(wanted[key])

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="rem-fetch") as pool:
        for future in [pool.submit(fetch, key) for key in wanted]:
            future.result()
