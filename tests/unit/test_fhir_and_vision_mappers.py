"""FHIR and Vision extract mapping, pure."""
from __future__ import annotations

import json
import random
from datetime import date

import pytest
from hypothesis import given, settings, strategies as st

from producers import fhir_mapper, vision_extract
from schemas.source_systems import EMIS
from schemas import codec
from simulator import population as pop
from simulator.traffic import MessageFactory, vision_csv


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 100_000))
def test_emis_bundles_map_to_one_event_with_sections(seed):
    rec = pop.build(1, seed=seed).records[0]
    raw = MessageFactory(random.Random(seed)).emis_bundle(rec)
    events = fhir_mapper.map_payload(raw, EMIS, rec.ods, 0)
    assert len(events) == 1
    e = events[0]
    assert e["patient"]["local_identifier"]["value"] == rec.local_id
    assert e["patient"]["nhs_number"] == rec.nhs_number
    assert e["patient"]["birth_date"] == (rec.birth_date - date(1970, 1, 1)).days
    assert e["patient"]["registered_practice_ods"] == rec.ods
    body = json.loads(raw)
    kinds = [x["resource"]["resourceType"] for x in body["entry"]]
    assert len(e["problems"]) == kinds.count("Condition")
    assert len(e["medications"]) == kinds.count("MedicationStatement")
    assert all(m["code"]["system"] == "https://dmd.nhs.uk" for m in e["medications"])
    codec.encode("SourcePatientEvent", e)
    # Same bytes, same event ids: redelivery is recognisable.
    assert [x["envelope"]["event_id"] for x in fhir_mapper.map_payload(raw, EMIS, rec.ods, 99)] == [e["envelope"]["event_id"]]


def test_single_resource_attaches_by_subject_identifier():
    obs = {"resourceType": "Observation", "status": "final",
           "subject": {"identifier": {"system": "urn:carebus:id:emis:emis-guid:F84001", "value": "EM1"}},
           "code": {"coding": [{"system": "http://snomed.info/sct", "code": "271649006", "display": "Systolic BP"}]},
           "valueQuantity": {"value": 128, "unit": "mmHg"}}
    events = fhir_mapper.map_payload(json.dumps(obs).encode(), EMIS, "F84001", 0)
    assert events[0]["patient"]["local_identifier"]["value"] == "EM1"
    assert events[0]["observations"][0]["value_quantity"] == 128.0


@pytest.mark.parametrize("body,code", [
    (b"not json", "FHIR_NOT_JSON"),
    (b'{"a": 1}', "FHIR_NOT_RESOURCE"),
    (b'{"resourceType": "Basic"}', "FHIR_UNSUPPORTED_RESOURCE"),
    (b'{"resourceType": "Patient", "id": "x", "active": "perhaps"}', "FHIR_VALIDATION"),
    (b'{"resourceType": "Observation", "status": "final", "code": {"text": "x"}}', "FHIR_NO_SUBJECT"),
    (b'{"resourceType": "Bundle", "type": "transaction", "entry": []}', "FHIR_INVALID"),
])
def test_invalid_fhir_gives_an_operation_outcome(body, code):
    with pytest.raises(fhir_mapper.FHIRMappingError) as err:
        fhir_mapper.map_payload(body, EMIS, "F84001", 0)
    assert err.value.error_code == code
    outcome = fhir_mapper.operation_outcome(err.value.issues)
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["diagnostics"]


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                           max_leaves=10)


@settings(max_examples=200, deadline=None)
@given(st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"resourceType": st.sampled_from(["Patient", "Bundle", "Observation", "Condition"])},
                          optional={"entry": json_values, "type": json_values, "id": json_values,
                                    "birthDate": json_values, "subject": json_values, "name": json_values}
                          ).map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64)))
def test_fuzzed_fhir_maps_or_fails_cleanly(body):
    try:
        for e in fhir_mapper.map_payload(body, EMIS, "F84001", 0):
            codec.encode("SourcePatientEvent", e)
    except fhir_mapper.FHIRMappingError as exc:
        assert exc.issues


@pytest.mark.parametrize("value,flag,digits", [("1980-13-01", "BIRTH_DATE_INVALID", "19801301"),
                                               ("1980-02-30", "BIRTH_DATE_INVALID", "19800230"),
                                               ("1980", "BIRTH_DATE_PARTIAL", "1980"),
                                               ("1980-05", "BIRTH_DATE_PARTIAL", "198005"),
                                               ("30/02/1980", "BIRTH_DATE_INVALID", None)])
