"""An ObjectStore whose objects are sealed on this host before they leave it (client-side envelope
encryption, as pgBackRest's and WAL-G's repositories): AES-256-GCM, with the database's data key
(rem.storage.keys), in authenticated chunks so that a flipped, truncated, reordered or swapped byte
is refused with the object named, and a ranged read opens only the chunks it needs.

Sealed object:
    header  28 bytes  magic "REMAEAD1", data key id (8 bytes), nonce prefix (8 random bytes),
                      plaintext chunk size (uint32 BE)
    chunks            each AES-GCM(plaintext chunk) + 16-byte tag, nonce = prefix + chunk index (uint32 BE);
                      the last chunk (possibly empty) is flagged in its associated data
Associated data of chunk i: header + the object's key + i (uint32 BE) + last (1 byte). The key
binds an object to its name: a copy of another backup's object put under this name does not open.

Left readable, because they hold no tenant data and are read by tools that have no key: each
backup's metadata.json, the log archive's manifest.json, database.json (the name's owner), claims
and leases (names starting with '.'), and the wrapped data keys themselves (keys/). An object that
does not start with the magic, where a sealed one belongs, is refused unless [backup]
allow_plaintext (P8_BACKUP_ALLOW_PLAINTEXT) says to read it as it is: that is how a backup made
before encryption was turned on is restored, and how nothing planted by someone without the key is.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from rem.errors import RemError
from rem.storage import ObjectMissing, StoreWrapper
from rem.storage.keys import KEYS, DataKeys

MAGIC = b"REMAEAD1"
HEADER = struct.Struct(">8s8s8sI")
CHUNK = 1 << 20
MAX_CHUNK = 64 << 20
TAG = 16
READABLE_NAMES = {"metadata.json", "manifest.json", "database.json"}


class ObjectTampered(RemError):
    def __init__(self, url: str, why: str):
        super().__init__(f"{url}: {why}; it was changed, truncated or put there from elsewhere, so it is refused: "
                         "use another backup (`rem backup list`)")


def sealed_name(key: str) -> bool:
    """Whether objects under this key are sealed (False: left readable, see the module's docstring)."""
    parts = key.split("/")
    name = parts[-1]
    return not (name in READABLE_NAMES or name.startswith(".") or (len(parts) > 2 and parts[1] + "/" == KEYS)
                or len(parts) < 2 or parts[0] == "backups")


def is_sealed_file(path: Path) -> bool:
    """A file that is an object as it lies in an encrypted store (a backup folder read in place)."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def sealed_without_key(path: Path) -> bool:
    """A sealed file this process cannot open: one it did not link for its restore (link_sealed)."""
    if not is_sealed_file(path):
        return False
    stat = path.stat()
    return (stat.st_dev, stat.st_ino) not in _LINKED


def database_of(key: str) -> str:
    return key.split("/", 1)[0]


def _aad(header: bytes, key: str, index: int, last: bool) -> bytes:
    return header + key.encode() + struct.pack(">I?", index, last)


class Sealer:
    """Turns a stream of plaintext into the sealed object, a chunk at a time (write, then finish)."""

    def __init__(self, data_key_id: str, data_key: bytes, key: str, sink: BinaryIO, chunk: int = CHUNK):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.aead, self.key, self.sink, self.chunk = AESGCM(data_key), key, sink, chunk
        self.prefix = os.urandom(8)
        self.header = HEADER.pack(MAGIC, bytes.fromhex(data_key_id), self.prefix, chunk)
        sink.write(self.header)
        self.pending = bytearray()
        self.index = 0

    def write(self, data) -> int:
        view, pos = memoryview(data).cast("B"), 0
        while pos < len(view):
            if len(self.pending) == self.chunk:  # sealed only once more follows: the last must be known to be last
                self._seal(self.pending, False)
                self.pending = bytearray()
            take = min(self.chunk - len(self.pending), len(view) - pos)
            self.pending += view[pos:pos + take]
            pos += take
        return len(view)

    def flush(self) -> None:
        self.sink.flush()  # never seals: only finish knows the last chunk

    def finish(self) -> None:
        self._seal(self.pending, True)
        self.pending = bytearray()

    def _seal(self, plaintext, last: bool) -> None:
        nonce = self.prefix + struct.pack(">I", self.index)
        self.sink.write(self.aead.encrypt(nonce, plaintext, _aad(self.header, self.key, self.index, last)))
        self.index += 1


class Opener:
    """Opens a sealed object's chunks, given its header and total size."""

    def __init__(self, header: bytes, key: str, url: str, size: int, data_key: Callable[[str], bytes]):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        _, key_id, self.prefix, self.chunk = HEADER.unpack(header)
        self.header, self.key, self.url = header, key, url
        self.sealed_chunk = self.chunk + TAG
        body = size - HEADER.size
        self.chunks = max(1, -(-body // self.sealed_chunk))
        if body < TAG or not 0 < self.chunk <= MAX_CHUNK:  # a forged header must not make a read allocate gigabytes
            raise ObjectTampered(url, "not a sealed object's header")
        self.aead = AESGCM(data_key(key_id.hex()))

    def opened_chunks(self, sealed: BinaryIO) -> Iterator[bytes]:
        """The plaintext of each chunk of the sealed object read from sealed (just past its header), in order."""
        for index in range(self.chunks):
            yield self.open(index, sealed.read(self.sealed_chunk))

    def open(self, index: int, sealed: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        nonce = self.prefix + struct.pack(">I", index)
        try:
            return self.aead.decrypt(nonce, sealed, _aad(self.header, self.key, index, index == self.chunks - 1))
        except InvalidTag:
            raise ObjectTampered(self.url, f"chunk {index} of {self.chunks} fails its authentication") from None

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The chunks holding plaintext bytes start..end."""
        return start // self.chunk, min(end // self.chunk, self.chunks - 1)

    def offset(self, index: int) -> int:
        return HEADER.size + index * self.sealed_chunk


class _OpenedReader(io.RawIOBase):
    """A sealed object's plaintext, read from its file a chunk at a time, each chunk opened (and so
    authenticated) before a byte of it is returned; a read of a whole chunk returns it uncopied."""

    def __init__(self, opener: Opener, sealed: BinaryIO):
        self.chunks = opener.opened_chunks(sealed)
        self.plain, self.at = b"", 0
        self.refused: ObjectTampered | None = None  # every later read raises it too, never a clean end

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(1 << 30), b""))
        if self.refused:
            raise self.refused
        if self.at == len(self.plain):  # the next chunk (b"" past the last: the end)
            try:
                self.plain, self.at = next(self.chunks, b""), 0
            except ObjectTampered as exc:
                self.refused = exc
                raise
        end = min(len(self.plain), self.at + size)
        part = self.plain if self.at == 0 and end == len(self.plain) else self.plain[self.at:end]
        self.at = end
        return part

    def readinto(self, buffer) -> int:
        part = self.read(len(buffer))
        buffer[:len(part)] = part
        return len(part)


# The sealed objects link_sealed linked into this process's restores, by file (device, inode): the
# store that opens each and its key there (bound into every chunk). Only these are opened.
_LINKED: dict[tuple[int, int], tuple["EncryptedObjectStore", str]] = {}


@contextmanager
def open_object_file(path: Path) -> Iterator[BinaryIO]:
    """A file of a backup's object read as the object's plaintext: opened chunk by chunk when it is
    one link_sealed linked, as it is when it was downloaded opened."""
    with open(path, "rb") as f:
        header = f.read(HEADER.size)
        if not header.startswith(MAGIC):
            f.seek(0)
            yield f
            return
        stat = os.fstat(f.fileno())
        linked = _LINKED.get((stat.st_dev, stat.st_ino))
        if linked is None:
            raise RemError(f"{path} is sealed and this process holds no key for it: restore the backup by name "
                           "(`rem backup restore --name`) with its encryption settings")
        store, key = linked
        yield _OpenedReader(store._opener(key, header, stat.st_size), f)


def linked_sealed(objects, key: str, dest: Path) -> bool:
    """Whether the store linked the object's sealed file at dest for this process's restore to open
    as it reads it (an encrypted local store: EncryptedObjectStore.link_sealed); False: download it."""
    return isinstance(objects, EncryptedObjectStore) and objects.link_sealed(key, dest)


def encryption_of(objects, db: str | None) -> dict[str, str] | None:
    """How a backup written to objects now is encrypted by rem (None: it is not)."""
    return objects.encryption(db) if isinstance(objects, EncryptedObjectStore) and db else None


class EncryptedObjectStore(StoreWrapper):
    """Any ObjectStore with its objects sealed (put, writer, put_file) and opened (get, download);
    listing, heads, deletes, tags and locks go to it as they are."""

    def __init__(self, inner, keys: DataKeys, allow_plaintext: bool = False):
        super().__init__(inner)
        self.keys = keys
        # An unsealed object where a sealed one belongs is refused unless allowed: anyone who can write
        # to the bucket could otherwise plant a backup a restore would take (nothing unsealed is signed).
        self.allow_plaintext = allow_plaintext

    def encryption(self, db: str) -> dict[str, str]:
        """What metadata.json records: how the objects are sealed and with which data key (never the key)."""
        current = self.keys.current(db)
        return {"mode": self.keys.wrap.mode, "kek": current.kek, "data_key": current.id, "cipher": "AES-256-GCM"}

    def local_path(self, key: str) -> Path | None:
        return None  # a local store's files are sealed: every read goes through download, which opens them

    def _sealer(self, key: str, sink: BinaryIO) -> Sealer:
        current = self.keys.current(database_of(key))
        return Sealer(current.id, current.key, key, sink)

    def _opener(self, key: str, header: bytes, size: int) -> Opener:
        return Opener(header, key, self.url(key), size, lambda key_id: self.keys.get(database_of(key), key_id))

    def put(self, key: str, body: bytes, **options) -> str:
        if sealed_name(key):
            out = io.BytesIO()
            sealer = self._sealer(key, out)
            sealer.write(body)
            sealer.finish()
            body = out.getvalue()
        return self.inner.put(key, body, **options)

    @contextmanager
    def writer(self, key: str, spool_dir: Path | None, **options) -> Iterator[BinaryIO]:
        with self.inner.writer(key, spool_dir, **options) as sink:
            if not sealed_name(key):
                yield sink
                return
            sealer = self._sealer(key, sink)
            yield sealer  # type: ignore[misc]
            sealer.finish()

    def get(self, key: str, start: int | None = None, end: int | None = None, if_match: str | None = None) -> bytes:
        if start is None:
            return self._opened(key, self.inner.get(key, if_match=if_match))
        first = self.inner.get(key, 0, HEADER.size - 1, if_match=if_match)
        if not first.startswith(MAGIC):
            self._unsealed(key)
            return self.inner.get(key, start, end, if_match=if_match)
        info = self.inner.head(key)
        if info is None:
            raise ObjectMissing(key)
        opener = self._opener(key, first, info.size)
        end = (opener.chunks * opener.chunk - 1) if end is None else end
        lo, hi = opener.span(start, end)
        sealed = self.inner.get(key, opener.offset(lo), min(opener.offset(hi + 1), info.size) - 1, if_match=if_match)
        plain = b"".join(opener.open(i, sealed[(i - lo) * opener.sealed_chunk:(i - lo + 1) * opener.sealed_chunk])
                         for i in range(lo, hi + 1))
        skip = start - lo * opener.chunk
        return plain[skip: skip + end - start + 1]

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        body, etag = self.inner.get_with_etag(key)
        return self._opened(key, body), etag

    def _unsealed(self, key: str) -> None:
        """An object without the seal: fine under a readable name, or when plaintext is allowed."""
        if sealed_name(key) and not self.allow_plaintext:
            raise ObjectTampered(self.url(key), "not encrypted, though this store's objects are (written before "
                                 "encryption was turned on, or put there by someone without the key); if you trust "
                                 "it, run again with P8_BACKUP_ALLOW_PLAINTEXT=1")

    def _opened(self, key: str, body: bytes) -> bytes:
        if not body.startswith(MAGIC):
            self._unsealed(key)
            return body  # written before encryption was on (or a readable name)
        opener = self._opener(key, body[:HEADER.size], len(body))
        return b"".join(opener.open(i, body[opener.offset(i):opener.offset(i + 1)]) for i in range(opener.chunks))

    def link_sealed(self, key: str, dest: Path) -> bool:
        """A local store's sealed object linked at dest, no byte written, for a restore that opens it
        as it reads it (open_object_file): the data is read and written once, not opened into a copy
        first. A hard link, which keeps the file even if prune deletes it meanwhile; on another
        filesystem a symbolic link to it (as a plain store's objects are read in place). False, with
        nothing done, for a bucket's object or one left unsealed: download it then."""
        here = self.inner.local_path(key)
        if here is None or not is_sealed_file(here):
            return False
        dest.unlink(missing_ok=True)  # a retried download's own earlier link
        try:
            os.link(here, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            os.symlink(os.path.abspath(here), dest)
        stat = os.stat(dest)
        _LINKED[(stat.st_dev, stat.st_ino)] = (self, key)
        return True

    def download(self, key: str, dest: Path, progress: Callable[[int], None] | None = None) -> None:
        """The object opened into dest: a local store's file read in place, a bucket's fetched first
        (in parallel ranged GETs, resumable) beside dest, then opened chunk by chunk."""
        from rem.storage.local import private_file, space_checked

        here = self.inner.local_path(key)
        sealed = here if here is not None else dest.with_name(dest.name + ".sealed")
        if here is None:
            self.inner.download(key, sealed, progress)
            progress = None  # counted as the sealed bytes came
        elif not here.is_file():
            raise ObjectMissing(key)
        partial = dest.with_name(dest.name + ".opening")
        try:
            with open(sealed, "rb") as src, space_checked(dest, "--output"), private_file(partial) as out:
                header = src.read(HEADER.size)
                if not header.startswith(MAGIC):  # written before encryption was on: copied as it is
                    self._unsealed(key)
                    out.write(header)
                    shutil.copyfileobj(src, out, CHUNK)
                else:
                    opener = self._opener(key, header, os.fstat(src.fileno()).st_size)
                    for plain in opener.opened_chunks(src):
                        out.write(plain)
                        if progress:
                            progress(len(plain))
            os.replace(partial, dest)
        finally:
            partial.unlink(missing_ok=True)
            if here is None:
                sealed.unlink(missing_ok=True)
