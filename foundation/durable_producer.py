"""The one way carebus writes to Kafka: acks=all, idempotent, and awaitable per message.

Connectors acknowledge a sender only when `send` has resolved, i.e. when every in-sync
replica has the record. Bounded queues give backpressure: when the local queue is full,
`send` waits for deliveries instead of growing memory.
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from foundation.config import Settings
from schemas.topics import MAX_RECORD_BYTES


@dataclass(frozen=True)
class OutgoingRecord:
    topic: str
    value: bytes
    key: bytes | str | None = None
    headers: list[tuple[str, bytes]] | None = None
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class Delivered:
    topic: str
    partition: int
    offset: int


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    config = settings.kafka_client({
        "acks": "all",
        "enable.idempotence": True,
        "max.in.flight.requests.per.connection": 5,
        # A connector waits for each sender's message to be durable before it ACKs, so waiting to
        # fill a batch is latency a sender sees; under load librdkafka batches what queues up
        # behind the requests in flight anyway.
        "linger.ms": 1,
        "compression.type": "zstd",
        "queue.buffering.max.messages": 100_000,
        "queue.buffering.max.kbytes": 256 * 1024,
        "message.timeout.ms": 120_000,
        "message.max.bytes": MAX_RECORD_BYTES,
    })
    config.update(overrides)
    return config


class DurableProducer:
    """Thread-safe wrapper; a background thread serves delivery callbacks."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self._producer = Producer(producer_config(settings, **overrides))
        self._running = True
        self._poller = threading.Thread(target=self._poll_loop, name="kafka-delivery", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while self._running:
            self._producer.poll(0.05)

    def produce(self, topic: str, value: bytes, key: bytes | str | None = None,
                headers: list[tuple[str, bytes]] | None = None, timestamp_ms: int | None = None,
                on_delivery=None) -> None:
        kwargs: dict[str, Any] = {"key": key, "value": value, "headers": headers or []}
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        if on_delivery is not None:
            kwargs["on_delivery"] = on_delivery
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                return
            except BufferError:
                # Backpressure: the local queue is full, wait for the broker to catch up.
                self._producer.flush(0.1)

    def send_sync(self, topic: str, value: bytes, key: bytes | str | None = None,
                  headers: list[tuple[str, bytes]] | None = None, timestamp_ms: int | None = None,
                  timeout: float = 60.0) -> Delivered:
        done = threading.Event()
        result: dict[str, Any] = {}

        def callback(err: KafkaError | None, msg: Message) -> None:
            result["err"], result["msg"] = err, msg
            done.set()

        self.produce(topic, value, key, headers, timestamp_ms, callback)
        if not done.wait(timeout):
            raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT, "delivery not confirmed in time"))
        if result["err"] is not None:
            raise KafkaException(result["err"])
        msg = result["msg"]
        return Delivered(msg.topic(), msg.partition(), msg.offset())

    async def send(self, topic: str, value: bytes, key: bytes | str | None = None,
                   headers: list[tuple[str, bytes]] | None = None, timestamp_ms: int | None = None) -> Delivered:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivered] = loop.create_future()

        def callback(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                loop.call_soon_threadsafe(_settle, future, KafkaException(err), None)
            else:
                loop.call_soon_threadsafe(_settle, future, None, Delivered(msg.topic(), msg.partition(), msg.offset()))

        self.produce(topic, value, key, headers, timestamp_ms, callback)
        return await future

    async def send_all(self, records: list[OutgoingRecord]) -> None:
        """Produce every record and resolve once all are confirmed, or raise the first failure."""
        await self.produce_all(records)

    def produce_all(self, records: list[OutgoingRecord]) -> asyncio.Future[None]:
        """Produce every record now; the future resolves once all are confirmed, or fails with
        the first failure. One future and one wake-up of the event loop for the lot, not one per
        record: this is what lets a bulk file or a batch stream through the producer, and a caller
        may encode the next chunk while this one is in flight."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if not records:
            future.set_result(None)
            return future
        state = {"pending": len(records), "error": None}
        lock = threading.Lock()

        def callback(err: KafkaError | None, _msg: Message) -> None:
            with lock:
                if err is not None and state["error"] is None:
                    state["error"] = err
                state["pending"] -= 1
                finished = state["pending"] == 0
            if finished:
                error = state["error"]
                loop.call_soon_threadsafe(_settle, future, KafkaException(error) if error else None, None)

        for r in records:
            self.produce(r.topic, r.value, r.key, r.headers, r.timestamp_ms, callback)
        return future

    def flush(self, timeout: float = 30.0) -> int:
        return self._producer.flush(timeout)

    def close(self) -> None:
        self.flush()
        self._running = False
        self._poller.join(timeout=2)


def _settle(future: asyncio.Future, exc: BaseException | None, value: Any) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)
