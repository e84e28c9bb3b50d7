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

    async def next_event_number(self, sid: str, count: int = 1) -> int:
        self.numbered = getattr(self, "numbered", 0) + count
        return self.numbered


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, topic: str, value: bytes, key: Any = None, headers: Any = None) -> None:
        self.sent.append((topic, value))


def run(answers: list[int], max_attempts: int, port: int | None = None, channel: str = "webhook",
        max_per_notification: int = 1, batch: list[dict] | None = None
        ) -> tuple[str, list[dict], RecordingProducer, RecordingStore]:
    """Deliver CHANGE (or, with `batch`, those changes as one batch from the log) to an endpoint
    that answers each POST with the next status in `answers`."""
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
        sub = Subscription("sub-1", "gp-federation", channel, f"http://127.0.0.1:{port or listen}/hook",
                           max_attempts=max_attempts, max_per_notification=max_per_notification)
        dispatcher = Dispatcher(settings, store, producer, httpx.AsyncClient(timeout=5), sub, "secret", 0,  # type: ignore[arg-type]
                                ClientScope("gp-federation", frozenset({"*"})), RetryPolicy(base_seconds=0.001))
        try:
            if batch is None:
                outcome = await dispatcher.deliver(CHANGE, codec.encode("RecordChange", CHANGE))
            else:
                await dispatcher.deliver_batch([codec.encode("RecordChange", c) for c in batch])
                outcome = "batch"
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


def test_a_rest_hook_subscription_may_take_several_changes_per_notification_in_log_order():
    changes = [{**CHANGE, "event_id": f"e{i}", "person_id": f"PER-{i % 2}", "version": 1 + i // 2,
                "record": {**CHANGE["record"], "person_id": f"PER-{i % 2}"}} for i in range(5)]
    _, received, producer, store = run([200], max_attempts=0, channel="fhir-rest-hook", max_per_notification=3,
                                       batch=changes)
    assert len(received) == 2 and not producer.sent          # 3 + 2 changes: two requests, not five
    numbers, focus = [], []
    for r in received:
        status = json.loads(r["body"])["entry"][0]["resource"]
        for event in (p for p in status["parameter"] if p["name"] == "notification-event"):
            parts = {x["name"]: x for x in event["part"]}
            numbers.append(int(parts["event-number"]["valueString"]))
            focus.append(parts["focus"]["valueReference"]["reference"])
    assert numbers == [1, 2, 3, 4, 5]
    assert focus == [f"Patient/PER-{i % 2}" for i in range(5)]           # log order, each patient's in order
    keys = [{k.lower(): v for k, v in r["headers"].items()}["idempotency-key"] for r in received]
    assert len(set(keys)) == 2 and all(k.startswith("changes-") for k in keys)
    assert [c for c in store.calls if c[0] == "record"][-1][1]["delivered"] == 5
