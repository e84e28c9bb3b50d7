"""Faults and limits, through the real interfaces: oversized input, many and misbehaving
senders, file drops that cannot be loaded, and a Redis outage while traffic flows.

It runs after the linking tests (file order): its odd patients (a thousand problems on one, a
hundred and fifty at one address) would otherwise be in the topic that the linkage-estimation
test fits its parameters from."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import time

import httpx
import pytest

from carebus import redis_server
from schemas import codec
from schemas.topics import DEAD_LETTER_HEAD_BYTES, MAX_INBOUND_BYTES, PATIENT_CHANGES, RAW, SOURCE_EVENTS
from simulator.traffic import MllpClient, ack_code, vision_csv, write_drop_file
from tests.conftest import ServiceProcess
from tests.kafka_reading import read_all
from tests.builders import adt
from tests.bus_clients import mllp_send
from tests.builders import own_identity
from tests.bus_clients import person_story, wait_for
from tests.bus_clients import parked_with, segment

pytestmark = pytest.mark.integration
EMIS = {"Authorization": "Bearer dev-emis-token", "X-Ods-Code": "F84001"}


# ---- sizes ---------------------------------------------------------------------------------------
def test_a_message_over_the_old_one_megabyte_kafka_default_is_stored(bus_settings, connectors, unique):
    note = "NTE|1||" + "long clinical report text " * 100_000 + "\r"      # about 2.5 MB
    ack = mllp_send(bus_settings.mllp_port, adt(f"BIG{unique}", f"BIG{unique}", extra=note, **own_identity(unique)))[0]
    assert ack_code(ack) == "AA", ack[:300]
    raw = read_all(bus_settings, RAW.name, expect=1, timeout=60, predicate=lambda m: f"BIG{unique}".encode() in m.value())
    assert len(codec.decode(raw[0].value(), "RawMessage")["payload"]) > 2_000_000


def test_an_mllp_message_over_the_limit_is_refused_parked_and_the_connection_goes_on(bus_settings, connectors, unique):
    huge = adt(f"HUGE{unique}", f"HUGE{unique}", extra="NTE|1||" + "x" * (MAX_INBOUND_BYTES + 1000) + "\r",
               **own_identity(unique))

    async def go() -> tuple[bytes, bytes]:
        client = MllpClient("127.0.0.1", bus_settings.mllp_port)
        refused = await client.send(huge, timeout=120)
        # The same connection goes on.
        after = await client.send(adt(f"AFTER{unique}", f"AFTER{unique}", **own_identity(f"AFTER{unique}")))
        await client.close()
        return refused, after

    refused, after = asyncio.run(go())
    assert ack_code(refused) == "AR" and b"TOO_LARGE" in refused
    assert segment(refused, b"MSA")[2] == f"HUGE{unique}".encode(), "the AR names the refused message"
    assert ack_code(after) == "AA"
    parked = parked_with(bus_settings, f"HUGE{unique}")
    assert parked and parked[0]["error_code"] == "TOO_LARGE"
    assert parked[0]["payload"].startswith(b"MSH|") and len(parked[0]["payload"]) == DEAD_LETTER_HEAD_BYTES
    assert "exceeds" in parked[0]["reason"]


def test_a_fhir_body_over_the_limit_gets_413_and_is_parked(bus_settings, connectors, unique):
    body = json.dumps({"resourceType": "Bundle", "id": f"huge{unique}", "type": "collection",
                       "entry": [{"resource": {"resourceType": "Basic", "id": "x" * (MAX_INBOUND_BYTES + 10)}}]})
    r = httpx.post(f"http://127.0.0.1:{bus_settings.http_port}/fhir/emis", content=body, headers=EMIS, timeout=120)
    assert r.status_code == 413 and r.json()["resourceType"] == "OperationOutcome"
    assert parked_with(bus_settings, f"huge{unique}")[0]["error_code"] == "TOO_LARGE"


def test_deeply_nested_json_is_a_fhir_error_and_parked(bus_settings, connectors, unique):
    body = '{"resourceType": "Bundle", "id": "nest' + unique + '", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    r = httpx.post(f"http://127.0.0.1:{bus_settings.http_port}/fhir/emis", content=body, headers=EMIS, timeout=60)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    assert parked_with(bus_settings, f"nest{unique}")[0]["error_code"] == "FHIR_NOT_JSON"


def test_a_transaction_response_has_one_entry_per_request_entry_in_order(bus_settings, connectors, unique):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "id": f"T{unique}",
                                               "name": [{"family": "Entry", "given": ["Three"]}],
                                               "birthDate": "1970-01-01", "gender": "male"}},
        {"resource": {"resourceType": "Condition", "id": f"c1{unique}", "subject": {"reference": "urn:uuid:p"},
                      "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]}}},
        {"resource": {"resourceType": "Condition", "id": f"c2{unique}", "subject": {"reference": "urn:uuid:p"},
                      "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]}}}]}
    r = httpx.post(f"http://127.0.0.1:{bus_settings.http_port}/fhir/emis", json=bundle, headers=EMIS, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "transaction-response"
    assert len(body["entry"]) == 3 and all(e["response"]["status"].startswith("201") for e in body["entry"])


# ---- many and misbehaving senders -------------------------------------------------------------------
def test_every_one_of_150_concurrent_senders_gets_an_ack(bus_settings, connectors, unique):
    async def one(i: int) -> bytes:
        client = MllpClient("127.0.0.1", bus_settings.mllp_port)
        try:
            return await client.send(adt(f"C{i}{unique}", f"C{i}{unique}", **own_identity(f"C{i}{unique}")), timeout=120)
        finally:
            await client.close()

    async def go() -> list[bytes]:
        return await asyncio.gather(*(one(i) for i in range(150)))

    assert [ack_code(a) for a in asyncio.run(go())] == ["AA"] * 150


@pytest.fixture(scope="module")
def strict_connectors(bus_settings, service_env, tmp_path_factory):
    """A second connector process with tight MLLP limits (its own ports and drop folder)."""
    env = {**service_env, "CAREBUS_MLLP_PORT": "22675", "CAREBUS_HTTP_PORT": "28180",
           "CAREBUS_DROP_DIR": str(tmp_path_factory.mktemp("strict-drop")),
           "CAREBUS_MLLP_IDLE_TIMEOUT": "2", "CAREBUS_MLLP_MESSAGE_TIMEOUT": "2", "CAREBUS_MLLP_MAX_CONNECTIONS": "5"}
    service = ServiceProcess(["connectors"], env, "http://127.0.0.1:28180/ready",
                             bus_settings.data_dir / "strict-connectors.log").start()
    yield service
    service.stop()


def closed_by_peer(sock: socket.socket, within: float = 20.0) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_idle_and_stalled_connections_are_closed(strict_connectors):
    idle = socket.create_connection(("127.0.0.1", 22675))
    stalled = socket.create_connection(("127.0.0.1", 22675))
    stalled.sendall(b"\x0bMSH|^~\\&|CERNER|RAL|")      # a message that never finishes
    assert closed_by_peer(idle) and closed_by_peer(stalled)
    idle.close()
    stalled.close()


def test_past_the_connection_cap_a_sender_is_told_to_retry(strict_connectors, unique):
    held = [socket.create_connection(("127.0.0.1", 22675)) for _ in range(5)]
    try:
        time.sleep(0.3)
        extra = mllp_send(22675, adt(f"CAP{unique}", f"CAP{unique}", **own_identity(f"CAP{unique}")))[0]
        assert ack_code(extra) == "AE" and b"TOO_MANY_CONNECTIONS" in extra
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    assert ack_code(mllp_send(22675, adt(f"CAP2{unique}", f"CAP2{unique}", **own_identity(f"CAP2{unique}")))[0]) == "AA"


# ---- file drops -----------------------------------------------------------------------------------
def test_a_large_extract_is_loaded_by_the_extract_workers_whole_and_once(bus_settings, connectors, unique):
    """Over PARALLEL_FROM_BYTES a Vision extract is parsed and encoded in worker processes: every
    patient arrives once, a bad row is parked with its own line number, the file is processed."""
    import random
    from dataclasses import replace

    from producers.bulk_extract_workers import PARALLEL_FROM_BYTES
    from simulator import population as pop
    from simulator.traffic import MessageFactory

    recs = [replace(r, local_id=f"L{i}{unique}") for i, r in
            enumerate(r for r in pop.build(11000, seed=11).records if r.system == "INPS_VISION")]
    factory = MessageFactory(random.Random(11))
    rows = [row for r in recs for row in factory.vision_rows(r)]
    bad_at = len(rows) // 2
    rows.insert(bad_at, {"record_type": "PROBLEM", "patient_id": f"L0{unique}", "practice_ods": recs[0].ods})
    extract = vision_csv(rows)
    assert len(extract) >= PARALLEL_FROM_BYTES
    name = f"large-{unique}.csv"
    drop = bus_settings.data_dir / "drop" / "vision"
    write_drop_file(drop / "incoming", name, extract)
    wait_for(lambda: (drop / "processed" / name).exists(), timeout=120, what="the large extract processed")
    events = [codec.decode(m.value(), "SourcePatientEvent") for m in read_all(
        bus_settings, SOURCE_EVENTS.name, expect=len(recs), timeout=60,
        predicate=lambda m: (m.key() or b"").endswith(unique.encode()) and b"vision.extract" in m.value())]
    assert sorted(e["patient"]["local_identifier"]["value"] for e in events) == sorted(r.local_id for r in recs)
    assert {e["envelope"]["correlation_id"] for e in events} == {name}
    parked = parked_with(bus_settings, name)
    assert [d["reason"] for d in parked] == [f"{name}: line {bad_at + 2}: PROBLEM row has no code"]
    [dead] = parked
    assert dead["error_code"] == "VISION_BAD_ROW" and f"L0{unique}".encode() in dead["payload"]


def test_an_extract_dropped_again_is_published_once_with_one_marker_per_chunk(bus_settings, connectors, unique,
                                                                               redis_client):
    """The same extract dropped twice (a resend after a lost confirmation, or an operator's second
    copy): its events are published once, and Redis holds one published-marker per chunk of
    events, not one per patient."""
    import random
    from dataclasses import replace

    from producers.ingest_pipeline import BULK_CHUNK_EVENTS
    from producers.published_markers import KEY_PREFIX
    from simulator import population as pop
    from simulator.traffic import MessageFactory

    recs = [replace(r, local_id=f"M{i}{unique}") for i, r in
            enumerate(r for r in pop.build(11000, seed=12).records if r.system == "INPS_VISION")]
    assert BULK_CHUNK_EVENTS < len(recs) <= 2 * BULK_CHUNK_EVENTS
    factory = MessageFactory(random.Random(12))
    extract = vision_csv([row for r in recs for row in factory.vision_rows(r)])
    drop = bus_settings.data_dir / "drop" / "vision"
    def markers() -> int:
        return sum(1 for _ in redis_client.scan_iter(f"{KEY_PREFIX}*", count=10_000))

    markers_before = markers()
    for copy in ("first", "second"):
        name = f"again-{copy}-{unique}.csv"
        write_drop_file(drop / "incoming", name, extract)
        wait_for(lambda: (drop / "processed" / name).exists(), timeout=120, what=f"the {copy} copy processed")
    # A file is moved to processed/ only once all its events are durable: the topic holds them all.
    events = read_all(bus_settings, SOURCE_EVENTS.name, timeout=60,
                      predicate=lambda m: (m.key() or b"").endswith(unique.encode()))
    assert len(events) == len(recs)
    assert {codec.decode(m.value(), "SourcePatientEvent")["envelope"]["correlation_id"] for m in events} == \
        {f"again-first-{unique}.csv"}
    assert markers() - markers_before == 2


def test_unloadable_files_go_to_failed_with_a_reason_and_later_files_still_load(bus_settings, connectors, unique,
                                                                                tmp_path):
    vision = bus_settings.data_dir / "drop" / "vision"
    write_drop_file(vision / "incoming", f"bad-header-{unique}.csv", b"who,what\n1,2\n")
    outside = tmp_path / "secret.csv"
    outside.write_bytes(vision_csv([{"record_type": "PATIENT", "patient_id": f"LINK{unique}", "practice_ods": "E87001",
                                     "family": "Link", "given": "Sym", "birth_date": "1950-01-01", "sex": "F"}]))
    os.symlink(outside, vision / "incoming" / f"link-{unique}.csv")
    # Over 1 MB (Kafka's default limit) from a long history, not from many patients: the shared
    # index stays as the linking tests expect it.
    rows = [{"record_type": "PATIENT", "patient_id": f"L{unique}", "practice_ods": "E87001", "family": "Largefile",
             "given": "Extract", "birth_date": "1933-02-03", "sex": "M", "postcode": "N1 1AA"}]
    rows += [{"record_type": "PROBLEM", "patient_id": f"L{unique}", "practice_ods": "E87001", "item_id": f"p{i}",
              "code_system": "SNOMED", "code": "38341003", "display": f"hypertension review {i} " + "note " * 200,
              "status": "active", "date": "2020-03-01"} for i in range(1_100)]
    big = vision_csv(rows)
    assert len(big) > 1_000_000
    write_drop_file(vision / "incoming", f"large-{unique}.csv", big)

    wait_for(lambda: (vision / "processed" / f"large-{unique}.csv").exists(), timeout=180)
    # Files load in name order: the link comes after the large file, and its reason is written
    # once its dead letter is in Kafka.
    wait_for(lambda: (vision / "failed" / f"link-{unique}.csv.reason").exists(), timeout=60)
    assert (vision / "failed" / f"bad-header-{unique}.csv").exists()
    assert "header" in (vision / "failed" / f"bad-header-{unique}.csv.reason").read_text()
    assert not (vision / "processed" / f"bad-header-{unique}.csv").exists()
    assert "SYMLINK_REFUSED" in (vision / "failed" / f"link-{unique}.csv.reason").read_text()
    assert outside.exists(), "the link's target is not touched"
    assert not read_all(bus_settings, RAW.name, timeout=5, predicate=lambda m: f"LINK{unique}".encode() in m.value())


# ---- a Redis outage -------------------------------------------------------------------------------
def test_a_redis_outage_costs_no_ack_and_no_event(bus_settings, connectors, link_workers, delivery, redis_client,
                                                  unique):
    """Redis stopped while HL7 traffic flows: every message is still ACKed (Kafka has it), the
    link workers wait instead of parking, and when Redis is back every event reaches the record;
    the connectors' file drop and the delivery API work again without a restart."""
    from streams.identity_store import RedisGraphStore

    from tests.conftest import LINK_WORKER_STATUS_PORTS

    def readiness() -> list[tuple[int, dict]]:
        out = []
        for port in LINK_WORKER_STATUS_PORTS:
            r = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=10)
            out.append((r.status_code, r.json()))
        return out

    redis_server.down(bus_settings)
    try:
        acks = mllp_send(bus_settings.mllp_port, *[adt(f"R{i}{unique}", f"R{i}{unique}", **own_identity(f"R{i}{unique}"))
                                                   for i in range(20)])
        assert [ack_code(a) for a in acks] == ["AA"] * 20
        # The workers that met the outage say so on /ready.
        waiting = wait_for(lambda: [body for code, body in readiness() if code == 503], what="a worker waiting")
        assert waiting[0]["waiting_for"] == "Redis" and waiting[0]["state"] == "waiting"
    finally:
        redis_server.up(bus_settings)
    graph = RedisGraphStore(redis_client)
    keys = [f"CERNER_MILLENNIUM|urn:carebus:id:cerner:mrn:RAL|R{i}{unique}" for i in range(20)]
    wait_for(lambda: all(graph.persons_of(keys).get(k) for k in keys), timeout=120)
    assert not parked_with(bus_settings, f"R0{unique}")
    wait_for(lambda: all(code == 200 for code, _ in readiness()), what="workers ready again")
    write_drop_file(bus_settings.data_dir / "drop" / "vision" / "incoming", f"after-{unique}.csv",
                    vision_csv([{"record_type": "PATIENT", "patient_id": f"A{unique}", "practice_ods": "E87001",
                                 "family": "After", "given": "Outage", "birth_date": "1970-03-04", "sex": "F"}]))
    wait_for(lambda: (bus_settings.data_dir / "drop" / "vision" / "processed" / f"after-{unique}.csv").exists())
    assert httpx.get(f"http://127.0.0.1:{bus_settings.http_port}/ready", timeout=10).status_code == 200
    auditor = {"Authorization": "Bearer dev-auditor-token"}
    assert httpx.get(f"{delivery.base}/reviews", headers=auditor, timeout=30).status_code in (200, 403)
    monitor = httpx.get(f"{delivery.base}/monitor", headers=auditor, timeout=30)
    assert monitor.status_code == 200
    assert {w["state"] for w in monitor.json()["link_workers"].values()} == {"running"}


