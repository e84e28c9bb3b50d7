"""Hypothesis strategies that generate any valid record of an Avro schema."""
from __future__ import annotations

from hypothesis import strategies as st

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


def for_schema(schema, named: dict | None = None):
    named = {} if named is None else named
    if isinstance(schema, str):
        primitive = {
            "string": _TEXT,
            "bytes": st.binary(max_size=32),
            "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1),
            "double": st.floats(allow_nan=False),
            "float": st.floats(allow_nan=False, width=32),
            "boolean": st.booleans(),
            "null": st.none(),
        }
        if schema in primitive:
            return primitive[schema]
        return st.deferred(lambda: named[schema])
    if isinstance(schema, list):
        return st.one_of([for_schema(s, named) for s in schema])
    kind = schema["type"]
    logical = schema.get("logicalType")
    if logical == "timestamp-millis":
        return st.integers(0, 4_102_444_800_000)  # fastavro returns datetimes; callers compare encoded
    if logical == "date":
        return st.integers(-20000, 40000)
    if kind == "record":
        full = schema["name"] if "." in schema["name"] else f"{schema.get('namespace', 'carebus')}.{schema['name']}"
        strategy = st.fixed_dictionaries({f["name"]: for_schema(f["type"], named) for f in schema["fields"]})
        named[full] = strategy
        return strategy
    if kind == "enum":
        full = schema["name"] if "." in schema["name"] else f"{schema.get('namespace', 'carebus')}.{schema['name']}"
        strategy = st.sampled_from(schema["symbols"])
        named[full] = strategy
        return strategy
    if kind == "array":
        return st.lists(for_schema(schema["items"], named), max_size=2)
    if kind == "map":
        return st.dictionaries(_TEXT, for_schema(schema["values"], named), max_size=2)
    return for_schema(kind, named)
