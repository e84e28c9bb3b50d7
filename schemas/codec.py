"""Avro encoding on the wire: Avro single-object encoding, no Schema Registry needed.

Each message is 0xC3 0x01, the writer schema's 8-byte CRC-64-AVRO fingerprint, then the Avro
binary body (the Avro specification's "single object encoding"). A consumer looks the
fingerprint up among the current and historical schemas shipped in schemas/avro and resolves
the writer's schema to its own reader schema, so every consumer can decode every message,
including those written before a compatible schema change. A `carebus-schema` header carries
the type name for people reading topics with generic tools.
"""
from __future__ import annotations

import io
from functools import lru_cache
from typing import Any

import fastavro

from fastavro import schemaless_reader, schemaless_writer

from schemas import registry
from schemas.errors import CarebusError

MAGIC = b"\xc3\x01"
SCHEMA_HEADER = "carebus-schema"


class UnknownSchemaError(CarebusError, ValueError):
    """The bytes are not carebus Avro, or were written with a schema this build does not know."""


try:
    # fastavro's own record writer. schemaless_writer calls it too, but first walks the whole
    # schema again on every call to collect its named types: a quarter of encoding a source event.
    from fastavro._write import write_data as _write_data
except ImportError:       # pragma: no cover - a fastavro without it: the public, slower path
    _write_data = None


@lru_cache(maxsize=None)
def _prepared(message_type: str) -> tuple[Any, dict[str, Any], bytes]:
    named: dict[str, Any] = {}
    parsed = fastavro.parse_schema(registry.current()[message_type].expanded, named_schemas=named)
    return parsed, named, MAGIC + registry.current()[message_type].fingerprint


def _write(out: bytearray, message_type: str, record: dict[str, Any]) -> None:
    parsed, named, _ = _prepared(message_type)
    if _write_data is not None:
        _write_data(out, record, parsed, named, "", {})
    else:
        buf = io.BytesIO()
        schemaless_writer(buf, parsed, record)
        out += buf.getvalue()


def encode(message_type: str, record: dict[str, Any]) -> bytes:
    out = bytearray(_prepared(message_type)[2])
    _write(out, message_type, record)
    return bytes(out)


def body(message_type: str, record: dict[str, Any]) -> bytes:
    """The Avro body alone (no header): to be framed with `frame`, or nested with `encode_with_last`."""
    out = bytearray()
    _write(out, message_type, record)
    return bytes(out)


def frame(message_type: str, avro_body: bytes) -> bytes:
    return MAGIC + registry.current()[message_type].fingerprint + avro_body


@lru_cache(maxsize=None)
def _without_last_field(message_type: str) -> Any:
    expanded = registry.current()[message_type].expanded
    head = {**expanded, "name": f"{expanded['name']}Head", "fields": expanded["fields"][:-1]}
    return fastavro.parse_schema(head, named_schemas={})


def encode_with_last(message_type: str, head: dict[str, Any], last_body: bytes) -> bytes:
    """Encode a message whose last field is a record already encoded (`body`): Avro writes a
    record's fields one after another, so the bytes are those of `encode` with the full record.
    The hot path uses it to encode a shared record once for both the change feed and the snapshot."""
    buf = io.BytesIO()
    buf.write(MAGIC)
    buf.write(registry.current()[message_type].fingerprint)
    schemaless_writer(buf, _without_last_field(message_type), head)
    buf.write(last_body)
    return buf.getvalue()


def message_type_of(data: bytes) -> str:
    return _writer(data).name.rsplit(".", 1)[-1]


def _writer(data: bytes) -> registry.SchemaVersion:
    if len(data) < 10 or data[:2] != MAGIC:
        raise UnknownSchemaError("not an Avro single-object message (bad magic bytes)")
    writer = registry.by_fingerprint().get(bytes(data[2:10]))
    if writer is None:
        raise UnknownSchemaError(f"unknown writer schema fingerprint {bytes(data[2:10]).hex()}")
    return writer


def decode(data: bytes, expected_type: str | None = None) -> dict[str, Any]:
    writer = _writer(data)
    short = writer.name.rsplit(".", 1)[-1]
    if expected_type is not None and short != expected_type:
        raise UnknownSchemaError(f"expected {expected_type}, got {short}")
    reader = registry.current()[short]
    # Written with the current schema (almost always): no resolution to do, and fastavro would
    # otherwise compare the two schemas on every call.
    resolve = None if reader.fingerprint == writer.fingerprint else reader.parsed_plain
    return schemaless_reader(io.BytesIO(data[10:]), writer.parsed_plain, resolve)


def headers(message_type: str) -> list[tuple[str, bytes]]:
    return [(SCHEMA_HEADER, f"{registry.NAMESPACE}.{message_type}".encode())]