# ---- a subscriber outage ------------------------------------------------------------------------
def delivery_stats(redis_client, subscription_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in redis_client.hgetall(f"carebus:delivery:{subscription_id}").items()}


def test_by_default_a_subscriber_outage_waits_and_loses_nothing_and_no_order(bus_settings, connectors, link_workers,
                                                                            delivery, redis_client, unique):
    from tests.builders import cerner_key
    from tests.bus_clients import SUB2, person_of, send_story, subscribe
    from tests.webhook_receiver import Receiver

    down = Receiver()
    path = f"/outage/{unique}"
    sub = subscribe(delivery, SUB2, channel="webhook", endpoint=down.url(path))
    subscribed_at = int(time.time() * 1000)
    down.failing = True
    try:
        send_story(bus_settings, unique)
        person = person_of(redis_client, cerner_key(f"S{unique}"))
        wait_for(lambda: delivery_stats(redis_client, sub["id"]).get("status") == "degraded", what="degraded")
    finally:
        down.failing = False

    def all_delivered():
        final = int(redis_client.hget(f"carebus:record_meta:{person}", "version") or 0)
        got = [r["json"]["version"] for r in down.for_path(path) if r["json"]["person_id"] == person]
        return got if got and got[-1] == final else None

    versions = wait_for(all_delivered, what="delivery after the outage")
    stats = delivery_stats(redis_client, sub["id"])
    # The person is usually new (versions from 1), but the linker may join this patient to an
    # earlier test's person: what must hold is that every change published after subscribing
    # arrives, once, in order.
    published = sorted(codec.decode(m.value(), "RecordChange")["version"] for m in read_all(
        bus_settings, PATIENT_CHANGES.name, timeout=15,
        predicate=lambda m: m.key() == person.encode() and m.timestamp()[1] >= subscribed_at))
    assert published and versions == list(range(versions[0], versions[-1] + 1)), \
        f"every change, once, in order: {versions} {stats}"
    assert versions[0] <= published[0] and set(published) <= set(versions), (versions, published,
                                                                          person_story(redis_client, person))
    assert int(stats.get("parked", 0)) == 0 and int(stats["failed_attempts"]) >= 3, stats
    wait_for(lambda: delivery_stats(redis_client, sub["id"]).get("status") == "active", what="active again")
    down.close()


