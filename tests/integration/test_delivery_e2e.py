"""Subscribers, audit replay and monitoring end to end, with real HTTP subscribers."""
from __future__ import annotations

import json
import random
import time

import httpx
import pytest

from consumers.notification_format import verify
from schemas import codec
from streams.identity_store import RedisGraphStore
from streams.record_store import RedisRecordStore
from tests.builders import adt
from tests.bus_clients import mllp_send
from tests.builders import cerner_key, own_identity, unique_nhs
from tests.bus_clients import AUDIT, RFH, SUB2, delivery_state, person_of, person_story, send_story, subscribe, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(connectors, link_workers, delivery):
    return delivery


def test_signed_notifications_arrive_in_order(bus_settings, stack, receiver, redis_client, unique):
    sub = subscribe(stack, SUB2, channel="webhook", endpoint=receiver.url(f"/ordered/{unique}"))
    stored = redis_client.get(f"carebus:subscription:{sub['id']}").decode()
    assert sub["secret"] not in stored and '"secret": "v1:' in stored, "the signing secret is sealed at rest"
    send_story(bus_settings, unique)
    person = person_of(redis_client, cerner_key(f"S{unique}"))
    got = wait_for(lambda: [r for r in receiver.for_path(f"/ordered/{unique}") if r["json"]["person_id"] == person]
                   if len([r for r in receiver.for_path(f"/ordered/{unique}") if r["json"]["person_id"] == person]) >= 1
                   and redis_client.hget(f"carebus:record_meta:{person}", "emitted") == b"1"
                   and max(r["json"]["version"] for r in receiver.for_path(f"/ordered/{unique}") if r["json"]["person_id"] == person)
                   == int(redis_client.hget(f"carebus:record_meta:{person}", "version")) else None,
                   what="all versions delivered")
    versions = [r["json"]["version"] for r in got]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    for r in got:
        h = {k.lower(): v for k, v in r["headers"].items()}
        assert verify(sub["secret"], r["body"], h["x-carebus-signature"], int(time.time()))
        assert not verify("wrong-secret", r["body"], h["x-carebus-signature"], int(time.time()))
        assert h["idempotency-key"] == r["json"]["event_id"]


def test_failing_subscriber_recovers_and_gets_every_change_once(bus_settings, stack, receiver, redis_client, unique):
    path = f"/flaky/{unique}"
    subscribe(stack, SUB2, channel="webhook", endpoint=receiver.url(path), max_attempts=20)
    receiver.fail_next = 4
    send_story(bus_settings, unique)
    person = person_of(redis_client, cerner_key(f"S{unique}"))

    def done():
        version = int(redis_client.hget(f"carebus:record_meta:{person}", "version") or 0)
        got = [r for r in receiver.for_path(path) if r["json"]["person_id"] == person]
        return got if got and max(r["json"]["version"] for r in got) == version else None

    got = wait_for(done, what="delivery after recovery")
    keys = [r["headers"]["Idempotency-Key"] for r in got]
    assert len(keys) == len(set(keys)), "each change arrives once per idempotency key"
    assert [r["json"]["version"] for r in got] == sorted(r["json"]["version"] for r in got)


def changes_of(bus_settings, person: str, expect: int) -> list:
    """The person's record changes on the change feed, as a Kafka client reads them."""
    from schemas.topics import PATIENT_CHANGES
    from tests.kafka_reading import read_all

    return read_all(bus_settings, PATIENT_CHANGES.name, expect=expect, timeout=60,
                    predicate=lambda m: m.key() == person.encode())


def put_back(bus_settings, *messages, changed_at: int | None = None) -> None:
    """These messages again, each on its topic under its key, as a replayed batch or a resend puts
    them. With `changed_at`, a record change made again at that time, as `carebus rebuild-index`
    makes one (the same event id and version, later)."""
    from foundation.durable_producer import DurableProducer

    producer = DurableProducer(bus_settings)
    for m in messages:
        value = m.value()
        if changed_at is not None:
            value = codec.encode("RecordChange", {**codec.decode(value, "RecordChange"), "changed_at": changed_at})
        producer.send_sync(m.topic(), value, key=m.key(), headers=m.headers())
    producer.close()


