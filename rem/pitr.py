"""Point-in-time recovery from RocksDB's own write-ahead log: pin, read, date and place log bytes.

Every acknowledged write is a WriteBatch in a `NNNNNN.log` of the database directory, whatever
mode the engine runs in. RocksDB deletes a log once every column family with data in it has
flushed, so the archiver pins each log the moment it sees it: a hard link in `.rem-logpins-{db}`
beside the database (same filesystem, never inside it). A pin keeps the bytes readable after the
engine deletes its name; it is released once everything in the log has been shipped.

What is shipped is a *piece*: the log's own bytes from one record boundary to another, with a table
of the batches it holds (where each ends, its sequence number and count, and its time). Restore
puts the pieces back together as the log files they came from, cut after the last batch to
replay, beside a physical base backup, and lets RocksDB's own recovery replay them.

A batch's time is the latest REM timestamp it carries (an entity's created_at / modified_at /
deleted_at, an edge's created_at); one with none (a hard delete, delete_edge, a key row) takes
the time the archiver first saw it and never earlier than the batch before it; the time it was
seen bounds every batch from above.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import re
import select
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from rem.engine import rfc3339_micros
from rem.errors import RemError
from rem.rocksdb_log import (BLOCK_SIZE, LogCorruption, WriteBatch, last_log_sequence, parse_write_batch,
                            read_log)

LOG_NAME = re.compile(r"^(\d+)\.log$")
PIECE_MAGIC = b"REMLOG1\n"
# One row per WriteBatch of a piece: file offset just past its record, first sequence, count, time.
BATCH_TABLE = np.dtype([("end", "<u8"), ("sequence", "<u8"), ("count", "<u4"), ("time_us", "<i8")])
_TIME_FIELDS = (b'"created_at"', b'"modified_at"', b'"deleted_at"')


class ArchiverBusy(RemError):
    """Another archiver holds this database's pins."""


class LogGap(RemError):
    """Sequence numbers missing between two archived batches."""


def log_number(name: str) -> int | None:
    match = LOG_NAME.match(name)
    return int(match.group(1)) if match else None


def log_name(number: int) -> str:
    return f"{number:06d}.log"


# ---------------------------------------------------------------------------------- pins


