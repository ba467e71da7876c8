"""Open a REM database read-write, read-only or as a secondary, with every column family it has."""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from rocksdict import (
    AccessType,
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Options,
    ReadOptions,
    Rdict,
    SliceTransform,
    WriteBatch,
)

from rem.errors import DatabaseLocked, DatabaseNotFound, UsageError
from rem.scratch import remove_scratch, scratch_dir
from rem.format import CF_NAMES, CF_SPECS, CFSpec, WAL_PREFIX, parse_wal_key

Mode = Literal["rw", "ro", "secondary"]

# rocksdict writes this into every database it opens; the engine's directory is not ours to litter.
ROCKSDICT_CONFIG = "rocksdict-config.json"


# RocksDB 8.10's default table format: the engine's files are version 5, and ours stay readable by
# it and by Debian's sst_dump/ldb (7.8.3, which cannot read version 6, RocksDB 9's default).
ENGINE_FORMAT_VERSION = 5
# A read-only open keeps the index and filter blocks of the SSTs in one cache of this size instead of
# beside each open file: RocksDB otherwise holds every open SST's, which grows with the database
# (`rem db stats` held 198 MB at 10 GB, 61 MB at 0.2 GB).
READ_ONLY_CACHE_BYTES = 64 * 1024 * 1024


def cf_options(spec: CFSpec, cache: Cache | None = None) -> Options:
    """The engine's options for one column family (storage/column_families.rs), built in code:
    Options.load_latest would drop the bloom filter of every CF on the way back. cache: where the
    index and filter blocks are held (read-only opens; nothing of it is written to the database)."""
    opts = Options(raw_mode=True)
    opts.set_compression_type(DBCompressionType.lz4() if spec.compression == "lz4" else DBCompressionType.none())
    table = BlockBasedOptions()
    table.set_block_size(spec.block_size)
    table.set_bloom_filter(spec.bloom_bits, False)
    table.set_format_version(ENGINE_FORMAT_VERSION)
    if cache is not None:
        table.set_block_cache(cache)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    opts.set_block_based_table_factory(table)
    if spec.prefix_len:
        opts.set_prefix_extractor(SliceTransform.create_fixed_prefix(spec.prefix_len))
    return opts


def db_options() -> Options:
    """The engine's database options (storage/db.rs Storage::open)."""
    opts = Options(raw_mode=True)
    opts.set_max_open_files(1000)
    opts.set_max_background_jobs(4)
    opts.set_write_buffer_size(64 * 1024 * 1024)
    return opts


def engine_options(path: Path, cf_names: list[str], cache: Cache | None = None) -> tuple[Options, dict[str, Options]]:
    """The engine's options for every column family the database has: built in code for the nine it
    creates, from the database's OPTIONS file for any other (which we only ever read or copy)."""
    unknown = [name for name in cf_names if name not in CF_SPECS]
    saved: dict[str, Options] = {}
    if unknown and any(Path(path).glob("OPTIONS-*")):
        saved = Options.load_latest(str(path))[1]
    return db_options(), {name: cf_options(CF_SPECS[name], cache) if name in CF_SPECS
                          else saved.get(name, Options(raw_mode=True))
                          for name in cf_names}


def _options_rocksdb_version(text: str) -> str:
    import re

    match = re.search(r"rocksdb_version=([\d.]+)", text)
    return match.group(1) if match else "unknown"


def database_rocksdb_version(path: str | os.PathLike) -> str:
    """The RocksDB that last wrote the database's OPTIONS file: the engine's, unless our tools opened
    it read-write since (a read-only open writes none)."""
    options = sorted(Path(path).glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))
    return _options_rocksdb_version(options[-1].read_text(errors="replace")) if options else "unknown"