def test_a_change_the_feed_holds_twice_reaches_the_subscriber_once(bus_settings, stack, receiver, redis_client, unique):
    """A link worker stopped after Kafka stored a batch's outputs, and before it could say so,
    publishes them again when the batch is replayed: the same changes, event ids and versions,
    after the originals on the change feed. A subscriber gets each version once, in order, and
    never an older version after a newer one."""
    path = f"/repeats/{unique}"
    sub = subscribe(stack, SUB2, channel="webhook", endpoint=receiver.url(path))

    def delivered() -> list[dict]:
        return [r["json"] for r in receiver.for_path(path) if r["json"]["person_id"] == person]

    def all_delivered(at_least: int = 1):
        version = int(redis_client.hget(f"carebus:record_meta:{person}", "version") or 0)
        got = delivered()
        return got if version >= at_least and got and max(c["version"] for c in got) == version else None

    send_story(bus_settings, unique, n=2)
    person = person_of(redis_client, cerner_key(f"S{unique}"))
    first = wait_for(all_delivered, what="the story delivered")
    copies = changes_of(bus_settings, person, expect=len(first))
    assert len(copies) == len(first) >= 1
    put_back(bus_settings, *copies, copies[0])      # the replay's copies, then the oldest once more
    # A newer change behind the copies: once it has arrived, the dispatcher has read past them.
    newest = max(c["version"] for c in first)
    assert b"MSA|AA" in mllp_send(bus_settings.mllp_port, adt(f"S{unique}", f"S{unique}2", trigger="A03",
                                                                **own_identity(unique)))[0]
    got = wait_for(lambda: all_delivered(newest + 1), what="the newer change delivered")
    versions = [c["version"] for c in got]
    assert versions == sorted(set(versions)) and versions[-1] > newest

    def repeats() -> int:
        monitor = httpx.get(f"{stack.base}/monitor", headers=AUDIT, timeout=60).json()
        return int(monitor["delivery"].get(sub["id"], {}).get("repeats", 0))

    wait_for(lambda: repeats() >= len(copies) + 1, timeout=30, what="the repeats counted in /monitor")
    # An index rebuilt from the log (`carebus rebuild-index`) makes version 1 again, later: it goes.
    put_back(bus_settings, copies[0], changed_at=int(time.time() * 1000))
    again = wait_for(lambda: [c["version"] for c in delivered()][len(versions):] or None, timeout=60,
                     what="the rebuilt version 1 delivered")
    assert again == [1]


def test_dead_subscriber_parks_changes_and_redelivery_recovers_them(bus_settings, stack, receiver, redis_client, unique):
    path = f"/dead/{unique}"
    sub = subscribe(stack, SUB2, channel="webhook", endpoint=receiver.url(path), max_attempts=2)
    from tests.webhook_receiver import Receiver

    healthy = Receiver()   # a different system, whose endpoint stays up
    other_path = f"/healthy/{unique}"
    healthy_sub = subscribe(stack, SUB2, channel="webhook", endpoint=healthy.url(other_path))
    receiver.failing = True
    try:
        send_story(bus_settings, unique, n=1)
        person = person_of(redis_client, cerner_key(f"S{unique}"))
        stats = wait_for(lambda: (lambda s: s if int(s.get("parked", 0)) >= 1 else None)(
            {k.decode(): v.decode() for k, v in redis_client.hgetall(f"carebus:delivery:{sub['id']}").items()}),
            what="parking")
        assert stats["status"] == "degraded"
    finally:
        receiver.failing = False
    # The healthy subscriber was not held up by the dead one (it had its own retries to make).
    wait_for(lambda: [r for r in healthy.for_path(other_path) if r["json"]["person_id"] == person],
             what=lambda: f"healthy delivery {redis_client.hgetall('carebus:delivery:' + healthy_sub['id'])} "
                  f"{[r['json']['person_id'] for r in healthy.received]} {person}")
    healthy.close()
    # The parked change has not reached the dead subscriber (later, unrelated changes may have).
    assert not [r for r in receiver.for_path(path) if r["json"]["person_id"] == person]
    resp = httpx.post(f"{stack.base}/subscriptions/{sub['id']}/dead-letters/redeliver", headers=SUB2, timeout=60)
    assert resp.status_code == 200 and resp.json()["outcomes"].get("delivered", 0) >= 1
    assert [r for r in receiver.for_path(path) if r["json"]["person_id"] == person]


