"""The shared record as FHIR R4 resources (UK Core shapes): the Patient and every clinical item
with its Provenance. Pure. One mapping for the read API (fhir_read_api) and the rest-hook
notifications (notification_format), so a system sees the same resource either way.
"""
from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone
from typing import Any

from schemas.record_sections import CLINICAL_SECTIONS as SECTIONS



def _iso_date(days: int | None) -> str | None:
    return None if days is None else (date(1970, 1, 1) + timedelta(days=days)).isoformat()


def fhir_patient(record: dict[str, Any]) -> dict[str, Any]:
    d = record["demographics"]
    identifiers = [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": d["nhs_number"]}] if d.get("nhs_number") else []
    identifiers += [{"system": i["system"], "value": i["value"]} for i in d.get("other_identifiers", [])]
    patient = {"resourceType": "Patient", "id": record["person_id"], "meta": {"versionId": str(record["version"])},
               "identifier": identifiers,
               "name": [{"use": n["use"], "family": n["family"], "given": n["given"]} for n in d.get("names", [])],
               "gender": {"MALE": "male", "FEMALE": "female", "OTHER": "other"}.get(d.get("sex"), "unknown"),
               "address": [{"use": a["use"], "line": a["lines"], "city": a.get("city"), "postalCode": a.get("postcode")}
                           for a in d.get("addresses", [])]}
    if d.get("birth_date") is not None:
        patient["birthDate"] = _iso_date(d["birth_date"])
    if d.get("registered_practice_ods"):
        patient["generalPractitioner"] = [{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code",
                                                          "value": d["registered_practice_ods"]}}]
    return patient


ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
ENCOUNTER_CLASS = {"inpatient": "IMP", "emergency": "EMER", "outpatient": "AMB", "community": "HH",
                   "mental-health": "IMP", "pre-admit": "PRENC", "recurring": "AMB", "obstetrics": "IMP"}
ENCOUNTER_STATUS = {"planned", "in-progress", "finished", "cancelled"}
CONDITION_STATUS = {"active", "recurrence", "relapse", "inactive", "remission", "resolved"}
OBSERVATION_STATUS = {"registered", "preliminary", "final", "amended", "corrected", "cancelled"}
MEDICATION_STATUS = {"active", "completed", "intended", "stopped", "on-hold", "not-taken"}
REFERRAL_STATUS = {"draft", "active", "on-hold", "revoked", "completed"}
SEVERITY = {"SV": "severe", "MO": "moderate", "MI": "mild", "severe": "severe", "moderate": "moderate", "mild": "mild"}
PRIORITY = {"routine", "urgent", "asap", "stat"}


def iso_instant(ms: int | None) -> str | None:
    """Epoch milliseconds as an ISO 8601 instant in UTC (FHIR dateTime / instant)."""
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat()


def _code(value: str | None) -> str | None:
    """A FHIR code: no leading, trailing or doubled whitespace."""
    return " ".join((value or "").split()) or None


def _uri(value: str | None) -> str | None:
    return "".join((value or "").split()) or None


def _concept(coded: dict[str, Any] | None) -> dict[str, Any]:
    """A CodeableConcept with every coding the source sent, the first first."""
    coded = coded or {}
    codings = [_clean({"system": _uri(c.get("system")), "code": _code(c.get("code")), "display": c.get("display")})
               for c in [coded, *(coded.get("other_codings") or [])]]
    return _clean({"coding": [c for c in codings if c], "text": coded.get("display")}) or {"text": "unspecified"}


def _resource_id(person_id: str, section: str, item: dict[str, Any]) -> str:
    import hashlib

    first = item["provenance"][0] if item.get("provenance") else {}
    digest = hashlib.sha256(f"{person_id}|{section}|{first.get('event_id')}|{item['id']}".encode()).hexdigest()
    return f"{section[:4]}-{digest[:24]}"