class LogPins:
    """Hard links to the database's logs, in a directory of ours beside it."""

    def __init__(self, db_path: str | os.PathLike):
        self.db = Path(db_path)
        self.dir = self.db.parent / f".rem-logpins-{self.db.name}"
        self._lock_fd: int | None = None
        self._live_last: tuple[tuple, int] | None = None

    def lock(self) -> None:
        """One archiver per database on this host: the follower holds this for its whole life."""
        self.dir.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = (self.dir / ".lock").read_text().strip() or "another process"
            raise ArchiverBusy(f"another archiver ({holder}) is archiving {self.db}; one is enough") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def live(self) -> dict[int, Path]:
        """The logs in the database directory now."""
        found = {}
        with os.scandir(self.db) as entries:
            for entry in entries:
                number = log_number(entry.name)
                if number is not None:
                    found[number] = Path(entry.path)
        return found

    def live_last_sequence(self) -> int:
        """live_last_sequence(db), remembered while the directory's logs and MANIFEST keep their
        names and sizes (no write, no flush since): an idle follower would open the database every pass."""
        try:
            with os.scandir(self.db) as entries:
                signature = tuple(sorted((e.name, e.stat().st_size) for e in entries
                                         if LOG_NAME.match(e.name) or e.name.startswith("MANIFEST-")))
        except FileNotFoundError:  # a file went between the listing and its stat: the engine is busy
            signature = None
        if signature is None or self._live_last is None or self._live_last[0] != signature:
            self._live_last = (signature, live_last_sequence(self.db))
        return self._live_last[1]

    def pin_new(self) -> list[int]:
        """Link every log not pinned yet; a log the engine deleted in between is simply not there."""
        self.dir.mkdir(mode=0o700, exist_ok=True)
        return [number for number in sorted(self.live()) if self.pin(number)]

    def pin(self, number: int) -> bool:
        """Link one log; False when it is pinned already or gone (continuity names what it held)."""
        target = self.dir / log_name(number)
        if number <= self.released_through() or target.exists():
            return False
        try:
            os.link(self.db / log_name(number), target)
        except (FileNotFoundError, FileExistsError):
            return False
        return True

    def released_through(self) -> int:
        """The newest log shipped to its end and released: never pinned again."""
        try:
            return int((self.dir / ".released").read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def pinned(self) -> list[tuple[int, Path]]:
        if not self.dir.is_dir():
            return []
        found = [(log_number(p.name), p) for p in self.dir.iterdir()]
        return sorted((n, p) for n, p in found if n is not None)

    def release(self, number: int) -> None:
        if number > self.released_through():  # first: the watcher must not pin it again meanwhile
            (self.dir / ".released").write_text(str(number))
        (self.dir / log_name(number)).unlink(missing_ok=True)
        self._shipped_path(number).unlink(missing_ok=True)

    def _shipped_path(self, number: int) -> Path:
        return self.dir / f"{log_name(number)}.shipped"

    def record_shipped(self, number: int, batches: np.ndarray) -> None:
        """Remember the batches (and their times) shipped from a pinned log: compacting its
        segments once it is finished needs them, and S3 need not be read for it."""
        with open(self._shipped_path(number), "ab") as f:
            f.write(batches.tobytes())

    def shipped(self, number: int) -> np.ndarray:
        try:
            raw = self._shipped_path(number).read_bytes()
        except FileNotFoundError:
            return np.zeros(0, dtype=BATCH_TABLE)
        return np.frombuffer(raw[:len(raw) // BATCH_TABLE.itemsize * BATCH_TABLE.itemsize], dtype=BATCH_TABLE)

    def watch(self, stopped: "threading.Event") -> None:
        """Pin each log the moment the engine creates it (inotify), until stopped; a listing every
        0.2 s as well, and instead where inotify is missing."""
        events = _inotify(self.db)
        try:
            while not stopped.is_set():
                ready = select.select([events], [], [], 0.2)[0] if events is not None else stopped.wait(0.2)
                names = _created(events) if ready and events is not None else []
                for number in filter(None, map(log_number, names)):
                    self.pin(number)
                self.pin_new()
        finally:
            if events is not None:
                os.close(events)


_IN_CREATE, _IN_MOVED_TO = 0x100, 0x80


def _inotify(directory: Path) -> int | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None
    if libc.inotify_add_watch(fd, str(directory).encode(), _IN_CREATE | _IN_MOVED_TO) < 0:
        os.close(fd)
        return None
    return fd


def _created(fd: int) -> list[str]:
    """The names inotify reported created since the last read (struct inotify_event: wd, mask, cookie, len, name)."""
    names = []
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return names
        offset = 0
        while offset < len(data):
            length = struct.unpack_from("iIII", data, offset)[3]
            names.append(data[offset + 16: offset + 16 + length].rstrip(b"\0").decode(errors="replace"))
            offset += 16 + length


def check_log_options(db_path: str | os.PathLike) -> None:
    """Refuse settings under which a pinned log is not the log RocksDB wrote."""
    options = sorted(Path(db_path).glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))
    if not options:
        return
    text = options[-1].read_text(errors="replace")
    recycle = re.search(r"^\s*recycle_log_file_num=(\d+)", text, re.M)
    if recycle and int(recycle.group(1)) > 0:
        raise RemError(f"{db_path}: recycle_log_file_num={recycle.group(1)} makes RocksDB overwrite old logs in "
                       "place, which a pinned copy cannot survive; open the engine with recycle_log_file_num=0")
    wal_dir = re.search(r"^\s*wal_dir=(.*)$", text, re.M)
    if wal_dir and wal_dir.group(1).strip() not in ("", str(Path(db_path)), str(Path(db_path).resolve())):
        raise RemError(f"{db_path}: its logs are kept in wal_dir={wal_dir.group(1).strip()}, not in the database "
                       "directory; point-in-time recovery archives only logs kept beside the database")


# ---------------------------------------------------------------------------------- time


def rem_time_us(payload_ops) -> int | None:
    """The latest REM timestamp written by a batch (entities and edges), in microseconds."""
    latest = None
    for op in payload_ops:
        value = op.value
        if op.kind != "PUT" or not value.startswith(b"{") or not any(f in value for f in _TIME_FIELDS):
            continue
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(doc, dict):
            continue
        stamps = [doc.get("created_at"), doc.get("modified_at"), doc.get("deleted_at")]
        if isinstance(doc.get("data"), dict):  # an edge: {src, dst, rel_type, data: {properties, created_at}}
            stamps.append(doc["data"].get("created_at"))
        for stamp in stamps:
            micros = rfc3339_micros(stamp) if isinstance(stamp, str) else None
            if micros is not None and (latest is None or micros > latest):
                latest = micros
    return latest


def date_batches(rows: list[tuple], seen_us: int, previous_us: int | None) -> list[tuple]:
    """Each batch's time, from rows of (end, sequence, count, REM time or None) read in one look at
    `seen_us`: its REM time; for one without, the time it was seen, or the next REM time read with
    it when that is earlier (it was written before that batch), never earlier than the batch before
    it. The time it was seen bounds every batch from above."""
    next_stamp: list[int | None] = [None] * len(rows)
    upcoming = None
    for i in range(len(rows) - 1, -1, -1):
        next_stamp[i] = upcoming
        if rows[i][3] is not None:
            upcoming = rows[i][3] if upcoming is None else min(upcoming, rows[i][3])
    dated = []
    for (end, sequence, count, stamp), later in zip(rows, next_stamp):
        if stamp is not None:
            moment = min(stamp, seen_us)
        else:
            moment = min(seen_us, later) if later is not None else seen_us
            moment = max(moment, previous_us) if previous_us is not None else moment
        dated.append((end, sequence, count, moment))
        previous_us = moment
    return dated


# ---------------------------------------------------------------------------------- pieces


@dataclass
class Piece:
    """A log's bytes [start, end) between record boundaries, and its batches. Decoded from a file,
    the bytes stay in it until `load` (a restore holds every table, one piece's bytes at a time)."""

    log_number: int
    start: int
    data: bytes | None
    batches: np.ndarray  # of BATCH_TABLE
    end: int = 0
    path: Path | None = None  # where the encoded piece is, when data is not loaded

    def __post_init__(self) -> None:
        if self.data is not None:
            self.end = self.start + len(self.data)

    def load(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as f:
            f.seek(-(self.end - self.start), os.SEEK_END)
            return f.read()

    def read(self, offset: int, length: int) -> bytes:
        """Log bytes [offset, offset + length) of this piece, offsets relative to its start."""
        if self.data is not None:
            return self.data[offset:offset + length]
        with open(self.path, "rb") as f:
            f.seek(offset - (self.end - self.start), os.SEEK_END)
            return f.read(min(length, self.end - self.start - offset))

    def append_to(self, out, offset: int) -> None:
        """Write the piece's log bytes from `offset` (relative to its start) at out's position."""
        if self.data is not None:
            out.write(self.data[offset:])
            return
        out.flush()
        with open(self.path, "rb") as f:
            position = os.fstat(f.fileno()).st_size - (self.end - self.start) + offset
            left = self.end - self.start - offset
            while left > 0:  # in the kernel: a restore's logs never pass through Python's memory
                copied = os.copy_file_range(f.fileno(), out.fileno(), left, position)
                if copied == 0:
                    raise LogCorruption(f"{self.path}: shorter than its header says")
                position += copied
                left -= copied
        out.seek(0, os.SEEK_END)

    @property
    def first_sequence(self) -> int:
        return int(self.batches["sequence"][0])

    @property
    def last_sequence(self) -> int:
        last = self.batches[-1]
        return int(last["sequence"]) + int(last["count"]) - 1

    def encode(self) -> bytes:
        header = orjson.dumps({"log_number": self.log_number, "start": self.start, "bytes": len(self.data),
                               "batches": len(self.batches)})
        return PIECE_MAGIC + header + b"\n" + self.batches.tobytes() + self.data

    @classmethod
    def decode(cls, raw: bytes, name: str = "piece", path: Path | None = None) -> "Piece":
        """From `encode`'s bytes; with `path` (where raw was read from) the log bytes are not kept."""
        if not raw.startswith(PIECE_MAGIC):
            raise LogCorruption(f"{name}: not an archived log piece")
        line_end = raw.index(b"\n", len(PIECE_MAGIC))
        header = orjson.loads(raw[len(PIECE_MAGIC):line_end])
        table_end = line_end + 1 + header["batches"] * BATCH_TABLE.itemsize
        if len(raw) - table_end != header["bytes"]:
            raise LogCorruption(f"{name}: {len(raw) - table_end} log bytes, its header says {header['bytes']}")
        batches = np.frombuffer(raw[line_end + 1:table_end], dtype=BATCH_TABLE).copy()
        if path is None:
            return cls(header["log_number"], header["start"], raw[table_end:], batches)
        return cls(header["log_number"], header["start"], None, batches, header["start"] + header["bytes"], path)

    def written(self) -> Iterator[tuple[int, WriteBatch]]:
        """Each batch of the piece with its time (microseconds), in log order."""
        lead = self.start % BLOCK_SIZE  # offsets are the log file's: 32 KiB blocks from byte 0
        times = dict(zip(self.batches["sequence"].tolist(), self.batches["time_us"].tolist()))
        for record in read_log(bytes(lead) + self.load(), f"log {self.log_number}", start=lead).records:
            batch = parse_write_batch(record.payload)
            yield times[batch.sequence], batch

    def check_bytes(self, name: str = "piece") -> None:
        """The log bytes hold exactly the batches of the table (offsets, sequence numbers, counts)."""
        lead = self.start % BLOCK_SIZE  # offsets are the log file's: 32 KiB blocks from byte 0
        read = read_log(bytes(lead) + self.load(), name, start=lead)
        shift = self.start - lead
        found = [(r.end + shift, *_header(r.payload)) for r in read.records]
        table = [(int(b["end"]), int(b["sequence"]), int(b["count"])) for b in self.batches]
        if found != table or read.complete_bytes + shift < self.end:
            raise LogCorruption(f"{name}: its log bytes do not hold the batches its table lists")


def _header(payload: bytes) -> tuple[int, int]:
    batch = parse_write_batch(payload)
    return batch.sequence, batch.count


@dataclass
class NewBatches:
    """New batches read from one pinned log."""

    piece: Piece | None
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (first missing, last missing)
    next_sequence: int | None = None


def read_new(path: Path, number: int, start: int, expected: int | None, clock_us: Callable[[], int],
             previous_us: int | None) -> NewBatches:
    """The complete batches of a log from byte `start`, skipping those before `expected` (already
    archived), dated, with every jump in sequence numbers reported as a gap."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= start:
            return NewBatches(None, next_sequence=expected)
        with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as data:
            read = read_log(data, str(path), start=start)
            tail = data[start:read.records[-1].end] if read.records else b""  # the bytes a piece may take
    seen_us = clock_us()  # after the read: every batch in it was written before now
    rows, gaps, first_byte = [], [], start
    for record in read.records:
        batch = parse_write_batch(record.payload)
        if expected is not None and batch.last_sequence < expected:
            first_byte = record.end  # archived already (a pass that starts the log over)
            continue
        if expected is not None and batch.sequence != expected:
            if batch.sequence < expected:
                raise LogCorruption(f"{path}: batch {batch.sequence}-{batch.last_sequence} overlaps the archive, "
                                    f"which ends at {expected - 1}: the database was replaced or restored; start "
                                    "a new archive (a new prefix) after a full backup")
            gaps.append((expected, batch.sequence - 1))
        rows.append((record.end, batch.sequence, batch.count, rem_time_us(batch.ops)))
        expected = batch.last_sequence + 1
    rows = date_batches(rows, seen_us, previous_us)
    if not rows:
        return NewBatches(None, gaps, expected)
    piece = Piece(number, first_byte, tail[first_byte - start:rows[-1][0] - start], np.array(rows, dtype=BATCH_TABLE))
    return NewBatches(piece, gaps, expected)


def split(piece: Piece, max_bytes: int) -> Iterator[Piece]:
    """A piece in parts of about max_bytes, at batch boundaries."""
    start, first = piece.start, 0
    ends = piece.batches["end"]
    while first < len(piece.batches):
        last = first
        while last + 1 < len(piece.batches) and int(ends[last + 1]) - start <= max_bytes:
            last += 1
        end = int(ends[last])
        yield Piece(piece.log_number, start, piece.data[start - piece.start:end - piece.start],
                    piece.batches[first:last + 1].copy())
        start, first = end, last + 1


# ---------------------------------------------------------------------------------- restore


@dataclass
class Placed:
    last_sequence: int  # the last sequence number handed to RocksDB's recovery
    last_time_us: int | None
    batches: int
    logs: list[str]


def replay_plan(pieces: list[Piece], base_last: int, target_us: int) -> tuple[list[Piece], int, int]:
    """The pieces (in order) and how many of their batches form the longest prefix after the base
    whose times are all <= target; checks sequence continuity from the base on."""
    expected = base_last + 1
    kept: list[Piece] = []
    total = 0
    for piece in sorted(pieces, key=lambda p: (p.first_sequence, p.log_number)):
        table = piece.batches
        last_seq = table["sequence"] + table["count"] - 1
        skip = int(np.searchsorted(last_seq, expected))  # batches the base already holds
        if skip == len(table):
            continue
        if int(table["sequence"][skip]) != expected:
            raise LogGap(f"sequence numbers {expected}-{int(table['sequence'][skip]) - 1} are not in the archive "
                         f"(log {log_name(piece.log_number)}): nothing after them can be replayed")
        rest = table[skip:]
        contiguous = np.all(rest["sequence"][1:] == (rest["sequence"] + rest["count"])[:-1])
        if not contiguous:
            raise LogGap(f"{log_name(piece.log_number)}: its batches skip sequence numbers")
        late = np.nonzero(rest["time_us"] > target_us)[0]
        take = int(late[0]) if len(late) else len(rest)
        if take:
            kept.append(piece)
            total += take
            expected = int(rest["sequence"][take - 1] + rest["count"][take - 1])
        if take < len(rest):
            break
    return kept, total, expected - 1


def place_logs(db_dir: Path, pieces: list[Piece], base_last: int, target_us: int) -> Placed:
    """Write the logs RocksDB will replay into a restored base: each log whole from its first byte
    (the base's own copy, then the archived bytes after it), the last one cut after the last batch
    whose time is <= target (the longest such prefix)."""
    kept, batches, last_sequence = replay_plan(pieces, base_last, target_us)
    if not kept:
        return Placed(base_last, None, 0, [])
    by_log: dict[int, list[Piece]] = {}
    for piece in kept:
        by_log.setdefault(piece.log_number, []).append(piece)
    cut_log = kept[-1].log_number
    cut_at = _cut_offset(kept[-1], last_sequence)
    last_time = _time_of(kept[-1], last_sequence)
    written = []
    for number, parts in sorted(by_log.items()):
        path = db_dir / log_name(number)
        size = path.stat().st_size if path.exists() else 0
        with open(path, "r+b" if path.exists() else "w+b") as out:
            for part in sorted(parts, key=lambda p: p.start):
                if part.start > size:
                    raise LogGap(f"{log_name(number)}: bytes {size}-{part.start} are in neither the base nor the "
                                 "archive")
                held = min(size, part.end) - part.start  # bytes of this part the file has already
                out.seek(part.start)
                if out.read(held) != part.read(0, held):
                    raise LogCorruption(f"{log_name(number)}: the archive and the base backup differ after byte "
                                        f"{part.start}: they are not of the same database")
                if part.end > size:
                    out.seek(size)
                    part.append_to(out, held)
                    size = part.end
            if number == cut_log:
                out.truncate(cut_at)
            out.flush()
            os.fsync(out.fileno())
        written.append(path.name)
    return Placed(last_sequence, last_time, batches, written)


def _cut_offset(piece: Piece, last_sequence: int) -> int:
    last_seq = piece.batches["sequence"] + piece.batches["count"] - 1
    return int(piece.batches["end"][int(np.searchsorted(last_seq, last_sequence))])


def _time_of(piece: Piece, last_sequence: int) -> int:
    last_seq = piece.batches["sequence"] + piece.batches["count"] - 1
    return int(piece.batches["time_us"][int(np.searchsorted(last_seq, last_sequence))])


def format_micros(micros: int) -> str:
    """RFC 3339, UTC, microseconds: how the archive writes a time."""
    from datetime import datetime, timezone

    moment = datetime.fromtimestamp(micros // 1_000_000, timezone.utc).replace(microsecond=micros % 1_000_000)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def live_last_sequence(db_path: str | os.PathLike) -> int:
    """The live database's last sequence number: its newest log's last batch, else RocksDB's own
    (a read-only open, through a linked view: the engine's directory is not written)."""
    from rem.db import open_db

    logs = LogPins(db_path).live()
    if logs:
        try:
            last = last_log_sequence(logs[max(logs)])
        except FileNotFoundError:
            last = None
        if last is not None:
            return last
    with open_db(db_path, "ro") as db:
        return db.rdict.latest_sequence_number()


class Pinner(threading.Thread):
    """Pins each new log the moment it appears, between and during passes (the follower's)."""

    def __init__(self, pins: LogPins):
        super().__init__(name="rem-log-pinner", daemon=True)
        self.pins, self.stopped = pins, threading.Event()

    def run(self) -> None:
        self.pins.watch(self.stopped)