def test_fhir_patient_with_a_bad_birth_date_is_kept_and_flagged(value, flag, digits):
    body = json.dumps({"resourceType": "Patient", "id": "x", "birthDate": value, "name": [{"family": "Y"}],
                       "identifier": [{"system": "urn:x", "value": "x1"}]}).encode()
    [event] = fhir_mapper.map_payload(body, EMIS, "F84001", 0)
    assert event["patient"]["birth_date"] is None and flag in event["data_quality_flags"]
    assert event["patient"]["birth_date_as_sent"] == digits
    codec.encode("SourcePatientEvent", event)


def test_vision_extract_groups_rows_and_rejects_bad_rows_alone():
    population = pop.build(30, seed=5)
    recs = [r for r in population.records if r.system == "INPS_VISION"][:3] or population.records[:3]
    factory = MessageFactory(random.Random(1))
    rows = [row for r in recs for row in factory.vision_rows(r)]
    rows.append({"record_type": "PATIENT", "patient_id": "BAD1", "practice_ods": "E87001", "family": "X",
                 "birth_date": "31/12/1990"})
    rows.append({"record_type": "SPACESHIP", "patient_id": "BAD2", "practice_ods": "E87001"})
    result = vision_extract.parse_extract(vision_csv(rows), "x.csv", 0)
    assert {e["patient"]["local_identifier"]["value"] for e in result.events} >= {r.local_id for r in recs}
    assert len(result.errors) == 1
    assert all("1990" not in e.reason for e in result.errors), "reasons must not echo patient data"
    assert b"BAD2" in result.errors[0].row
    # A birth date in the wrong format is the sender's data: the patient is kept, the date flagged.
    [bad1] = [e for e in result.events if e["patient"]["local_identifier"]["value"] == "BAD1"]
    assert bad1["patient"]["birth_date"] is None and "BIRTH_DATE_INVALID" in bad1["data_quality_flags"]
    assert bad1["patient"]["birth_date_as_sent"] is None        # not digits in the documented order
    for e in result.events:
        codec.encode("SourcePatientEvent", e)


def test_vision_header_without_required_columns_is_rejected():
    result = vision_extract.parse_extract(b"a,b\n1,2\n", "x.csv", 0)
    assert not result.events and "header lacks columns" in result.errors[0].reason


def test_every_coding_of_a_fhir_concept_and_the_encounter_service_are_kept():
    body = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient", "id": "p1", "name": [{"family": "Y"}],
                                                "identifier": [{"system": "urn:x", "value": "x1"}]},
         "request": {"method": "PUT", "url": "Patient/p1"}},
        {"resource": {"resourceType": "Condition", "id": "c1", "subject": {"reference": "urn:uuid:p1"},
                      "code": {"coding": [{"system": "http://snomed.info/sct", "code": "195967001"},
                                          {"system": "http://read.info/readv2", "code": "43C3."}]}},
         "request": {"method": "PUT", "url": "Condition/c1"}},
        {"resource": {"resourceType": "Encounter", "id": "e1", "status": "finished", "subject": {"reference": "urn:uuid:p1"},
                      "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                      "serviceType": {"coding": [{"system": "http://snomed.info/sct", "code": "394808002"}]}},
         "request": {"method": "PUT", "url": "Encounter/e1"}}]}).encode()
    [event] = fhir_mapper.map_payload(body, EMIS, "F84001", 0)
    assert event["problems"][0]["code"]["other_codings"] == [{"system": "http://read.info/readv2", "code": "43C3.",
                                                              "display": None}]
    assert event["encounters"][0]["service_type"]["code"] == "394808002"
    codec.encode("SourcePatientEvent", event)


def test_a_vision_row_may_carry_a_second_code():
    rows = [{"record_type": "PATIENT", "patient_id": "V1", "practice_ods": "E87001", "family": "X", "given": "Y"},
            {"record_type": "PROBLEM", "patient_id": "V1", "practice_ods": "E87001", "item_id": "p1",
             "code_system": "SNOMED", "code": "195967001", "other_code_system": "READ2", "other_code": "43C3."}]
    [event] = vision_extract.parse_extract(vision_csv(rows), "x.csv", 0).events
    assert event["problems"][0]["code"]["other_codings"] == [{"system": "http://read.info/readv2", "code": "43C3.",
                                                              "display": None}]
