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
from tests.builders import cerner_key, own_identity, unique_nhs
from tests.bus_clients import AUDIT, RFH, SUB2, person_of, send_story, wait_for

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
    assert [o.name for o in rest.resource[0].operation] == ["everything", "ihe-pix"]
    assert {"identifier", "family", "given", "birthdate"} <= {p.name for p in rest.resource[0].searchParam}


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
    from tests.builders import adt
    from tests.bus_clients import mllp_send

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
    # Nor through the demographic search or the cross-reference, which find it for SUB2.
    born, given = _born_and_given(f"R{patient['unique']}")
    demographics = {"family": identity["family"], "given": given, "birthdate": born}
    found = {h: [e["resource"]["id"] for e in httpx.get(f"{delivery.base}/fhir/Patient", params=demographics,
                                                         headers=hdr, timeout=30).json().get("entry", [])]
             for h, hdr in (("sub2", SUB2), ("rfh", RFH))}
    assert person["resource"]["id"] in found["sub2"] and person["resource"]["id"] not in found["rfh"]
    pix = {"sourceIdentifier": f"{NHS}|{nhs}"}
    assert httpx.get(f"{delivery.base}/fhir/Patient/$ihe-pix", params=pix, headers=SUB2, timeout=30).status_code == 200
    assert httpx.get(f"{delivery.base}/fhir/Patient/$ihe-pix", params=pix, headers=RFH, timeout=30).status_code == 404


def _born_and_given(local_id: str) -> tuple[str, str]:
    """The birth date (YYYY-MM-DD) and given name tests.test_connectors_e2e.adt gives this local id."""
    from tests.builders import given_and_born

    given, born = given_and_born(local_id)
    return f"{born[:4]}-{born[4:6]}-{born[6:]}", given


def test_demographic_search_finds_the_patient_ranked_with_a_score(delivery, patient):
    born, given = _born_and_given(f"S{patient['unique']}")
    family = own_identity(patient["unique"])["family"]
    # A one-letter typo in the surname, as a clerk would make it, still finds the patient.
    typo = family[:-1] + ("A" if family[-1] != "A" else "B")
    for params in ({"family": family, "birthdate": born}, {"family": typo, "given": given, "birthdate": born}):
        r = httpx.get(f"{delivery.base}/fhir/Patient", params=params, headers=SUB2, timeout=30)
        assert r.status_code == 200, r.text
        bundle = Bundle.model_validate(r.json())
        assert patient["person"] in [e.resource.id for e in bundle.entry]
        scores = [float(e.search.score) for e in bundle.entry]
        assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    too_little = httpx.get(f"{delivery.base}/fhir/Patient", params={"family": family}, headers=SUB2, timeout=30)
    assert too_little.status_code == 400
    assert "birthdate" in OperationOutcome.model_validate(too_little.json()).issue[0].diagnostics


def test_ihe_pix_lists_every_identifier_of_the_person(delivery, patient):
    from fhir.resources.R4B.parameters import Parameters

    r = httpx.get(f"{delivery.base}/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{NHS}|{patient['nhs']}"},
                  headers=SUB2, timeout=30)
    assert r.status_code == 200, r.text
    answer = Parameters.model_validate(r.json())
    identifiers = {(p.valueIdentifier.system, p.valueIdentifier.value) for p in answer.parameter
                   if p.name == "targetIdentifier"}
    assert (NHS, patient["nhs"]) in identifiers
    assert ("urn:carebus:id:cerner:mrn:RAL", f"S{patient['unique']}") in identifiers
    [target] = [p.valueReference.reference for p in answer.parameter if p.name == "targetId"]
    assert target.endswith(f"/Patient/{patient['person']}")
    unknown = httpx.get(f"{delivery.base}/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{NHS}|9999999999"},
                        headers=SUB2, timeout=30)
    assert unknown.status_code == 404


