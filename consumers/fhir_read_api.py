"""The shared record as FHIR R4 for reading systems: the resources and bundles (pure, no I/O).

The delivery service serves them under /fhir (routes in delivery_service.py): the
CapabilityStatement, Patient search by identifier (NHS number or a local identifier) or by
demographics (PDQm), the identifier cross-reference ($ihe-pix, PIXm), Patient read (a merged-away
id answers with its survivor) and Patient/$everything (every clinical item as its resource, with Provenance). Everything returned validates with fhir.resources (tests/test_fhir_read_api.py).
"""
from __future__ import annotations

import math
from typing import Any

# The Patient is the one the rest-hook notifications carry: one mapping for both.
from consumers.notification_format import fhir_patient
from streams.demographic_search import MINIMUM_CRITERIA

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
FHIR_JSON = "application/fhir+json"


def capability_statement(base_url: str, software_version: str) -> dict[str, Any]:
    """Says exactly what this server supports, and nothing more."""
    return {
        "resourceType": "CapabilityStatement", "status": "active", "date": "2026-11-25", "kind": "instance",
        "software": {"name": "carebus", "version": software_version},
        "implementation": {"description": "carebus shared record, read-only FHIR R4", "url": base_url},
        "fhirVersion": "4.0.1", "format": ["json"],
        "rest": [{
            "mode": "server",
            "security": {"description": "Authorization: Bearer <token>; roles subscriber (organisation scope "
                                        "applies) or auditor; every read is recorded on carebus.access-audit.v1"},
            "resource": [{
                "type": "Patient",
                "profile": "https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient",
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "operation": [{"name": "everything",
                               "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"},
                              {"name": "ihe-pix",
                               "definition": "https://profiles.ihe.net/ITI/PIXm/OperationDefinition/IHE.PIXm.pix"}],
                "searchParam": [
                    {"name": "identifier", "type": "token",
                     "documentation": f"{NHS_NUMBER_SYSTEM}|<NHS number> or <local system>|<id>"},
                    {"name": "family", "type": "string",
                     "documentation": f"demographic search (PDQm): needs {MINIMUM_CRITERIA}; ranked by match score"},
                    {"name": "given", "type": "string"},
                    {"name": "birthdate", "type": "date", "documentation": "a full date, YYYY-MM-DD"},
                    {"name": "gender", "type": "token"},
                    {"name": "address-postalcode", "type": "string"}],
            }],
        }],
    }


def searchset(records: list[dict[str, Any]], base_url: str, scores: dict[str, float] | None = None
              ) -> dict[str, Any]:
    """A search result; with `scores` (a demographic search), each entry carries its match score."""
    def search(person_id: str) -> dict[str, Any]:
        if scores is None:
            return {"mode": "match"}
        return {"mode": "match", "score": round(scores[person_id], 4)}
    return {"resourceType": "Bundle", "type": "searchset", "total": len(records),
            "entry": [{"fullUrl": f"{base_url}/Patient/{r['person_id']}", "resource": fhir_patient(r),
                       "search": search(r["person_id"])} for r in records]}


def replaced_patient(old_id: str, survivor_id: str) -> dict[str, Any]:
    """What a person id merged into another answers: inactive, replaced by the survivor (as PDS
    answers for a superseded NHS number), so a system holding the old id can follow it."""
    return {"resourceType": "Patient", "id": old_id, "active": False,
            "link": [{"other": {"reference": f"Patient/{survivor_id}"}, "type": "replaced-by"}]}


def pix_parameters(record: dict[str, Any], base_url: str) -> dict[str, Any]:
    """$ihe-pix (PIXm): every identifier of the person this caller may see, and the Patient."""
    patient = fhir_patient(record)
    parameters = [{"name": "targetIdentifier", "valueIdentifier": i} for i in patient["identifier"]]
    parameters.append({"name": "targetId", "valueReference": {"reference": f"{base_url}/Patient/{record['person_id']}"}})
    return {"resourceType": "Parameters", "parameter": parameters}


def operation_outcome(code: str, diagnostics: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]}


# ---- $everything: the clinical sections as FHIR resources, each with its provenance -------------
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


def _when(ms: int | None) -> str | None:
    from datetime import datetime, timezone

    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat()


def _code(value: str | None) -> str | None:
    """A FHIR code: no leading, trailing or doubled whitespace."""
    return " ".join((value or "").split()) or None


def _uri(value: str | None) -> str | None:
    return "".join((value or "").split()) or None