@functools.cache
def tools_rocksdb_version() -> str:
    """The RocksDB version our rocksdict runs, read from the OPTIONS file of a throwaway database."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rem-probe-") as tmp:
        Rdict(tmp, Options(raw_mode=True)).close()
        return database_rocksdb_version(tmp)


def is_database(path: str | os.PathLike) -> bool:
    return (Path(path) / "CURRENT").is_file()


def read_options(upper: bytes | None = None) -> ReadOptions:
    """Total-order iteration: the fixed-prefix extractors would otherwise stop scans at a prefix edge."""
    ro = ReadOptions()
    ro.set_total_order_seek(True)
    # A scan reads each block once: kept out of the block cache, it neither evicts what point lookups
    # use nor grows the process by the cache's size (32 MB per column family) as the database grows.
    ro.fill_cache(False)
    if upper:
        ro.set_iterate_upper_bound(upper)
    return ro


def prefix_upper_bound(prefix: bytes) -> bytes:
    """The smallest key greater than every key that starts with prefix."""
    trimmed = prefix.rstrip(b"\xff")
    return trimmed[:-1] + bytes([trimmed[-1] + 1]) if trimmed else b""


class BatchedWrites:
    """Rows bound for several column families, written every max_rows (see RemDB.batched)."""

    def __init__(self, db: "RemDB", max_rows: int):
        self.db = db
        self.max_rows = max_rows
        self.batch = db.batch()
        self.rows = 0

    def put(self, cf: str, key: bytes, value: bytes) -> None:
        self.batch.put(key, value, self.db.handle(cf))
        self._count()

    def delete(self, cf: str, key: bytes) -> None:
        self.batch.delete(key, self.db.handle(cf))
        self._count()

    def _count(self) -> None:
        self.rows += 1
        if self.batch.len() >= self.max_rows:
            self.flush()

    def flush(self) -> None:
        if self.batch.len():
            self.db.write(self.batch)
            self.batch = self.db.batch()


def _holding(rows: Iterator, read_opts: ReadOptions) -> Iterator:
    """Iterate while holding the ReadOptions: rocksdict iterators keep a pointer to its upper bound,
    and once the ReadOptions is freed, scans stop at random keys (seen: 11 or 36 of 62 rows)."""
    yield from rows
    del read_opts


class RemDB:
    """An open REM database. Use as a context manager; closing drops every handle first."""

    def __init__(self, path: Path, rdict: Rdict, mode: Mode, cf_names: list[str], view: Path | None = None):
        self.path = path
        self.mode = mode
        self._rdict = rdict
        self.cf_names = cf_names
        self._cfs: dict[str, Rdict] = {}
        self._handles: dict = {}
        self._view = view  # the directory of links a read-only open went through (see linked_view)

    def __enter__(self) -> "RemDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def rdict(self) -> Rdict:
        return self._rdict

    def has_cf(self, name: str) -> bool:
        return name in self.cf_names

    def cf(self, name: str) -> Rdict:
        if name not in self._cfs:
            if name not in self.cf_names:
                raise UsageError(f"unknown column family {name!r}; this database has: {', '.join(self.cf_names)}")
            self._cfs[name] = self._rdict.get_column_family(name)
        return self._cfs[name]

    def handle(self, name: str):
        if name not in self._handles:
            self.cf(name)
            self._handles[name] = self._rdict.get_column_family_handle(name)
        return self._handles[name]

    def get(self, cf: str, key: bytes) -> bytes | None:
        return self.cf(cf).get(key)

    def get_many(self, cf: str, keys: list[bytes]) -> list[bytes | None]:
        """Point lookups in one call (RocksDB's MultiGet)."""
        return self.cf(cf).get(keys) if keys else []

    def items(self, cf: str, prefix: bytes = b"", start: bytes | None = None,
              end: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of a column family whose key starts with prefix, from start on (up to end)."""
        ro = read_options(end if end is not None else prefix_upper_bound(prefix) if prefix else None)
        lower = start if start is not None else (prefix or None)
        rows = self.cf(cf).items(from_key=lower, read_opt=ro) if lower is not None else self.cf(cf).items(read_opt=ro)
        return _holding(rows, ro)

    def keys(self, cf: str, prefix: bytes = b"", start: bytes | None = None, end: bytes | None = None) -> Iterator[bytes]:
        """Every key of a column family that starts with prefix, from start on (up to end)."""
        ro = read_options(end if end is not None else prefix_upper_bound(prefix) if prefix else None)
        lower = start if start is not None else (prefix or None)
        keys = self.cf(cf).keys(from_key=lower, read_opt=ro) if lower is not None else self.cf(cf).keys(read_opt=ro)
        return _holding(keys, ro)

    def batch(self) -> WriteBatch:
        return WriteBatch(raw_mode=True)

    @contextmanager
    def batched(self, max_rows: int = 10_000) -> Iterator["BatchedWrites"]:
        """Puts and deletes written in WriteBatches of at most max_rows, the last one on exit."""
        writes = BatchedWrites(self, max_rows)
        yield writes
        writes.flush()

    def write(self, batch: WriteBatch, write_options=None) -> None:
        self._rdict.write(batch, write_options) if write_options is not None else self._rdict.write(batch)

    def flush_all(self) -> None:
        """Flush the memtables of every column family to SST files and wait."""
        for name in self.cf_names:
            self.cf(name).flush(True)

    def _wal_end(self, last: bool) -> int:
        if not self.has_cf("wal"):
            return 0
        it = self.cf("wal").iter(read_options())
        it.seek_to_last() if last else it.seek(WAL_PREFIX)
        seq = parse_wal_key(it.key()) if it.valid() and it.key().startswith(WAL_PREFIX) else 0
        del it
        return seq

    def latest_wal_seq(self) -> int:
        """Highest WAL sequence number stored, 0 when the WAL column family is empty."""
        return self._wal_end(last=True)

    def first_wal_seq(self) -> int:
        """Lowest WAL sequence number still stored (the engine trims old entries), 0 when empty."""
        return self._wal_end(last=False)

    def catch_up(self) -> None:
        """A secondary instance follows the writer; call before each read pass."""
        if self.mode == "secondary":
            self._rdict.try_catch_up_with_primary()

    def close(self) -> None:
        self._handles.clear()
        self._cfs.clear()
        if self._rdict is not None:
            self._rdict.close()
            self._rdict = None  # type: ignore[assignment]
        if self._view is not None:
            remove_scratch(self._view)
            self._view = None


@contextmanager
def _no_litter(path: Path):
    """Remove rocksdict's config file after an open when it was not there before."""
    litter = path / ROCKSDICT_CONFIG
    existed = litter.exists()
    try:
        yield
    finally:
        if not existed and litter.exists():
            litter.unlink()


# Files a read-only view links: everything RocksDB reads, never LOCK or the info logs (LOG*).
_VIEW_SKIP = ("LOCK", ROCKSDICT_CONFIG)
VIEW_ATTEMPTS = 5


def linked_view(path: Path) -> Path:
    """A directory of our own beside the database holding a hard link to each of its files.

    rocksdict writes rocksdict-config.json into whatever directory it opens (and RocksDB its info
    log): opening the view instead leaves the engine's directory exactly as it was. Links (not
    copies, not symlinks) pin every file, so an SST or log the engine deletes meanwhile stays
    readable, and a physical snapshot copied from the view hard-links real files."""
    view = scratch_dir(path, "view")
    try:
        for entry in os.scandir(path):
            if entry.name in _VIEW_SKIP or entry.name.startswith("LOG") or not entry.is_file(follow_symlinks=False):
                continue
            try:
                os.link(entry.path, view / entry.name)
            except FileNotFoundError:  # deleted by the engine since the listing: not part of its state
                continue
        return view
    except BaseException:
        remove_scratch(view)
        raise


def _open_read_only(path: Path) -> RemDB:
    """A read-only open through a linked view; retried when the engine changed its files between the
    listing and the links (a new MANIFEST or SST the view lacks)."""
    for attempt in range(VIEW_ATTEMPTS):
        try:
            view = linked_view(path)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            break  # the database is a mount point of its own: links cannot cross, open in place
        try:
            rdict, cf_names = _rdict(view, AccessType.read_only(False), read_only=True)
            return RemDB(path, rdict, "ro", cf_names, view)
        except Exception:
            remove_scratch(view)
            if attempt == VIEW_ATTEMPTS - 1:
                raise
    rdict, cf_names = _rdict(path, AccessType.read_only(False), read_only=True)
    return RemDB(path, rdict, "ro", cf_names)


def _rdict(where: Path, access, max_open_files: int | None = None,
           read_only: bool = False) -> tuple[Rdict, list[str]]:
    """An Rdict on where with every column family it has and the engine's options (rocksdict's
    config file removed again when it was not there before)."""
    cf_names = list(Rdict.list_cf(str(where)))
    opts, cf_opts = engine_options(where, cf_names, Cache(READ_ONLY_CACHE_BYTES) if read_only else None)
    if max_open_files is not None:
        opts.set_max_open_files(max_open_files)
    with _no_litter(where):
        return Rdict(str(where), options=opts, column_families=cf_opts, access_type=access), cf_names


def open_db(path: str | os.PathLike, mode: Mode = "ro", secondary_dir: str | os.PathLike | None = None) -> RemDB:
    """Open an existing database with every column family it has (known or not).

    `ro` sees every write acknowledged before the open (it replays the writer's WAL) and then
    stays frozen, without writing anything into the database's directory (see linked_view);
    `secondary` follows the writer through catch_up(); `rw` takes the lock.
    """
    path = Path(path)
    if not is_database(path):
        raise DatabaseNotFound(str(path))
    if mode == "ro":
        return _open_read_only(path)
    if mode == "rw" and lock_is_held(path):
        # Checked before opening: a refused read-write open still rotates the holder's LOG file.
        raise DatabaseLocked(str(path))
    if mode == "rw":
        access, max_open_files = AccessType.read_write(), None
    else:
        if secondary_dir is None:
            raise UsageError("a secondary instance needs a scratch directory of its own")
        Path(secondary_dir).mkdir(parents=True, exist_ok=True)
        access, max_open_files = AccessType.secondary(str(secondary_dir)), -1
    try:
        rdict, cf_names = _rdict(path, access, max_open_files)
    except Exception as exc:  # rocksdict raises plain Exception with RocksDB's status text
        if "lock" in str(exc).lower() and mode == "rw":
            raise DatabaseLocked(str(path)) from exc
        raise
    return RemDB(path, rdict, mode, cf_names)


def init_db(path: str | os.PathLike) -> RemDB:
    """Create a new REM database with all nine column families; refuse a path that holds anything."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(f"{path}: already exists and is not empty; choose a new path")
    path.mkdir(parents=True, exist_ok=True)
    opts = db_options()
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    try:
        with _no_litter(path):
            rdict = Rdict(str(path), options=opts,
                          column_families={name: cf_options(spec) for name, spec in CF_SPECS.items()})
    except Exception:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return RemDB(path, rdict, "rw", ["default", *CF_NAMES])


def add_missing_column_families(path: str | os.PathLike, wanted) -> list[str]:
    """Create, empty and with the engine's options, those of the engine's column families in wanted
    that the database lacks, as the engine's own open does (create_missing_column_families)."""
    existing = list(Rdict.list_cf(str(path)))
    missing = [name for name in wanted if name not in existing and name in CF_SPECS]
    if missing:
        opts, cf_opts = engine_options(Path(path), existing + missing)
        opts.create_missing_column_families(True)
        with _no_litter(Path(path)):
            Rdict(str(path), options=opts, column_families=cf_opts).close()
    return missing


def init_like(source: RemDB, path: str | os.PathLike) -> RemDB:
    """Create an empty database with the same column families and engine options as source."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise UsageError(f"{path}: already exists and is not empty; choose a new path")
    path.mkdir(parents=True, exist_ok=True)
    opts, wanted = engine_options(source.path, source.cf_names)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    with _no_litter(path):
        rdict = Rdict(str(path), options=opts, column_families=wanted)
    return RemDB(path, rdict, "rw", list(source.cf_names))


def lock_is_held(path: str | os.PathLike) -> bool:
    """Whether another process holds the database's write lock, asked with F_GETLK (which takes nothing).

    Only call this from a process that does not have the database open: closing any descriptor of
    LOCK drops the caller's own fcntl locks on it.
    """
    lock = Path(path) / "LOCK"
    if not lock.exists():
        return False
    query = struct.pack("@hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    fd = os.open(lock, os.O_RDONLY)
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    finally:
        os.close(fd)
    return struct.unpack("@hhqqi4x", answer)[0] != fcntl.F_UNLCK
