import orjson
import pytest

from rem import format as f
from rem.db import init_db
from rem.sample import SCHEMAS, schema_entity
from rem.writer import EntityNotFound, RemWriter
from tests.helpers import dump_all

import random

T1, T2 = "2025-01-01T00:00:01.000000Z", "2025-01-01T00:00:02.000000Z"
A = "aaaaaaaa-0000-4000-8000-000000000001"
B = "bbbbbbbb-0000-4000-8000-000000000002"


@pytest.fixture
def writer(tmp_path):
    db = init_db(tmp_path / "db")
    w = RemWriter(db)
    for schema in SCHEMAS:
        w.insert("default", schema_entity(schema, 4, random.Random(1), "2025-01-01T00:00:00Z"))
    yield w
    db.close()


def article(uid, uri, status="draft", edges=()):
    return {"id": uid, "entity_type": "articles", "created_at": T1, "modified_at": T1, "deleted_at": None,
            "edges": list(edges), "properties": {"uri": uri, "title": "t", "status": status, "category": "c"}}


def rows(w):
    w.db.rdict.flush()
    return dump_all(w.db.path)


def test_insert_writes_entity_key_index_field_index_embedding_and_wal_entry(writer):
    seq = writer.insert("acme", article(A, "u:1"), embedding=[1.0, 2.0], timestamp=T1)
    r = rows(writer)
    assert orjson.loads(r["entities"][f.entity_key("acme", A)])["properties"]["uri"] == "u:1"
    assert r["key_index"][f.key_index_key("acme", "u:1", A)] == b'{"type":"articles"}'
    assert f.index_key("acme", "status", "draft", A) in r["indexes"]
    assert f.decode_embedding(b"", r["embeddings"][f.embedding_key("acme", A)]) == (1.0, 2.0)
    entry = f.decode_wal_entry(f.wal_key(seq), r["wal"][f.wal_key(seq)])
    assert entry.timestamp == T1 and entry.op.Insert.entity.id == A and entry.tenant_id == "acme"


def test_edges_go_inline_and_into_both_edge_column_families(writer):
    writer.insert("acme", article(B, "u:2"), timestamp=T1)
    writer.insert("acme", article(A, "u:1"), timestamp=T1)
    writer.add_edge("acme", A, B, "references", {"w": 1}, timestamp=T2)
    r = rows(writer)
    forward = r["edges"][f.edge_key(A, B, "references")]
    assert r["edges_reverse"][f.edge_reverse_key(A, B, "references")] == forward
    assert orjson.loads(forward)["data"] == {"properties": {"w": 1}, "created_at": T2}
    src = orjson.loads(r["entities"][f.entity_key("acme", A)])
    assert src["edges"] == [{"dst": B, "rel_type": "references", "properties": {"w": 1}, "created_at": T2}]
    assert src["modified_at"] == T2


def test_update_replaces_properties_and_moves_key_and_index_rows(writer):
    writer.insert("acme", article(A, "u:1"), timestamp=T1)
    writer.update("acme", A, {"uri": "u:9", "title": "t", "status": "published", "category": "c"}, timestamp=T2)
    r = rows(writer)
    e = orjson.loads(r["entities"][f.entity_key("acme", A)])
    assert e["properties"]["uri"] == "u:9" and e["modified_at"] == T2 and e["created_at"] == T1
    assert f.key_index_key("acme", "u:1", A) not in r["key_index"]
    assert f.key_index_key("acme", "u:9", A) in r["key_index"]
    assert f.index_key("acme", "status", "draft", A) not in r["indexes"]
    assert f.index_key("acme", "status", "published", A) in r["indexes"]


def test_soft_delete_marks_the_entity_and_keeps_its_rows(writer):
    writer.insert("acme", article(A, "u:1"), timestamp=T1)
    seq = writer.soft_delete("acme", A, timestamp=T2)
    r = rows(writer)
    e = orjson.loads(r["entities"][f.entity_key("acme", A)])
    assert e["deleted_at"] == T2 and e["modified_at"] == T2
    assert f.key_index_key("acme", "u:1", A) in r["key_index"]
    assert orjson.loads(r["wal"][f.wal_key(seq)])["op"] == {"Delete": {"tenant_id": "acme", "entity_id": A}}


def test_hard_delete_removes_every_row_of_the_entity_and_edges_pointing_at_it(writer):
    writer.insert("acme", article(B, "u:2"), embedding=[1.0], timestamp=T1)
    writer.insert("acme", article(A, "u:1"), timestamp=T1)
    writer.add_edge("acme", A, B, "references", timestamp=T2)
    writer.hard_delete("acme", B)
    r = rows(writer)
    assert f.entity_key("acme", B) not in r["entities"]
    assert f.embedding_key("acme", B) not in r["embeddings"]
    assert not any(B.encode() in k for cf in ("key_index", "indexes", "edges", "edges_reverse") for k in r[cf])
    assert orjson.loads(r["entities"][f.entity_key("acme", A)])["edges"] == []


def test_wal_sequence_is_contiguous_from_one(writer):
    writer.insert("acme", article(A, "u:1"), timestamp=T1)
    writer.update("acme", A, {"uri": "u:1"}, timestamp=T2)
    writer.soft_delete("acme", A, timestamp=T2)
    seqs = [f.parse_wal_key(k) for k in rows(writer)["wal"]]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) == len(SCHEMAS) + 3


def test_a_failed_write_leaves_neither_rows_nor_wal_entry(writer):
    before = rows(writer)
    with pytest.raises(EntityNotFound):
        with writer.batch():
            writer.insert("acme", article(A, "u:1"), timestamp=T1)
            writer.update("acme", B, {}, timestamp=T2)  # B does not exist: the whole batch is dropped
    assert rows(writer) == before
    assert writer.insert("acme", article(A, "u:1"), timestamp=T1) == len(SCHEMAS) + 1  # no sequence number lost


def test_a_secondary_instance_follows_the_writer_after_catching_up(tmp_path):
    from rem.db import open_db

    db = init_db(tmp_path / "db")
    writer = RemWriter(db)
    for schema in SCHEMAS:
        writer.insert("default", schema_entity(schema, 4, random.Random(1), T1), timestamp=T1)
    db.flush_all()
    follower = open_db(tmp_path / "db", "secondary", secondary_dir=tmp_path / "secondary")
    try:
        before = follower.latest_wal_seq()
        writer.insert("acme", article(A, "u:1"), timestamp=T2)
        follower.catch_up()
        assert follower.get("entities", f.entity_key("acme", A)) is not None
        assert follower.latest_wal_seq() == before + 1 and follower.first_wal_seq() == 1
    finally:
        follower.close()
        db.close()
