"""Test-side clients of the running bus, as an outside system would use it: an MLLP sender, a
FHIR sender, a subscriber, a Kafka reader; and what a failed test prints about a person."""
from __future__ import annotations

import asyncio
import time

import httpx

from schemas import codec
from schemas.topics import DLQ_CONNECTORS, SOURCE_EVENTS
from simulator.traffic import MllpClient
from streams.identity_store import RedisGraphStore
from tests.builders import adt, own_identity
from tests.kafka_reading import read_all


def mllp_send(port: int, *messages: bytes) -> list[bytes]:
    async def go():
        client = MllpClient("127.0.0.1", port)
        out = [await client.send(m) for m in messages]
        await client.close()
        return out
    return asyncio.run(go())


def events_for(settings, local_id: str, expect: int | None = None, timeout: float = 30):
    msgs = read_all(settings, SOURCE_EVENTS.name, expect=expect, timeout=timeout,
                    predicate=lambda m: (m.key() or b"").endswith(f"|{local_id}".encode()))
    return [codec.decode(m.value(), "SourcePatientEvent") for m in msgs]


def dead_letters(settings, marker: bytes, expect: int = 1):
    msgs = read_all(settings, DLQ_CONNECTORS.name, expect=expect,
                    predicate=lambda m: marker in codec.decode(m.value())["payload"])
    return [codec.decode(m.value(), "DeadLetter") for m in msgs]


def send_fhir(settings, path: str, body: bytes, token: str | None = "dev-emis-token", ods: str = "F84001"):
    headers = {"Content-Type": "application/fhir+json", "X-Ods-Code": ods}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(f"http://127.0.0.1:{settings.http_port}{path}", content=body, headers=headers, timeout=30)


SUB2 = {"Authorization": "Bearer dev-subscriber2-token"}     # gp-federation, all organisations


RFH = {"Authorization": "Bearer dev-subscriber-token"}       # royal-free-epr, RAL only, sensitive withheld


AUDIT = {"Authorization": "Bearer dev-auditor-token"}


def subscribe(delivery, headers, **body) -> dict:
    resp = httpx.post(f"{delivery.base}/subscriptions", json=body, headers=headers, timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()


def wait_for(predicate, timeout=180.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


def person_story(redis_client, person: str) -> str:
    """What a failed delivery test prints: who is in the person (joined to another test's
    patient?), their demographics, and how far its record had got."""
    graph = RedisGraphStore(redis_client)
    members = graph.members(person)
    return (f"person {person}: members {members}, demographics {graph.demographics(members)}, "
            f"record {redis_client.hgetall(f'carebus:record_meta:{person}')}")


def person_of(redis_client, key: str) -> str:
    return wait_for(lambda: RedisGraphStore(redis_client).person_of(key) or "", what="linking")


def delivery_state(redis_client, subscription_id: str, person: str, key: str) -> str:
    """What a timed-out delivery test prints: the subscription's counters and the person's record."""
    def text(h: dict) -> dict:
        return {k.decode(): v.decode()[:80] for k, v in h.items()}
    return (f"delivery of {person}: subscription {text(redis_client.hgetall(f'carebus:delivery:{subscription_id}'))}, "
            f"record {text(redis_client.hgetall(f'carebus:record_meta:{person}'))}, "
            f"person of the source now {RedisGraphStore(redis_client).person_of(key)}")


def send_story(bus_settings, unique, n=3, extra=""):
    """An admission, an update and a discharge for one new patient at the Royal Free (RAL)."""
    identity = own_identity(unique)
    msgs = [adt(f"S{unique}", f"S{unique}{i}", trigger=t, extra=extra, **identity)
            for i, t in enumerate(["A01", "A08", "A03"][:n])]
    acks = mllp_send(bus_settings.mllp_port, *msgs)
    assert all(b"MSA|AA" in a for a in acks)


def parked_with(settings, needle: str) -> list[dict]:
    found = read_all(settings, DLQ_CONNECTORS.name, timeout=15,
                     predicate=lambda m: needle.encode() in (m.value() or b""))
    return [codec.decode(m.value(), "DeadLetter") for m in found]


def segment(ack: bytes, name: bytes) -> list[bytes]:
    return next((s.split(b"|") for s in ack.split(b"\r") if s.startswith(name + b"|")), [])
