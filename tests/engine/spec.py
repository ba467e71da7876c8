"""The engine's column families and their options (storage/column_families.rs
create_column_family_descriptors), as (compression, block size, fixed prefix length); every one has
a 10-bit bloom filter. Plain data, importable from both virtualenvs."""

ENTITY_LIKE = ("lz4", 4 * 1024, 10)    # entity_cf_options
INDEX_LIKE = ("lz4", 2 * 1024, 15)     # index_cf_options
EMBEDDING = ("none", 32 * 1024, None)  # embedding_cf_options
COLUMN_FAMILIES = {
    "entities": ENTITY_LIKE, "key_index": INDEX_LIKE, "edges": ENTITY_LIKE, "edges_reverse": ENTITY_LIKE,
    "embeddings": EMBEDDING, "indexes": INDEX_LIKE, "wal": ENTITY_LIKE, "keys": ENTITY_LIKE,
    "bm25_index": INDEX_LIKE,
}
