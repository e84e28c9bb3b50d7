"""A patient's objection to sharing, recorded in EMIS (FHIR) or Vision (CSV) as GP systems record
it, stops sharing; a later recorded consent lifts it; the latest entry decides whatever the order."""
from __future__ import annotations

import json

from hypothesis import given, strategies as st

from producers import fhir_mapper, sharing_dissent, vision_extract
from schemas.source_systems import EMIS
from simulator.traffic import vision_csv

SNOMED = "http://snomed.info/sct"
DISSENT, CONSENT = "416409005", "417528008"
PATIENT = {"record_type": "PATIENT", "patient_id": "V1", "practice_ods": "E87001", "family": "Ng", "given": "Ann",
           "birth_date": "1970-01-01", "sex": "F"}


def vision_objection(*entries: tuple[str, str]) -> bool:
    rows = [PATIENT] + [{"record_type": "OBSERVATION", "patient_id": "V1", "practice_ods": "E87001",
                         "code_system": "SNOMED", "code": code, "display": "consent", "date": day, "item_id": f"i{n}"}
                        for n, (code, day) in enumerate(entries)]
    [event] = vision_extract.parse_extract(vision_csv(rows), "x.csv", 0).events
    return event["patient"]["sharing_objection"]


def test_vision_dissent_stops_sharing_and_a_later_consent_lifts_it():
    assert vision_objection() is False
    assert vision_objection((DISSENT, "2024-01-01")) is True
    assert vision_objection((DISSENT, "2024-01-01"), (CONSENT, "2025-06-01")) is False
    assert vision_objection((CONSENT, "2025-06-01"), (DISSENT, "2025-07-01")) is True
    assert vision_objection(("320011000000108", "2024-01-01")) is True
    assert vision_objection(("38341003", "2024-01-01")) is False          # hypertension: not a decision


def emis(*resources: dict) -> dict:
    patient = {"resourceType": "Patient", "id": "E1", "identifier": [{"system": EMIS.identifier_system("F84001"), "value": "E1"}],
               "name": [{"family": "Ng", "given": ["Ann"]}]}
    body = {"resourceType": "Bundle", "type": "transaction",
            "entry": [{"fullUrl": "urn:uuid:e1", "resource": patient}] + [{"resource": r} for r in resources]}
    [event] = fhir_mapper.map_payload(json.dumps(body).encode(), EMIS, "F84001", 0)
    return event


def test_emis_dissent_as_a_coded_entry_or_a_uk_core_consent():
    coded = {"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "urn:uuid:e1"},
             "effectiveDateTime": "2024-03-01", "code": {"coding": [{"system": SNOMED, "code": DISSENT}]}}
    assert emis(coded)["patient"]["sharing_objection"] is True

    def consent(kind: str, when: str) -> dict:
        return {"resourceType": "Consent", "status": "active", "patient": {"reference": "urn:uuid:e1"},
                "dateTime": when, "policyRule": {"text": "local shared care record"},
                "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                      "code": "patient-privacy"}]},
                "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                "provision": {"type": kind}}

    denied = emis(consent("deny", "2024-05-01T10:00:00Z"))
    assert denied["patient"]["sharing_objection"] is True and "_sharing_decisions" not in denied
    assert emis(consent("permit", "2024-05-01T10:00:00Z"))["patient"]["sharing_objection"] is False
    assert emis(coded, consent("permit", "2025-01-01T00:00:00Z"))["patient"]["sharing_objection"] is False


@given(st.lists(st.tuples(st.sampled_from([DISSENT, CONSENT, "38341003"]), st.integers(0, 10**6)), max_size=8),
       st.randoms(use_true_random=False))
def test_the_latest_entry_decides_whatever_the_order(entries, rng):
    items = [{"code": {"system": SNOMED, "code": code}, "effective": when} for code, when in entries]
    decided = [(when, code == DISSENT) for code, when in entries if code in (DISSENT, CONSENT)]
    expected = max(decided)[1] if decided else False      # on the same day a dissent wins
    shuffled = items[:]
    rng.shuffle(shuffled)
    assert sharing_dissent.objection(items) == sharing_dissent.objection(shuffled) == expected
