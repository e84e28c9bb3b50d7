"""Which items are withheld from a client whose credentials withhold a category. Pure.

The value sets are data, versioned (consumers/sensitive_value_sets.json, or the file named by
CAREBUS_SENSITIVE_VALUE_SETS): per category, codes of any code system matched exactly (SNOMED CT:
ship the expanded subset, descendants listed; a service or clinic code system for encounters),
ICD-10 and Read v2 codes matched as prefixes (a code and everything below it: B20 covers B20.0
and B209). Every coding of every coded field of every item is looked at: a problem's or
observation's code, a medication's code, an allergy's substance, a referral's service, a
document's type, an encounter's service (a visit to a sexual-health clinic), each with its
other codings (a Read or ICD-10 code sent beside the SNOMED one).
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
CODED_FIELDS = ("code", "substance", "service", "type", "service_type")
PREFIX_KEYS = ("icd-10", "read-v2")


@dataclass(frozen=True)
class Category:
    exact: dict[str, frozenset[str]]        # code system URI -> codes
    icd10_prefixes: tuple[str, ...]
    read2_prefixes: tuple[str, ...]

    def covers_coding(self, coding: dict[str, Any]) -> bool:
        system, code = coding.get("system") or "", (coding.get("code") or "").strip()
        if not code:
            return False
        if system in ICD10_SYSTEMS:
            return code.upper().replace(".", "").startswith(self.icd10_prefixes)
        if system in READ2_SYSTEMS:
            return code.rstrip(".").startswith(self.read2_prefixes)
        return code in self.exact.get(system, ())

    def covers(self, coded: dict[str, Any]) -> bool:
        return self.covers_coding(coded) or any(self.covers_coding(c) for c in coded.get("other_codings") or ())


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
        categories[name] = Category({system: frozenset(codes) for system, codes in sets.items() if system not in PREFIX_KEYS},
                                    tuple(p.upper().replace(".", "") for p in sets.get("icd-10", [])),
                                    tuple(p.rstrip(".") for p in sets.get("read-v2", [])))
    return SensitiveDataPolicy(str(data["version"]), categories)


@lru_cache(maxsize=4)
def _load(path: str) -> SensitiveDataPolicy:
    return parse(json.loads(Path(path).read_text()))


def current() -> SensitiveDataPolicy:
    return _load(os.environ.get("CAREBUS_SENSITIVE_VALUE_SETS") or str(DEFAULT_FILE))
