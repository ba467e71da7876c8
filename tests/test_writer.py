"""rem/writer.py follows the engine: the same script of writes through our RemWriter and through
the engine-faithful test writer (tests/engine, RocksDB 8.10) leaves the same rows in every column
family, in standalone and in primary mode (timestamps and random key bytes aside)."""

import os
import re

import pytest

from rem.db import init_db
from rem.writer import EntityNotFound, RemWriter
from tests.engine import engine_write
from tests.engine.scenario import scenario
from tests.helpers import dump_all

TIMESTAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00")


def ours(path, ops, mode):
    results = []
    resolve = lambda v: results[int(v[1:])] if isinstance(v, str) and v.startswith("$") and v[1:].isdigit() else (  # noqa: E731
        [resolve(x) for x in v] if isinstance(v, list) else {k: resolve(x) for k, x in v.items()}
        if isinstance(v, dict) else v)
    with init_db(path) as db:
        writer = RemWriter(db, replication=mode)
        for name, *args in ops:
            args = resolve(args)
            if name == "delete":
                name = "soft_delete"
            if name == "key_material":
                args = [os.urandom(92), os.urandom(32)]
            results.append(getattr(writer, name)(*args))
    return results


def normalized(path) -> dict:
    rows = dump_all(path)
    rows["keys"] = {k: b"<random>" for k in rows["keys"]}
    return {cf: {TIMESTAMP.sub(b"<t>", k): TIMESTAMP.sub(b"<t>", v) for k, v in cf_rows.items()}
            for cf, cf_rows in rows.items() if cf != "default"}


@pytest.mark.parametrize("mode", ["standalone", "primary"])
def test_our_writer_leaves_exactly_the_rows_the_engine_leaves(tmp_path, mode):
    ops = scenario(articles=12)
    engine_ids = engine_write(tmp_path / "engine", ops, mode)
    our_ids = ours(tmp_path / "ours", ops, mode)
    assert [i for i in our_ids if isinstance(i, str)] == [i for i in engine_ids if isinstance(i, str)]
    theirs, mine = normalized(tmp_path / "engine"), normalized(tmp_path / "ours")
    assert set(mine) == set(theirs)
    for cf in theirs:
        assert mine[cf] == theirs[cf], cf
    assert (len(theirs["wal"]) > 0) == (mode == "primary")


def test_a_write_to_a_missing_entity_changes_nothing(tmp_path):
    with init_db(tmp_path / "db") as db:
        writer = RemWriter(db)
        with pytest.raises(EntityNotFound):
            with writer.batch():
                writer.register_schema("people", {"version": "1.0.0", "json_schema_extra": {}})
                writer.update("acme", "00000000-0000-4000-8000-000000000000", {"x": 1})
    assert sum(len(v) for cf, v in dump_all(tmp_path / "db").items() if cf != "default") == 0
