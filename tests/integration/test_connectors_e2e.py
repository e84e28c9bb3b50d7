"""Each connector end to end through its real interface (MLLP socket, HTTP, files) against real Kafka."""
from __future__ import annotations

import json
import random
import socket
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from foundation.mllp_framing import END, START, frame, unframe
from schemas import codec
from schemas.topics import RAW, SOURCE_EVENTS
from simulator import population as pop
from simulator.traffic import MessageFactory, ack_code, vision_csv, write_drop_file
from tests.kafka_reading import read_all
from tests.builders import adt
from tests.bus_clients import dead_letters, events_for, mllp_send, send_fhir

pytestmark = pytest.mark.integration


def test_cerner_adt_over_mllp_is_acked_after_kafka_has_it(bus_settings, connectors, unique):
    raw = adt(f"L{unique}", f"C{unique}")
    [ack] = mllp_send(bus_settings.mllp_port, raw)
    assert ack_code(ack) == "AA" and f"MSA|AA|C{unique}".encode() in ack
    [event] = events_for(bus_settings, f"L{unique}", expect=1)
    assert event["patient"]["nhs_number"] == "9434765919"
    assert event["encounters"][0]["movement"] == "admit"
    # The original is kept byte for byte on the raw topic, and the event points at it.
    ref = event["envelope"]["raw_message"]
    raw_msgs = read_all(bus_settings, RAW.name, expect=1, predicate=lambda m: m.key() == ref["raw_id"].encode())
    assert codec.decode(raw_msgs[0].value(), "RawMessage")["payload"] == raw
    # Published together with the event (one round trip), so found by key from the receipt time.
    assert (ref["partition"], ref["offset"]) == (-1, -1)
    assert raw_msgs[0].timestamp()[1] == event["envelope"]["recorded_at"]


def test_redelivered_message_is_acked_but_published_once(bus_settings, connectors, unique):
    raw = adt(f"L{unique}", f"C{unique}")
    acks = mllp_send(bus_settings.mllp_port, raw, raw, raw)
    assert [ack_code(a) for a in acks] == ["AA", "AA", "AA"]
    mllp_send(bus_settings.mllp_port, adt(f"L{unique}", f"D{unique}"))  # a later, different message
    events = events_for(bus_settings, f"L{unique}", expect=None, timeout=15)
    assert sorted(e["envelope"]["source_record_id"] for e in events) == [f"C{unique}", f"D{unique}"]


def test_invalid_hl7_gets_a_nak_with_reason_and_is_parked(bus_settings, connectors, unique):
    bad = adt(f"L{unique}", f"C{unique}").replace(b"EVN|A01|20261124101000", b"EVN|A01|20261399101000")
    [ack] = mllp_send(bus_settings.mllp_port, bad)
    assert ack_code(ack) == "AE" and b"EVN-2" in ack
    [dead] = dead_letters(bus_settings, f"C{unique}".encode())
    assert dead["payload"] == bad and dead["error_code"] == "HL7_BAD_DATETIME"
    assert dead["stage"] == "connector:cerner:mllp"
    # The stream goes on: the next good message on the same connection is accepted.
    assert [ack_code(a) for a in mllp_send(bus_settings.mllp_port, bad, adt(f"M{unique}", f"E{unique}"))] == ["AE", "AA"]


def test_a_bad_birth_date_is_accepted_flagged_and_linked_on_the_rest(bus_settings, connectors, unique):
    """The sender's data is what it is: like a mistyped NHS number, not a reason to lose the patient."""
    [ack] = mllp_send(bus_settings.mllp_port, adt(f"L{unique}", f"C{unique}", dob="19701399"))
    assert ack_code(ack) == "AA"
    [event] = events_for(bus_settings, f"L{unique}", expect=1)
    assert event["patient"]["birth_date"] is None and "BIRTH_DATE_INVALID" in event["data_quality_flags"]


def test_invalid_nhs_number_is_published_with_a_flag(bus_settings, connectors, unique):
    [ack] = mllp_send(bus_settings.mllp_port, adt(f"L{unique}", f"C{unique}", nhs="9434765918"))
    assert ack_code(ack) == "AA"
    [event] = events_for(bus_settings, f"L{unique}", expect=1)
    assert event["patient"]["nhs_number_status"] == "INVALID_CHECKSUM"
    assert "NHS_NUMBER_INVALID_CHECKSUM" in event["data_quality_flags"]


