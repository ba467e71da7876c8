"""tar + zstd streams with a SHA-256 of the compressed bytes computed while they are written,
and extraction that refuses anything but plain files and directories inside the destination."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import BinaryIO

import zstandard

from rem.errors import NoSpace, RemError

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
    files: int


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
    files = 0
    with compressor.stream_writer(hashing, closefd=False, write_size=COPY_BUFFER) as zstream:
        plain = CountingWriter(zstream)
        # A stream tar writes through a buffer of bufsize (default 10 KB): every 1 MB block was re-sliced
        # about a hundred times, 38% of the archive thread.
        with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT, copybufsize=COPY_BUFFER,
                          bufsize=COPY_BUFFER) as tar:
            for path in sorted(src_dir.iterdir()):
                # Only what a restore accepts: litter such as rocksdict-config.json never goes in.
                if path.is_file() and ROCKSDB_FILE.match(path.name) and include(path):
                    tar.add(path, arcname=f"{ARCHIVE_ROOT}/{path.relative_to(src_dir)}", recursive=False)
                    files += 1
                    if progress:
                        progress(path.stat().st_size)
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
        raise ChecksumMismatch(f"{path}: SHA-256 checksum mismatch (metadata says {expected}, file is {actual}); "
                               "the backup is corrupt: restore from another backup")


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


def extract_archive(archive: Path, dest: Path, max_bytes: int) -> Path:
    """Extract into dest (which must be empty or new) and return the database directory inside it.

    Absolute paths, '..', links, devices, names RocksDB never writes and anything past max_bytes
    are refused before anything of theirs is written."""
    check_free_space(dest, max_bytes)
    dest.mkdir(parents=True, exist_ok=True)
    with open(archive, "rb") as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=COPY_BUFFER)
        try:
            with tarfile.open(fileobj=reader, mode="r|", copybufsize=COPY_BUFFER) as tar:
                tar.extractall(dest, filter=RocksDBFilesOnly(max_bytes))
        except (tarfile.TarError, zstandard.ZstdError) as exc:
            raise UnsafeArchive(f"{archive}: not a readable tar.zst archive ({exc})") from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise NoSpace(dest, "--target") from None
            raise
    return dest / ARCHIVE_ROOT


def fsync_tree(path: Path) -> None:
    """Make extracted files durable before they replace anything."""
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
