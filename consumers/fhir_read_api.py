"""The shared record as FHIR R4 for reading systems: the resources and bundles (pure, no I/O).

The delivery service serves them under /fhir (routes in delivery_service.py): the
CapabilityStatement, Patient search by identifier (NHS number or a local identifier) and Patient
read. Everything returned validates with fhir.resources (tests/test_fhir_read_api.py).
"""
from __future__ import annotations

from typing import Any

from consumers.notification_format import fhir_patient

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
                "searchParam": [{"name": "identifier", "type": "token",
                                 "documentation": f"{NHS_NUMBER_SYSTEM}|<NHS number> or <local system>|<id>"}],
            }],
        }],
    }


def patient(record: dict[str, Any]) -> dict[str, Any]:
    return fhir_patient(record)


def searchset(records: list[dict[str, Any]], base_url: str) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(records),
            "entry": [{"fullUrl": f"{base_url}/Patient/{r['person_id']}", "resource": patient(r),
                       "search": {"mode": "match"}} for r in records]}


def operation_outcome(code: str, diagnostics: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]}