def test_rio_referral_over_mllp(bus_settings, connectors, unique):
    rec = pop.build(1, seed=2, mental_health_rate=1.0).records[-1]
    from dataclasses import replace
    rec = replace(rec, local_id=f"RIO{unique}")
    raw = MessageFactory(random.Random(1)).hl7_adt(rec, "A04")
    [ack] = mllp_send(bus_settings.mllp_port + 1, raw)
    assert ack_code(ack) == "AA"
    [event] = events_for(bus_settings, f"RIO{unique}", expect=1)
    assert event["envelope"]["source_system"] == "RIO"
    assert event["patient"]["local_identifier"]["system"].startswith("urn:carebus:id:rio:")
    assert event["referrals"] and event["referrals"][0]["service"]["code"] == "CMHT"


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.binary(min_size=1, max_size=300).filter(lambda b: END not in b),
                 st.binary(max_size=30).map(lambda b: adt("FUZZ", "FUZZ")[:80] + b)))
def test_fuzzed_mllp_input_always_gets_an_answer(bus_settings, connectors, raw):
    raw = raw.replace(START, b"").replace(END, b"")
    with socket.create_connection(("127.0.0.1", bus_settings.mllp_port), timeout=30) as s:
        s.sendall(frame(raw))
        reply = b""
        while not reply.endswith(END):
            chunk = s.recv(4096)
            assert chunk, "connection closed without an ACK"
            reply += chunk
    assert ack_code(unframe(reply)) in ("AA", "AE", "AR")


