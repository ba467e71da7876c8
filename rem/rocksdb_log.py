"""RocksDB's write-ahead log (`NNNNNN.log`) and the WriteBatches inside it, read without RocksDB.

Log file (RocksDB's documented format, db/log_format.h): 32 KiB blocks of physical records,
    checksum  uint32  masked CRC32C of type (+ log number, recyclable types) + payload
    length    uint16  payload bytes
    type      uint8   FULL=1 FIRST=2 MIDDLE=3 LAST=4; recyclable 5-8 (header + uint32 log number);
                      9 set-compression, 10/11 user-defined-timestamp sizes (metadata, skipped)
    payload
A block's last bytes too short for a header are zero padding; type 0 is padding too. A logical
record is one FULL, or FIRST MIDDLE* LAST. In a WAL each logical record is a WriteBatch:
    sequence uint64, count uint32, then records: a tag byte and its fields (db/write_batch.cc).

A log being written ends in the middle of a record: reading stops before it (`complete_bytes`),
and the archiver ships only complete records. A checksum that fails before the end is corruption.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import crc32c

from rem.errors import RemError

BLOCK_SIZE = 32 * 1024
HEADER = 7
RECYCLABLE_HEADER = 11
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
RECYCLABLE = {5: FULL, 6: FIRST, 7: MIDDLE, 8: LAST}
METADATA_TYPES = {9, 10, 11}  # set compression type, user-defined timestamp sizes: no WriteBatch in them
STARTS = {FULL, FIRST} | METADATA_TYPES  # a block that begins with one of these begins a logical record
_MASK_DELTA = 0xA282EAD8


class LogCorruption(RemError):
    pass


def unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


@dataclass
class LogRecord:
    offset: int  # of its first physical record in the file
    end: int  # the file offset just past its last physical record
    payload: bytes


@dataclass
class LogRead:
    records: list[LogRecord] = field(default_factory=list)
    complete_bytes: int = 0  # every byte up to here belongs to complete records (or padding)


def read_log(data: bytes, name: str = "log", verify: bool = True, start: int = 0) -> LogRead:
    """Every complete logical record in a log's bytes from `start` (a record boundary: where an
    earlier read stopped); stops before an unfinished tail. Offsets are the file's."""
    result = LogRead(complete_bytes=start)
    pending: list[bytes] = []
    pos = start
    size = len(data)
    while pos < size:
        left_in_block = BLOCK_SIZE - pos % BLOCK_SIZE
        if left_in_block < HEADER:  # trailer padding
            pos += left_in_block
            if not pending:
                result.complete_bytes = min(pos, size)
            continue
        if pos + HEADER > size:
            break
        checksum, length, kind = struct.unpack_from("<IHB", data, pos)
        if kind == 0 and length == 0:  # preallocated or padded space: nothing more in this block
            pos += left_in_block
            continue
        header = RECYCLABLE_HEADER if kind in RECYCLABLE or kind == 11 else HEADER
        if pos + header + length > size:
            break  # a record still being written
        if pos % BLOCK_SIZE + header + length > BLOCK_SIZE:
            raise LogCorruption(f"{name}: record at offset {pos} runs past its 32 KiB block")
        if verify:
            covered = data[pos + 6: pos + header + length]  # type (+ log number) + payload
            if crc32c.crc32c(covered) != unmask(checksum):
                if pos + header + length >= size:
                    break  # a torn final write: the engine had not acknowledged it
                raise LogCorruption(f"{name}: checksum mismatch in the record at offset {pos}")
        payload = data[pos + header: pos + header + length]
        kind = RECYCLABLE.get(kind, kind)
        record_start = pos
        pos += header + length
        if kind in METADATA_TYPES:
            if not pending:
                result.complete_bytes = pos
            continue
        if kind == FULL:
            result.records.append(LogRecord(record_start, pos, payload))
        elif kind == FIRST:
            pending, first_at = [payload], record_start
            continue
        elif kind in (MIDDLE, LAST):
            if not pending:
                raise LogCorruption(f"{name}: a continuation record at offset {record_start} without its first part")
            pending.append(payload)
            if kind == MIDDLE:
                continue
            result.records.append(LogRecord(first_at, pos, b"".join(pending)))
            pending = []
        else:
            raise LogCorruption(f"{name}: unknown record type {kind} at offset {record_start}")
        result.complete_bytes = pos
    return result



def last_record_from_tail(data, name: str = "log") -> LogRecord | None:
    """A log's last complete logical record, read from its last blocks only (read_log reads the whole
    file): every 32 KiB block starts with a physical record, so reading can start at the last block
    where a record starts (or right after the last part of one begun before it: records longer than
    the space left in a block end most blocks that way), going back a block at a time while none has
    completed."""
    block = (len(data) - 1) // BLOCK_SIZE if len(data) else -1
    while block >= 0:
        start = block * BLOCK_SIZE
        if start + HEADER <= len(data):
            kind, first = RECYCLABLE.get(data[start + 6], data[start + 6]), start
            if kind == LAST:  # the end of a record begun before this block: the next one starts after it
                first += (RECYCLABLE_HEADER if data[start + 6] in RECYCLABLE else HEADER) + \
                    struct.unpack_from("<H", data, start + 4)[0]
            if kind in STARTS or (kind == LAST and first < min(len(data), start + BLOCK_SIZE)):
                records = read_log(data, name, start=first).records
                if records:
                    return records[-1]
        block -= 1
    return None


