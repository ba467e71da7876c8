"""One script of engine writes that leaves every state the engine's own write paths produce: user
and system-schema entities, upserts with inline edges, a batch insert, an update that changes the
key (the old key row stays, none for the new key), soft deletes, a hard delete (its edge rows
stay), add_edge / delete_edge, the same natural key in two tenants (one id), key material."""

from __future__ import annotations

ARTICLES = {
    "title": "Article", "version": "1.0.0", "description": "News articles",
    "type": "object",
    "properties": {"slug": {"type": "string"}, "title": {"type": "string"}, "views": {"type": "integer"},
                   "embedding": {"type": "array", "items": {"type": "number"}}},
    "required": ["slug", "title"],
    "json_schema_extra": {"name": "acme.Article", "key_field": "slug", "embedding_fields": ["title"],
                          "embedding_provider": "default", "category": "user"},
}
PEOPLE = {  # no key_field: the key is `name`
    "title": "Person", "version": "1.0.0",
    "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "json_schema_extra": {"category": "user"},
}


def vector(seed: int, dim: int = 8) -> list[float]:
    # Three decimals: serde_json (ryu) and Python print these floats identically.
    return [round(((seed * 7919 + i * 104729) % 1000) / 1000 + 0.001, 3) for i in range(dim)]


def scenario(tenants: tuple[str, ...] = ("acme", "globex"), articles: int = 30) -> list:
    ops: list = [["register_schema", "articles", ARTICLES], ["register_schema", "people", PEOPLE]]

    def op(*args) -> str:
        ops.append(list(args))
        return f"${len(ops) - 1}"

    first: list[str] = []
    for tenant in tenants:
        ids = [op("insert", tenant, "articles", {"slug": f"a-{i}", "title": f"Article {i}", "views": i,
                                                 "embedding": vector(i)}) for i in range(articles)]
        people = [op("insert", tenant, "people", {"name": f"Person {i}", "age": 20 + i}) for i in range(5)]
        op("insert", tenant, "articles", {"slug": "linked", "title": "Linked", "views": 1, "embedding": vector(99),
                                         "edges": [{"dst": ids[0], "rel_type": "cites", "properties": {"w": 1}}]})
        op("insert", tenant, "articles", {"slug": "linked", "title": "Linked again", "views": 2,  # upsert
                                         "embedding": vector(98), "edges": [{"dst": ids[1], "rel_type": "cites"}]})
        op("batch_insert", tenant, "articles", [{"slug": f"b-{i}", "title": f"Batch {i}", "views": i,
                                                 "embedding": vector(200 + i)} for i in range(10)])
        op("update", tenant, ids[2], {"title": "Retitled"})
        op("update", tenant, ids[3], {"slug": "a-3-renamed"})  # key change: old key row stays
        op("add_edge", tenant, people[4], ids[5], "likes")  # an edge to an entity soft-deleted next
        op("delete", tenant, ids[4])
        op("delete", tenant, ids[5])
        op("add_edge", tenant, people[0], ids[6], "wrote", {"role": "author"})
        op("add_edge", tenant, people[1], ids[7], "wrote")
        op("add_edge", tenant, ids[8], people[2], "mentions")
        op("delete_edge", people[1], ids[7], "wrote")
        op("add_edge", tenant, people[3], ids[9], "wrote")
        op("hard_delete", tenant, people[3])  # its edge rows stay behind
        op("insert", tenant, "resources", {"uri": f"https://{tenant}.example/doc", "content": "text",
                                          "chunk_ordinal": 0, "tenant_id": tenant, "timestamp": "2026-01-01T00:00:00Z"})
        op("insert", tenant, "sessions", {"session_id": f"s-{tenant}", "created_at": "2026-01-01T00:00:00Z"})
        op("insert", tenant, "messages", {"message_id": 7, "session_id": f"s-{tenant}", "content": "hi"})
        first = first or ids
    # a-10 has one id in every tenant: soft-deleted in the first only, its edge (keys carry no
    # tenant) must outlive a vacuum while the other tenant's entity of that id lives.
    op("add_edge", tenants[-1], first[10], first[11], "related")
    op("delete", tenants[0], first[10])
    op("key_material")
    return ops