def test_scope_is_enforced_and_nothing_leaks(bus_settings, stack, receiver, redis_client, unique):
    # Outside its organisations: refused.
    resp = httpx.post(f"{stack.base}/subscriptions", headers=RFH, timeout=30,
                      json={"channel": "webhook", "endpoint": receiver.url("/x"), "ods_codes": ["F84001"]})
    assert resp.status_code == 403
    assert httpx.post(f"{stack.base}/subscriptions", json={"channel": "webhook", "endpoint": "http://x"},
                      timeout=30).status_code == 401
    rfh_path, fed_path = f"/rfh/{unique}", f"/fed/{unique}"
    subscribe(stack, RFH, channel="webhook", endpoint=receiver.url(rfh_path))
    subscribe(stack, SUB2, channel="webhook", endpoint=receiver.url(fed_path))
    # A GP-only patient (EMIS, practice F84001) with a sexual-health problem.
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "id": f"G{unique}", "name": [{"family": "Quiet", "given": ["Gp"]}],
                                               "birthDate": "1985-05-05", "gender": "female",
                                               "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": unique_nhs(unique + "g")}]}},
        {"resource": {"resourceType": "Condition", "id": f"c{unique}", "subject": {"reference": "urn:uuid:p"},
                      "code": {"coding": [{"system": "http://snomed.info/sct", "code": "8098009", "display": "Sexually transmitted infectious disease"}]}}}]}
    r = httpx.post(f"http://127.0.0.1:{bus_settings.http_port}/fhir/emis", content=json.dumps(bundle),
                   headers={"Authorization": "Bearer dev-emis-token", "X-Ods-Code": "F84001"}, timeout=30)
    assert r.status_code == 200
    person = person_of(redis_client, f"EMIS_WEB|urn:carebus:id:emis:emis-guid:F84001|G{unique}")
    fed = wait_for(lambda: [x for x in receiver.for_path(fed_path) if x["json"]["person_id"] == person], what="federation delivery")
    # gp-federation also withholds sexual-health items (its credentials say so); the auditor sees them.
    assert all(not x["json"]["record"]["problems"] for x in fed)
    assert httpx.get(f"{stack.base}/records/{person}", headers=AUDIT).json()["problems"][0]["code"]["code"] == "8098009"
    # The same through the FHIR read API: $everything withholds the item from the federation only.
    def conditions(headers: dict) -> list[str]:
        bundle = httpx.get(f"{stack.base}/fhir/Patient/{person}/$everything", headers=headers, timeout=30).json()
        return [c["code"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Condition"
                for c in e["resource"]["code"]["coding"]]
    assert "8098009" in conditions(AUDIT) and "8098009" not in conditions(SUB2)
    # Royal Free (RAL only) got nothing about this GP-only patient and may not read the record.
    time.sleep(2)
    assert not [x for x in receiver.for_path(rfh_path) if x["json"]["person_id"] == person]
    outside = httpx.get(f"{stack.base}/records/{person}", headers=RFH)
    unknown = httpx.get(f"{stack.base}/records/PER-{'0' * 20}", headers=RFH)
    assert outside.status_code == unknown.status_code == 404 and outside.json() == unknown.json(), \
        "outside the scope answers as if unknown: existence cannot be probed"


def test_patients_who_objected_are_never_sent(bus_settings, stack, receiver, redis_client, unique):
    path = f"/objection/{unique}"
    subscribe(stack, SUB2, channel="webhook", endpoint=receiver.url(path))
    # PD1-12 "Y": protection indicator / patient objected to sharing.
    objecting = adt(f"O{unique}", f"O{unique}", nhs=unique_nhs(unique), extra="PD1" + "|" * 12 + "Y\r")
    assert b"MSA|AA" in mllp_send(bus_settings.mllp_port, objecting)[0]
    send_story(bus_settings, unique + "b", n=1)   # a normal patient after it, to know delivery moved on
    later = person_of(redis_client, cerner_key(f"S{unique}b"))
    wait_for(lambda: [x for x in receiver.for_path(path) if x["json"]["person_id"] == later],
             what=lambda: f"later delivery; now {RedisGraphStore(redis_client).person_of(cerner_key(f'S{unique}b'))}; "
                          f"{person_story(redis_client, later)}; received {len(receiver.for_path(path))}")
    objector = person_of(redis_client, cerner_key(f"O{unique}"))
    assert not [x for x in receiver.for_path(path) if x["json"]["person_id"] == objector]


@pytest.mark.parametrize("code, category", [("B20.1", "sexual-health"), ("O04.9", "termination-of-pregnancy"),
                                            ("Z31.2", "ivf"), ("F64.0", "gender-reassignment")])
def test_a_hospital_diagnosis_in_a_sensitive_category_never_reaches_a_client_that_withholds_it(
        bus_settings, stack, receiver, redis_client, unique, code, category):
    """Cerner codes diagnoses in ICD-10 (DG1-3, coding system I10): the Royal Free's own EPR
    (RAL only, sensitive categories withheld) gets the patient without the item; the auditor sees it."""
    path = f"/sensitive/{unique}"
    subscribe(stack, RFH, channel="webhook", endpoint=receiver.url(path))
    dg1 = f"DG1|1||{code}^Sensitive diagnosis^I10|||F\rDG1|2||J45^Asthma^I10|||F\r"
    assert b"MSA|AA" in mllp_send(bus_settings.mllp_port, adt(f"Q{unique}", f"Q{unique}", extra=dg1,
                                                              **own_identity(unique)))[0]
    person = person_of(redis_client, cerner_key(f"Q{unique}"))
    got = wait_for(lambda: [x for x in receiver.for_path(path) if x["json"]["person_id"] == person
                            and x["json"]["record"]["problems"]], what=f"the {category} patient's delivery")
    sent = {p["code"]["code"] for x in got for p in x["json"]["record"]["problems"]}
    assert sent == {"J45"}, sent
    audited = httpx.get(f"{stack.base}/records/{person}", headers=AUDIT, timeout=30).json()
    assert {p["code"]["code"] for p in audited["problems"]} == {code, "J45"}


def test_a_second_coding_and_a_sexual_health_clinic_visit_are_withheld_too(
        bus_settings, stack, receiver, redis_client, unique):
    """A diagnosis sent under a local code with its ICD-10 code as the alternate (DG1-3.4-6), and
    an outpatient visit to the GUM clinic (PV1-10): neither reaches a client that withholds sexual
    health; the auditor sees both."""
    path = f"/second-coding/{unique}"
    subscribe(stack, RFH, channel="webhook", endpoint=receiver.url(path))
    dg1 = f"DG1|1||L{unique[:5]}^Local diagnosis^LOCAL^B20.1^HIV disease^I10|||F\rDG1|2||J45^Asthma^I10|||F\r"
    message = adt(f"G{unique}", f"G{unique}", extra=dg1, **own_identity(unique)).decode()
    segments = message.split("\r")
    pv1 = next(i for i, seg in enumerate(segments) if seg.startswith("PV1|"))
    fields = segments[pv1].split("|")
    fields[2], fields[10] = "O", "GUM"          # an outpatient visit, hospital service GUM
    segments[pv1] = "|".join(fields)
    assert b"MSA|AA" in mllp_send(bus_settings.mllp_port, "\r".join(segments).encode())[0]
    person = person_of(redis_client, cerner_key(f"G{unique}"))
    got = wait_for(lambda: [x for x in receiver.for_path(path) if x["json"]["person_id"] == person
                            and x["json"]["record"]["problems"]], what="the patient's delivery")
    record = got[-1]["json"]["record"]
    assert {p["code"]["code"] for p in record["problems"]} == {"J45"}
    assert record["encounters"] == [], record["encounters"]
    audited = httpx.get(f"{stack.base}/records/{person}", headers=AUDIT, timeout=30).json()
    assert {p["code"]["code"] for p in audited["problems"]} == {f"L{unique[:5]}", "J45"}
    assert [e["service_type"]["code"] for e in audited["encounters"]] == ["GUM"]


def test_a_dissent_recorded_at_the_gp_stops_sharing(bus_settings, stack, receiver, redis_client, unique):
    """EMIS sends the patient's record with the SNOMED code for "refused consent for upload to
    local shared electronic record": no subscriber receives that patient."""
    from dataclasses import replace

    from simulator import population as pop
    from simulator.traffic import MessageFactory

    path = f"/dissent/{unique}"
    subscribe(stack, SUB2, channel="webhook", endpoint=receiver.url(path))
    rec = replace(pop.build(1, seed=12).records[0], local_id=f"D{unique}", ods="F84001", system="EMIS_WEB",
                  family=own_identity(unique)["family"], nhs_number=unique_nhs(unique))
    bundle = json.loads(MessageFactory(random.Random(5)).emis_bundle(rec))
    bundle["entry"].append({"resource": {
        "resourceType": "Observation", "id": f"D{unique}-dissent", "status": "final",
        "subject": {"reference": bundle["entry"][0]["fullUrl"]}, "effectiveDateTime": "2026-01-05",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "416409005",
                             "display": "Refused consent for upload to local shared electronic record"}]}}})
    resp = httpx.post(f"http://127.0.0.1:{bus_settings.http_port}/fhir/emis", content=json.dumps(bundle).encode(),
                      headers={"Authorization": "Bearer dev-emis-token", "X-Ods-Code": "F84001",
                               "Content-Type": "application/fhir+json"}, timeout=30)
    assert resp.status_code == 200, resp.text
    send_story(bus_settings, unique + "b", n=1)   # a normal patient after it, to know delivery moved on
    later = person_of(redis_client, cerner_key(f"S{unique}b"))
    wait_for(lambda: [x for x in receiver.for_path(path) if x["json"]["person_id"] == later], what="later delivery")
    objector = person_of(redis_client, f"EMIS_WEB|urn:carebus:id:emis:emis-guid:F84001|D{unique}")
    assert RedisRecordStore(redis_client).record(objector)["demographics"]["sharing_objection"] is True
    assert not [x for x in receiver.for_path(path) if x["json"]["person_id"] == objector]