def last_record_in_file(f: BinaryIO, name: str) -> LogRecord | None:
    """The last complete record of an open log-format file (a WAL or a MANIFEST), read from its tail."""
    size = os.fstat(f.fileno()).st_size
    if size == 0:
        return None
    with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as data:
        return last_record_from_tail(data, name)


def batch_last_sequence(record: LogRecord | None) -> int | None:
    """The last sequence number of a log record's WriteBatch (None: no record)."""
    return parse_write_batch(record.payload).last_sequence if record else None


def last_log_sequence(path: str | Path) -> int | None:
    """The last sequence number in a log's complete batches, None when it holds none (read from its tail)."""
    with open(path, "rb") as f:
        return batch_last_sequence(last_record_in_file(f, str(path)))


def read_log_file(path: str | Path, verify: bool = True) -> LogRead:
    return read_log(Path(path).read_bytes(), str(path), verify)


# ------------------------------------------------------------------------------ WriteBatch

# db/dbformat.h ValueType: tag -> (name, has column family id, fields)
_TAGS: dict[int, tuple[str, bool, int]] = {
    0x0: ("DELETE", False, 1), 0x1: ("PUT", False, 2), 0x2: ("MERGE", False, 2), 0x3: ("LOG_DATA", False, 1),
    0x4: ("DELETE", True, 1), 0x5: ("PUT", True, 2), 0x6: ("MERGE", True, 2), 0x7: ("SINGLE_DELETE", False, 1),
    0x8: ("SINGLE_DELETE", True, 1), 0x9: ("BEGIN_PREPARE", False, 0), 0xA: ("END_PREPARE", False, 1),
    0xB: ("COMMIT", False, 1), 0xC: ("ROLLBACK", False, 1), 0xD: ("NOOP", False, 0),
    0xE: ("DELETE_RANGE", True, 2), 0xF: ("DELETE_RANGE", False, 2), 0x10: ("BLOB_INDEX", True, 2),
    0x11: ("BLOB_INDEX", False, 2), 0x12: ("BEGIN_PREPARE", False, 0), 0x13: ("BEGIN_UNPREPARE", False, 0),
    0x14: ("DELETE", False, 1), 0x15: ("COMMIT_WITH_TIMESTAMP", False, 2), 0x16: ("PUT_ENTITY", False, 2),
    0x17: ("PUT_ENTITY", True, 2), 0x18: ("PUT_PREFERRED_SEQNO", False, 2), 0x19: ("PUT_PREFERRED_SEQNO", True, 2),
}
# Records that take a sequence number (counted in the batch header); markers and log data do not.
_DATA = {"DELETE", "PUT", "MERGE", "SINGLE_DELETE", "DELETE_RANGE", "BLOB_INDEX", "PUT_ENTITY", "PUT_PREFERRED_SEQNO"}


@dataclass(slots=True)
class BatchOp:
    kind: str  # PUT, DELETE, SINGLE_DELETE, DELETE_RANGE, MERGE, PUT_ENTITY, ... or a marker
    cf: int  # column family id (0: default)
    key: bytes = b""
    value: bytes = b""  # the value, or a range deletion's end key
    is_data: bool = False  # takes a sequence number (counted in the batch header); markers and log data do not


@dataclass
class WriteBatch:
    sequence: int  # of its first data op; the batch takes sequence .. sequence + count - 1
    count: int
    ops: list[BatchOp]

    @property
    def last_sequence(self) -> int:
        return self.sequence + self.count - 1


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise LogCorruption("WriteBatch: a varint runs past the end")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise LogCorruption("WriteBatch: a varint longer than 64 bits")


def parse_write_batch(payload: bytes) -> WriteBatch:
    """A WriteBatch's sequence number, count and ops; unknown tags are corruption, never skipped."""
    size = len(payload)
    if size < 12:
        raise LogCorruption(f"WriteBatch of {size} bytes: shorter than its 12-byte header")
    sequence, count = struct.unpack_from("<QI", payload, 0)
    ops: list[BatchOp] = []
    found = 0
    pos = 12
    while pos < size:
        tag = payload[pos]
        pos += 1
        shape = _TAGS.get(tag)
        if shape is None:
            raise LogCorruption(f"WriteBatch at sequence {sequence}: unknown record tag {tag:#x}")
        name, has_cf, fields = shape
        cf = 0
        if has_cf:
            cf, pos = _varint(payload, pos)
        parts = []
        for _ in range(fields):
            length = payload[pos] if pos < size else 0x80  # one byte: the common case, read inline
            if length < 0x80:
                pos += 1
            else:
                length, pos = _varint(payload, pos)
            if pos + length > size:
                raise LogCorruption("WriteBatch: a string runs past the end")
            parts.append(payload[pos: pos + length])
            pos += length
        data = name in _DATA
        found += data
        ops.append(BatchOp(name, cf, *parts, is_data=data))
    if found != count:
        raise LogCorruption(f"WriteBatch at sequence {sequence}: header counts {count} records, found {found}")
    return WriteBatch(sequence, count, ops)


def log_batches(path: str | Path) -> Iterator[tuple[LogRecord, WriteBatch]]:
    """Each complete WriteBatch of a log file with its place in the file."""
    for record in read_log_file(path).records:
        yield record, parse_write_batch(record.payload)