def _concept(coded: dict[str, Any] | None) -> dict[str, Any]:
    coded = coded or {}
    coding = _clean({"system": _uri(coded.get("system")), "code": _code(coded.get("code")),
                     "display": coded.get("display")})
    return _clean({"coding": [coding] if coding else [], "text": coded.get("display")}) or {"text": "unspecified"}


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
                "subject": subject, "period": _clean({"start": _when(item.get("start")), "end": _when(item.get("end"))}),
                "serviceProvider": {"identifier": {"system": ODS_SYSTEM, "value": item["care_provider_ods"]}}
                if item.get("care_provider_ods") else None}
    if section == "problems":
        status = item["status"] if item["status"] in CONDITION_STATUS else None
        return {"resourceType": "Condition", "subject": subject, "code": _concept(item["code"]),
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                               "code": status}]} if status else None,
                "onsetDateTime": _when(item.get("onset")), "abatementDateTime": _when(item.get("abatement"))}
    if section == "allergies":
        severity = SEVERITY.get(item.get("severity") or "")
        reaction = [_clean({"manifestation": [{"text": item["reaction"]}], "severity": severity})] \
            if item.get("reaction") else []
        return {"resourceType": "AllergyIntolerance", "patient": subject, "code": _concept(item["substance"]),
                "recordedDate": _when(item.get("recorded")), "reaction": reaction}
    if section == "medications":
        return {"resourceType": "MedicationStatement",
                "status": item["status"] if item["status"] in MEDICATION_STATUS else "unknown",
                "medicationCodeableConcept": _concept(item["code"]), "subject": subject,
                "effectivePeriod": _clean({"start": _when(item.get("start")), "end": _when(item.get("end"))}),
                "dosage": [{"text": item["dosage"]}] if item.get("dosage") else []}
    if section == "observations":
        value = ({"valueQuantity": _clean({"value": item["value_quantity"], "unit": item.get("unit")})}
                 if item.get("value_quantity") is not None else
                 ({"valueString": item["value_text"]} if item.get("value_text") else {}))
        return {"resourceType": "Observation",
                "status": item["status"] if item["status"] in OBSERVATION_STATUS else "unknown",
                "code": _concept(item["code"]), "subject": subject, "effectiveDateTime": _when(item.get("effective")),
                **value}
    if section == "referrals":
        priority = (item.get("priority") or "").lower()
        return {"resourceType": "ServiceRequest",
                "status": item["status"] if item["status"] in REFERRAL_STATUS else "unknown",
                "intent": "order", "code": _concept(item["service"]), "subject": subject,
                "authoredOn": _when(item.get("referred_at")), "priority": priority if priority in PRIORITY else None}
    # documents
    return {"resourceType": "DocumentReference", "status": "current", "type": _concept(item.get("type")),
            "subject": subject, "date": _when(item.get("created")), "description": item.get("title"),
            "content": [{"attachment": _clean({"url": item.get("content_ref"), "title": item.get("title")})
                         or {"title": "document"}}]}


def _source(p: dict[str, Any]) -> str:
    return f"urn:carebus:source:{p['source_system']}:{p['ods_code']}:{p['event_id']}"


def _provenance(rid: str, target: str, provenance: list[dict[str, Any]]) -> dict[str, Any]:
    """Who sent an item: each source organisation (ODS code, system) and each source event."""
    organisations = {(p["source_system"], p["ods_code"]): p for p in provenance}.values()
    resource = _clean({
        "resourceType": "Provenance", "id": rid, "target": [{"reference": target}],
        "recorded": _when(max(p["recorded_at"] for p in provenance)),
        "agent": [{"who": {"identifier": {"system": ODS_SYSTEM, "value": p["ods_code"]},
                           "display": p["source_system"]}} for p in organisations],
        "entity": [{"role": "source", "what": {"identifier": {"system": "urn:carebus:event-id",
                                                              "value": p["event_id"]}}} for p in provenance]})
    resource.setdefault("agent", [{"who": {"display": "unknown source"}}])
    return resource


def everything(record: dict[str, Any], base_url: str) -> dict[str, Any]:
    """Patient/{id}/$everything: the Patient, every clinical item as its FHIR resource (meta.source:
    the first system that sent it), and a Provenance per item naming every source organisation."""
    person = record["person_id"]
    subject = {"reference": f"Patient/{person}"}
    entries = [{"fullUrl": f"{base_url}/Patient/{person}", "resource": fhir_patient(record), "search": {"mode": "match"}}]
    for section in ("encounters", "problems", "medications", "allergies", "observations", "referrals", "documents"):
        for item in record.get(section) or []:
            rid = _resource_id(person, section, item)
            resource = _clean({**_clinical(section, item, subject), "id": rid})
            if resource["resourceType"] == "DocumentReference" and not resource.get("content"):
                resource["content"] = [{"attachment": {"title": "document"}}]
            provenance = item.get("provenance") or []
            if provenance:
                resource["meta"] = {"source": _source(provenance[0])}
            entries.append({"fullUrl": f"{base_url}/{resource['resourceType']}/{rid}", "resource": resource,
                            "search": {"mode": "include"}})
            if provenance:
                entries.append({"fullUrl": f"{base_url}/Provenance/prov-{rid}", "search": {"mode": "include"},
                                "resource": _provenance(f"prov-{rid}", f"{resource['resourceType']}/{rid}",
                                                        provenance)})
    return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}
