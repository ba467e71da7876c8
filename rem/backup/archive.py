"""tar + zstd streams with a SHA-256 of the compressed bytes computed while they are written,
and extraction that refuses anything but plain files and directories inside the destination."""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import re
import shutil
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import BinaryIO

import zstandard

from rem.errors import NoSpace, RemError
from rem.storage.encrypted import open_object_file

ARCHIVE_ROOT = "rocksdb"
COPY_BUFFER = 1 << 20
# The only files a RocksDB directory holds; an archive member with any other name is refused.
ROCKSDB_FILE = re.compile(r"^(CURRENT|IDENTITY|LOCK|LOG(\.old\.\d+)?|MANIFEST-\d+|OPTIONS-\d+|\d+\.(sst|log|blob))$")


class UnsafeArchive(RemError):
    pass


class ChecksumMismatch(RemError):
    pass


@dataclass
class ArchiveStats:
    sha256: str
    size_bytes: int
    uncompressed_bytes: int
    files: dict[str, int]  # name -> size of every file in the archive


class CountingWriter:
    """Passes bytes to a sink, counting them (and hashing them when asked) on the way."""

    def __init__(self, sink: BinaryIO, hashed: bool = False):
        self.sink = sink
        self.hash = hashlib.sha256() if hashed else None
        self.size = 0

    def write(self, data) -> int:
        if self.hash is not None:
            self.hash.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)

    def flush(self) -> None:
        self.sink.flush()


def write_archive(src_dir: Path, sink: BinaryIO, level: int = 3, threads: int = -1,
                  progress: Callable[[int], None] | None = None,
                  include: Callable[[Path], bool] = lambda path: True) -> ArchiveStats:
    """Stream src_dir (the files include accepts) as tar + zstd (multi-threaded) into sink; the sink
    is not closed. progress is called with the size of each file once it is in the stream."""
    hashing = CountingWriter(sink, hashed=True)
    compressor = zstandard.ZstdCompressor(level=level, threads=threads)
    files: dict[str, int] = {}
    with compressor.stream_writer(hashing, closefd=False, write_size=COPY_BUFFER) as zstream:
        plain = CountingWriter(zstream)
        # A stream tar writes through a buffer of bufsize (default 10 KB): every 1 MB block was re-sliced
        # about a hundred times, 38% of the archive thread.
        with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT, copybufsize=COPY_BUFFER,
                          bufsize=COPY_BUFFER) as tar:
            for path in sorted(src_dir.iterdir()):
                # Only what a restore accepts: litter such as rocksdict-config.json never goes in.
                if path.is_file() and ROCKSDB_FILE.match(path.name) and include(path):
                    info = tar.gettarinfo(path, arcname=f"{ARCHIVE_ROOT}/{path.name}")
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                    files[path.name] = info.size
                    if progress:
                        progress(info.size)
        zstream.flush(zstandard.FLUSH_FRAME)
    return ArchiveStats(hashing.hash.hexdigest(), hashing.size, plain.size, files)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(COPY_BUFFER):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: Path, expected: str) -> None:
    """Raise ChecksumMismatch naming both digests unless the file's SHA-256 is expected."""
    actual = sha256_file(path)
    if actual != expected:
        raise mismatch(path, expected, actual)


class RocksDBFilesOnly:
    """A tarfile extraction filter: only the root folder and RocksDB's own file names directly in it,
    plain files, and no more bytes in all than the backup's metadata says it holds."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.total = 0

    def __call__(self, member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
        if member.name == ARCHIVE_ROOT and member.isdir():
            return tarfile.data_filter(member, dest)
        folder, _, filename = member.name.partition("/")
        if not member.isfile():
            kind = ("link" if member.issym() or member.islnk() else "directory" if member.isdir()
                    else "device or special file")
            raise UnsafeArchive(f"archive member {member.name!r} is a {kind}; backups hold only RocksDB's files: refused")
        if folder != ARCHIVE_ROOT or not ROCKSDB_FILE.match(filename):
            raise UnsafeArchive(f"archive member {member.name!r} is not a file a RocksDB directory holds "
                                f"(CURRENT, MANIFEST-*, *.sst, ... directly in {ARCHIVE_ROOT}/): refused")
        self.total += member.size
        if self.total > self.max_bytes:
            raise UnsafeArchive(f"archive member {member.name!r} takes the extracted size past the {self.max_bytes} "
                                "bytes the backup's metadata records: refused")
        try:
            return tarfile.data_filter(member, dest)
        except tarfile.FilterError as exc:
            raise UnsafeArchive(f"archive member {member.name!r}: {exc}: refused") from None


def check_free_space(dest: Path, needed: int) -> None:
    """Refuse before extracting when dest's filesystem cannot hold what the backup says it holds."""
    probe = dest
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise NoSpace(probe, f"--target (the backup needs {needed:,} bytes, {free:,} are free)")