def test_record_rebuilt_at_time_t_equals_what_was_sent_at_t(bus_settings, stack, receiver, redis_client, unique):
    path = f"/asof/{unique}"
    sub = subscribe(stack, SUB2, channel="webhook", endpoint=receiver.url(path))
    send_story(bus_settings, unique)
    person = person_of(redis_client, cerner_key(f"S{unique}"))
    got = wait_for(lambda: [x for x in receiver.for_path(path) if x["json"]["person_id"] == person],
                   what=lambda: delivery_state(redis_client, sub["id"], person, cerner_key(f"S{unique}")))
    for sent in got:
        at = sent["json"]["changed_at"]
        rebuilt = httpx.get(f"{stack.base}/audit/persons/{person}/as-of", params={"at": at, "subscription_id": sub["id"]},
                            headers=AUDIT, timeout=60)
        assert rebuilt.status_code == 200
        assert rebuilt.json() == sent["json"]


def test_audit_timeline_shows_messages_links_and_changes(bus_settings, stack, redis_client, unique):
    send_story(bus_settings, unique)
    person = person_of(redis_client, cerner_key(f"S{unique}"))
    wait_for(lambda: redis_client.hget(f"carebus:record_meta:{person}", "emitted") == b"1", what="record")
    resp = httpx.get(f"{stack.base}/audit/persons/{person}/timeline", headers=AUDIT, timeout=60)
    kinds = {e["kind"] for e in resp.json()}
    assert kinds == {"source-event", "identity", "record-change"}
    originals = [e["original"] for e in resp.json() if e["kind"] == "source-event"]
    assert any(f"S{unique}" in o and o.startswith("MSH|") for o in originals), "the original message is shown"
    csv_text = httpx.get(f"{stack.base}/audit/persons/{person}/timeline", params={"format": "csv"}, headers=AUDIT,
                         timeout=60).text
    assert csv_text.startswith("at,kind,system") and "ADT^A01" in csv_text
    assert httpx.get(f"{stack.base}/audit/persons/{person}/timeline", headers=SUB2).status_code == 403


