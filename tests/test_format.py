import pytest

from rem import format as f
from rem.errors import DecodeError

UUID_A = "11111111-1111-4111-8111-111111111111"
UUID_B = "22222222-2222-4222-8222-222222222222"
TS = "2025-10-25T14:30:00.123456Z"


def entity(**over):
    base = dict(id=UUID_A, entity_type="articles", created_at=TS, modified_at=TS, deleted_at=None,
                edges=[f.EdgeRef(dst=UUID_B, rel_type="references", properties={"w": 0.5}, created_at=TS)],
                properties={"title": "x", "embedding": [0.25, -1.0]})
    return f.Entity(**{**base, **over})


def test_every_column_family_round_trips():
    e = entity()
    edge = f.Edge(src=UUID_A, dst=UUID_B, rel_type="references", data=f.EdgeData(properties={"w": 1}, created_at=TS))
    wal = f.WalEntry(seq=7, timestamp=TS, op={"Insert": {"tenant_id": "acme", "entity": e}})
    rows = {
        "entities": (f.entity_key("acme", UUID_A), f.dumps(e), (f.EntityKey("acme", UUID_A), e)),
        "key_index": (f.key_index_key("acme", "https://a:b/c", UUID_A), b'{"type":"articles"}',
                      (f.KeyIndexKey("acme", "https://a:b/c", UUID_A), "articles")),
        "edges": (f.edge_key(UUID_A, UUID_B, "references"), f.dumps(edge),
                  (f.EdgeKey(UUID_A, UUID_B, "references"), edge)),
        "edges_reverse": (f.edge_reverse_key(UUID_A, UUID_B, "references"), f.dumps(edge),
                          (f.EdgeKey(UUID_A, UUID_B, "references"), edge)),
        "embeddings": (f.embedding_key("acme", UUID_A), f.encode_embedding([0.5, -2.0, 3.25]),
                       (f.EmbeddingKey("acme", UUID_A), (0.5, -2.0, 3.25))),
        "indexes": (f.index_key("acme", "status", "a:b", UUID_A), b"", (f.FieldIndexKey("acme", "status", "a:b", UUID_A), None)),
        "wal": (f.wal_key(7), f.dumps(wal), (7, wal)),
        "keys": (b"private_key_encrypted", b"\x00\xffsecret", (b"private_key_encrypted", b"\x00\xffsecret")),
        "bm25_index": (b"meta:acme:doc_count", b"\x05\x00", (b"meta:acme:doc_count", b"\x05\x00")),
    }
    assert set(rows) == set(f.CF_NAMES)
    for cf, (key, value, expected) in rows.items():
        assert f.decode_row(cf, key, value) == expected, cf


def test_wal_key_is_zero_padded_and_sorts_numerically():
    assert f.wal_key(42) == b"wal:00000000000000000042"
    assert sorted([f.wal_key(10), f.wal_key(9), f.wal_key(100)]) == [f.wal_key(9), f.wal_key(10), f.wal_key(100)]


def test_wal_entry_json_embeds_pre_encoded_ops_verbatim():
    op = {"Delete": {"tenant_id": "acme", "entity_id": UUID_A}}
    assert f.decode_wal_entry(f.wal_key(3), f.wal_entry_json(3, TS, f.dumps(op))).op.Delete.entity_id == UUID_A


@pytest.mark.parametrize("cf,key,value,fragment", [
    ("entities", b"entity:acme:" + UUID_A.encode(), b"{not json", "entities"),
    ("entities", b"entity:acme:" + UUID_A.encode(), b'{"id": "x"}', "entity_type"),
    ("entities", b"entity:acme:" + UUID_A.encode(), f.dumps(entity()).replace(TS.encode(), b"yesterday", 1), "created_at"),
    ("entities", b"bogus:key", b"{}", "entity:"),
    ("wal", f.wal_key(3), b'{"seq": 4, "timestamp": "2025-01-01T00:00:00Z", "op": {"Delete": {"tenant_id": "a", "entity_id": "b"}}}', "differs"),
    ("wal", f.wal_key(3), b'{"seq": 3, "timestamp": "2025-01-01T00:00:00Z", "op": {"Drop": {}}}', "op"),
    ("embeddings", f.embedding_key("acme", UUID_A), b"\x00\x00\x00", "float32"),
    ("key_index", f.key_index_key("acme", "k", UUID_A), b"[]", "type"),
    ("edges", b"src:a:dst:b", b"{}", "src:"),
])
def test_bad_bytes_raise_a_typed_error_naming_cf_and_key(cf, key, value, fragment):
    with pytest.raises(DecodeError) as info:
        f.decode_row(cf, key, value)
    assert info.value.cf == cf and info.value.key == key
    assert cf in str(info.value) and repr(key) in str(info.value) and fragment in str(info.value)
