"""Entities checked against their schema while they are decoded (msgspec), for the JSON Schema
subset REM schemas use; fastjsonschema stays the judge of everything else.

A schema made only of the keywords below becomes a msgspec Struct whose decoding accepts a
properties object only when the JSON Schema accepts it too. The converse need not hold: whatever
the Struct refuses (an integer written 1.0, a number past float range, an entity of a type without
a Struct) is checked again by the exact path (orjson + fastjsonschema), which reports it or not.
So msgspec never decides that something is wrong, only that something is right, and it decides
that in C instead of fastjsonschema's Python loop over every element (25 us per entity each for
schema and vector checks, against 5 us to decode). An embedding (undeclared, or an array of
numbers) is not built as Python floats at all: msgspec checks it is JSON and hands its bytes over,
and an array of nothing but digits, signs, points and commas, and never 309 digits in a row, is
finite numbers, its dimension its commas plus one (a third of the decode's time was building
those floats); one with an exponent or such a run is decoded after all.

Supported: type (one of string, integer, number, boolean, null, array, object), enum of strings,
items, properties, required, format date-time (checked after decoding with fastjsonschema's own
rule), and the annotations title, description, default, examples, version, $comment. A schema with
any other keyword (pattern, minimum, anyOf, additionalProperties false, a list of types, ...) gets
no Struct.
"""

from __future__ import annotations

from typing import Any, Literal, Union

import fastjsonschema
import msgspec

from rem.engine import value_to_string

ANNOTATIONS = {"title", "description", "default", "examples", "version", "$comment"}
SCALARS = {"string": str, "integer": int, "number": float, "boolean": bool, "null": type(None)}
KEY_PROPERTIES = ("uri", "key", "name")  # besides the schema's key_field (rem.engine.extract_key_value)
UNSET = msgspec.UNSET

# fastjsonschema's own rule for format date-time, matched directly (its validator's checks around it cost more)
_date_time = fastjsonschema.compile({"type": "string", "format": "date-time"}).__globals__["REGEX_PATTERNS"][
    "date-time_re_pattern"].match
NUMBER_BYTES = b"0.-, \t\n\r"  # what a JSON array of plain decimals holds besides its brackets, digits as 0
EXPONENT_BYTES = b"eE+"  # an exponent may leave float range (1e999): such arrays are decoded to be sure
DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
PAST_FLOAT_RANGE = b"0" * 309  # 309 digits in a row: an integer part past 1.8e308 is possible
NUMBER_ARRAY = {"type": "array", "items": {"type": "number"}}


class Unsupported(Exception):
    pass


class InlineEdge(msgspec.Struct):
    dst: str
    rel_type: str


def _type_of(schema: dict, path: str) -> Any:
    if not isinstance(schema, dict):
        raise Unsupported(path)
    keywords = set(schema) - ANNOTATIONS
    kind = schema.get("type")
    if kind is None:
        if keywords:
            raise Unsupported(path)
        return Any
    if not isinstance(kind, str):
        raise Unsupported(path)
    if kind in SCALARS:
        allowed = {"type"} | ({"enum"} if kind == "string" else set()) | (
            {"format"} if kind == "string" and schema.get("format") == "date-time" else set())
        if keywords - allowed:
            raise Unsupported(path)
        if "enum" in schema:
            values = schema["enum"]
            if not (isinstance(values, list) and values and all(isinstance(v, str) for v in values)):
                raise Unsupported(path)
            return Literal[tuple(values)]
        return SCALARS[kind]
    if kind == "array":
        if keywords - {"type", "items"}:
            raise Unsupported(path)
        return list[_type_of(schema["items"], path + "[]")] if "items" in schema else list
    if kind == "object":
        if keywords - {"type", "properties", "required"}:
            raise Unsupported(path)
        return _struct(schema, path) if "properties" in schema else dict
    raise Unsupported(path)


def _struct(schema: dict, path: str, extra: tuple[str, ...] = (), raw: tuple[str, ...] = ()) -> type:
    properties, required = schema.get("properties") or {}, schema.get("required") or []
    if not (isinstance(properties, dict) and isinstance(required, list) and set(required) <= set(properties)):
        raise Unsupported(path)
    fields = []
    for i, (name, sub) in enumerate(properties.items()):
        kind = msgspec.Raw if name in raw else _type_of(sub, f"{path}.{name}")
        if name in required:
            fields.append((f"f{i}", kind, msgspec.field(name=name)))
        else:
            fields.append((f"f{i}", Union[kind, msgspec.UnsetType], msgspec.field(default=UNSET, name=name)))
    for j, name in enumerate(n for n in extra if n not in properties):
        kind = msgspec.Raw if name in raw else Any
        fields.append((f"x{j}", Union[kind, msgspec.UnsetType], msgspec.field(default=UNSET, name=name)))
    return msgspec.defstruct(f"Props{abs(hash(path))}", fields, kw_only=True)


