"""What a subscriber may see of a record change. Pure.

Three layers, all enforced before anything leaves carebus:
1. the subscription's own filters (change types, organisations, persons, sections);
2. the client's organisation scope: a person is visible to a client only if one of the
   client's organisations (ODS codes) holds a record for them or is their registered practice;
3. withheld content: patients who objected to sharing are never sent, and items coded in a
   sensitive category (sexual health, IVF, termination of pregnancy, gender reassignment:
   consumers/sensitive_data_policy.py) are removed for clients whose credentials withhold it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from consumers import sensitive_data_policy
from schemas.record_sections import CLINICAL_SECTIONS

@dataclass(frozen=True)
class Subscription:
    subscription_id: str
    client_id: str
    channel: str                      # webhook | fhir-rest-hook | sse
    endpoint: str                     # URL for webhook / rest-hook; "" for sse
    change_types: frozenset[str] = frozenset()   # empty = all
    ods_codes: frozenset[str] = frozenset()      # empty = all within the client's scope
    persons: frozenset[str] = frozenset()        # empty = all
    sections: frozenset[str] = frozenset()       # empty = all
    status: str = "active"
    max_attempts: int = 0             # 0: never give up (wait for the subscriber); n: park after n attempts
    max_per_notification: int = 1     # fhir-rest-hook: up to this many changes in one history Bundle


@dataclass(frozen=True)
class ClientScope:
    client_id: str
    ods_codes: frozenset[str]
    withheld_sections: frozenset[str] = field(default_factory=frozenset)

    def allows_ods(self, ods: str) -> bool:
        return "*" in self.ods_codes or ods.upper() in self.ods_codes


def organisations_of(record: dict[str, Any]) -> set[str]:
    """ODS codes with a legitimate relationship: source organisations and the registered practice."""
    out = set()
    for src in record.get("sources", []):
        ident = src["local_identifier"]["system"]
        out.add(ident.rsplit(":", 1)[-1].upper())
    practice = (record.get("demographics") or {}).get("registered_practice_ods")
    if practice:
        out.add(practice.upper())
    return out


def _is_sensitive(item: dict[str, Any], categories: frozenset[str]) -> bool:
    return bool(categories) and sensitive_data_policy.current().withheld(item, categories)


def visible_change(change: dict[str, Any], sub: Subscription, scope: ClientScope) -> dict[str, Any] | None:
    """The change as this subscriber may receive it, or None if it must not be sent at all."""
    record = change["record"]
    if sub.change_types and change["change_type"] not in sub.change_types:
        return None
    if sub.persons and change["person_id"] not in sub.persons:
        return None
    if record["demographics"].get("sharing_objection"):
        return None
    orgs = organisations_of(record)
    if not any(scope.allows_ods(o) for o in orgs):    # merges too: the merged record is a record
        return None
    if sub.ods_codes and not (orgs & sub.ods_codes):
        return None
    if sub.sections and not (set(change["changed_sections"]) & sub.sections):
        return None
    # New top-level dicts and section lists, the rest shared with `change` (neither is changed
    # afterwards): a deep copy of every record cost as much as decoding it, per change and subscriber.
    rec = {**record}
    out = {**change, "record": rec}
    for section in CLINICAL_SECTIONS:
        if sub.sections and section not in sub.sections:
            rec[section] = []
        else:
            rec[section] = [i for i in rec[section] if not _is_sensitive(i, scope.withheld_sections)]
    out["changed_sections"] = [s for s in out["changed_sections"] if not sub.sections or s in sub.sections or s == "demographics"]
    return out
