"""The catalog file: one object per database, {db}/backups/.catalog.json.zst, holding every backup's
metadata.json as written, with that object's ETag, when it was written and its folder's bytes
(pgBackRest's backup.info). With it, a store of 5,000 backups is read with one GET and a listing of
its folders instead of a GET per backup.

It is a cache, never the truth: a backup exists when its metadata.json does. Every look at the store
checks the catalog against a listing (rem.backup.catalog.BackupStore.look): a folder it lacks is read
from its metadata.json, an entry whose folder is gone is dropped. Whatever acts on a backup (restore,
prune's delete) reads its metadata.json again first. Writers (backup, keep, annotate, prune) update
it with a conditional write after metadata.json; a lost update costs one GET per backup it lacks,
never a backup. Left readable in an encrypted store (a name starting with '.'), like metadata.json,
whose contents it repeats."""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
import zstandard

from rem.storage import ObjectMissing, ObjectStore, PreconditionFailed

log = logging.getLogger("rem")

CATALOG_FILE = ".catalog.json.zst"
FORMAT = 1
UPDATE_TRIES = 8

Entries = dict[str, dict]  # "{tenant_folder}/{folder}" -> {"metadata", "etag", "written", "bytes"}


def entry_key(tenant_folder: str, folder: str) -> str:
    return f"{tenant_folder}/{folder}"


class CatalogFile:
    def __init__(self, objects: ObjectStore, key: str):
        self.objects, self.key = objects, key
        self._cached: tuple[str, Entries] | None = None  # (ETag, entries): read again only when it changed

    def read(self) -> tuple[Entries, str | None]:
        """The entries and the object's ETag (None: there is no catalog file); an unreadable one reads as
        empty, so every backup is read from its metadata.json and the next writer replaces it."""
        info = self.objects.head(self.key)
        if info is None:
            return {}, None
        if self._cached is not None and self._cached[0] == info.etag:
            return dict(self._cached[1]), info.etag
        try:
            body, etag = self.objects.get_with_etag(self.key)
        except ObjectMissing:
            return {}, None
        try:
            document = orjson.loads(zstandard.ZstdDecompressor().decompress(body))
            entries = document["backups"] if document.get("format") == FORMAT else {}
            if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
                raise ValueError("backups is not a table of entries")
        except (zstandard.ZstdError, orjson.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("%s is unreadable (%s): every backup is read from its metadata.json until a backup, keep or "
                        "prune writes it again", self.objects.url(self.key), exc)
            entries = {}
        self._cached = (etag, entries)
        return dict(entries), etag

    def update(self, change: Callable[[Entries], None]) -> bool:
        """Apply change to the entries and write them back if nobody wrote in between (else read again
        and apply it again). False, with a warning, when that never succeeds: the catalog then lacks
        what change would have added, which the next look reads from metadata.json."""
        try:
            for _ in range(UPDATE_TRIES):
                entries, etag = self.read()
                change(entries)
                body = zstandard.ZstdCompressor(level=3).compress(orjson.dumps({"format": FORMAT, "backups": entries}))
                try:
                    new_etag = self.objects.put(self.key, body, **({"if_match": etag} if etag else
                                                                  {"if_none_match": True}))
                except PreconditionFailed:
                    continue
                self._cached = (new_etag, entries)
                return True
            why = f"{UPDATE_TRIES} concurrent writers in a row"
        except Exception as exc:  # noqa: BLE001 - a cache that could not be written costs reads, not backups
            why = f"{type(exc).__name__}: {exc}"
        log.warning("%s not updated (%s): listings read the backups it lacks from their metadata.json",
                    self.objects.url(self.key), why)
        return False