def test_audit_timeline_shows_an_event_the_log_holds_twice_once(bus_settings, stack, redis_client, unique):
    """A connector's resend caught between publishing and marking, or a link worker's replayed
    batch, leaves copies of an event in the log under its event id: the timeline shows it once."""
    from schemas.topics import SOURCE_EVENTS
    from tests.kafka_reading import read_all

    send_story(bus_settings, unique, n=1)
    person = person_of(redis_client, cerner_key(f"S{unique}"))
    wait_for(lambda: redis_client.hget(f"carebus:record_meta:{person}", "emitted") == b"1", what="record")
    [change] = changes_of(bus_settings, person, expect=1)
    [event] = read_all(bus_settings, SOURCE_EVENTS.name, expect=1, timeout=60,
                       predicate=lambda m: m.key() == cerner_key(f"S{unique}").encode())
    put_back(bus_settings, change, event)
    entries = httpx.get(f"{stack.base}/audit/persons/{person}/timeline", headers=AUDIT, timeout=60).json()
    assert [e["what"] for e in entries if e["kind"] == "record-change"] == ["record created to version 1"]
    assert len([e for e in entries if e["kind"] == "source-event"]) == 1
    # An index rebuilt from the log makes version 1 again, under the same event id, later: shown.
    put_back(bus_settings, change, changed_at=codec.decode(change.value(), "RecordChange")["changed_at"] + 60_000)
    entries = httpx.get(f"{stack.base}/audit/persons/{person}/timeline", headers=AUDIT, timeout=60).json()
    assert [e["what"] for e in entries if e["kind"] == "record-change"] == ["record created to version 1"] * 2