class TypedSchema:
    """One schema's Struct and what is read back from a decoded entity."""

    def __init__(self, name: str, body: dict, key_field: str | None):
        for prop in (key_field, *KEY_PROPERTIES):  # key values must reach value_to_string as JSON gave them
            declared = (body.get("properties") or {}).get(prop)
            if declared is not None and (not isinstance(declared, dict) or declared.get("type") != "string"):
                raise Unsupported(f"{name}.{prop}")
        if body.get("type", "object") != "object" or set(body) - ANNOTATIONS - {"type", "properties", "required"}:
            raise Unsupported(name)
        self.name = name
        self.key_names = tuple(dict.fromkeys(p for p in (key_field, *KEY_PROPERTIES) if p))
        declared = (body.get("properties") or {}).get("embedding")
        # list[float] or list[int]: msgspec has refused anything but finite numbers already
        self.vector_checked = isinstance(declared, dict) and declared.get("type") == "array" and \
            isinstance(declared.get("items"), dict) and declared["items"].get("type") in ("number", "integer")
        self.raw_embedding = declared is None or (isinstance(declared, dict) and
                                                  {k: v for k, v in declared.items() if k not in ANNOTATIONS} == NUMBER_ARRAY)
        props = _struct(body, name, extra=(*self.key_names, "embedding"), raw=("embedding",) if self.raw_embedding else ())
        self.attr = {f.encode_name: f.name for f in msgspec.structs.fields(props)}
        self.date_times = [self.attr[n] for n, s in (body.get("properties") or {}).items()
                           if isinstance(s, dict) and s.get("format") == "date-time"]
        self.key_field = key_field
        rules = [("uri", True), *([(key_field, False)] if key_field else []), ("key", False), ("name", True)]
        self.key_rules = [(self.attr[n], strings_only) for n, strings_only in rules]
        self.entity = msgspec.defstruct(
            f"Entity{abs(hash(name))}",
            [("id", str), ("created_at", str), ("modified_at", str), ("edges", list[InlineEdge]), ("properties", props),
             ("deleted_at", Union[str, None], None)],
            tag_field="entity_type", tag=name, kw_only=True)

    def holds(self, props, dim: int | None) -> bool:
        """Whether the decoded properties are valid (their date-times too) and their embedding, if
        any, finite numbers of dimension dim (None: any); False leaves the judgement to the exact path."""
        return self.formats_hold(props) and self.embedding_holds(props, dim)

    def embedding_holds(self, props, dim: int | None) -> bool:
        value = getattr(props, self.attr["embedding"])
        if value is UNSET:
            return True
        if not self.raw_embedding:
            return not isinstance(value, list) or (self.vector_checked and (not dim or len(value) == dim))
        raw = bytes(value).translate(DIGITS_AS_ZERO)  # the shape only: the numbers are decoded from value
        rest = raw.translate(None, NUMBER_BYTES)
        if rest != b"[]" or PAST_FLOAT_RANGE in raw:
            if rest.translate(None, EXPONENT_BYTES) != b"[]":
                return False
            try:
                msgspec.json.decode(value, type=list[float])
            except msgspec.ValidationError:
                return False
        return not dim or (raw.count(b",") + 1 if raw.translate(None, b"[] \t\n\r") else 0) == dim

    def formats_hold(self, props) -> bool:
        for attr in self.date_times:
            value = getattr(props, attr)
            if value is not UNSET and not _date_time(value):
                return False
        return True

    def key_value(self, props) -> str | None:
        """rem.engine.extract_key_value of the decoded properties: the first present of uri (a string),
        the key field, key, name (a string), each but uri and name written by value_to_string."""
        for attr, strings_only in self.key_rules:
            value = getattr(props, attr)
            if value is UNSET:
                continue
            if isinstance(value, str):
                return value
            if not strings_only:
                return value_to_string(value)
        return None


def typed_decoder(schemas: dict[str, tuple[dict, str | None]]) -> tuple[msgspec.json.Decoder | None,
                                                                        dict[type, TypedSchema]]:
    """A decoder of entities of every schema the subset covers (name -> (JSON Schema, key field)),
    and those schemas by the Struct an entity decodes to; entities of the others fail to decode."""
    typed = {}
    for name, (body, key_field) in schemas.items():
        try:
            typed[name] = TypedSchema(name, body, key_field)
        except Unsupported:
            continue
    if not typed:
        return None, {}
    kinds = [t.entity for t in typed.values()]
    return (msgspec.json.Decoder(Union[tuple(kinds)] if len(kinds) > 1 else kinds[0]),
            {t.entity: t for t in typed.values()})
