"""Building the shared record: per-source state from events, then one record per person. Pure.

Source state: what one source system currently says about one of its patients. Demographic
fields take the newest non-empty value (by occurred time, then event id, so replays and
out-of-order delivery give the same state); clinical items are kept by their source item id,
newest version winning, each with its provenance.

Survivorship (golden demographics) across the sources of a person, field by field:
  NHS number    VERIFIED beats PRESENT_UNVERIFIED; then GP systems > acute > mental health;
                never an INVALID_CHECKSUM number
  names, birth date, sex
                GP systems (EMIS Web, Vision) > Cerner Millennium > RiO, then most recent
  address, telecom
                most recent from any source (people tell the last service they used)
  registered practice
                from GP systems only, most recent
  sharing objection
                if any source records an objection, the person has objected
Clinical items are merged across sources: the same coded problem, allergy or medication from
two systems becomes one entry with both provenances; observations de-duplicate on code, time
and value; encounters and referrals stay per source. Sections are sorted so the record is the
same bytes whatever order its sources arrived in.
"""
from __future__ import annotations

import hashlib
from typing import Any

import orjson

from schemas.record_sections import CLINICAL_SECTIONS as SECTIONS
from schemas.source_systems import PROFILES, survivorship_rank

DEMOGRAPHIC_FIELDS = ("nhs_number", "names", "birth_date", "birth_date_as_sent", "sex", "addresses", "telecom",
                      "registered_practice_ods", "deceased_at")
GP_SYSTEMS = frozenset(p.code for p in PROFILES if p.is_gp)     # they say which practice a patient is registered with
NHS_STATUS_RANK = {"VERIFIED": 0, "PRESENT_UNVERIFIED": 1}
EVENT_IDS_KEPT = 32


def _empty(value: Any) -> bool:
    # Not `value in (None, "", [], {}, ...)`: that builds the list and dict on every call.
    if isinstance(value, (list, dict)):
        return not value
    return value is None or value == "" or value == "UNKNOWN"


def provenance(event: dict[str, Any]) -> dict[str, Any]:
    env = event["envelope"]
    return {"source_system": env["source_system"], "ods_code": env["source_ods_code"], "event_id": env["event_id"],
            "source_record_id": env["source_record_id"], "recorded_at": env["occurred_at"]}


def _order(prov: dict[str, Any]) -> tuple[int, str]:
    return prov["recorded_at"], prov["event_id"]


def new_source_state(key: str, event: dict[str, Any]) -> dict[str, Any]:
    patient = event["patient"]
    return {"key": key, "source_system": event["envelope"]["source_system"],
            "local_identifier": patient["local_identifier"], "fields": {}, "items": {s: {} for s in SECTIONS},
            "event_ids": [], "nhs_number_status": "ABSENT", "sharing_objection": False}


def patient_view(state: dict[str, Any]) -> dict[str, Any]:
    """The source's current PatientIdentity, assembled from its newest field values (for matching)."""
    fields = {name: f["value"] for name, f in state["fields"].items()}
    # A source's birth date is its newest word on it: a valid date, or digits that are not one.
    date_field, sent = state["fields"].get("birth_date"), state["fields"].get("birth_date_as_sent")
    if sent and date_field and _order(sent["provenance"]) < _order(date_field["provenance"]):
        fields.pop("birth_date_as_sent")
    elif sent:
        fields.pop("birth_date", None)
    return {"local_identifier": state["local_identifier"], "nhs_number": fields.get("nhs_number"),
            "nhs_number_status": state["nhs_number_status"] if fields.get("nhs_number") else "ABSENT",
            "names": fields.get("names", []), "birth_date": fields.get("birth_date"),
            "birth_date_as_sent": fields.get("birth_date_as_sent"), "sex": fields.get("sex", "UNKNOWN"), "addresses": fields.get("addresses", [])}