class HashingReader:
    """A file read through SHA-256: the archive is checked in the same pass that extracts it."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hash.update(data)
        return data

    def hexdigest_to_end(self) -> str:
        while self.read(COPY_BUFFER):
            pass
        return self.hash.hexdigest()


class ReadAhead:
    """Reads a stream in a thread of its own, a few chunks ahead: decompressing and hashing (which
    release the GIL) overlap with the caller's writes, as tar and zstd run as two processes."""

    _END = object()

    def __init__(self, stream, chunk: int = COPY_BUFFER, depth: int = 8):
        self.queue: queue.Queue = queue.Queue(depth)
        self.buffer = b""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._fill, args=(stream, chunk), name="rem-read-ahead", daemon=True)
        self.thread.start()

    def _fill(self, stream, chunk: int) -> None:
        try:
            while not self.stop.is_set() and (data := stream.read(chunk)):
                self.queue.put(data)
            self.queue.put(self._END)
        except BaseException as exc:  # raised again in the reader's thread
            self.queue.put(exc)

    def read(self, size: int = -1) -> bytes:
        while self.buffer == b"" or (size < 0 and self.buffer is not None):
            item = self.queue.get()
            if item is self._END:
                self.queue.put(item)  # every later read sees the end too
                break
            if isinstance(item, BaseException):
                raise item
            self.buffer += item
        data, self.buffer = (self.buffer, b"") if size < 0 else (self.buffer[:size], self.buffer[size:])
        return data

    def close(self) -> None:
        """Stop the thread (it may be blocked on a full queue) and wait for it."""
        self.stop.set()
        while self.thread.is_alive():
            try:
                self.queue.get(timeout=0.1)
            except queue.Empty:
                pass


def mismatch(path: Path, expected: str, actual: str) -> ChecksumMismatch:
    return ChecksumMismatch(f"{path}: SHA-256 checksum mismatch (metadata says {expected}, file is {actual}); "
                            "the backup is corrupt: restore from another backup")


def extract_archive(archive: Path, dest: Path, max_bytes: int, sha256: str | None = None,
                    progress: Callable[[int], None] | None = None) -> Path:
    """Extract into dest (which must be empty or new) and return the database directory inside it.

    Absolute paths, '..', links, devices, names RocksDB never writes and anything past max_bytes
    are refused before anything of theirs is written. With sha256, the archive's bytes are hashed
    as they are read and a mismatch is raised (over any error the corrupt bytes caused): dest is
    scratch, never the target. Each file is fsynced in the background while the next is written."""
    check_free_space(dest, max_bytes)
    dest.mkdir(parents=True, exist_ok=True)
    with open_object_file(archive) as raw, ThreadPoolExecutor(1, thread_name_prefix="rem-fsync") as syncer:
        hashed = HashingReader(raw)
        reader = ReadAhead(zstandard.ZstdDecompressor().stream_reader(hashed, read_size=COPY_BUFFER))
        synced = []
        try:
            try:
                with tarfile.open(fileobj=reader, mode="r|", copybufsize=COPY_BUFFER, bufsize=COPY_BUFFER) as tar:
                    accept = RocksDBFilesOnly(max_bytes)
                    for member in tar:
                        tar.extract(member, dest, filter=accept)
                        if member.isfile():
                            synced.append(syncer.submit(fsync_file, dest / member.name))
                            if progress:
                                progress(member.size)
            except (tarfile.TarError, zstandard.ZstdError) as exc:
                raise UnsafeArchive(f"{archive}: not a readable tar.zst archive ({exc})") from None
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise NoSpace(dest, "--target") from None
                raise
        except Exception as exc:
            reader.close()
            if sha256 is not None and (actual := hashed.hexdigest_to_end()) != sha256:
                raise mismatch(archive, sha256, actual) from None
            raise exc
        reader.close()
        if sha256 is not None and (actual := hashed.hexdigest_to_end()) != sha256:
            raise mismatch(archive, sha256, actual)
        for done in synced:
            done.result()
    fsync_file(dest / ARCHIVE_ROOT)
    return dest / ARCHIVE_ROOT


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Make extracted files durable before they replace anything."""
    for root, _, files in os.walk(path):
        for name in files:
            fsync_file(Path(root, name))