def test_a_merge_across_nhs_numbers_waits_for_review_then_the_merged_away_id_answers_with_its_survivor(
        bus_settings, connectors, link_workers, delivery, redis_client, unique):
    """An A40 asks to merge two Royal Free patients with different NHS numbers: nothing is merged
    until a reviewer accepts; then the id that disappears is replaced by the survivor."""
    from tests.builders import adt
    from tests.bus_clients import mllp_send

    a, b = f"MA{unique}", f"MB{unique}"
    for local in (a, b):
        [ack] = mllp_send(bus_settings.mllp_port, adt(local, local, **own_identity(local)))
        assert b"MSA|AA" in ack
    before = {person_of(redis_client, cerner_key(a)), person_of(redis_client, cerner_key(b))}
    assert len(before) == 2
    merge = (f"MSH|^~\\&|CERNER|RAL|CAREBUS|LONDON|20261124101500||ADT^A40^ADT_A39|M{unique}|P|2.4\r"
             f"EVN|A40|20261124101000\rPID|1||{a}^^^RAL^MR\rMRG|{b}^^^RAL^MR\r").encode()
    [ack] = mllp_send(bus_settings.mllp_port, merge)
    assert b"MSA|AA" in ack, ack
    pair = {cerner_key(a), cerner_key(b)}
    review = wait_for(lambda: next((r for r in httpx.get(f"{delivery.base}/reviews", headers=AUDIT, timeout=30).json()
                                    if {r["a"], r["b"]} == pair), None), what="the merge held for review")
    assert "A40" in review["reason"]
    assert {person_of(redis_client, cerner_key(a)), person_of(redis_client, cerner_key(b))} == before, "not merged yet"
    assert httpx.post(f"{delivery.base}/reviews/{review['review_id']}/accept", headers=AUDIT,
                      timeout=30).status_code == 202
    survivor = wait_for(lambda: (person_of(redis_client, cerner_key(a)) if person_of(redis_client, cerner_key(a))
                                 == person_of(redis_client, cerner_key(b)) else ""), what="the merge")
    [gone] = before - {survivor}
    r = wait_for(lambda: (lambda x: x if x.status_code == 200 else None)(
        httpx.get(f"{delivery.base}/fhir/Patient/{gone}", headers=SUB2, timeout=30)), what="the replaced id")
    old = Patient.model_validate(r.json())
    assert old.id == gone and old.active is False
    assert old.link[0].type == "replaced-by" and old.link[0].other.reference == f"Patient/{survivor}"
    current = httpx.get(f"{delivery.base}/fhir/Patient/{survivor}", headers=SUB2, timeout=30)
    assert current.status_code == 200 and Patient.model_validate(current.json()).active is not False


def test_everything_over_http_carries_every_section_of_the_record_valid_with_provenance(
        bus_settings, connectors, link_workers, delivery, redis_client, unique):
    """A GP record (EMIS FHIR over HTTP: problems, medications) and a hospital one (Cerner ADT and
    ORU over MLLP: an encounter, results) of one patient: $everything has a resource and a
    Provenance for every item of every section, each valid FHIR."""
    import random
    from dataclasses import replace

    from fhir.resources.R4B import get_fhir_model_class

    from schemas.record_sections import CLINICAL_SECTIONS
    from simulator import population as pop
    from simulator.traffic import MessageFactory
    from tests.bus_clients import mllp_send, send_fhir

    identity = own_identity(f"ev{unique}")
    gp = replace(pop.build(1, seed=4).records[0], system="EMIS_WEB", local_id=f"EV{unique}", ods="F84001",
                 nhs_number=identity["nhs"], family=identity["family"])
    hospital = replace(gp, system="CERNER_MILLENNIUM", local_id=f"EC{unique}", ods="RAL")
    # The generator draws 0-2 problems and medications: take the first seed that draws both.
    factory, body = next((f, b) for f in (MessageFactory(random.Random(seed)) for seed in range(100))
                         for b in [f.emis_bundle(gp)] if b'"Condition"' in b and b'"MedicationStatement"' in b)
    assert send_fhir(bus_settings, "/fhir/emis", body).status_code == 200
    acks = mllp_send(bus_settings.mllp_port, factory.hl7_adt(hospital, "A01"), factory.hl7_oru(hospital))
    assert all(b"MSA|AA" in a for a in acks), acks
    person = wait_for(lambda: (lambda p: p if p and p == person_of(redis_client, cerner_key(f"EC{unique}")) else "")(
        person_of(redis_client, f"EMIS_WEB|urn:carebus:id:emis:emis-guid:F84001|EV{unique}")), what="one person")
    record = wait_for(lambda: (lambda r: r if all(r.get(s) for s in ("encounters", "observations", "problems",
                                                                       "medications")) else None)(
        httpx.get(f"{delivery.base}/records/{person}", headers=AUDIT, timeout=30).json()), what="both systems' items")
    r = httpx.get(f"{delivery.base}/fhir/Patient/{person}/$everything", headers=AUDIT, timeout=30)
    assert r.status_code == 200, r.text
    bundle = Bundle.model_validate(r.json())
    resources = [e["resource"] for e in r.json()["entry"]]
    for resource in resources:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    kinds = [x["resourceType"] for x in resources]
    resource_of = {"encounters": "Encounter", "problems": "Condition", "medications": "MedicationStatement",
                   "allergies": "AllergyIntolerance", "observations": "Observation", "referrals": "ServiceRequest",
                   "documents": "DocumentReference"}
    assert set(resource_of) == set(CLINICAL_SECTIONS)
    items = 0
    for section, kind in resource_of.items():
        assert kinds.count(kind) == len(record.get(section) or []), section
        items += len(record.get(section) or [])
    assert items >= 3 and kinds.count("Provenance") == items and len(bundle.entry) == 1 + 2 * items
    sources = {x["meta"]["source"].split(":")[3] for x in resources if x["resourceType"] not in ("Patient", "Provenance")}
    assert {"EMIS_WEB", "CERNER_MILLENNIUM"} <= sources, "meta.source names each item's own system"
