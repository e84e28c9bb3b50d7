"""The shared record as FHIR R4 for reading systems: the resources and bundles (pure, no I/O).

The delivery service serves them under /fhir (routes in delivery_service.py): the
CapabilityStatement, Patient search by identifier (NHS number or a local identifier) or by
demographics (PDQm), the identifier cross-reference ($ihe-pix, PIXm), Patient read (a merged-away
id answers with its survivor) and Patient/$everything (every clinical item as its resource, with Provenance). Everything returned validates with fhir.resources (tests/test_fhir_read_api.py).
"""
from __future__ import annotations

from typing import Any

from consumers.fhir_resources import clinical_resources, fhir_patient
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


def everything(record: dict[str, Any], base_url: str) -> dict[str, Any]:
    """Patient/{id}/$everything: the Patient, every clinical item as its FHIR resource (meta.source:
    the first system that sent it), and a Provenance per item naming every source organisation."""
    person = record["person_id"]
    entries = [{"fullUrl": f"{base_url}/Patient/{person}", "resource": fhir_patient(record), "search": {"mode": "match"}}]
    for resource, provenance in clinical_resources(record):
        entries.append({"fullUrl": f"{base_url}/{resource['resourceType']}/{resource['id']}", "resource": resource,
                        "search": {"mode": "include"}})
        if provenance is not None:
            entries.append({"fullUrl": f"{base_url}/Provenance/{provenance['id']}", "resource": provenance,
                            "search": {"mode": "include"}})
    return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}
