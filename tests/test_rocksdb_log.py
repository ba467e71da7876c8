"""rem/rocksdb_log.py reads RocksDB's write-ahead log as RocksDB writes it: cross-checked against
Debian's `ldb dump_wal` (RocksDB 7.8.3, an independent reader) on logs written by RocksDB 8.10 (the
engine) and by our own rocksdict (RocksDB 9.8.4); a torn tail stops the read, a flipped byte before
it is corruption."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rem import rocksdb_log
from rem.rocksdb_log import BLOCK_SIZE, LogCorruption, last_record_from_tail, log_batches, read_log
from tests.engine import engine_write
from tests.engine.scenario import scenario

LDB_OP = re.compile(r"(\w+)\((\d+)\) : 0x([0-9A-F]*)(?: : 0x([0-9A-F]*)| 0x([0-9A-F]*))?")


def ldb_view(log: Path) -> list[tuple]:
    if shutil.which("ldb") is None:
        pytest.fail("ldb is missing: `apt-get install rocksdb-tools` (.ci/run does)")
    out = subprocess.run(["ldb", "dump_wal", f"--walfile={log}", "--header", "--print_value"], capture_output=True,
                         text=True, check=True).stdout
    rows = []
    for line in out.splitlines()[1:]:
        seq, count, size, offset, ops = line.split(",", 4)
        rows.append((int(seq), int(count), int(size), int(offset),
                     [(kind, int(cf), key, value or end or "") for kind, cf, key, value, end in LDB_OP.findall(ops)]))
    return rows


def our_view(log: Path) -> list[tuple]:
    return [(batch.sequence, batch.count, len(record.payload), record.offset,
             [(op.kind, op.cf, op.key.hex().upper(), op.value.hex().upper()) for op in batch.ops])
            for record, batch in log_batches(log)]


def engine_logs(tmp_path, mode: str) -> list[Path]:
    """Logs a killed engine leaves: the scenario, a value spanning blocks, a batch of 100 rows."""
    ops = scenario(articles=40) + [
        ["insert", "acme", "people", {"name": "B" * 70_000, "age": 2}],
        ["batch_insert", "acme", "people", [{"name": f"P{i}"} for i in range(50)]],
    ]
    engine_write(tmp_path / "db", ops, mode, crash=True)
    logs = sorted((tmp_path / "db").glob("*.log"))
    assert logs and sum(p.stat().st_size for p in logs) > 100_000
    return logs


@pytest.mark.parametrize("mode", ["standalone", "primary"])
def test_the_parser_agrees_with_ldb_on_logs_the_engine_writes(tmp_path, mode):
    batches = 0
    for log in engine_logs(tmp_path, mode):
        ours = our_view(log)
        assert ours == ldb_view(log)
        batches += len(ours)
        sequences = [(seq, count) for seq, count, *_ in ours]
        assert all(a[0] + a[1] == b[0] for a, b in zip(sequences, sequences[1:]))  # contiguous
    assert batches > 100


def test_the_parser_agrees_with_ldb_on_logs_our_rocksdict_writes(tmp_path):
    script = """
import os, sys
from rocksdict import Options, Rdict, WriteBatch
opts = Options(raw_mode=True); opts.create_if_missing(True); opts.create_missing_column_families(True)
db = Rdict(sys.argv[1], opts, column_families={"entities": Options(raw_mode=True)})
cf = db.get_column_family_handle("entities")
for i in range(300):
    batch = WriteBatch(raw_mode=True)
    batch.put(f"k{i}".encode(), os.urandom(i * 97 % 5000), cf)
    batch.delete(f"k{i - 1}".encode(), cf)
    if i % 7 == 0:
        batch.delete_range(f"r{i}".encode(), f"r{i + 1}".encode(), cf)
    batch.put(f"d{i}".encode(), b"default")
    db.write(batch)
os._exit(0)
"""
    subprocess.run([".venv/bin/python", "-c", script, str(tmp_path / "db")], check=True,
                   cwd=Path(__file__).resolve().parent.parent)
    logs = sorted((tmp_path / "db").glob("*.log"))
    ours = [row for log in logs for row in our_view(log)]
    assert ours == [row for log in logs for row in ldb_view(log)]
    assert len(ours) == 300 and {op[0] for row in ours for op in row[4]} == {"PUT", "DELETE", "DELETE_RANGE"}


def test_a_torn_tail_ends_the_read_before_the_unfinished_record(tmp_path):
    log = max(engine_logs(tmp_path, "standalone"), key=lambda p: p.stat().st_size)
    data = log.read_bytes()
    whole = read_log(data)
    spanning = next(r for r in whole.records if r.end - r.offset > 40_000)  # FIRST .. LAST across blocks
    for cut in (spanning.offset + 3, spanning.offset + 33_000, spanning.end - 1):
        torn = read_log(data[:cut])
        assert [r.payload for r in torn.records] == [r.payload for r in whole.records if r.end <= spanning.offset]
        assert torn.complete_bytes <= spanning.offset
    assert whole.complete_bytes == len(data)


def test_the_last_complete_record_found_from_the_tail_agrees_with_a_whole_read(tmp_path, monkeypatch):
    log = max(engine_logs(tmp_path, "standalone"), key=lambda p: p.stat().st_size)
    data = log.read_bytes()
    whole = {r.end: r.payload for r in read_log(data).records}
    ends = list(whole)
    starts = []
    monkeypatch.setattr(rocksdb_log, "read_log", lambda *a, **kw: starts.append(kw["start"]) or read_log(*a, **kw))
    cuts = sorted({*range(0, len(data), 997), *(e + d for e in ends[:40] for d in (-1, 0, 1)), len(data)})
    for cut in cuts:  # wherever a writer stopped, mid-record, mid-block or exactly at a record's end
        last = last_record_from_tail(data[:cut])
        assert (last.end if last else 0) == max([e for e in ends if e <= cut], default=0), cut
        assert last is None or last.payload == whole[last.end]  # the whole batch, as a full read gives it
        # read from the block where that record starts, not from an earlier block that begins with one
        assert last is None or starts[-1] >= last.offset - last.offset % BLOCK_SIZE, cut


def test_a_flipped_byte_before_the_end_is_corruption_naming_the_offset(tmp_path):
    log = max(engine_logs(tmp_path, "standalone"), key=lambda p: p.stat().st_size)
    data = bytearray(log.read_bytes())
    victim = read_log(bytes(data)).records[3]
    data[victim.offset + 20] ^= 0x01
    with pytest.raises(LogCorruption, match=f"offset {victim.offset}"):
        read_log(bytes(data))
