"""One interface to wherever backups, log archives and exports live: a local directory or an S3
bucket (Litestream's ReplicaClient, pgBackRest's storage drivers). Keys are '/'-separated and
relative to the store's root; a new backend (GCS, Azure) is one module implementing ObjectStore.

Everything above this layer (backups, the log archive, exports, retention) speaks only these
calls, so what holds for one backend holds for all: conditional puts for claims and manifests,
ranged gets for parallel downloads, listing by prefix, deletion by key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    modified: float = 0.0  # Unix time it was last written
    storage_class: str = ""  # S3's; GLACIER and DEEP_ARCHIVE cannot be read until restored


ARCHIVED_CLASSES = ("GLACIER", "DEEP_ARCHIVE")


class PreconditionFailed(Exception):
    """A conditional put lost: the object already exists (if_none_match) or changed (if_match)."""


class ObjectMissing(Exception):
    """No object under that key."""


class ObjectArchived(Exception):
    """The object is in an archive storage class (a lifecycle rule moved it): it must be restored first."""

    def __init__(self, key: str, storage_class: str):
        super().__init__(f"{key} is in {storage_class}")
        self.key, self.storage_class = key, storage_class


def cleanup_quietly(action: Callable[[], object], what: str) -> None:
    """Run a clean-up step whose failure must not hide the error that made it necessary."""
    try:
        action()
    except Exception as exc:  # the original error is the one the operator needs; this one is logged
        logging.getLogger("rem").warning("%s failed too (%s); the error that caused it follows", what, exc)


class ObjectStore(Protocol):
    def url(self, key: str = "") -> str:
        """Where a key lives, as an operator would type it (s3://bucket/key or a path)."""

    def check(self) -> None:
        """Raise one clear RemError when the store cannot be reached or written."""

    def head(self, key: str) -> ObjectInfo | None: ...

    def get(self, key: str, start: int | None = None, end: int | None = None, if_match: str | None = None) -> bytes:
        """The object's bytes, or bytes start..end inclusive; ObjectMissing when absent."""

    def get_with_etag(self, key: str) -> tuple[bytes, str]: ...

    def put(self, key: str, body: bytes, *, if_none_match: bool = False, if_match: str | None = None,
            metadata: dict[str, str] | None = None) -> str:
        """Write a whole object (atomically), returning its ETag; PreconditionFailed when a condition fails."""

    def writer(self, key: str, spool_dir: Path) -> AbstractContextManager[BinaryIO]:
        """A sink for a stream of unknown length; the object appears only when the block exits cleanly."""

    def put_file(self, key: str, path: Path) -> None: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with prefix."""

    def list_folder(self, folder: str) -> tuple[list[str], list[ObjectInfo]]:
        """One level of a folder ('a/b/'): the names of the folders in it, and the objects directly in it
        (S3's delimiter listing: a page per 1,000 entries, however many objects lie below them)."""

    def delete(self, keys: Iterable[str]) -> None:
        """Remove objects; an absent key is not an error."""

    # A store whose objects are local files also answers heads(keys) -> list[ObjectInfo | None]: head()
    # of many keys at a stat each (a bucket would need a request each, so it offers none).

    def download(self, key: str, dest: Path, progress: Callable[[int], None] | None = None) -> None:
        """Copy an object to a local file (parallel and resumable where the backend allows)."""

    def local_path(self, key: str) -> Path | None:
        """The object as a local file when the store is a directory (nothing to download), else None."""

    def restore_hint(self, key: str) -> str:
        """The command that brings an archived object back (stores without archive classes: '')."""

    def tag(self, key: str, tags: dict[str, str]) -> None: ...

    def extend_lock(self, keys: Iterable[str]) -> int:
        """Lock objects (again) for the store's lock period from now, where the store locks (S3 Object
        Lock); the number of requests made."""

    def locked_until(self, key: str):
        """When the object's lock ends, if it is locked now (a datetime), else None."""

    def abort_uploads(self, prefix: str, abandoned: Callable[[str], bool], started_before: float | None = None) -> int:
        """Abort unfinished stream uploads under prefix whose key abandoned() says no run owns (with
        started_before, only those begun before that time by the store's clock, a Unix time)."""


class StoreWrapper:
    """A store around another (sealed, throttled): every call it does not change goes to the inner
    store, the interface's and whatever a backend offers beyond it (lifecycle rules, its cfg)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        if name == "inner":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def put_file(self, key: str, path: Path) -> None:
        """Through this store's own writer, so what it does to bytes is done to the file's too (a
        bucket spools beside the file)."""
        import shutil

        with self.writer(key, path.parent) as sink, open(path, "rb") as src:
            shutil.copyfileobj(src, sink, 1 << 20)
