"""The FHIR R4 read API as a reading system uses it: CapabilityStatement, Patient search by NHS
number or local identifier, Patient read; valid FHIR (fhir.resources), scoped, audited."""
from __future__ import annotations

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient

from schemas import codec
from schemas.topics import ACCESS_AUDIT
from tests.kafka_reading import read_all
from tests.test_delivery_e2e import (AUDIT, RFH, SUB2, cerner_key, own_identity, person_of, send_story, unique_nhs,
                                     wait_for)

pytestmark = pytest.mark.integration
NHS = "https://fhir.nhs.uk/Id/nhs-number"


@pytest.fixture(scope="module")
def patient(bus_settings, connectors, link_workers, delivery, redis_client):
    import time

    unique = f"FR{time.time_ns() % 10**9}"
    send_story(bus_settings, unique, n=1)
    return {"unique": unique, "nhs": unique_nhs(unique), "person": person_of(redis_client, cerner_key(f"S{unique}"))}


def test_the_capability_statement_says_what_is_supported(delivery):
    r = httpx.get(f"{delivery.base}/fhir/metadata", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    statement = CapabilityStatement.model_validate(r.json())
    [rest] = statement.rest
    assert [res.type for res in rest.resource] == ["Patient"]
    assert {i.code for i in rest.resource[0].interaction} == {"read", "search-type"}
    assert [o.name for o in rest.resource[0].operation] == ["everything"]


def test_search_by_nhs_number_and_by_local_identifier_then_read(delivery, patient):
    for identifier in (f"{NHS}|{patient['nhs']}", f"urn:carebus:id:cerner:mrn:RAL|S{patient['unique']}"):
        r = httpx.get(f"{delivery.base}/fhir/Patient", params={"identifier": identifier}, headers=SUB2, timeout=30)
        assert r.status_code == 200, r.text
        bundle = Bundle.model_validate(r.json())
        assert bundle.type == "searchset" and bundle.total == 1
        assert bundle.entry[0].resource.id == patient["person"]
    r = httpx.get(f"{delivery.base}/fhir/Patient/{patient['person']}", headers=SUB2, timeout=30)
    found = Patient.model_validate(r.json())
    assert any(i.system == NHS and i.value == patient["nhs"] for i in found.identifier)


def test_everything_carries_the_clinical_items_with_their_provenance(delivery, patient):
    r = httpx.get(f"{delivery.base}/fhir/Patient/{patient['person']}/$everything", headers=SUB2, timeout=30)
    assert r.status_code == 200, r.text
    bundle = Bundle.model_validate(r.json())
    kinds = [e.resource.__resource_type__ for e in bundle.entry]
    assert kinds[0] == "Patient" and "Encounter" in kinds and "Provenance" in kinds
    encounter = next(e.resource for e in bundle.entry if e.resource.__resource_type__ == "Encounter")
    assert encounter.meta.source.startswith("urn:carebus:source:CERNER_MILLENNIUM:RAL:")


def test_unknown_and_unreadable_patients_answer_an_operation_outcome(delivery, patient):
    r = httpx.get(f"{delivery.base}/fhir/Patient/PER-nobody", headers=AUDIT, timeout=30)
    assert r.status_code == 404 and OperationOutcome.model_validate(r.json()).issue[0].code == "not-found"
    bad = httpx.get(f"{delivery.base}/fhir/Patient", params={"identifier": "no-bar"}, headers=AUDIT, timeout=30)
    assert bad.status_code == 400 and OperationOutcome.model_validate(bad.json())
    assert httpx.get(f"{delivery.base}/fhir/Patient/{patient['person']}", timeout=30).status_code == 401


def test_reads_are_audited(bus_settings, delivery, patient):
    why = f"fhir read {patient['unique']}"
    httpx.get(f"{delivery.base}/fhir/Patient/{patient['person']}", params={"why": why}, headers=SUB2, timeout=30)
    events = [codec.decode(m.value(), "AccessEvent") for m in read_all(bus_settings, ACCESS_AUDIT.name, timeout=30)]
    assert [e["action"] for e in events if e["purpose"] == why] == ["fhir-read"]


def test_a_client_sees_only_its_scope(bus_settings, delivery, redis_client, patient):
    """A RiO patient (RAT) is outside the Royal Free's scope (RAL only): not found, not readable."""
    from tests.test_connectors_e2e import adt, mllp_send

    identity = own_identity(f"rio{patient['unique']}")      # its own NHS number and surname: linked to no one
    nhs = identity["nhs"]
    message = adt(f"R{patient['unique']}", f"R{patient['unique']}", **identity).replace(b"CERNER", b"RIO") \
        .replace(b"RAL", b"RAT")
    [ack] = mllp_send(bus_settings.mllp_port + 1, message)
    assert b"MSA|AA" in ack, ack
    search = {"identifier": f"{NHS}|{nhs}"}
    everyone = wait_for(lambda: httpx.get(f"{delivery.base}/fhir/Patient", params=search, headers=SUB2,
                                          timeout=30).json()["total"], what="the RiO patient in the index")
    assert everyone == 1
    r = httpx.get(f"{delivery.base}/fhir/Patient", params=search, headers=RFH, timeout=30)
    assert r.status_code == 200 and r.json()["total"] == 0
    person = httpx.get(f"{delivery.base}/fhir/Patient", params=search, headers=SUB2, timeout=30).json()["entry"][0]
    read = httpx.get(f"{delivery.base}/fhir/Patient/{person['resource']['id']}", headers=RFH, timeout=30)
    assert read.status_code == 404
