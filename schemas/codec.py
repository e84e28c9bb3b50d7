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
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from schemas import registry

MAGIC = b"\xc3\x01"
SCHEMA_HEADER = "carebus-schema"


class UnknownSchemaError(ValueError):
    """The bytes are not carebus Avro, or were written with a schema this build does not know."""


def encode(message_type: str, record: dict[str, Any]) -> bytes:
    schema = registry.current()[message_type]
    buf = io.BytesIO()
    buf.write(MAGIC)
    buf.write(schema.fingerprint)
    schemaless_writer(buf, schema.parsed, record)
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