def apply_event(state: dict[str, Any], event: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Fold one event into a source state. Returns (new state, changed?). Idempotent."""
    if event["envelope"]["event_id"] in state["event_ids"]:
        return state, False
    # Copy the containers only: values are replaced, never changed in place, so the caller's
    # state is left as it was without the cost of a deep copy.
    state = {**state, "fields": dict(state["fields"]), "items": {s: dict(v) for s, v in state["items"].items()}}
    prov = provenance(event)
    patient = event["patient"]
    for name in DEMOGRAPHIC_FIELDS:
        value = patient.get(name)
        if _empty(value):
            continue
        if name == "nhs_number" and patient.get("nhs_number_status") == "INVALID_CHECKSUM":
            continue
        current = state["fields"].get(name)
        if current is None or _order(prov) >= _order(current["provenance"]):
            state["fields"][name] = {"value": value, "provenance": prov}
            if name == "nhs_number":
                state["nhs_number_status"] = patient.get("nhs_number_status", "PRESENT_UNVERIFIED")
    state["sharing_objection"] = state["sharing_objection"] or bool(patient.get("sharing_objection"))
    for section in SECTIONS:
        for item in event.get(section) or []:
            current = state["items"][section].get(item["id"])
            if current is None or _order(prov) >= _order(current["provenance"][0]):
                state["items"][section][item["id"]] = {**item, "provenance": [prov]}
    # Only a shortcut for exact redeliveries: replaying an older event changes nothing anyway,
    # because every value carries its provenance and only newer values replace older ones.
    state["event_ids"] = (state["event_ids"] + [event["envelope"]["event_id"]])[-EVENT_IDS_KEPT:]
    return state, True


def _dedupe_key(section: str, item: dict[str, Any], source_key: str) -> str:
    if section in ("problems", "medications"):
        return f"{item['code']['system']}|{item['code']['code']}"
    if section == "allergies":
        return f"{item['substance']['system']}|{item['substance']['code']}"
    if section == "observations":
        return f"{item['code']['system']}|{item['code']['code']}|{item.get('effective')}|{item.get('value_quantity')}|{item.get('value_text')}"
    return f"{source_key}|{item['id']}"


def _survivor(states: list[dict[str, Any]], name: str, rank_by_source: bool) -> tuple[Any, dict | None]:
    candidates = []
    for s in states:
        f = s["fields"].get(name)
        if f is None:
            continue
        source_rank = survivorship_rank(s["source_system"]) if rank_by_source else 0
        status_rank = NHS_STATUS_RANK.get(s["nhs_number_status"], 2) if name == "nhs_number" else 0
        prov = f["provenance"]
        candidates.append(((status_rank, source_rank, -prov["recorded_at"], prov["event_id"]), f))
    if not candidates:
        return None, None
    best = min(candidates, key=lambda c: c[0])[1]
    return best["value"], best["provenance"]


def build_record(person_id: str, states: list[dict[str, Any]], version: int, updated_at: int) -> dict[str, Any]:
    """The SharedRecord for one person from the states of all its source records."""
    states = sorted(states, key=lambda s: s["key"])
    demographics: dict[str, Any] = {
        "local_identifier": {"system": "urn:carebus:person", "value": person_id},
        "other_identifiers": [s["local_identifier"] for s in states],
        "nhs_number": None, "nhs_number_status": "ABSENT", "names": [], "birth_date": None,
        "birth_date_as_sent": None, "sex": "UNKNOWN",
        "addresses": [], "telecom": [], "registered_practice_ods": None, "deceased_at": None,
        "sharing_objection": any(s["sharing_objection"] for s in states),
    }
    field_provenance: dict[str, Any] = {}
    rules = {"nhs_number": True, "names": True, "birth_date": True, "sex": True, "addresses": False,
             "telecom": False, "deceased_at": False}
    for name, by_source in rules.items():
        value, prov = _survivor(states, name, by_source)
        if prov is not None:
            demographics[name] = value
            field_provenance[name] = prov
    gp_states = [s for s in states if s["source_system"] in GP_SYSTEMS]
    value, prov = _survivor(gp_states, "registered_practice_ods", False)
    if prov is not None:
        demographics["registered_practice_ods"], field_provenance["registered_practice_ods"] = value, prov
    if demographics["nhs_number"]:
        best = min((s for s in states if s["fields"].get("nhs_number", {}).get("value") == demographics["nhs_number"]),
                   key=lambda s: NHS_STATUS_RANK.get(s["nhs_number_status"], 2))
        demographics["nhs_number_status"] = best["nhs_number_status"]
    sections: dict[str, list[dict[str, Any]]] = {}
    for section in SECTIONS:
        merged: dict[str, dict[str, Any]] = {}
        for s in states:
            for item in s["items"][section].values():
                key = _dedupe_key(section, item, s["key"])
                if key in merged:
                    existing = merged[key]
                    provs = {p["event_id"]: p for p in existing["provenance"] + item["provenance"]}
                    newest = max([existing, item], key=lambda i: _order(i["provenance"][0]))
                    merged[key] = {**newest, "provenance": sorted(provs.values(), key=_order)}
                else:
                    merged[key] = item      # shared, never changed in place: records are written, not edited
        sections[section] = [merged[k] for k in sorted(merged)]
    return {"person_id": person_id, "version": version, "updated_at": updated_at,
            "sources": [{"system": s["source_system"], "local_identifier": s["local_identifier"]} for s in states],
            "demographics": demographics, "demographics_provenance": field_provenance, **sections}


# The parts of a record that are digested separately, in this order: an unchanged digest string
# means the record says nothing new (no new version); the parts that differ are what changed.
DIGESTED_PARTS = ("demographics", "demographics_provenance", *SECTIONS)
DIGEST_BYTES = 8


def _part(record: dict[str, Any], name: str) -> Any:
    if name == "demographics":
        return [record["demographics"], record["sources"]]
    return record[name]


def _digest(part: Any) -> bytes:
    return hashlib.blake2b(orjson.dumps(part, option=orjson.OPT_SORT_KEYS, default=str),
                           digest_size=DIGEST_BYTES).digest()


# Most records have most clinical sections empty (a new person from an ADT has all seven).
_EMPTY_PART = _digest([])


def part_digests(record: dict[str, Any]) -> bytes:
    """What the record says, part by part, ignoring version and time (8-byte BLAKE2b each)."""
    return b"".join(_EMPTY_PART if (part := _part(record, name)) == [] else _digest(part) for name in DIGESTED_PARTS)


def changed_sections(old_digests: bytes | None, new: dict[str, Any], new_digests: bytes) -> list[str]:
    """The sections a subscriber is told changed ("demographics" and the clinical sections)."""
    if not old_digests or len(old_digests) != len(new_digests):
        return ["demographics", *[s for s in SECTIONS if new[s]]]
    n = DIGEST_BYTES
    return [name for i, name in enumerate(DIGESTED_PARTS) if name != "demographics_provenance"
            and old_digests[i * n:(i + 1) * n] != new_digests[i * n:(i + 1) * n]]
