"""Avro encoding on the wire: Avro single-object encoding, no Schema Registry needed.

Each message is 0xC3 0x01, the writer schema's 8-byte CRC-64-AVRO fingerprint, then the Avro
binary body (the Avro specification's "single object encoding"). A consumer looks the
fingerprint up among the current and historical schemas shipped in schemas/avro and resolves
the writer's schema to its own reader schema, so every consumer can decode every message,
including those written before a compatible schema change. A `carebus-schema` header carries
the type name for people reading topics with generic tools.

Two engines write and read the same bytes (CAREBUS_AVRO_ENGINE):
- `cavro` (the default): a Cython Avro codec that encodes and decodes carebus's messages 2.1 to
  2.7 times faster than fastavro (measured on the link stage's own messages: a shared record
  54 -> 25 us to encode, 43 -> 19 us to decode). Avro is a fifth to a quarter of the connectors',
  link workers' and delivery service's CPU per message, so this is the cheapest speed the bus has.
- `fastavro`: the reference. tests/unit/test_avro_engines.py checks with hypothesis that both
  engines give identical bytes and identical decoded messages for every message type; fastavro
  also resolves messages written with an older schema (rare: only after a schema change).
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from functools import lru_cache
from typing import Any, NamedTuple

import fastavro
from fastavro import schemaless_reader, schemaless_writer

from foundation.config import AvroEngineError as EngineError, avro_engine
from schemas import registry
from schemas.errors import CarebusError

try:
    import cavro
except ImportError:       # pragma: no cover - an install without it: fastavro alone
    cavro = None

MAGIC = b"\xc3\x01"
SCHEMA_HEADER = "carebus-schema"


class UnknownSchemaError(CarebusError, ValueError):
    """The bytes are not carebus Avro, or were written with a schema this build does not know."""


def engine_setting() -> str:
    """CAREBUS_AVRO_ENGINE, checked as the configuration checks it, and whether it is installed."""
    name = avro_engine(os.environ.get("CAREBUS_AVRO_ENGINE", ""))
    if name == "cavro" and cavro is None:
        raise EngineError("CAREBUS_AVRO_ENGINE=cavro, but the cavro package is not installed")
    return name


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


# carebus's values are plain: dates are days and instants epoch millis, as ints (parsed_plain);
# records decode to dicts; a uuid stays a string.
_CAVRO_OPTIONS = None if cavro is None else cavro.DEFAULT_OPTIONS.replace(
    logical_types=(), record_decodes_to_dict=True, return_uuid_object=False)


def _cavro(schema: dict[str, Any]) -> Any:
    return cavro.Schema(json.dumps(schema), options=_CAVRO_OPTIONS)


@lru_cache(maxsize=None)
def _cavro_message(message_type: str) -> Any:
    return _cavro(registry.current()[message_type].expanded)


def fastavro_body(message_type: str, record: dict[str, Any]) -> bytes:
    parsed, named, _ = _prepared(message_type)
    out = bytearray()
    if _write_data is not None:
        _write_data(out, record, parsed, named, "", {})
    else:
        buf = io.BytesIO()
        schemaless_writer(buf, parsed, record)
        out += buf.getvalue()
    return bytes(out)


def cavro_body(message_type: str, record: dict[str, Any]) -> bytes:
    return _cavro_message(message_type).binary_encode(record)


def fastavro_read(message_type: str, avro_body: bytes) -> dict[str, Any]:
    return schemaless_reader(io.BytesIO(avro_body), registry.current()[message_type].parsed_plain, None)


def cavro_read(message_type: str, avro_body: bytes) -> dict[str, Any]:
    return _cavro_message(message_type).binary_decode(avro_body)


class Engine(NamedTuple):
    write: Callable[[str, dict[str, Any]], bytes]
    read: Callable[[str, bytes], dict[str, Any]]
    name: str


@lru_cache(maxsize=1)
def engine() -> Engine:
    """This process's engine, chosen at first use (not at import: a bad setting is then reported
    by the configuration, load_settings, before anything encodes)."""
    if engine_setting() == "cavro":
        return Engine(cavro_body, cavro_read, "cavro")
    return Engine(fastavro_body, fastavro_read, "fastavro")


def encode(message_type: str, record: dict[str, Any]) -> bytes:
    return _prepared(message_type)[2] + engine().write(message_type, record)


def body(message_type: str, record: dict[str, Any]) -> bytes:
    """The Avro body alone (no header): to be framed with `frame`, or nested with `encode_with_last`."""
    return engine().write(message_type, record)


def frame(message_type: str, avro_body: bytes) -> bytes:
    return MAGIC + registry.current()[message_type].fingerprint + avro_body


@lru_cache(maxsize=None)
def _without_last_field(message_type: str) -> dict[str, Any]:
    expanded = registry.current()[message_type].expanded
    return {**expanded, "name": f"{expanded['name']}Head", "fields": expanded["fields"][:-1]}


@lru_cache(maxsize=None)
def _head_writer(message_type: str) -> Any:
    if engine().name == "cavro":
        return _cavro(_without_last_field(message_type)).binary_encode
    parsed = fastavro.parse_schema(_without_last_field(message_type), named_schemas={})

    def write(head: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        schemaless_writer(buf, parsed, head)
        return buf.getvalue()
    return write


def encode_with_last(message_type: str, head: dict[str, Any], last_body: bytes) -> bytes:
    """Encode a message whose last field is a record already encoded (`body`): Avro writes a
    record's fields one after another, so the bytes are those of `encode` with the full record.
    The hot path uses it to encode a shared record once for both the change feed and the snapshot."""
    return _prepared(message_type)[2] + _head_writer(message_type)(head) + last_body


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
    if reader.fingerprint == writer.fingerprint:
        # Written with the current schema (almost always): no resolution to do.
        return engine().read(short, data[10:])
    return schemaless_reader(io.BytesIO(data[10:]), writer.parsed_plain, reader.parsed_plain)


def headers(message_type: str) -> list[tuple[str, bytes]]:
    return [(SCHEMA_HEADER, f"{registry.NAMESPACE}.{message_type}".encode())]