def test_emis_bundle_over_fhir_rest(bus_settings, connectors, unique):
    from dataclasses import replace
    rec = replace(pop.build(1, seed=4).records[0], local_id=f"EM{unique}", ods="F84001")
    body = MessageFactory(random.Random(2)).emis_bundle(rec)
    resp = send_fhir(bus_settings, "/fhir/emis", body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["type"] == "transaction-response"
    [event] = events_for(bus_settings, f"EM{unique}", expect=1)
    assert event["envelope"]["source_system"] == "EMIS_WEB" and event["envelope"]["source_ods_code"] == "F84001"


def test_a_tpp_systmone_practice_sends_fhir_through_its_profile(bus_settings, connectors, unique):
    """TPP SystmOne needed one profile entry and a sender credential: the FHIR endpoint, its
    identifier namespace and the SourceSystem code come from the profile."""
    body = json.dumps({"resourceType": "Patient", "id": f"T{unique}",
                       "name": [{"family": "Systmone", "given": ["Tara"]}], "birthDate": "1970-01-02"}).encode()
    resp = send_fhir(bus_settings, "/fhir/tpp/Patient", body, token="dev-tpp-token", ods="F86001")
    assert resp.status_code == 201, resp.text
    [event] = events_for(bus_settings, f"T{unique}", expect=1)
    assert event["envelope"]["source_system"] == "TPP_SYSTMONE"
    assert event["patient"]["local_identifier"]["system"] == "urn:carebus:id:tpp:systmone-id:F86001"
    assert send_fhir(bus_settings, "/fhir/tpp/Patient", body).status_code == 403     # an EMIS sender is not TPP


@pytest.mark.parametrize("system", ["urn:carebus:id:emis:emis-guid:F84002", "urn:carebus:id:cerner:mrn:RAL"])
def test_a_fhir_sender_cannot_file_a_record_under_another_organisations_identifiers(bus_settings, connectors,
                                                                                    unique, system):
    """The EMIS sender of practice F84001 names a patient by another practice's (or a hospital's)
    identifier system: refused with an OperationOutcome, parked, never stored."""
    body = json.dumps({"resourceType": "Patient", "id": f"O{unique}",
                       "identifier": [{"system": system, "value": f"O{unique}"}],
                       "name": [{"family": "Scope", "given": ["Test"]}]}).encode()
    resp = send_fhir(bus_settings, "/fhir/emis/Patient", body)
    assert resp.status_code == 403, resp.text
    assert resp.json()["resourceType"] == "OperationOutcome" and system in resp.json()["issue"][0]["diagnostics"]
    [dead] = dead_letters(bus_settings, f"O{unique}".encode())
    assert dead["error_code"] == "FHIR_OUT_OF_SCOPE"
    assert not events_for(bus_settings, f"O{unique}", timeout=5)
    own = body.replace(system.encode(), b"urn:carebus:id:emis:emis-guid:F84001")
    assert send_fhir(bus_settings, "/fhir/emis/Patient", own).status_code == 201


def test_a_bar_in_an_identifier_never_makes_two_patients_one_source_record(bus_settings, connectors, unique):
    """System "…/a" with id "b|c" and system "…/a|b" with id "c" once made the same key."""
    def patient(system: str, value: str, family: str) -> bytes:
        return json.dumps({"resourceType": "Patient", "identifier": [{"system": system, "value": value}],
                           "name": [{"family": family, "given": ["Bar"]}]}).encode()

    base = f"https://emis.example/{unique}/a"
    assert send_fhir(bus_settings, "/fhir/emis/Patient", patient(base, f"b|c{unique}", "One")).status_code == 201
    assert send_fhir(bus_settings, "/fhir/emis/Patient", patient(f"{base}|b", f"c{unique}", "Two")).status_code == 201
    found = read_all(bus_settings, SOURCE_EVENTS.name, expect=2, timeout=30,
                     predicate=lambda m: unique.encode() in (m.key() or b""))
    keys = {m.key() for m in found}
    assert len(keys) == 2, keys
    families = {codec.decode(m.value(), "SourcePatientEvent")["patient"]["names"][0]["family"] for m in found}
    assert families == {"One", "Two"}


def test_fhir_rest_authentication_and_errors(bus_settings, connectors, unique):
    body = json.dumps({"resourceType": "Patient", "id": f"X{unique}", "active": "perhaps"}).encode()
    assert send_fhir(bus_settings, "/fhir/emis", body, token=None).status_code == 401
    assert send_fhir(bus_settings, "/fhir/emis", body, token="wrong").status_code == 401
    assert send_fhir(bus_settings, "/fhir/emis", body, token="dev-cerner-token").status_code == 403
    assert send_fhir(bus_settings, "/fhir/cerner", body, token="dev-cerner-token", ods="F84001").status_code == 403
    resp = send_fhir(bus_settings, "/fhir/emis", body)
    assert resp.status_code == 422
    outcome = resp.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["Patient.active"]
    [dead] = dead_letters(bus_settings, f"X{unique}".encode())
    assert dead["payload"] == body and dead["error_code"] == "FHIR_VALIDATION"


def _wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_file_drops_for_emis_and_vision(bus_settings, connectors, unique):
    drop = bus_settings.data_dir / "drop"
    from dataclasses import replace
    base = pop.build(1, seed=9).records[0]
    emis = replace(base, local_id=f"EM{unique}", ods="F84001")
    vision = replace(base, local_id=f"VS{unique}", ods="E87001", system="INPS_VISION")
    factory = MessageFactory(random.Random(3))
    write_drop_file(drop / "emis" / "incoming", f"load-{unique}.json", factory.emis_bundle(emis))
    rows = factory.vision_rows(vision) + [{"record_type": "PROBLEM", "patient_id": f"VS{unique}", "practice_ods": "E87001"}]
    write_drop_file(drop / "vision" / "incoming", f"extract-{unique}.csv", vision_csv(rows))
    assert _wait_for(lambda: (drop / "vision" / "processed" / f"extract-{unique}.csv").exists())
    assert _wait_for(lambda: (drop / "emis" / "processed" / f"load-{unique}.json").exists())
    [e1] = events_for(bus_settings, f"EM{unique}", expect=1)
    [e2] = events_for(bus_settings, f"VS{unique}", expect=1)
    assert e1["envelope"]["event_type"].startswith("fhir.Bundle") and e2["envelope"]["event_type"] == "vision.extract"
    [dead] = dead_letters(bus_settings, f"VS{unique}".encode())
    assert "has no code" in dead["reason"] and dead["error_code"] == "VISION_BAD_ROW"


def test_metrics_and_health(bus_settings, connectors):
    base = f"http://127.0.0.1:{bus_settings.http_port}"
    assert httpx.get(f"{base}/health").json() == {"status": "up"}
    metrics = httpx.get(f"{base}/metrics").text
    assert 'carebus_connector_messages_total{channel="mllp",connector="cerner",outcome="accepted"}' in metrics


def test_logs_never_hold_identifiers_in_clear(bus_settings, connectors, unique):
    mllp_send(bus_settings.mllp_port, adt(f"SECRET{unique}", f"C{unique}", nhs="9434765919"))
    time.sleep(1)
    log = (bus_settings.data_dir / "connectors.log").read_text()
    assert f"SECRET{unique}" not in log and "9434765919" not in log and "SMITH" not in log