def test_monitoring_reports_lag_linkage_dead_letters_and_delivery(bus_settings, stack):
    m = httpx.get(f"{stack.base}/monitor", headers=AUDIT, timeout=60).json()
    assert m["linkage"]["links"] > 0 and "open_reviews" in m["linkage"]
    assert any(l["group"] == "carebus-linker" for l in m["lag"]), m["lag"]
    assert "carebus.dlq.connectors.v1" in m["dead_letters"]
    assert m["delivery"], "per-subscriber delivery figures"
    metrics = httpx.get(f"{stack.base}/metrics", headers=AUDIT, timeout=60).text
    assert "carebus_consumer_lag" in metrics and "carebus_delivery_total" in metrics
    assert httpx.get(f"{stack.base}/monitor", headers=SUB2).status_code == 403
    # Subscription ids label the metrics: no token, no metrics; no published API description.
    assert httpx.get(f"{stack.base}/metrics", timeout=30).status_code == 401
    assert httpx.get(f"{stack.base}/metrics", headers=SUB2, timeout=30).status_code == 403
    assert httpx.get(f"{stack.base}/openapi.json", timeout=30).status_code == 404


def test_fhir_rest_hook_notifications_are_valid_fhir(bus_settings, stack, receiver, redis_client, unique):
    from fhir.resources.R4B.bundle import Bundle

    path = f"/fhir/{unique}"
    subscribe(stack, SUB2, channel="fhir-rest-hook", endpoint=receiver.url(path))
    send_story(bus_settings, unique, n=1)
    person = person_of(redis_client, cerner_key(f"S{unique}"))
    got = wait_for(lambda: [x for x in receiver.for_path(path)
                            if any(e["resource"].get("id") == person for e in x["json"]["entry"])], what="rest-hook")
    bundle = Bundle.model_validate(got[0]["json"])
    assert bundle.type == "history"
    status = got[0]["json"]["entry"][0]["resource"]
    assert status["resourceType"] == "Parameters"
    assert {p["name"] for p in status["parameter"]} >= {"subscription", "type", "notification-event"}
    assert got[0]["headers"]["Content-Type"] == "application/fhir+json"
    # The admission's encounter rides along with the Patient, with its provenance.
    kinds = [e["resource"]["resourceType"] for e in got[0]["json"]["entry"]]
    assert "Encounter" in kinds and "Provenance" in kinds, kinds


