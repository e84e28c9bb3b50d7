"""HL7 v2 mapping, pure: fields land where the canonical model says, bad input fails clearly."""
from __future__ import annotations

import random
from datetime import date

import pytest
from hypothesis import given, settings, strategies as st

from producers import hl7v2_mapper
from schemas.source_systems import CERNER, RIO
from schemas import codec
from simulator import population as pop
from simulator.traffic import MessageFactory

ADT = (b"MSH|^~\\&|CERNER|RAL|CAREBUS|LONDON|20261124101500||ADT^A01^ADT_A01|MSG0001|P|2.4\r"
       b"EVN|A01|20261124101000\r"
       b"PID|1||1234567^^^RAL^MR~9434765919^^^NHS^NH||SMITH^JOHN^A^^MR||19700102|M|||1 HIGH ST^^LONDON^^NW1 2AB\r"
       b"PV1|1|I|WARD1^BED2||||||||||||||||V123\r"
       b"AL1|1|DA|91936005^Penicillin^SCT|SV|Rash\r")


def test_adt_a01_maps_identity_encounter_and_allergy():
    event = hl7v2_mapper.map_message(ADT, CERNER, "RAL", 0).event
    p = event["patient"]
    assert p["local_identifier"] == {"system": "urn:carebus:id:cerner:mrn:RAL", "value": "1234567"}
    assert p["nhs_number"] == "9434765919" and p["nhs_number_status"] == "PRESENT_UNVERIFIED"
    assert p["names"][0]["family"] == "SMITH" and p["names"][0]["given"] == ["JOHN", "A"]
    assert p["birth_date"] == (date(1970, 1, 2) - date(1970, 1, 1)).days
    assert p["addresses"][0]["postcode"] == "NW1 2AB"
    assert event["encounters"][0]["movement"] == "admit" and event["encounters"][0]["id"] == "V123"
    assert event["allergies"][0]["substance"] == {"system": "http://snomed.info/sct", "code": "91936005",
                                                  "display": "Penicillin",
                                                  "other_codings": []}
    assert event["envelope"]["event_type"] == "ADT^A01"
    codec.encode("SourcePatientEvent", event)  # conforms to the schema


def test_invalid_nhs_number_is_flagged_not_dropped():
    event = hl7v2_mapper.map_message(ADT.replace(b"9434765919", b"9434765918"), CERNER, "RAL", 0).event
    assert event["patient"]["nhs_number"] == "9434765918"
    assert event["patient"]["nhs_number_status"] == "INVALID_CHECKSUM"
    assert "NHS_NUMBER_INVALID_CHECKSUM" in event["data_quality_flags"]


def test_a40_merge_names_the_prior_record():
    a40 = (b"MSH|^~\\&|CERNER|RAL|CAREBUS|LONDON|20261124101500||ADT^A40^ADT_A39|M40|P|2.4\r"
           b"PID|1||1234567^^^RAL^MR\rMRG|7654321^^^RAL^MR\r")
    event = hl7v2_mapper.map_message(a40, CERNER, "RAL", 0).event
    assert event["action"] == "MERGE"
    assert event["merged_from"] == [{"system": "urn:carebus:id:cerner:mrn:RAL", "value": "7654321"}]


def test_oru_maps_numeric_observations_with_units():
    rng = random.Random(3)
    rec = pop.build(5, seed=1, hospital_rate=1.0).records[1]
    event = hl7v2_mapper.map_message(MessageFactory(rng).hl7_oru(rec), CERNER, "RAL", 0).event
    assert len(event["observations"]) == 2
    assert all(o["value_quantity"] is not None and o["unit"] for o in event["observations"])
    assert all(o["code"]["system"] == "http://loinc.org" for o in event["observations"])


@pytest.mark.parametrize("raw,code,ack", [
    (b"hello", "HL7_NO_MSH", "AR"),
    (ADT.replace(b"ADT^A01^ADT_A01", b"ADT^A99"), "HL7_UNSUPPORTED_TYPE", "AR"),
    (ADT.replace(b"|MSG0001|", b"||"), "HL7_NO_CONTROL_ID", "AR"),
    (ADT.replace(b"20261124101000", b"20261324101000"), "HL7_BAD_DATETIME", "AE"),
    (ADT.replace(b"1234567^^^RAL^MR~", b""), "HL7_NO_PATIENT_ID", "AE"),
])
def test_bad_messages_fail_with_a_reason(raw, code, ack):
    with pytest.raises(hl7v2_mapper.HL7MappingError) as err:
        hl7v2_mapper.map_message(raw, CERNER, "RAL", 0)
    assert err.value.error_code == code and err.value.ack_code == ack and err.value.reason


@pytest.mark.parametrize("value,flag,digits", [(b"19701302", "BIRTH_DATE_INVALID", "19701302"),
                                               (b"19700231", "BIRTH_DATE_INVALID", "19700231"),
                                               (b"197002311200", "BIRTH_DATE_INVALID", "19700231"),
                                               (b"1970", "BIRTH_DATE_PARTIAL", "1970"),
                                               (b"197001", "BIRTH_DATE_PARTIAL", "197001"),
                                               (b"UNKNOWN", "BIRTH_DATE_INVALID", None)])
