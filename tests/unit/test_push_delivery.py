"""The dispatcher's rules for one change, against a real local HTTP endpoint (no Kafka, no Redis:
the subscription store and the producer are recorders). What reaches the subscriber, signed;
retries until it answers; parking after max_attempts; one reason for every way of not answering."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import Any

import httpx
from aiohttp import web

from consumers.notification_format import verify
from consumers.push_delivery import Dispatcher, RetryPolicy
from consumers.subscription_scope import ClientScope, Subscription
from foundation.config import load_settings
from schemas import codec
from tests.free_ports import free_port
from tests.unit.test_delivery_channels import CHANGE


class RecordingStore:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def record(self, sid: str, **counts: int) -> None:
        self.calls.append(("record", counts))

    async def note(self, sid: str, **values: str) -> None:
        self.calls.append(("note", values))

    async def hold(self, sid: str, person: str) -> None:
        self.calls.append(("hold", person))

    async def is_held(self, sid: str, person: str) -> bool:
        return False

    async def next_event_number(self, sid: str) -> int:
        return 1


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, topic: str, value: bytes, key: Any = None, headers: Any = None) -> None:
        self.sent.append((topic, value))


def run(answers: list[int], max_attempts: int, port: int | None = None) -> tuple[str, list[dict], RecordingProducer,
                                                                                  RecordingStore]:
    """Deliver CHANGE to an endpoint that answers each POST with the next status in `answers`."""
    received: list[dict] = []
    store, producer = RecordingStore(), RecordingProducer()

    async def go() -> str:
        async def hook(request: web.Request) -> web.Response:
            received.append({"headers": dict(request.headers), "body": await request.read()})
            return web.Response(status=answers[min(len(received), len(answers)) - 1])

        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        listen = free_port()
        await web.TCPSite(runner, "127.0.0.1", listen).start()
        settings = replace(load_settings(), allow_dev_secrets="1")      # development: plain http to this machine
        sub = Subscription("sub-1", "gp-federation", "webhook", f"http://127.0.0.1:{port or listen}/hook",
                           max_attempts=max_attempts)
        dispatcher = Dispatcher(settings, store, producer, httpx.AsyncClient(timeout=5), sub, "secret", 0,  # type: ignore[arg-type]
                                ClientScope("gp-federation", frozenset({"*"})), RetryPolicy(base_seconds=0.001))
        try:
            outcome = await dispatcher.deliver(CHANGE, codec.encode("RecordChange", CHANGE))
        finally:
            await dispatcher.close()
            await runner.cleanup()
        return outcome

    return asyncio.run(go()), received, producer, store


def test_a_change_arrives_signed_and_retried_until_the_subscriber_answers():
    outcome, received, producer, store = run([500, 503, 200], max_attempts=0)
    assert outcome == "delivered" and len(received) == 3 and not producer.sent
    last = {k.lower(): v for k, v in received[-1]["headers"].items()}
    assert verify("secret", received[-1]["body"], last["x-carebus-signature"], int(time.time()))
    assert last["idempotency-key"] == "e1" and json.loads(received[-1]["body"])["person_id"] == "PER-1"
    records = [c[1] for c in store.calls if c[0] == "record"]
    assert records[:2] == [{"failed_attempts": 1}] * 2 and records[-1]["delivered"] == 1


def test_after_max_attempts_the_change_is_parked_with_its_reason_and_the_patient_held():
    outcome, received, producer, store = run([503], max_attempts=2)
    assert outcome == "parked" and len(received) == 2
    [(topic, value)] = producer.sent
    dead = codec.decode(value, "DeadLetter")
    assert topic == "carebus.dlq.delivery.v1" and dead["reason"] == "HTTP 503 after 2 attempts"
    assert codec.decode(dead["payload"], "RecordChange")["event_id"] == "e1"
    assert ("hold", "PER-1") in store.calls


def test_no_answer_is_one_reason_whatever_the_cause():
    outcome, received, producer, _ = run([200], max_attempts=1, port=free_port())     # nothing listens there
    assert outcome == "parked" and not received
    assert codec.decode(producer.sent[0][1], "DeadLetter")["reason"] == "no HTTP answer after 1 attempts"
