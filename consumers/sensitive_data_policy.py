"""Which items are withheld from a client whose credentials withhold a category. Pure.

The value sets are data, versioned (consumers/sensitive_value_sets.json, or the file named by
CAREBUS_SENSITIVE_VALUE_SETS): per category, SNOMED CT codes matched exactly (ship the expanded
subset: descendants listed), ICD-10 and Read v2 codes matched as prefixes (a code and everything
below it: B20 covers B20.0 and B209). Every coded field of every item is looked at: a problem's or
observation's code, a medication's code, an allergy's substance, a referral's service, a
document's type.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

DEFAULT_FILE = Path(__file__).with_name("sensitive_value_sets.json")
SNOMED = "http://snomed.info/sct"
ICD10_SYSTEMS = ("http://hl7.org/fhir/sid/icd-10", "http://hl7.org/fhir/sid/icd-10-uk", "http://hl7.org/fhir/sid/icd-10-cm",
                 "urn:oid:2.16.840.1.113883.6.3")
READ2_SYSTEMS = ("http://read.info/readv2", "urn:oid:2.16.840.1.113883.2.1.3.2.4.14")
CODED_FIELDS = ("code", "substance", "service", "type")


@dataclass(frozen=True)
class Category:
    snomed: frozenset[str]
    icd10_prefixes: tuple[str, ...]
    read2_prefixes: tuple[str, ...]

    def covers(self, coded: dict[str, Any]) -> bool:
        system, code = coded.get("system") or "", (coded.get("code") or "").strip()
        if not code:
            return False
        if system == SNOMED:
            return code in self.snomed
        if system in ICD10_SYSTEMS:
            return code.upper().replace(".", "").startswith(self.icd10_prefixes)
        if system in READ2_SYSTEMS:
            return code.rstrip(".").startswith(self.read2_prefixes)
        return False


@dataclass(frozen=True)
class SensitiveDataPolicy:
    version: str
    categories: dict[str, Category]

    def withheld(self, item: dict[str, Any], categories: frozenset[str]) -> bool:
        wanted = [self.categories[c] for c in categories if c in self.categories]
        if not wanted:
            return False
        for name in CODED_FIELDS:
            coded = item.get(name)
            if isinstance(coded, dict) and any(c.covers(coded) for c in wanted):
                return True
        return False


def parse(data: dict[str, Any]) -> SensitiveDataPolicy:
    categories = {}
    for name, sets in data["categories"].items():
        categories[name] = Category(frozenset(sets.get(SNOMED, [])),
                                    tuple(p.upper().replace(".", "") for p in sets.get("icd-10", [])),
                                    tuple(p.rstrip(".") for p in sets.get("read-v2", [])))
    return SensitiveDataPolicy(str(data["version"]), categories)


@lru_cache(maxsize=4)
def _load(path: str) -> SensitiveDataPolicy:
    return parse(json.loads(Path(path).read_text()))


def current() -> SensitiveDataPolicy:
    return _load(os.environ.get("CAREBUS_SENSITIVE_VALUE_SETS") or str(DEFAULT_FILE))
