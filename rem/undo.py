"""Undo only the bad writes: every key the log's changes in a range wrote goes back to the value it
had at the range's start, and nothing else moves, including every write after the range.

A key is put back when the live database still holds what the range left in it; when it holds the
value of the range's start already, there is nothing to do (a second run changes nothing); any
other value is a later write, a conflict, listed with both versions and left alone unless forced.
An entity's key rows and edge rows follow it. The whole undo is one WriteBatch, written only after a
record of the current value of every key it touches is saved in the store, so that an undo can be
undone (`revert`). The engine's logical WAL is a log of what happened, and is never rewritten.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from rem.change_log import EDGES, EDGES_REVERSE, ENTITIES, KEY_INDEX, Change
from rem.errors import UsageError

UNDOABLE = (ENTITIES, KEY_INDEX, EDGES, EDGES_REVERSE)  # what the engine writes, its logical WAL aside
RECORD_NAME = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")
RECORD_FORMAT = 1


def undo_state(live: bytes | None, start: bytes | None, left: bytes | None) -> str:
    """already: the key holds its start value (undone before, or a later write put it back); undo: it
    still holds what the range left; conflict: a later write changed it."""
    if live == start:
        return "already"
    return "undo" if live == left else "conflict"


@dataclass
class KeyUndo:
    cf: str
    key: bytes
    start: bytes | None  # the value at the range's start (None: the key did not exist)
    left: bytes | None  # what the range's last write to it left
    live: bytes | None  # what the live database holds now
    change: Change  # the range's first write to the key (its entity, tenant, kind)

    @property
    def state(self) -> str:
        return undo_state(self.live, self.start, self.left)

    def to_dict(self) -> dict[str, Any]:
        return {"cf": self.cf, "key": self.key.decode(errors="replace"), "state": self.state,
                "tenant": self.change.tenant, "entity_id": self.change.entity_id, "kind": self.change.kind,
                "action": "delete" if self.start is None else "put", "start": _text(self.start),
                "live": _text(self.live)}


@dataclass
class UndoPlan:
    keys: list[KeyUndo] = field(default_factory=list)

    def writes(self, force: bool) -> list[KeyUndo]:
        return [k for k in self.keys if k.state == "undo" or (force and k.state == "conflict")]

    @property
    def conflicts(self) -> list[KeyUndo]:
        return [k for k in self.keys if k.state == "conflict"]


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode(errors="replace")


def select(changes: list[Change], tenant: str | None, schema: str | None, entity_ids: tuple[str, ...]) -> list[Change]:
    """The changes an undo takes back: the tenant's writes to what the engine writes; with a schema or
    entities, those entities' writes and their key rows and edge rows (either end) with them."""
    mine = [c for c in changes if c.cf in UNDOABLE and (tenant is None or c.tenant == tenant)]
    if schema is None and not entity_ids:
        return mine
    ids = {c.entity_id for c in mine if c.cf == ENTITIES and (schema is None or c.schema == schema)
           and (not entity_ids or c.entity_id in entity_ids)}
    return [c for c in mine if c.entity_id in ids or (c.cf in (EDGES, EDGES_REVERSE) and c.other_id in ids)]


def plan_undo(changes: list[Change], live_get: Callable[[str, list[bytes]], list[bytes | None]]) -> UndoPlan:
    """One KeyUndo per key the changes wrote, in the order they first wrote it."""
    first: dict[tuple[str, bytes], Change] = {}
    last: dict[tuple[str, bytes], Change] = {}
    for c in changes:
        first.setdefault((c.cf, c.row_key), c)
        last[(c.cf, c.row_key)] = c
    by_cf: dict[str, list[bytes]] = {}
    for cf, key in first:
        by_cf.setdefault(cf, []).append(key)
    live = {(cf, k): v for cf, keys in by_cf.items() for k, v in zip(keys, live_get(cf, keys))}
    return UndoPlan([KeyUndo(cf, key, c.before, last[(cf, key)].value, live[(cf, key)], c)
                     for (cf, key), c in first.items()])


def record_name(now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"


def check_record_name(name: str) -> str:
    if not RECORD_NAME.match(name):
        raise UsageError(f"{name!r} is not an undo record's name (as `rem pitr undo` printed it: "
                         "20261203T142900Z-1a2b3c4d)")
    return name


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode()


def _unb64(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value)


def encode_record(writes: list[tuple[str, bytes, bytes | None, bytes | None]], about: dict[str, Any]) -> bytes:
    """The saved record of an undo: each key's value before it (what a revert writes back) and after."""
    return orjson.dumps({"format": RECORD_FORMAT, **about, "writes": [
        {"cf": cf, "key": _b64(key), "before": _b64(before), "after": _b64(after)}
        for cf, key, before, after in writes]}, option=orjson.OPT_INDENT_2)


def decode_record(body: bytes, where: str) -> tuple[dict[str, Any], list[tuple[str, bytes, bytes | None, bytes | None]]]:
    try:
        doc = orjson.loads(body)
        if doc.get("format") != RECORD_FORMAT:
            raise ValueError(f"format {doc.get('format')!r}")
        writes = [(w["cf"], _unb64(w["key"]), _unb64(w["before"]), _unb64(w["after"])) for w in doc["writes"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{where} is not an undo record rem can read ({exc})") from None
    if any(cf not in UNDOABLE for cf, *_ in writes):
        raise UsageError(f"{where} names a column family an undo never writes; refusing it")
    return doc, writes


def write_values(db, writes: list[tuple[str, bytes, bytes | None]]) -> int:
    """Every (cf, key, value or None to delete) in one WriteBatch, synced; the bytes written."""
    from rocksdict import WriteOptions

    batch = db.batch()
    written = 0
    for cf, key, value in writes:
        if value is None:
            batch.delete(key, db.handle(cf))
        else:
            batch.put(key, value, db.handle(cf))
        written += len(key) + len(value or b"")
    options = WriteOptions()
    options.sync = True
    db.write(batch, options)
    return written


def undo_key(archive, name: str) -> str:
    """Where an undo's record is kept: beside the database's log archive."""
    return f"{archive.db}/undo/{name}.json"
