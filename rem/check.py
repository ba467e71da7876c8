"""`rem check`, as pgBackRest's: is the set-up able to back up and archive right now?

It writes nothing to the database. For each configured store it writes a small object under the
database's own name, reads it back and deletes it; with PITR on, every live log of the database must
be pinned by the archiver (a hard link to the same file) and the archive's lag within the threshold.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass

from rem.errors import redact
from rem.pitr import LogPins
from rem.storage import ObjectStore


@dataclass
class Check:
    name: str
    ok: bool | None  # None: not applicable (skipped)
    detail: str
    seconds: float = 0.0


def check_store(objects: ObjectStore, db: str) -> list[Check]:
    """A write, a read and a delete of one small object under {db}/check/ in the store; its object
    lock and versioning (a bucket), and whether the data key unwraps (rem's encryption)."""
    # a name starting with '.': never locked, so the delete can succeed
    key = f"{db}/check/.{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    body = secrets.token_bytes(32)
    where = objects.url(key)
    results = []

    def step(name: str, action) -> bool:
        started = time.perf_counter()
        try:
            detail = action()
            ok = True
        except Exception as exc:  # any failure is the finding: what it says is the operator's lead
            detail, ok = redact(f"{type(exc).__name__}: {exc}"), False
        results.append(Check(f"{name} {where}", ok, detail, round(time.perf_counter() - started, 3)))
        return ok

    def read() -> str:
        if objects.get(key) != body:
            raise ValueError("read back other bytes than were written")
        return "read back the same 32 bytes"

    def delete() -> str:
        objects.delete([key])
        if objects.head(key) is not None:
            raise ValueError("still there after the delete")
        return "deleted, and gone"

    def write() -> str:
        objects.put(key, body, if_none_match=True)
        return "wrote 32 bytes"

    if step("write", write):
        try:
            step("read", read)
        finally:
            step("delete", delete)
    if hasattr(objects, "lock_status"):
        results.append(_lock_check(objects))
    if hasattr(objects, "encryption"):
        step("data key", lambda: "{mode}: data key {data_key} unwraps, wrapped by {kek}".format(
            **objects.encryption(db)))
    return results


def _lock_check(objects) -> Check:
    """The bucket's versioning and Object Lock, against what rem is set to write."""
    try:
        status = objects.lock_status()
    except Exception as exc:  # the finding is what S3 said
        return Check(f"object lock {objects.url()}", False, redact(f"{type(exc).__name__}: {exc}"))
    detail = f"versioning {status['versioning']}, object lock {status['object_lock']}"
    if status["default_retention"]:
        detail += f" (default retention {status['default_retention']})"
    if status["rem_writes"] == "none":
        return Check(f"object lock {objects.url()}", None, detail + "; rem writes no locks ([backup] object_lock)")
    if status["object_lock"] != "enabled":
        return Check(f"object lock {objects.url()}", False, detail + f"; [backup] object_lock = {status['rem_writes']} "
                     "needs a bucket created with Object Lock enabled: make one and point the settings at it")
    return Check(f"object lock {objects.url()}", True,
                 detail + f"; rem locks every backup object ({status['rem_writes']}) for {status['lock_days']:g} days")


def check_pins(db_path, pitr_enabled: bool) -> Check:
    """Every live log of the database is pinned by the archiver, so none can go unarchived."""
    if not pitr_enabled:
        return Check("log pins", None, "PITR is off ([pitr] enabled = false): nothing to pin")
    pins = LogPins(db_path)
    pinned, released = dict(pins.pinned()), pins.released_through()
    missing = []
    for number, path in sorted(pins.live().items()):
        if number <= released:
            continue
        try:
            same = number in pinned and os.path.samefile(path, pinned[number])
        except FileNotFoundError:  # the engine deleted it meanwhile: nothing left to pin
            continue
        if not same:
            missing.append(path.name)
    if missing:
        return Check("log pins", False, f"not pinned: {', '.join(missing)}; is the archiver running? "
                                        "(`rem pitr archive --follow`, or the wal-archive-follow deployment)")
    return Check("log pins", True, f"every live log pinned in {pins.dir}")


def check_lag(status: dict, max_seconds: float) -> Check:
    """The archive's lag (rem pitr status) within max_seconds."""
    lag = status.get("lag_seconds")
    if lag is None:
        return Check("archive lag", False, "nothing archived yet: run `rem pitr archive`")
    ok = lag <= max_seconds and not status.get("broken_ranges")
    gaps = f"; {len(status['broken_ranges'])} gap(s) in the archive" if status.get("broken_ranges") else ""
    return Check("archive lag", ok, f"{lag:.1f} s behind (limit {max_seconds:.0f} s), "
                                    f"{status.get('lag_batches')} batch(es){gaps}")


def as_dicts(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
