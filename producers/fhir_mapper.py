"""FHIR R4 (UK Core / GP Connect shaped) resources to canonical SourcePatientEvents. Pure: no I/O.

Validation is `fhir.resources` (the R4B models, wire-compatible with R4 for every resource used
here). A Bundle may hold several patients; clinical resources attach to their patient through
`subject`/`patient` references (`Patient/<id>` or the Patient entry's fullUrl) or, when posted
alone, through a subject identifier in the sender's local namespace.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from producers import birth_date, nhs_number, sharing_dissent
from producers.hl7v2_mapper import EVENT_NAMESPACE
from schemas.source_systems import NHS_NUMBER_SYSTEM, SourceSystemProfile
from schemas import messages
from schemas.event_ids import name_based
from schemas.errors import MappingError

SUPPORTED = ("Patient", "Encounter", "Condition", "Observation", "AllergyIntolerance",
             "MedicationStatement", "MedicationRequest", "ServiceRequest", "DocumentReference", "Consent")
VERIFICATION_EXTENSION = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"
SEX = {"male": "MALE", "female": "FEMALE", "other": "OTHER", "unknown": "UNKNOWN"}


@dataclass(frozen=True)
class Issue:
    severity: str
    code: str           # FHIR issue-type code: invalid, structure, required, not-supported, processing
    diagnostics: str
    expression: str | None = None


class FHIRMappingError(MappingError):
    def __init__(self, issues: list[Issue], error_code: str = "FHIR_INVALID") -> None:
        super().__init__("; ".join(i.diagnostics for i in issues))
        self.issues = issues
        self.error_code = error_code


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [
        {"severity": i.severity, "code": i.code, "diagnostics": i.diagnostics,
         **({"expression": [i.expression]} if i.expression else {})} for i in issues]}


def _fail(diagnostics: str, code: str = "invalid", expression: str | None = None,
          error_code: str = "FHIR_INVALID") -> FHIRMappingError:
    return FHIRMappingError([Issue("error", code, diagnostics, expression)], error_code)


def _ms(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return int(value.timestamp() * 1000)
    if isinstance(value, date):
        return int(datetime(value.year, value.month, value.day, tzinfo=timezone.utc).timestamp() * 1000)
    return None


def _days(value: Any) -> int | None:
    if isinstance(value, datetime):
        value = value.date()
    if isinstance(value, date):
        return (value - date(1970, 1, 1)).days
    return None


def _coded(concept: Any, fallback: str = "unspecified") -> dict[str, Any]:
    if concept is None or not concept.coding:
        text = getattr(concept, "text", None) if concept is not None else None
        return {"system": "urn:carebus:text", "code": fallback, "display": text}
    c, *others = concept.coding
    return {"system": str(c.system or "urn:carebus:local"), "code": str(c.code or fallback),
            "display": c.display or concept.text,
            "other_codings": [{"system": str(o.system or "urn:carebus:local"), "code": str(o.code), "display": o.display}
                              for o in others if o.code]}


def _validate(resource: dict[str, Any], path: str):
    rtype = resource.get("resourceType")
    if rtype not in SUPPORTED:
        raise _fail(f"resource type {rtype!r} is not accepted here (accepted: {', '.join(SUPPORTED)})",
                    "not-supported", path, "FHIR_UNSUPPORTED_RESOURCE")
    try:
        return get_fhir_model_class(rtype).model_validate(resource)
    except ValidationError as exc:
        issues = [Issue("error", "structure", f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}",
                        f"{path}.{'.'.join(str(p) for p in err['loc'])}") for err in exc.errors()[:10]]
        raise FHIRMappingError(issues, "FHIR_VALIDATION") from None


def _patient_identity(p: Any, profile: SourceSystemProfile, ods: str) -> tuple[dict[str, Any], list[str]]:
    flags: list[str] = []
    local = None
    others = []
    nhs = None
    status = "ABSENT"
    for ident in p.identifier or []:
        system, value = str(ident.system or ""), ident.value
        if not value:
            continue
        if system == NHS_NUMBER_SYSTEM:
            nhs = nhs_number.normalise(value)
            status = "PRESENT_UNVERIFIED"
            for ext in ident.extension or []:
                if ext.url == VERIFICATION_EXTENSION and ext.valueCodeableConcept and ext.valueCodeableConcept.coding:
                    if ext.valueCodeableConcept.coding[0].code == "01":
                        status = "VERIFIED"
        elif local is None and system:
            local = {"system": system, "value": value}
        else:
            others.append({"system": system, "value": value})
    if local is None and p.id:
        local = {"system": profile.identifier_system(ods), "value": p.id}
    if local is None:
        raise _fail("Patient has neither a local identifier nor an id", "required", "Patient.identifier",
                    "FHIR_NO_PATIENT_ID")
    if nhs:
        others.append({"system": NHS_NUMBER_SYSTEM, "value": nhs})
        if not nhs_number.is_valid(nhs):
            status = "INVALID_CHECKSUM"
            flags.append("NHS_NUMBER_INVALID_CHECKSUM")
    names = [{"use": str(n.use or "official"), "family": n.family or "", "given": list(n.given or []),
              "prefix": (n.prefix or [None])[0]} for n in p.name or []]
    addresses = [{"use": str(a.use or "home"), "lines": list(a.line or []), "city": a.city,
                  "postcode": a.postalCode.upper() if a.postalCode else None} for a in p.address or []]
    telecom = [{"system": str(t.system or "phone"), "value": t.value, "use": str(t.use or "home")}
               for t in p.telecom or [] if t.value]
    practice = None
    for gp in p.generalPractitioner or []:
        if gp.identifier is not None and gp.identifier.value:
            practice = gp.identifier.value.upper()
    return {
        "local_identifier": local, "other_identifiers": others, "nhs_number": nhs, "nhs_number_status": status,
        "names": names, "birth_date": _days(p.birthDate), "sex": SEX.get(str(p.gender or "unknown"), "UNKNOWN"),
        "addresses": addresses, "telecom": telecom, "registered_practice_ods": practice,
        "deceased_at": _ms(p.deceasedDateTime), "sharing_objection": False,
    }, flags


def _subject_ref(resource: Any) -> Any:
    for attr in ("subject", "patient"):
        ref = getattr(resource, attr, None)
        if ref is not None:
            return ref
    return None


def _empty_event(patient: dict[str, Any], profile: SourceSystemProfile, ods: str, record_id: str,
                 event_type: str, received_at_ms: int, eid: str, correlation: str) -> dict[str, Any]:
    return messages.source_event(messages.envelope(eid, profile.code, ods, record_id, event_type, received_at_ms,
                                                   received_at_ms, correlation), patient)


def _clinical(resource: Any, rtype: str) -> tuple[str, dict[str, Any]]:
    rid = resource.id or hashlib.sha256(resource.model_dump_json().encode()).hexdigest()[:16]
    if rtype == "Encounter":
        period = resource.period
        cls = resource.class_fhir.code if getattr(resource, "class_fhir", None) is not None else None
        return "encounters", {
            "id": rid, "encounter_class": {"IMP": "inpatient", "EMER": "emergency", "AMB": "outpatient",
                                           "HH": "community"}.get(str(cls), "outpatient"),
            "status": str(resource.status), "movement": "update",
            "location": None,
            "service_type": _coded(resource.serviceType) if getattr(resource, "serviceType", None) else None,
            "start": _ms(period.start) if period else None,
            "end": _ms(period.end) if period else None, "care_provider_ods": None, "episode_id": None,
            "provenance": []}
    if rtype == "Condition":
        status = resource.clinicalStatus.coding[0].code if resource.clinicalStatus and resource.clinicalStatus.coding else "active"
        return "problems", {"id": rid, "code": _coded(resource.code), "status": str(status),
                            "onset": _ms(resource.onsetDateTime), "abatement": _ms(resource.abatementDateTime),
                            "provenance": []}
    if rtype in ("MedicationStatement", "MedicationRequest"):
        dosage = None
        dosages = resource.dosage if rtype == "MedicationStatement" else resource.dosageInstruction
        if dosages:
            dosage = dosages[0].text
        period = getattr(resource, "effectivePeriod", None)
        return "medications", {"id": rid, "code": _coded(resource.medicationCodeableConcept), "dosage": dosage,
                               "status": str(resource.status), "start": _ms(period.start) if period else _ms(getattr(resource, "authoredOn", None)),
                               "end": _ms(period.end) if period else None, "provenance": []}
    if rtype == "AllergyIntolerance":
        reaction = resource.reaction[0] if resource.reaction else None
        manifestation = reaction.manifestation[0].text if reaction and reaction.manifestation else None
        status = resource.clinicalStatus.coding[0].code if resource.clinicalStatus and resource.clinicalStatus.coding else "active"
        return "allergies", {"id": rid, "substance": _coded(resource.code), "reaction": manifestation,
                             "severity": str(reaction.severity) if reaction and reaction.severity else None,
                             "status": str(status), "recorded": _ms(resource.recordedDate), "provenance": []}
    if rtype == "Observation":
        q = resource.valueQuantity
        rr = resource.referenceRange[0].text if resource.referenceRange else None
        return "observations", {"id": rid, "code": _coded(resource.code),
                                "value_quantity": float(q.value) if q is not None and q.value is not None else None,
                                "unit": (q.unit or q.code) if q is not None else None,
                                "value_text": resource.valueString, "reference_range": rr,
                                "interpretation": None, "status": str(resource.status),
                                "effective": _ms(resource.effectiveDateTime), "provenance": []}
    if rtype == "ServiceRequest":
        return "referrals", {"id": rid, "service": _coded(resource.code), "status": str(resource.status),
                             "priority": str(resource.priority) if resource.priority else None,
                             "referred_at": _ms(resource.authoredOn), "episode_id": None, "provenance": []}
    if rtype == "DocumentReference":
        att = resource.content[0].attachment if resource.content else None
        return "documents", {"id": rid, "type": _coded(resource.type), "title": (att.title if att else None) or "document",
                             "created": _ms(resource.date), "content_ref": str(att.url) if att and att.url else None,
                             "provenance": []}
    raise _fail(f"{rtype} is not mapped", "not-supported")


def map_payload(raw: bytes, profile: SourceSystemProfile, ods: str, received_at_ms: int) -> list[dict[str, Any]]:
    """A FHIR Bundle or single resource (JSON) to one event per patient it concerns."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(f"body is not JSON: {exc.__class__.__name__}", "structure", None, "FHIR_NOT_JSON") from None
    except RecursionError:
        raise _fail("body is not usable JSON: nested too deeply", "structure", None, "FHIR_NOT_JSON") from None
    if not isinstance(doc, dict) or "resourceType" not in doc:
        raise _fail("body is not a FHIR resource (no resourceType)", "structure", None, "FHIR_NOT_RESOURCE")
    digest = hashlib.sha256(raw).hexdigest()
    if doc["resourceType"] == "Bundle":
        if doc.get("type") not in ("transaction", "batch", "collection", "message"):
            raise _fail("Bundle.type must be transaction, batch, collection or message", "invalid", "Bundle.type")
        entries = doc.get("entry")
        if not isinstance(entries, list) or not entries:
            raise _fail("Bundle has no entries", "required", "Bundle.entry")
        resources = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
                raise _fail("entry has no resource", "required", f"Bundle.entry[{i}]")
            resources.append((entry.get("fullUrl"), entry["resource"], f"Bundle.entry[{i}].resource"))
        correlation = str((doc.get("identifier") or {}).get("value") or doc.get("id") or digest[:16])
        event_type = f"fhir.Bundle.{doc['type']}"
    else:
        resources = [(None, doc, doc["resourceType"])]
        correlation = str(doc.get("id") or digest[:16])
        event_type = f"fhir.{doc['resourceType']}"
    # A bad birthDate would fail the whole resource's validation: take it out first, flag it.
    birth_flags: dict[int, list[str]] = {}
    birth_as_sent: dict[int, str | None] = {}
    for n, (_url, res, _path) in enumerate(resources):
        if res.get("resourceType") == "Patient" and "birthDate" in res:
            days, flags = birth_date.parse(str(res["birthDate"]), "iso")
            if flags:
                birth_flags[n] = flags
                birth_as_sent[n] = birth_date.digits_as_sent(str(res["birthDate"]), "iso")
                resources[n] = (_url, {k: v for k, v in res.items() if k != "birthDate"}, _path)
    validated = [(full_url, _validate(res, path), path) for full_url, res, path in resources]
    patients: dict[str, dict[str, Any]] = {}   # reference key -> event
    events: list[dict[str, Any]] = []
    for n, (full_url, model, _path) in enumerate(validated):
        if model.get_resource_type() == "Patient":
            identity, flags = _patient_identity(model, profile, ods)
            flags += birth_flags.get(n, [])
            identity["birth_date_as_sent"] = birth_as_sent.get(n)
            index = len(events)
            eid = name_based(EVENT_NAMESPACE, f"{profile.code}|{ods}|{digest}|{index}")
            event = _empty_event(identity, profile, ods, model.id or identity["local_identifier"]["value"],
                                 event_type, received_at_ms, eid, correlation)
            event["data_quality_flags"] = flags
            events.append(event)
            for key in filter(None, (full_url, f"Patient/{model.id}" if model.id else None)):
                patients[key] = event
    for full_url, model, path in validated:
        rtype = model.get_resource_type()
        if rtype == "Patient":
            continue
        ref = _subject_ref(model)
        target = None
        if ref is not None and ref.reference:
            target = patients.get(str(ref.reference))
        if target is None and ref is not None and ref.identifier is not None and ref.identifier.value:
            ident = ref.identifier
            key = f"ident|{ident.system}|{ident.value}"
            target = patients.get(key)
            if target is None:
                identity = {"local_identifier": {"system": str(ident.system or profile.identifier_system(ods)),
                                                 "value": ident.value},
                            "other_identifiers": [], "nhs_number": None, "nhs_number_status": "ABSENT", "names": [],
                            "birth_date": None, "sex": "UNKNOWN", "addresses": [], "telecom": [],
                            "registered_practice_ods": None, "deceased_at": None, "sharing_objection": False}
                eid = name_based(EVENT_NAMESPACE, f"{profile.code}|{ods}|{digest}|{key}")
                target = _empty_event(identity, profile, ods, correlation, event_type, received_at_ms, eid, correlation)
                events.append(target)
                patients[key] = target
        if target is None:
            raise _fail(f"{rtype} does not reference a Patient in this Bundle or by identifier", "required",
                        f"{path}.subject", "FHIR_NO_SUBJECT")
        if rtype == "Consent":
            decision = sharing_dissent.consent_decision(model)
            if decision is not None:
                target.setdefault(sharing_dissent.DECISIONS, []).append(decision)
            continue
        section, item = _clinical(model, rtype)
        target[section].append(item)
    if not events:
        raise _fail("nothing to record: no Patient and no clinical resource", "required")
    for event in events:
        sharing_dissent.apply(event)
    return events


CAREBUS_ID_NAMESPACE = "urn:carebus:id:"


def outside_sender_scope(events: list[dict[str, Any]], profile: SourceSystemProfile, ods: str) -> str | None:
    """Why these events are outside an authenticated sender's scope, or None. A local identifier in
    carebus's per-organisation namespace must be the sender's own: another organisation's (or
    another system's) would file the record, and overwrite what that organisation sent, where the
    sender may not write. (File drops are placed by the operator and are not checked.)"""
    own = profile.identifier_system(ods)
    for event in events:
        system = event["patient"]["local_identifier"]["system"]
        if system.startswith(CAREBUS_ID_NAMESPACE) and system != own:
            return f"identifier system {system} belongs to another organisation or system; this sender may use {own}"
    return None