def test_with_parking_chosen_a_patients_later_changes_wait_behind_the_parked_one(bus_settings, connectors,
                                                                               link_workers, delivery, redis_client,
                                                                               unique):
    from tests.builders import cerner_key, unique_nhs
    from tests.bus_clients import SUB2, person_of, subscribe
    from tests.webhook_receiver import Receiver

    down = Receiver()
    path = f"/parking/{unique}"
    sub = subscribe(delivery, SUB2, channel="webhook", endpoint=down.url(path), max_attempts=2)
    nhs = unique_nhs(unique)
    down.failing = True
    try:
        assert ack_code(mllp_send(bus_settings.mllp_port, adt(f"S{unique}", f"S{unique}0", nhs=nhs))[0]) == "AA"
        person = person_of(redis_client, cerner_key(f"S{unique}"))
        wait_for(lambda: int(delivery_stats(redis_client, sub["id"]).get("parked", 0)) >= 1, what="parked")
    finally:
        down.failing = False
    # The endpoint is back, but this patient's next change must not overtake the parked one.
    assert ack_code(mllp_send(bus_settings.mllp_port, adt(f"S{unique}", f"S{unique}1", nhs=nhs, trigger="A08"))[0]) == "AA"
    wait_for(lambda: int(delivery_stats(redis_client, sub["id"]).get("parked", 0)) >= 2, what="held behind")
    assert not [r for r in down.for_path(path) if r["json"]["person_id"] == person]
    resp = httpx.post(f"{delivery.base}/subscriptions/{sub['id']}/dead-letters/redeliver", headers=SUB2, timeout=120)
    assert resp.status_code == 200, resp.text
    versions = [r["json"]["version"] for r in down.for_path(path) if r["json"]["person_id"] == person]
    assert versions == [1, 2], person_story(redis_client, person)
    # Released: the patient's next change goes straight through.
    assert ack_code(mllp_send(bus_settings.mllp_port, adt(f"S{unique}", f"S{unique}2", nhs=nhs, trigger="A03"))[0]) == "AA"
    wait_for(lambda: [r for r in down.for_path(path) if r["json"]["person_id"] == person and r["json"]["version"] == 3],
             what="the next change delivered directly")
    down.close()