def test_a_bad_or_partial_birth_date_is_kept_and_flagged_not_rejected(value, flag, digits):
    """Like a mistyped NHS number: the patient reaches the index; the digits as sent go to matching."""
    event = hl7v2_mapper.map_message(ADT.replace(b"19700102", value), CERNER, "RAL", 0).event
    assert event["patient"]["birth_date"] is None and flag in event["data_quality_flags"]
    assert event["patient"]["birth_date_as_sent"] == digits
    assert event["patient"]["local_identifier"]["value"] == "1234567"
    codec.encode("SourcePatientEvent", event)


def test_a_valid_birth_date_sends_no_digits():
    assert hl7v2_mapper.map_message(ADT, CERNER, "RAL", 0).event["patient"]["birth_date_as_sent"] is None


def test_ack_carries_the_reason_and_control_id():
    ack = hl7v2_mapper.build_ack(ADT, "AE", "PID-7 birth date is not a real date/time", "HL7_BAD_DATETIME")
    assert b"MSA|AE|MSG0001|PID-7 birth date is not a real date" in ack
    assert b"ERR|||HL7_BAD_DATETIME" in ack


def test_every_ack_has_its_own_control_id_within_msh10s_20_characters():
    ids = {hl7v2_mapper.build_ack(ADT, "AA").split(b"\r")[0].split(b"|")[9] for _ in range(1000)}
    assert len(ids) == 1000
    assert {len(i) for i in ids} == {20}


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 100_000), st.sampled_from(["A01", "A03", "A04", "A08", "A28", "A31"]))
def test_generated_messages_round_trip_identity(seed, trigger):
    """Whatever the simulator writes, the mapper reads back the same person (property)."""
    population = pop.build(2, seed=seed, hospital_rate=1.0, mental_health_rate=1.0)
    for rec in population.records:
        if rec.system not in ("CERNER_MILLENNIUM", "RIO"):
            continue
        raw = MessageFactory(random.Random(seed)).hl7_adt(rec, trigger)
        profile = CERNER if rec.system == "CERNER_MILLENNIUM" else RIO
        event = hl7v2_mapper.map_message(raw, profile, rec.ods, 0).event
        p = event["patient"]
        assert p["local_identifier"]["value"] == rec.local_id
        assert p["nhs_number"] == rec.nhs_number
        assert p["names"][0]["family"] == rec.family
        assert p["birth_date"] == (rec.birth_date - date(1970, 1, 1)).days
        assert p["addresses"][0]["postcode"] == rec.postcode
        codec.encode("SourcePatientEvent", event)


hl7ish = st.lists(st.sampled_from([b"MSH|^~\\&|", b"PID|", b"|", b"^", b"~", b"\\", b"&", b"\r", b"ADT^A01", b"ORU^R01",
                                   b"MRG|", b"OBX|1|NM|", b"20261301", b"x", b"\xff", b"PV1|", b"MSG1"]), max_size=40).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(hl7ish, st.binary(max_size=200), st.binary(max_size=20).map(lambda b: ADT[:60] + b + ADT[60:])))
def test_fuzzed_input_either_maps_or_fails_with_a_mapping_error(raw):
    try:
        mapped = hl7v2_mapper.map_message(raw, CERNER, "RAL", 0)
        codec.encode("SourcePatientEvent", mapped.event)
    except hl7v2_mapper.HL7MappingError as exc:
        assert exc.ack_code in ("AE", "AR") and exc.reason
    ack = hl7v2_mapper.build_ack(raw, "AE", "x")
    assert ack.startswith(b"MSH|") and b"\rMSA|AE|" in ack


def test_a_sender_resends_only_what_may_succeed_later():
    from simulator.traffic import is_transient

    for code in ("STORE_UNAVAILABLE", "TOO_MANY_CONNECTIONS", "INTERNAL"):
        assert is_transient(hl7v2_mapper.build_ack(ADT, "AE", "try again", code))
    assert not is_transient(hl7v2_mapper.build_ack(ADT, "AE", "no PID segment", "HL7_NO_PID"))
    assert not is_transient(hl7v2_mapper.build_ack(ADT, "AR", "too large", "TOO_LARGE"))
    assert not is_transient(hl7v2_mapper.build_ack(ADT, "AA"))


def test_an_alternate_code_and_the_hospital_service_are_kept():
    """CE/CWE components 4-6 are the same concept in another code system (a local code with its
    ICD-10); PV1-10 says which service the visit was with. Both are read by the sensitive-data policy."""
    raw = ADT.replace(b"PV1|1|I|", b"PV1|1|O|") + b"DG1|1||L77^Local^LOCAL^B20.1^HIV disease^I10|||F\r"
    fields = raw.split(b"\r")
    pv1 = next(i for i, seg in enumerate(fields) if seg.startswith(b"PV1|"))
    parts = fields[pv1].split(b"|")
    parts += [b""] * (11 - len(parts))
    parts[10] = b"GUM"
    fields[pv1] = b"|".join(parts)
    event = hl7v2_mapper.map_message(b"\r".join(fields), CERNER, "RAL", 0).event
    [problem] = event["problems"]
    assert problem["code"]["code"] == "L77"
    assert problem["code"]["other_codings"] == [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "B20.1",
                                                 "display": "HIV disease"}]
    assert event["encounters"][0]["service_type"]["code"] == "GUM"
    codec.encode("SourcePatientEvent", event)
