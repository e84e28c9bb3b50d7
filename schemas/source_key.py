"""The key of a source record: "<source system>|<identifier system>|<local id>". Part of the contract.

Connectors partition source events by it, the link stage identifies source records by it (Kafka
keys and Redis fields), consumers look records up by it. A '|' inside a part would make two
different records share a key (an identifier system "a|b" with id "c", and system "a" with id
"b|c"), so '%' and '|' inside a part are percent-encoded ('%25', '%7C'). Keys of parts without
either character, which is every real one seen so far, read exactly as before.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

SEP = "|"
_ENCODED = re.compile("%(25|7C)")


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace("|", "%7C") if ("%" in part or "|" in part) else part


def _unescape(part: str) -> str:
    return _ENCODED.sub(lambda m: "%" if m.group(1) == "25" else "|", part) if "%" in part else part


@dataclass(frozen=True)
class SourceKey:
    source_system: str          # SourceSystem code, e.g. CERNER_MILLENNIUM
    identifier_system: str      # e.g. urn:carebus:id:cerner:mrn:RAL
    local_id: str

    def __str__(self) -> str:
        return SEP.join((_escape(self.source_system), _escape(self.identifier_system), _escape(self.local_id)))

    @classmethod
    def parse(cls, key: str) -> SourceKey:
        parts = key.split(SEP)
        if len(parts) != 3:
            raise ValueError("a source key has three parts separated by '|'")
        return cls(*(_unescape(p) for p in parts))


def source_key(source_system: str, identifier_system: str, local_id: str) -> str:
    return str(SourceKey(source_system, identifier_system, local_id))


def of_event(event: dict[str, Any]) -> str:
    """The key of a SourcePatientEvent."""
    ident = event["patient"]["local_identifier"]
    return source_key(event["envelope"]["source_system"], ident["system"], ident["value"])
