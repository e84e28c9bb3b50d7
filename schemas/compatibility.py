"""Schema evolution rules, checked with the Apache `avro` library's compatibility checker.

carebus requires FULL_TRANSITIVE compatibility for message types: the current schema must read
data written by every earlier version (new consumers replay the whole audit log) and every
earlier version must read data written by the current one (subscribers upgrade at their pace).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from schemas import registry


@dataclass(frozen=True)
class Incompatibility:
    message_type: str
    version: str
    direction: str  # "new reads old" | "old reads new"
    detail: str

    def __str__(self) -> str:
        return f"{self.message_type} vs {self.version} ({self.direction}): {self.detail}"


def _parse(expanded: dict) -> avro.schema.Schema:
    return avro.schema.parse(json.dumps(expanded))


def check_pair(message_type: str, new: dict, old: dict, old_version: str) -> list[Incompatibility]:
    checker = ReaderWriterCompatibilityChecker()
    new_s, old_s = _parse(new), _parse(old)
    problems = []
    for direction, reader, writer in (("new reads old", new_s, old_s), ("old reads new", old_s, new_s)):
        result = checker.get_compatibility(reader, writer)
        if result.compatibility is not SchemaCompatibilityType.compatible:
            problems.append(Incompatibility(message_type, old_version, direction, "; ".join(sorted(result.messages))))
    return problems


def check_all(candidates: dict[str, dict] | None = None) -> list[Incompatibility]:
    """Check current (or candidate) schemas against every historical version."""
    current = candidates or {k: v.expanded for k, v in registry.current().items()}
    problems: list[Incompatibility] = []
    for message_type, versions in registry.history().items():
        for old in versions:
            problems.extend(check_pair(message_type, current[message_type], old.expanded, old.version))
    return problems
