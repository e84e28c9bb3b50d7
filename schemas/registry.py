"""Loads the canonical Avro schemas in schemas/avro and every earlier version kept in history/.

Named types live one per file, named by full name (carebus.Envelope.avsc, ...), and refer to each other
by full name; the message schemas (the ones that travel on topics) are listed in MESSAGE_TYPES.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

AVRO_DIR = Path(__file__).resolve().parent / "avro"
HISTORY_DIR = AVRO_DIR / "history"
NAMESPACE = "carebus"
MESSAGE_TYPES = (
    "SourcePatientEvent", "RawMessage", "DeadLetter", "IdentityEvent", "SharedRecord", "RecordChange",
    "AccessEvent",
)


@dataclass(frozen=True)
class SchemaVersion:
    name: str              # full name, e.g. carebus.SourcePatientEvent
    version: str           # "current" or the history file stem, e.g. "v1"
    expanded: dict         # self-contained JSON schema (named types inlined)
    parsed: Any            # fastavro's parsed form, for the hot path
    fingerprint: bytes     # CRC-64-AVRO of the parsing canonical form, 8 bytes little-endian
    parsed_plain: Any      # the same without logical types: decode gives epoch millis / days as ints


def _load_named_types() -> dict[str, dict]:
    """Raw JSON of every named type, by short name."""
    # Files are named by full name (carebus.Envelope.avsc), as fastavro.schema.load_schema expects.
    return {p.stem.rsplit(".", 1)[-1]: json.loads(p.read_text()) for p in sorted(AVRO_DIR.glob("*.avsc"))}


def _inline(node: Any, raw: dict[str, dict], seen: set[str]) -> Any:
    """Replace references to named types by their definition at first use (Avro's own rule)."""
    if isinstance(node, str):
        short = node.removeprefix(f"{NAMESPACE}.")
        if short in raw and node not in ("string", "bytes"):
            full = f"{NAMESPACE}.{short}"
            if full in seen:
                return full
            return _inline(raw[short], raw, seen)
        return node
    if isinstance(node, list):
        return [_inline(n, raw, seen) for n in node]
    if isinstance(node, dict):
        if node.get("type") in ("record", "enum", "fixed") and "name" in node:
            full = f"{node.get('namespace', NAMESPACE)}.{node['name']}"
            if full in seen:
                return full
            seen.add(full)
            out = dict(node)
            if node["type"] == "record":
                out["fields"] = [{**fld, "type": _inline(fld["type"], raw, seen)} for fld in node["fields"]]
            return out
        if node.get("type") == "array":
            return {**node, "items": _inline(node["items"], raw, seen)}
        if node.get("type") == "map":
            return {**node, "values": _inline(node["values"], raw, seen)}
        return node
    return node


def _version(name: str, version: str, expanded: dict) -> SchemaVersion:
    parsed = fastavro.parse_schema(expanded, named_schemas={})
    canonical = to_parsing_canonical_form(parsed)
    fp = int(fingerprint(canonical, "CRC-64-AVRO"), 16).to_bytes(8, "little")
    plain = fastavro.parse_schema(_strip_logical_types(expanded), named_schemas={})
    return SchemaVersion(name, version, expanded, parsed, fp, plain)


def _strip_logical_types(node: Any) -> Any:
    # Canonical events carry times as epoch milliseconds and dates as days, the wire's own
    # values, so JSON, Redis and comparisons never meet datetime objects.
    if isinstance(node, list):
        return [_strip_logical_types(n) for n in node]
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    return node


@lru_cache(maxsize=1)
def current() -> dict[str, SchemaVersion]:
    """Message type short name -> its current schema."""
    raw = _load_named_types()
    out = {}
    for short in MESSAGE_TYPES:
        expanded = _inline(raw[short], raw, set())
        out[short] = _version(f"{NAMESPACE}.{short}", "current", expanded)
    return out


@lru_cache(maxsize=1)
def history() -> dict[str, list[SchemaVersion]]:
    """Message type short name -> every earlier version kept under history/<Name>/vN.avsc."""
    out: dict[str, list[SchemaVersion]] = {short: [] for short in MESSAGE_TYPES}
    for short in MESSAGE_TYPES:
        for path in sorted((HISTORY_DIR / short).glob("v*.avsc")):
            out[short].append(_version(f"{NAMESPACE}.{short}", path.stem, json.loads(path.read_text())))
    return out


@lru_cache(maxsize=1)
def by_fingerprint() -> dict[bytes, SchemaVersion]:
    """Every writer schema a consumer may meet on the wire, current or historical."""
    table = {v.fingerprint: v for versions in history().values() for v in versions}
    table.update({v.fingerprint: v for v in current().values()})
    return table


def source_systems() -> tuple[str, ...]:
    """The source systems the contract knows (the SourceSystem enum), e.g. to expand a local
    identifier into the source keys it may belong to."""
    return tuple(_load_named_types()["SourceSystem"]["symbols"])
