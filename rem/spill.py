"""Sets of 64-bit hashes too big to hold: written to disk in partitions (by hash), then joined one
partition at a time, so a pass over any number of rows holds about PART_ROWS hashes at once.

Writers run in separate processes: each writes its own files (`{name}.{writer}.{part}`) and the join
reads every writer's. A tagged hash carries a tag, which a KeyLog turns back into the row's key.
"""

from __future__ import annotations

import os
from array import array
from pathlib import Path

import numpy as np

PART_ROWS = 1 << 21  # hashes per partition the join holds: 16 MB, and its tags and sort as much again
FLUSH_ROWS = 1 << 19  # hashes a writer buffers before it appends them to its partition files
_WRITER_SHIFT = 48  # a tag is writer << 48 | offset in the writer's key log


def parts_for(rows: int) -> int:
    """Partitions for about `rows` hashes (an estimate: twice it is provided for)."""
    return max(1, -(-2 * rows // PART_ROWS))


class HashSpill:
    """Hashes (each with a tag when tagged) of one writer, appended to its partition files.
    The scan appends to .hashes (and .tags) directly: a method call per row costs more than the row."""

    def __init__(self, directory: Path, name: str, parts: int, writer: int, tagged: bool = False):
        self.directory, self.name, self.parts, self.writer = directory, name, parts, writer
        self.hashes = array("q")
        self.tags = array("q") if tagged else None

    def full(self) -> bool:
        return len(self.hashes) >= FLUSH_ROWS

    def flush(self) -> None:
        hashes = np.frombuffer(self.hashes, dtype=np.int64)
        if not len(hashes):
            return
        tags = None if self.tags is None else np.frombuffer(self.tags, dtype=np.int64)
        part = (hashes.view(np.uint64) % np.uint64(self.parts)).astype(np.intp)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(self.parts + 1))
        for p in range(self.parts):
            rows = order[bounds[p]:bounds[p + 1]]
            if len(rows):
                _append(self.directory / f"{self.name}.{self.writer}.{p}", hashes[rows])
                if tags is not None:
                    _append(self.directory / f"{self.name}.{self.writer}.{p}.tag", tags[rows])
        # new arrays, not cleared ones: numpy's views of the old ones pin their buffers
        self.hashes = array("q")
        self.tags = None if tags is None else array("q")


def _append(path: Path, values: np.ndarray) -> None:
    with open(path, "ab") as out:
        out.write(values.tobytes())


def _files(directory: Path, name: str, part: int) -> list[Path]:
    return sorted(directory.glob(f"{name}.*.{part}"))


def hashes_of(directory: Path, name: str, part: int) -> np.ndarray:
    """Every writer's hashes of one partition, sorted."""
    files = _files(directory, name, part)
    hashes = np.concatenate([np.fromfile(f, dtype=np.int64) for f in files]) if files else np.zeros(0, np.int64)
    hashes.sort()
    return hashes


def _tagged(directory: Path, name: str, part: int) -> tuple[np.ndarray, np.ndarray]:
    files = _files(directory, name, part)
    if not files:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return (np.concatenate([np.fromfile(f, dtype=np.int64) for f in files]),
            np.concatenate([np.fromfile(f.with_name(f.name + ".tag"), dtype=np.int64) for f in files]))


def member(sorted_hashes: np.ndarray, values) -> np.ndarray:
    """Which values are in sorted_hashes (vectorised)."""
    values = np.asarray(values, dtype=np.int64)
    if not len(sorted_hashes):
        return np.zeros(len(values), dtype=bool)
    where = np.minimum(np.searchsorted(sorted_hashes, values), len(sorted_hashes) - 1)
    return sorted_hashes[where] == values


def tags_where(directory: Path, probe: str, parts: int, members, present: bool) -> np.ndarray:
    """The tags of probe's hashes that are (present=True) or are not among members, sorted (so in the
    writers' order, which is key order). members is a spill name or an in-memory sorted array."""
    found = []
    for p in range(parts):
        hashes, tags = _tagged(directory, probe, p)
        if not len(hashes):
            continue
        among = member(hashes_of(directory, members, p) if isinstance(members, str) else members, hashes)
        found.append(tags[among if present else ~among])
    return np.sort(np.concatenate(found)) if found else np.zeros(0, np.int64)


class KeyLog:
    """The keys of one writer's rows, each named by a tag (a probe's tag finds its row's key again)."""

    def __init__(self, directory: Path, name: str, writer: int):
        self.path = directory / f"{name}.{writer}.keys"
        self.base = writer << _WRITER_SHIFT
        self.buffer = bytearray()
        self.written = 0

    def add(self, key: bytes) -> int:
        tag = self.base + self.written + len(self.buffer)
        self.buffer += len(key).to_bytes(4, "little")
        self.buffer += key
        if len(self.buffer) >= 1 << 22:
            self.flush()
        return tag

    def flush(self) -> None:
        with open(self.path, "ab") as out:
            out.write(self.buffer)
        self.written += len(self.buffer)
        self.buffer = bytearray()


def keys_of(directory: Path, name: str, tags) -> list[bytes]:
    """The keys the tags name, in the tags' order."""
    keys, handles = [], {}
    try:
        for tag in tags:
            writer, offset = int(tag) >> _WRITER_SHIFT, int(tag) & ((1 << _WRITER_SHIFT) - 1)
            if writer not in handles:
                handles[writer] = open(directory / f"{name}.{writer}.keys", "rb")
            handle = handles[writer]
            handle.seek(offset)
            keys.append(handle.read(int.from_bytes(handle.read(4), "little")))
    finally:
        for handle in handles.values():
            handle.close()
    return keys


def clear(directory: Path) -> None:
    """Remove what a pass wrote (its jobs run again); the directory's own dot files stay."""
    for entry in os.scandir(directory):
        if not entry.name.startswith("."):
            os.unlink(entry.path)