def _clean(value: Any) -> Any:
    """Without empty values at any depth: FHIR allows no empty strings, lists or objects."""
    if isinstance(value, dict):
        cleaned = {k: _clean(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [v for v in (_clean(v) for v in value) if v not in (None, "", [], {})]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        # FHIR strings allow no whitespace but space, tab and line breaks, and no blank values.
        value = "".join(" " if c.isspace() and c not in " \r\n\t" else c for c in value)
        return value if value.strip() else None
    return value


def _clinical(section: str, item: dict[str, Any], subject: dict[str, str]) -> dict[str, Any]:
    if section == "encounters":
        return {"resourceType": "Encounter",
                "status": item["status"] if item["status"] in ENCOUNTER_STATUS else "unknown",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                          "code": ENCOUNTER_CLASS.get(item["encounter_class"], "AMB")},
                "subject": subject, "period": _clean({"start": iso_instant(item.get("start")), "end": iso_instant(item.get("end"))}),
                "serviceType": _concept(item["service_type"]) if item.get("service_type") else None,
                "serviceProvider": {"identifier": {"system": ODS_SYSTEM, "value": item["care_provider_ods"]}}
                if item.get("care_provider_ods") else None}
    if section == "problems":
        status = item["status"] if item["status"] in CONDITION_STATUS else None
        return {"resourceType": "Condition", "subject": subject, "code": _concept(item["code"]),
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                               "code": status}]} if status else None,
                "onsetDateTime": iso_instant(item.get("onset")), "abatementDateTime": iso_instant(item.get("abatement"))}
    if section == "allergies":
        severity = SEVERITY.get(item.get("severity") or "")
        reaction = [_clean({"manifestation": [{"text": item["reaction"]}], "severity": severity})] \
            if item.get("reaction") else []
        return {"resourceType": "AllergyIntolerance", "patient": subject, "code": _concept(item["substance"]),
                "recordedDate": iso_instant(item.get("recorded")), "reaction": reaction}
    if section == "medications":
        return {"resourceType": "MedicationStatement",
                "status": item["status"] if item["status"] in MEDICATION_STATUS else "unknown",
                "medicationCodeableConcept": _concept(item["code"]), "subject": subject,
                "effectivePeriod": _clean({"start": iso_instant(item.get("start")), "end": iso_instant(item.get("end"))}),
                "dosage": [{"text": item["dosage"]}] if item.get("dosage") else []}
    if section == "observations":
        value = ({"valueQuantity": _clean({"value": item["value_quantity"], "unit": item.get("unit")})}
                 if item.get("value_quantity") is not None else
                 ({"valueString": item["value_text"]} if item.get("value_text") else {}))
        return {"resourceType": "Observation",
                "status": item["status"] if item["status"] in OBSERVATION_STATUS else "unknown",
                "code": _concept(item["code"]), "subject": subject, "effectiveDateTime": iso_instant(item.get("effective")),
                **value}
    if section == "referrals":
        priority = (item.get("priority") or "").lower()
        return {"resourceType": "ServiceRequest",
                "status": item["status"] if item["status"] in REFERRAL_STATUS else "unknown",
                "intent": "order", "code": _concept(item["service"]), "subject": subject,
                "authoredOn": iso_instant(item.get("referred_at")), "priority": priority if priority in PRIORITY else None}
    # documents
    return {"resourceType": "DocumentReference", "status": "current", "type": _concept(item.get("type")),
            "subject": subject, "date": iso_instant(item.get("created")), "description": item.get("title"),
            "content": [{"attachment": _clean({"url": item.get("content_ref"), "title": item.get("title")})
                         or {"title": "document"}}]}


def _source(p: dict[str, Any]) -> str:
    return f"urn:carebus:source:{p['source_system']}:{p['ods_code']}:{p['event_id']}"


def _provenance(rid: str, target: str, provenance: list[dict[str, Any]]) -> dict[str, Any]:
    """Who sent an item: each source organisation (ODS code, system) and each source event."""
    organisations = {(p["source_system"], p["ods_code"]): p for p in provenance}.values()
    resource = _clean({
        "resourceType": "Provenance", "id": rid, "target": [{"reference": target}],
        "recorded": iso_instant(max(p["recorded_at"] for p in provenance)),
        "agent": [{"who": {"identifier": {"system": ODS_SYSTEM, "value": p["ods_code"]},
                           "display": p["source_system"]}} for p in organisations],
        "entity": [{"role": "source", "what": {"identifier": {"system": "urn:carebus:event-id",
                                                              "value": p["event_id"]}}} for p in provenance]})
    resource.setdefault("agent", [{"who": {"display": "unknown source"}}])
    return resource


def clinical_resources(record: dict[str, Any], sections: tuple[str, ...] = SECTIONS
                       ) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Every clinical item of these sections as (its FHIR resource, its Provenance or None); the
    resource's meta.source is the first system, ODS code and event that sent it."""
    person = record["person_id"]
    subject = {"reference": f"Patient/{person}"}
    out = []
    for section in sections:
        for item in record.get(section) or []:
            rid = _resource_id(person, section, item)
            resource = _clean({**_clinical(section, item, subject), "id": rid})
            if resource["resourceType"] == "DocumentReference" and not resource.get("content"):
                resource["content"] = [{"attachment": {"title": "document"}}]
            provenance = item.get("provenance") or []
            if provenance:
                resource["meta"] = {"source": _source(provenance[0])}
            prov = _provenance(f"prov-{rid}", f"{resource['resourceType']}/{rid}", provenance) if provenance else None
            out.append((resource, prov))
    return out
