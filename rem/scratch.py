"""Scratch directories beside a database: owned while a run lives, cleaned by the next run after.

Every scratch directory is `.rem-{kind}-{db name}-{8 hex}` beside the database (same filesystem,
so hard links and renames work) and holds an `.owner` file its run keeps flock'ed. A run killed
with SIGKILL leaves the directory behind (a snapshot's hard links pin old SSTs), but its lock dies
with it: the next run that makes scratch beside the same database removes it and says so.
Quarantines (`.rem-quarantine-{db name}-{time}`) hold a database a restore replaced; they are
never removed by a later run, only named.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path

log = logging.getLogger("rem")

KINDS = ("snapshot", "tenant-snapshot", "restore", "tenant-restore", "view", "verify", "hold")
OWNER = ".owner"
# A scratch directory from before owners were recorded counts as stale once it is this old.
UNOWNED_STALE_SECONDS = 3600

_owned: dict[Path, int] = {}


def _pattern(db_name: str) -> re.Pattern:
    return re.compile(rf"^\.rem-({'|'.join(KINDS)})-{re.escape(db_name)}-[0-9a-f]{{8}}$")


def scratch_dir(near: Path, kind: str) -> Path:
    """A new directory beside `near`, owned by this process until remove_scratch (or its exit)."""
    assert kind in KINDS, kind
    clean_stale(near)
    path = near.parent / f".rem-{kind}-{near.name}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    fd = os.open(path / OWNER, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"{os.getpid()}\n".encode())
    _owned[path] = fd
    return path


def remove_scratch(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    fd = _owned.pop(path, None)
    if fd is not None:
        os.close(fd)


def _is_stale(path: Path) -> bool:
    """Its run is gone. A directory another run is removing right now is not ours to judge (False),
    and neither is one whose owner file has no pid yet: its run is between creating and locking it."""
    if path in _owned:
        return False
    try:
        young = time.time() - path.stat().st_mtime <= UNOWNED_STALE_SECONDS
        fd = os.open(path / OWNER, os.O_RDONLY)
    except FileNotFoundError:
        return path.exists() and not young
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return bool(os.pread(fd, 32, 0).strip()) or not young
    except BlockingIOError:
        return False  # its run is alive
    finally:
        os.close(fd)


def _size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            total += p.stat().st_size if p.is_file() and not p.is_symlink() else 0
        except FileNotFoundError:  # another run is removing it too
            continue
    return total


def clean_stale(near: Path) -> list[str]:
    """Remove the scratch directories interrupted runs left beside `near`; returns what went."""
    removed = []
    if not near.parent.is_dir():
        return removed
    pattern = _pattern(near.name)
    for path in sorted(near.parent.iterdir()):
        if pattern.match(path.name) and not path.is_symlink() and path.is_dir() and _is_stale(path):
            size = _size(path)
            shutil.rmtree(path, ignore_errors=True)
            log.warning("removed %s (%d bytes), left by an interrupted run", path, size)
            removed.append(str(path))
    return removed


def quarantine_path(target: Path) -> Path:
    return target.parent / f".rem-quarantine-{target.name}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:4]}"


def quarantines(target: Path) -> list[Path]:
    """Databases restores moved aside from target and could not put back or delete, newest last."""
    if not target.parent.is_dir():
        return []
    prefix = f".rem-quarantine-{target.name}-"
    return sorted(p for p in target.parent.iterdir() if p.name.startswith(prefix) and p.is_dir())
