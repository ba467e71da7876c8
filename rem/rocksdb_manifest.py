"""Column family ids and names from RocksDB's MANIFEST: a WriteBatch names its column family by id
only, and the MANIFEST is where RocksDB records which name each id has.

The MANIFEST is a log file (the same 32 KiB block format as the write-ahead log, rem.rocksdb_log)
of VersionEdit records, each a run of (varint32 tag, field). The records that define a column
family (VersionSet::WriteCurrentStateToManifest and CreateColumnFamily write them) carry only
simple fields: the comparator's name, log and file numbers, the column family's id (tag 200), its
name (201), a drop (202). A record that also carries files is read up to its first field of
another kind and no further: it defines no column family.
"""

from __future__ import annotations

from pathlib import Path

from rem.errors import RemError
from rem.rocksdb_log import LogCorruption, _varint, read_log_file

_VARINT64 = {2, 3, 4, 9, 10}  # log number, next file number, last sequence, prev log number, min log to keep
_VARINT32 = {203, 300}  # max column family, in atomic group
COMPARATOR, COLUMN_FAMILY, COLUMN_FAMILY_ADD, COLUMN_FAMILY_DROP = 1, 200, 201, 202


class ManifestUnreadable(RemError):
    pass


def column_families_of_edit(record: bytes) -> tuple[int | None, str | None, bool]:
    """(column family id, added name, dropped) of one VersionEdit, read as far as its simple fields go."""
    pos, cf, added, dropped = 0, None, None, False
    while pos < len(record):
        tag, pos = _varint(record, pos)
        if tag in _VARINT64 or tag in _VARINT32:
            _, pos = _varint(record, pos)
        elif tag == COMPARATOR:
            length, pos = _varint(record, pos)
            pos += length
        elif tag == COLUMN_FAMILY:
            cf, pos = _varint(record, pos)
        elif tag == COLUMN_FAMILY_ADD:
            length, pos = _varint(record, pos)
            added = record[pos:pos + length].decode()
            pos += length
        elif tag == COLUMN_FAMILY_DROP:
            dropped = True
        else:
            break  # files, blob files, WAL additions: not a column family's definition
    return cf, added, dropped


def column_family_names(db_dir: Path) -> dict[int, str]:
    """id -> name of every column family the database's current MANIFEST defines."""
    try:
        manifest = db_dir / (db_dir / "CURRENT").read_text().strip()
        records = read_log_file(manifest).records
    except (OSError, RemError) as exc:
        raise ManifestUnreadable(f"{db_dir}: its MANIFEST cannot be read ({exc}); the log's column families "
                                 "cannot be named") from None
    names = {0: "default"}
    for record in records:
        try:
            cf, added, dropped = column_families_of_edit(record.payload)
        except (LogCorruption, UnicodeDecodeError):
            continue
        if added is not None and cf is not None:
            names[cf] = added
        elif dropped and cf is not None:
            names.pop(cf, None)
    return names
