"""The msgspec translation of REM schemas never accepts what fastjsonschema refuses, and verify
finds the same things split over processes as in one."""

import random

import fastjsonschema
import msgspec
import orjson
import pytest

from rem.db import open_db
from rem.fast_schema import typed_decoder
from rem.sample import SCHEMAS, json_schema
from rem.verify import key_ranges, verify_database

EXTRA = {  # keywords outside the subset: such a schema gets no Struct, fastjsonschema judges alone
    "pattern": {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]+$"}}},
    "type list": {"type": "object", "properties": {"x": {"type": ["string", "null"]}}},
    "closed": {"type": "object", "properties": {"x": {"type": "string"}}, "additionalProperties": False},
}
NESTED = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string"}, "level": {"type": "integer"}, "on": {"type": "boolean"}, "gone": {"type": "null"},
    "owner": {"type": "object", "required": ["email"], "properties": {"email": {"type": "string"}}},
    "seen": {"type": "string", "format": "date-time"}, "kind": {"type": "string", "enum": ["a", "b"]},
    "grid": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}, "anything": {},
    "embedding": {"type": "array", "items": {"type": "number"}}}}

VALUES = ["x", "", "2025-01-01T00:00:00Z", "2025-01-01T00:00:00.123456789+00:00", "not a time", 0, 1, -7, 1.0, 2.5,
          1e300, True, False, None, [], [1, 2.5], [[1.0], [2]], [[1, "x"]], ["a"], [None], [float("nan")], {},
          {"email": "e"}, {"email": 3}, {"other": 1}, "a", "b", "c"]


def documents(schema: dict, rng: random.Random, count: int):
    names = list(schema["properties"]) + ["uri", "key", "extra"]
    for _ in range(count):
        yield {name: rng.choice(VALUES) for name in rng.sample(names, rng.randint(0, len(names)))}


def entity(name: str, props: dict) -> bytes:
    return orjson.dumps({"id": "u", "entity_type": name, "created_at": "2025-01-01T00:00:00+00:00",
                         "modified_at": "2025-01-01T00:00:00+00:00", "deleted_at": None, "edges": [],
                         "properties": props}, option=orjson.OPT_SERIALIZE_NUMPY)


@pytest.mark.parametrize("name,schema", [(s.short_name, json_schema(s)) for s in SCHEMAS] + [("nested", NESTED)])
def test_what_msgspec_accepts_fastjsonschema_accepts(name, schema):
    body = {k: v for k, v in schema.items() if k != "json_schema_extra"}
    exact = fastjsonschema.compile(body)
    decoder, typed = typed_decoder({name: (body, (schema.get("json_schema_extra") or {}).get("key_field"))})
    assert decoder is not None, "every sample schema is in the subset"
    (typed_schema,) = typed.values()
    rng = random.Random(7)
    accepted = refused = 0
    for generated in documents(body, rng, 3000):
        stored = entity(name, generated)
        props = orjson.loads(stored)["properties"]  # what the row holds (NaN is written null)
        try:
            exact(props)
            valid = True
        except fastjsonschema.JsonSchemaValueException:
            valid = False
        try:
            decoded = decoder.decode(stored)
        except (msgspec.ValidationError, msgspec.DecodeError):
            refused += 1
            continue  # the exact path judges it
        fast_valid = typed_schema.holds(decoded.properties, None)
        assert not fast_valid or valid, f"msgspec accepted what fastjsonschema refuses: {props}"
        accepted += fast_valid
        if fast_valid:  # what the key row is derived from is what the JSON held
            from rem.engine import extract_key_value

            assert typed_schema.key_value(decoded.properties) == extract_key_value(props, typed_schema.key_field)
    assert accepted and refused  # both sides were exercised


@pytest.mark.parametrize("name", list(EXTRA))
def test_a_schema_outside_the_subset_gets_no_struct(name):
    assert typed_decoder({name: (EXTRA[name], None)}) == (None, {})


def test_verify_in_two_processes_finds_what_one_finds(make_sample):
    path = make_sample(entities=3000, replication="primary")
    with open_db(path, "ro") as db:
        assert len(key_ranges(db, "entities", b"entity:", 2)) == 2  # two processes really share the entities
        one, two = verify_database(db, workers=1), verify_database(db, workers=2)
    assert one.checked == two.checked and one.checked["entities"] > 3000
    assert one.counts == two.counts
    assert sorted((i.severity, i.category, i.key) for i in one.issues) == \
        sorted((i.severity, i.category, i.key) for i in two.issues)
