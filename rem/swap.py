"""Putting a database directory in place of another without a moment when an engine could slip in.

RocksDB's write lock is an fcntl lock on the directory's `LOCK` file. Holding that same lock from
our process (from the check, through extraction, until the swap is durable) makes RocksDB itself
refuse an engine that starts meanwhile; it opens the restored database once we let go. The swap is
one `renameat2(RENAME_EXCHANGE)`: the path never goes missing, so an engine retrying its open
cannot create an empty database there between two renames.

fcntl locks belong to the process and any close of a descriptor of the file drops them: while a
lock is held, this process must not open that database read-write or probe its lock (a read-only
open does not touch LOCK).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from pathlib import Path

from rem.errors import DatabaseLocked, RemError

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)


class SwapFailed(RemError):
    pass


class DatabaseLock:
    """RocksDB's own lock on a database directory, held by this process until release()."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.placeholder = False
        lock = self.path / "LOCK"
        created = not lock.exists()
        self.fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        # An empty directory we only locked gets its LOCK file taken away again on release.
        self.created_inode = os.fstat(self.fd).st_ino if created else None
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            if created:
                lock.unlink(missing_ok=True)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise DatabaseLocked(str(self.path)) from None
            raise

    def moved_to(self, path: Path) -> None:
        """The locked directory was renamed (a claimed placeholder put in place): on release, one that
        still holds nothing but our LOCK goes entirely, so a failed restore leaves no target behind."""
        self.path, self.placeholder = Path(path), True

    def release(self) -> None:
        if self.fd is None:
            return
        lock = self.path / "LOCK"
        try:
            if (self.created_inode is not None and os.listdir(self.path) == ["LOCK"]
                    and lock.stat().st_ino == self.created_inode):
                lock.unlink()
                if self.placeholder:
                    self.path.rmdir()
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "DatabaseLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _renameat2(source: Path, dest: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(dest), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(source), None, str(dest))


def exchange(a: Path, b: Path) -> None:
    """Swap two directories atomically (both must exist, on one filesystem) and make it durable."""
    try:
        _renameat2(a, b, RENAME_EXCHANGE)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOSYS):
            raise SwapFailed(f"{b}: its filesystem cannot swap directories atomically (renameat2 RENAME_EXCHANGE); "
                             "stop the engine and restore into a new, empty --target") from None
        raise
    fsync_dir(b.parent)
    if a.parent != b.parent:
        fsync_dir(a.parent)


def move_new(source: Path, dest: Path) -> None:
    """Rename source to dest, which must not exist (an engine that created it meanwhile wins)."""
    try:
        _renameat2(source, dest, RENAME_NOREPLACE)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise SwapFailed(f"{dest}: appeared while the restore ran (did an engine start there?); "
                             "nothing was put in its place: run the restore again") from None
        if exc.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
        os.rename(source, dest)  # refuses a non-empty dest, and RocksDB never leaves an empty one
    fsync_dir(dest.parent)
