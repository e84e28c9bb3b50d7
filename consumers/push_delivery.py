"""Push delivery: one dispatcher per subscription, each with its own Kafka consumer group.

Ordering: a dispatcher delivers in lanes, one per patient with changes waiting (the change feed
is keyed by person), up to LANES at once, fed continuously as changes arrive: each patient's
changes go one at a time in log order, while different patients' changes go in parallel over
kept-alive connections. Offsets are committed up to the oldest change not yet finished
(offset_watermark). A subscription taking several changes per notification goes batch by batch
instead, in log order. Isolation: every subscription has its own consumer and task, so a slow or
dead endpoint only holds up itself. Reliability: failures are retried with exponential
backoff and full jitter; after `max_attempts` the change is parked on carebus.dlq.delivery.v1
(key = subscription id) with the reason, the subscription is marked degraded, and delivery goes
on. Nothing is dropped silently: parked changes can be redelivered, and any time range can be
replayed. The offset is committed only after a change was delivered, filtered out or parked.

By default (max_attempts 0) nothing is parked: a failing subscriber's deliveries wait, retried
with capped backoff, while its status says `degraded` and carebus_delivery_waiting is 1 (alert on
it); they resume in order when it recovers. With parking chosen (max_attempts n), once one of a
patient's changes is parked, that patient's later changes are parked behind it ("held") until
redelivery sends them in their order: a patient's changes are never delivered out of order.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from urllib.parse import quote
from typing import Any

import aiohttp
import httpx
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from foundation.clock import now_ms
from foundation.config import Settings
from foundation.durable_producer import DurableProducer
from consumers.change_reader import open_subscription_consumer
from consumers.channels import CHANNELS
from consumers.notification_format import sign
from consumers.offset_watermark import OffsetWatermark
from consumers.repeated_changes import RepeatedChanges
from consumers.subscription_scope import ClientScope, Subscription, visible_change
from consumers.subscription_store import SubscriptionStore
from consumers.webhook_address_guard import GuardedResolver, webhook_policy
from schemas import codec, messages
from schemas.topics import DLQ_DELIVERY, PATIENT_CHANGES

log = logging.getLogger("carebus.delivery")
DELIVERED = Counter("carebus_delivery_total", "Deliveries by subscription and outcome", ["subscription", "outcome"])
WAITING = Gauge("carebus_delivery_waiting", "1 while a subscription's deliveries wait for a failing endpoint",
                ["subscription"])
DEGRADED_AFTER = 3   # failed attempts on one change before the subscription reads "degraded"
LATENCY = Histogram("carebus_delivery_seconds", "Change recorded to subscriber acknowledged", ["subscription"],
                    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float = 0.5
    cap_seconds: float = 60.0

    def delay(self, attempt: int) -> float:
        # "Full jitter": spreads retries of many subscribers hitting one recovering endpoint.
        return random.uniform(0, min(self.cap_seconds, self.base_seconds * 2 ** attempt))


LANES = 16          # patients delivered in parallel per subscription
BATCH = 500         # changes taken from the log and not yet finished, at most
IDLE_WAIT = 0.5     # seconds an idle dispatcher waits for a change before looking again
BUSY_WAIT = 0.01    # seconds a dispatcher with deliveries under way waits for more changes
COMMIT_EVERY = 0.2  # seconds between offset commits while changes keep coming


class DeliveryStopped(Exception):
    """The dispatcher was stopped while a delivery waited: leave the batch uncommitted."""


class Dispatcher:
    def __init__(self, settings: Settings, store: SubscriptionStore, producer: DurableProducer, http: httpx.AsyncClient,
                 subscription: Subscription, secret: str, created_at: int, scope: ClientScope,
                 retry: RetryPolicy) -> None:
        self.settings, self.store, self.producer = settings, store, producer
        # Its own connection pool too: one subscriber's stuck or broken connections must not
        # reach another's (`http` is kept for callers that pass a client for one-off work; its
        # timeout applies). aiohttp, not httpx, for the pushes: on this hot path its client
        # posts several times as many requests per CPU second (bench.pipeline_throughput).
        self._timeout = aiohttp.ClientTimeout(total=http.timeout.read or 10)
        self._session: aiohttp.ClientSession | None = None
        self.sub, self.secret, self.created_at, self.scope, self.retry = subscription, secret, created_at, scope, retry
        self.group = f"carebus-delivery-{subscription.subscription_id}"
        self._stop = asyncio.Event()
        # Its own thread for blocking Kafka calls: a shared pool would let many subscriptions
        # (or one stuck broker call) starve the others and the API.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sub-{subscription.subscription_id[:8]}")
        # Delivered and filtered counts are written to Redis once per batch, not per change.
        self._tally: dict[str, int] = {}
        self._last_delivered_at = 0
        # Changes the feed holds twice (a link worker's replayed batch) go out once.
        self.repeats = RepeatedChanges()

    async def _blocking(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self._thread, partial(fn, *args, **kwargs))

    def stop(self) -> None:
        self._stop.set()

    def _open_consumer(self) -> Consumer:
        return open_subscription_consumer(self.settings, self.group, self.created_at)

    async def run(self) -> None:
        """Deliver until stopped; any failure (broker restarting, coordinator moving) restarts the loop."""
        while not self._stop.is_set():
            try:
                await self._run_once()
            except Exception as exc:  # noqa: BLE001 - supervised: log, back off, resume from committed offsets
                log.warning("subscription %s: dispatcher restarting after %s", self.sub.subscription_id,
                            type(exc).__name__)
                await self.store.record(self.sub.subscription_id, restarts=1)
                await asyncio.sleep(1.0)

    async def _run_once(self) -> None:
        # From the committed offset again: what was taken and not finished must go out again.
        self.repeats.forget()
        consumer = await self._blocking(self._open_consumer)
        try:
            if self.sub.max_per_notification > 1 and CHANNELS[self.sub.channel].carries_several:
                await self._in_batches(consumer)
            else:
                await self._in_lanes(consumer)
        finally:
            await self._blocking(consumer.close)

    async def _in_batches(self, consumer: Consumer) -> None:
        """Several changes per notification: batch by batch, each committed when delivered."""
        while not self._stop.is_set():
            msgs = [m for m in await self._blocking(self._take, consumer) if not m.error()]
            if not msgs:
                continue
            await self.deliver_batch([m.value() for m in msgs])
            await self.flush_tally()
            await self._blocking(consumer.commit, asynchronous=False)

    async def _in_lanes(self, consumer: Consumer) -> None:
        """One change per notification, as a continuous flow: a lane per patient with changes
        waiting, up to LANES delivering at once, fed while they deliver. A change waits only for its
        own patient's earlier changes, never for a whole batch (measured under load: a batch at a
        time added some 130-280 ms at the median between the change and the subscriber). Offsets
        are committed every COMMIT_EVERY seconds up to the oldest change not yet finished."""
        watermark = OffsetWatermark()
        queues: dict[bytes, deque[tuple[int, int, bytes]]] = {}
        lanes: set[asyncio.Task] = set()
        failures: list[BaseException] = []
        gate = asyncio.Semaphore(LANES)
        room = asyncio.Event()      # set when half of the changes in flight are finished, or a lane failed
        committed_at = time.monotonic()

        async def lane(key: bytes) -> None:
            queue = queues[key]
            async with gate:
                while queue and not self._stop.is_set():
                    partition, offset, value = queue[0]      # one patient's changes, in log order
                    await self.handle(value)
                    queue.popleft()
                    watermark.finish(partition, offset)
                    if watermark.in_flight <= BATCH // 2:
                        room.set()
                if not queue:        # no await since the check: a change taken now starts a new lane
                    del queues[key]

        def ended(task: asyncio.Task) -> None:
            lanes.discard(task)
            if not task.cancelled() and task.exception() is not None:
                failures.append(task.exception())   # type: ignore[arg-type]
                room.set()

        try:
            while not self._stop.is_set() and not failures:
                if watermark.in_flight >= BATCH:
                    # Full: take more once half are finished (not one by one: each take is a hop
                    # to the Kafka thread and back).
                    room.clear()
                    try:
                        await asyncio.wait_for(room.wait(), IDLE_WAIT)
                    except asyncio.TimeoutError:
                        pass
                    msgs = []
                elif watermark.in_flight:
                    # Lanes busy: what arrives within BUSY_WAIT, in one take.
                    msgs = await self._blocking(consumer.consume, BATCH - watermark.in_flight, BUSY_WAIT)
                else:
                    msgs = await self._blocking(self._take, consumer)
                for m in msgs:
                    if m.error():
                        continue
                    key = m.key() or b""
                    watermark.take(m.partition(), m.offset())
                    queue = queues.get(key)
                    if queue is None:
                        queue = queues[key] = deque()
                        task = asyncio.create_task(lane(key))
                        lanes.add(task)
                        task.add_done_callback(ended)
                    queue.append((m.partition(), m.offset(), m.value()))
                if time.monotonic() - committed_at >= COMMIT_EVERY or not watermark.in_flight:
                    await self._commit(consumer, watermark)
                    committed_at = time.monotonic()
            if failures:
                raise failures[0]
        except BaseException:
            for task in lanes:       # a lane failed, or Kafka did: the restart delivers it all again
                task.cancel()
            raise
        finally:
            # On stop each lane ends after the change it is on (a retry's backoff ends at once);
            # what was finished is committed, the rest is delivered again after the restart.
            await asyncio.gather(*lanes, return_exceptions=True)
            await self._commit(consumer, watermark)

    async def _commit(self, consumer: Consumer, watermark: OffsetWatermark) -> None:
        offsets = watermark.to_commit()
        if not offsets:
            return
        await self.flush_tally()
        await self._blocking(consumer.commit, offsets=[TopicPartition(PATIENT_CHANGES.name, p, o)
                                                       for p, o in sorted(offsets.items())], asynchronous=False)
        watermark.committed(offsets)

    @staticmethod
    def _take(consumer: Consumer) -> list:
        # Wait for the first change (an idle subscription costs one call per IDLE_WAIT), then take
        # whatever else has already arrived, up to BATCH, without waiting: no latency is added.
        first = consumer.consume(1, IDLE_WAIT)
        return first + consumer.consume(BATCH - 1, 0) if first else first

    async def flush_tally(self) -> None:
        tally, self._tally = self._tally, {}
        if tally:
            await self.store.record(self.sub.subscription_id, **tally)
        if tally.get("delivered"):
            await self.store.note(self.sub.subscription_id, last_delivered_at=self._last_delivered_at, status="active")

    def _http(self) -> aiohttp.ClientSession:
        # Created on first use: an aiohttp session belongs to the running event loop.
        if self._session is None or self._session.closed:
            # The guarded resolver re-checks every connection's addresses (webhook_address_guard).
            self._session = aiohttp.ClientSession(timeout=self._timeout, connector=aiohttp.TCPConnector(
                limit=LANES, keepalive_timeout=30, resolver=GuardedResolver(webhook_policy(self.settings))))
        return self._session

    async def close(self) -> None:
        await self.flush_tally()
        if self._session is not None:
            await self._session.close()
        self._thread.shutdown(wait=False)

    async def deliver_batch(self, values: list[bytes]) -> None:
        """A batch of changes from the log, for a subscription taking several changes
        per notification: in log order, one notification at a time, so each patient's changes stay
        in order within and across notifications. (One change per notification goes in lanes:
        `_in_lanes`.)"""
        chunk: list[tuple[dict[str, Any], bytes]] = []
        for value in values:
            visible, _ = await self._admit(value, redelivery=False)
            if visible is not None:
                chunk.append((visible, value))
            if len(chunk) == self.sub.max_per_notification:
                await self.deliver_many(chunk)
                chunk = []
        if chunk:
            await self.deliver_many(chunk)

    async def _admit(self, value: bytes, redelivery: bool) -> tuple[dict[str, Any] | None, str]:
        """The change as this subscriber may see it, or None with why not (a repeat, filtered, or held)."""
        change = codec.decode(value, "RecordChange")
        if not redelivery and self.repeats.is_repeat(change["person_id"], change["version"], change["changed_at"]):
            DELIVERED.labels(self.sub.subscription_id, "repeat").inc()
            self._tally["repeats"] = self._tally.get("repeats", 0) + 1
            return None, "repeat"
        visible = visible_change(change, self.sub, self.scope)
        if visible is None:
            DELIVERED.labels(self.sub.subscription_id, "filtered").inc()
            self._tally["filtered"] = self._tally.get("filtered", 0) + 1
            return None, "filtered"
        if not redelivery and self.sub.max_attempts and await self.store.is_held(self.sub.subscription_id,
                                                                                 change["person_id"]):
            await self._park(value, "held behind an earlier parked change for this patient", change["person_id"])
            return None, "held"
        return visible, ""

    async def handle(self, value: bytes, redelivery: bool = False) -> str:
        visible, outcome = await self._admit(value, redelivery)
        if visible is None:
            return outcome
        return await self.deliver(visible, value, park=not redelivery)

    async def deliver(self, change: dict[str, Any], original: bytes, park: bool = True) -> str:
        """"delivered", or after max_attempts "parked" (or "failed", not parked, if `park` is False)."""
        return await self.deliver_many([(change, original)], park)

    async def deliver_many(self, changes: list[tuple[dict[str, Any], bytes]], park: bool = True) -> str:
        """One notification for these changes (one, unless the channel carries several): delivered
        together, or after max_attempts each parked with the reason."""
        last_error = ""
        attempt = 0
        try:
            while not self.sub.max_attempts or attempt < self.sub.max_attempts:
                if attempt:
                    try:      # the backoff, cut short if the dispatcher is stopped meanwhile
                        await asyncio.wait_for(self._stop.wait(), self.retry.delay(attempt))
                        raise DeliveryStopped()
                    except asyncio.TimeoutError:
                        pass
                outcome, last_error = await self._attempt([c for c, _ in changes])
                if outcome:
                    if attempt >= DEGRADED_AFTER:
                        await self.store.note(self.sub.subscription_id, status="active")
                    return outcome
                attempt += 1
                if attempt == DEGRADED_AFTER:
                    WAITING.labels(self.sub.subscription_id).set(1)
                    await self.store.note(self.sub.subscription_id, status="degraded", last_error=last_error)
        finally:
            if attempt >= DEGRADED_AFTER:
                WAITING.labels(self.sub.subscription_id).set(0)
        if not park:
            return "failed"
        for change, original in changes:
            await self._park(original, f"{last_error} after {self.sub.max_attempts} attempts", change["person_id"])
        return "parked"

    async def _attempt(self, changes: list[dict[str, Any]]) -> tuple[str, str]:
        """("delivered", "") or ("", why it failed)."""
        try:
            status = await self._post(changes)
            if 200 <= status < 300:
                now = time.time()
                for change in changes:
                    DELIVERED.labels(self.sub.subscription_id, "delivered").inc()
                    latency = max(0.0, now - change["changed_at"] / 1000)
                    LATENCY.labels(self.sub.subscription_id).observe(latency)
                    self._tally["delivered"] = self._tally.get("delivered", 0) + 1
                    # A running total: the dashboard's history charts mean latency per interval from it.
                    self._tally["latency_ms_total"] = self._tally.get("latency_ms_total", 0) + int(latency * 1000)
                self._last_delivered_at = int(now * 1000)
                return "delivered", ""
            # Only the status: an endpoint's error text can echo what it was sent.
            last_error = f"HTTP {status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            # One text for every way of not getting an answer: "refused" against "timed out" would
            # let a subscriber map which ports are open wherever its URL points.
            last_error = "no HTTP answer"
        except Exception as exc:  # noqa: BLE001 - any failure to hand over counts as a failed attempt
            last_error = type(exc).__name__
            log.warning("subscription %s: unexpected %s while posting", self.sub.subscription_id,
                        type(exc).__name__, exc_info=True)
        DELIVERED.labels(self.sub.subscription_id, "failed_attempt").inc()
        await self.store.record(self.sub.subscription_id, failed_attempts=1)
        return "", last_error

    async def _post(self, changes: list[dict[str, Any]]) -> int:
        body, content_type = await CHANNELS[self.sub.channel].render(
            changes, self.sub.subscription_id, lambda n: self.store.next_event_number(self.sub.subscription_id, n))
        timestamp = int(time.time())
        # One change: its event id; several: one key for exactly that run of changes.
        key = changes[0]["event_id"] if len(changes) == 1 else "changes-" + hashlib.sha256(
            "|".join(c["event_id"] for c in changes).encode()).hexdigest()[:32]
        headers = {"Content-Type": content_type, "Idempotency-Key": key,
                   "X-Carebus-Signature": sign(self.secret, body, timestamp),
                   "X-Carebus-Subscription": self.sub.subscription_id}
        # HTTP header values are ASCII; percent-encode anything else rather than fail the delivery.
        headers = {k: v if v.isascii() else quote(v, safe="") for k, v in headers.items()}
        async with self._http().post(self.sub.endpoint, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status

    async def _park(self, original: bytes, reason: str, person: str) -> None:
        # Held first: from now on this patient's later changes queue behind this one.
        await self.store.hold(self.sub.subscription_id, person)
        dead_id = str(uuid.uuid4())
        await self.producer.send(DLQ_DELIVERY.name, codec.encode("DeadLetter", messages.dead_letter(
            f"delivery:{self.sub.subscription_id}", "CAREBUS", reason, "DELIVERY_FAILED", original, "avro/binary",
            failed_at=now_ms(), dead_letter_id=dead_id, original_topic=PATIENT_CHANGES.name,
            attempts=self.sub.max_attempts)), key=self.sub.subscription_id, headers=codec.headers("DeadLetter"))
        DELIVERED.labels(self.sub.subscription_id, "parked").inc()
        await self.store.record(self.sub.subscription_id, parked=1)
        await self.store.note(self.sub.subscription_id, status="degraded", last_error=reason)
        log.warning("subscription %s: change parked on the dead-letter topic (%s)", self.sub.subscription_id, reason)