def test_a_rest_hook_may_carry_several_changes_per_notification(bus_settings, stack, receiver, redis_client,
                                                                unique):
    """Several changes per Bundle is a rest-hook choice: every change still arrives once, numbered
    without gaps, each Bundle a valid FHIR history Bundle."""
    from fhir.resources.R4B.bundle import Bundle

    refused = httpx.post(f"{stack.base}/subscriptions", headers=SUB2, timeout=30, json={
        "channel": "webhook", "endpoint": receiver.url(f"/one/{unique}"), "max_per_notification": 5})
    assert refused.status_code == 400 and "fhir-rest-hook" in refused.text
    path = f"/bundled/{unique}"
    subscribe(stack, SUB2, channel="fhir-rest-hook", endpoint=receiver.url(path), max_per_notification=5)
    send_story(bus_settings, unique)
    person = person_of(redis_client, cerner_key(f"S{unique}"))

    def events() -> list[tuple[int, str]]:
        out = []
        for x in receiver.for_path(path):
            status = x["json"]["entry"][0]["resource"]
            for e in (p for p in status["parameter"] if p["name"] == "notification-event"):
                parts = {q["name"]: q for q in e["part"]}
                out.append((int(parts["event-number"]["valueString"]), parts["focus"]["valueReference"]["reference"]))
        return out

    def done() -> bool:
        version = redis_client.hget(f"carebus:record_meta:{person}", "version")
        return bool(version) and sum(1 for _, f in events() if f == f"Patient/{person}") >= int(version)

    wait_for(done, what=lambda: f"every version of {person} in the rest-hook notifications: {events()}")
    numbers = sorted(n for n, _ in events())
    assert numbers == list(range(1, len(numbers) + 1)), "numbered without gaps or repeats"
    for x in receiver.for_path(path):
        assert Bundle.model_validate(x["json"]).type == "history"


def test_server_sent_events_stream(bus_settings, stack, redis_client, unique):
    sub = subscribe(stack, SUB2, channel="sse")
    send_story(bus_settings, unique, n=1)
    person = person_of(redis_client, cerner_key(f"S{unique}"))
    with httpx.stream("GET", f"{stack.base}/subscriptions/{sub['id']}/stream", headers=SUB2, timeout=60) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        data = None
        deadline = time.monotonic() + 60
        for line in resp.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["person_id"] == person:
                data = json.loads(line[6:])
                break
            assert time.monotonic() < deadline
    assert data["record"]["person_id"] == person
    # Another client cannot open this subscriber's stream.
    assert httpx.get(f"{stack.base}/subscriptions/{sub['id']}/stream", headers=RFH, timeout=30).status_code == 404


def test_a_server_sent_events_stream_passes_a_change_the_feed_holds_twice_once(bus_settings, stack, redis_client,
                                                                             unique):
    """As push delivery does (test_a_change_the_feed_holds_twice_reaches_the_subscriber_once)."""
    sub = subscribe(stack, SUB2, channel="sse")
    send_story(bus_settings, unique, n=1)
    person = person_of(redis_client, cerner_key(f"S{unique}"))
    seen: list[int] = []
    with httpx.stream("GET", f"{stack.base}/subscriptions/{sub['id']}/stream", headers=SUB2, timeout=60) as resp:
        deadline = time.monotonic() + 90
        for line in resp.iter_lines():
            assert time.monotonic() < deadline, f"versions seen: {seen}"
            if not (line.startswith("data: ") and json.loads(line[6:])["person_id"] == person):
                continue
            seen.append(json.loads(line[6:])["version"])
            if len(seen) == 1:
                [original] = changes_of(bus_settings, person, expect=1)
                put_back(bus_settings, original, original)      # a replayed batch's copy, twice
                assert b"MSA|AA" in mllp_send(bus_settings.mllp_port, adt(f"S{unique}", f"S{unique}1", trigger="A08",
                                                                            **own_identity(unique)))[0]
            elif seen[-1] > seen[0]:
                break
    assert seen == [1, 2]
