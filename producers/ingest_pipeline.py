"""The path every inbound message takes after mapping: raw copy, canonical events, dead letters.

"Nothing lost": the raw original and the canonical events (each pointing at the raw copy by its
key) are produced together, and only when Kafka has acknowledged all of them (acks=all) does the
caller acknowledge the sender; if any is not confirmed the sender is told to resend, and the
resent events keep their ids, so the linker de-duplicates them. Rejected input goes to the connectors'
dead-letter topic with its reason and original bytes before the sender hears the rejection.
Event ids are deterministic, and a Redis marker set after a successful publish lets a
redelivered message be acknowledged again without publishing it twice (published_markers).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Counter, Histogram

from foundation.clock import now_ms
from foundation.durable_producer import DurableProducer, OutgoingRecord
from foundation.log_privacy import pseudonym
from producers.published_markers import PublishedMarkers, chunk_marker
from schemas.source_systems import SourceSystemProfile
from schemas import codec, messages
from schemas.topics import (DEAD_LETTER_HEAD_BYTES, DLQ_CONNECTORS, MAX_INBOUND_BYTES, MAX_RECORD_BYTES, RAW,
                            SOURCE_EVENTS, source_event_key)
from schemas.errors import CarebusError, Unavailable

log = logging.getLogger("carebus.ingest")

MESSAGES = Counter("carebus_connector_messages_total", "Inbound messages by connector and outcome",
                   ["connector", "channel", "outcome"])
EVENTS = Counter("carebus_connector_events_total", "Canonical events published", ["connector"])
LATENCY = Histogram("carebus_connector_ingest_seconds", "Receive to durable-in-Kafka time", ["connector", "channel"])
# Events of one bulk file produced and awaited together: large enough to stream, small enough
# that the connector's other senders are not held up while a chunk is encoded.
BULK_CHUNK_EVENTS = 2000
BULK_CHUNKS_IN_FLIGHT = 3


class StoreUnavailable(Unavailable):
    """Kafka did not confirm; the sender must retry (HL7 AE, HTTP 503)."""


class MessageTooLarge(CarebusError, ValueError):
    """The bus will never store this message: the sender must not retry it (HL7 AR, HTTP 413).
    It has been parked on the dead-letter topic by the time this is raised."""


@dataclass
class IngestResult:
    accepted: bool
    event_ids: list[str] = field(default_factory=list)
    duplicate: bool = False
    reason: str = ""
    error_code: str = ""


@dataclass(frozen=True)
class EncodedEvent:
    """A source event already Avro-encoded, its raw reference set (bulk_extract_workers makes them)."""
    event_id: str
    key: str
    value: bytes
    timestamp_ms: int
    ods: str


def raw_reference(raw: bytes, profile: SourceSystemProfile) -> dict[str, Any]:
    """How every event of a message points at its original on the raw topic: by key (raw_id), so
    the events need not wait for the original's offset (partition/offset -1) and both go out in
    one round trip."""
    sha = hashlib.sha256(raw).hexdigest()
    raw_id = hashlib.sha256(f"{profile.code}|{sha}".encode()).hexdigest()[:32]
    return {"raw_id": raw_id, "sha256": sha, "topic": RAW.name, "partition": -1, "offset": -1}


def encode_event(event: dict[str, Any], ref: dict[str, Any]) -> EncodedEvent:
    """A source event pointed at its original (`raw_reference`) and Avro-encoded: what the pipeline
    produces, made here or in a bulk extract worker."""
    event["envelope"]["raw_message"] = ref
    return EncodedEvent(event["envelope"]["event_id"], source_event_key(event),
                        codec.encode("SourcePatientEvent", event), event["envelope"]["occurred_at"],
                        event["envelope"]["source_ods_code"])


def _abandon(in_flight: list[tuple[asyncio.Future[None], list[str]]]) -> None:
    # Chunks still in flight when the publish failed: nobody waits for them now (they are not
    # marked published, so a retry sends them again), but their outcome must still be collected.
    for future, _ in in_flight:
        future.add_done_callback(lambda f: f.cancelled() or f.exception())


class IngestPipeline:
    def __init__(self, producer: DurableProducer, redis_client: aioredis.Redis | None) -> None:
        self.producer = producer
        self.markers = PublishedMarkers(redis_client)

    async def _confirmed(self, delivery: asyncio.Future[None], event_ids: list[str]) -> None:
        await delivery
        self.markers.mark(event_ids)

    async def publish(self, raw: bytes, profile: SourceSystemProfile, ods: str, channel: str,
                      content_type: str, events: list[dict[str, Any]], received_at_ms: int) -> IngestResult:
        """Store raw + events durably. Raises StoreUnavailable if Kafka does not confirm.

        A bulk file's events go in chunks of BULK_CHUNK_EVENTS, each produced at once and
        confirmed as a whole, up to BULK_CHUNKS_IN_FLIGHT at a time; the original goes with the
        first chunk. A crash part-way repeats only the chunks not yet marked as published."""
        ref = raw_reference(raw, profile)
        return await self._publish(raw, ref, profile, ods, channel, content_type, events,
                                   [e["envelope"]["event_id"] for e in events],
                                   lambda chunk: [encode_event(e, ref) for e in chunk], received_at_ms)

    async def publish_encoded(self, raw: bytes, ref: dict[str, Any], profile: SourceSystemProfile, ods: str,
                              channel: str, content_type: str, events: list[EncodedEvent],
                              received_at_ms: int) -> IngestResult:
        """`publish` for events already encoded with `encode_event` and this `ref`, as
        bulk_extract_workers makes them."""
        return await self._publish(raw, ref, profile, ods, channel, content_type, events,
                                   [e.event_id for e in events], lambda chunk: chunk, received_at_ms)

    async def _publish(self, raw: bytes, ref: dict[str, Any], profile: SourceSystemProfile, ods: str, channel: str,
                       content_type: str, events: list[Any], ids: list[str],
                       encoded: Callable[[list[Any]], list[EncodedEvent]], received_at_ms: int) -> IngestResult:
        started = time.perf_counter()
        if len(raw) > MAX_INBOUND_BYTES:
            await self.refuse_oversized(raw, len(raw), profile, channel, content_type)
        raw_id, sha = ref["raw_id"], ref["sha256"]
        published = 0
        in_flight: list[tuple[asyncio.Future[None], list[str]]] = []
        try:
            for first in range(0, max(len(events), 1), BULK_CHUNK_EVENTS):
                chunk = events[first:first + BULK_CHUNK_EVENTS]
                marker = [chunk_marker(ids[first:first + BULK_CHUNK_EVENTS])] if events else []
                if await self.markers.seen(marker):
                    continue
                records = []
                if first == 0:
                    records.append(OutgoingRecord(RAW.name, codec.encode("RawMessage", {
                        "raw_id": raw_id, "source_system": profile.code, "source_ods_code": ods, "channel": channel,
                        "content_type": content_type, "received_at": received_at_ms, "sha256": sha, "payload": raw}),
                        raw_id, codec.headers("RawMessage"), received_at_ms))
                headers = codec.headers("SourcePatientEvent")
                records += [OutgoingRecord(SOURCE_EVENTS.name, e.value, e.key, headers, e.timestamp_ms)
                            for e in encoded(chunk)]
                if max(len(r.value) for r in records) > MAX_RECORD_BYTES:
                    await self.refuse_oversized(raw, len(raw), profile, channel, content_type)
                in_flight.append((self.producer.produce_all(records), marker))
                published += len(chunk)
                # The next chunk is encoded while this one is on its way to the brokers; a few in
                # flight at most, so memory stays bounded whatever the file's size.
                while len(in_flight) >= BULK_CHUNKS_IN_FLIGHT:
                    await self._confirmed(*in_flight.pop(0))
                if len(events) > BULK_CHUNK_EVENTS:
                    await asyncio.sleep(0)      # other senders are served between a file's chunks
            while in_flight:
                await self._confirmed(*in_flight.pop(0))
        except (MessageTooLarge, StoreUnavailable):
            _abandon(in_flight)
            raise
        except Exception as exc:  # noqa: BLE001 - any Kafka failure means "not stored"
            _abandon(in_flight)
            MESSAGES.labels(profile.connector, channel, "unavailable").inc()
            log.error("Kafka did not confirm a %s message: %s", profile.connector, type(exc).__name__)
            raise StoreUnavailable("message not stored: the event store did not confirm, please retry") from exc
        if events and not published:
            MESSAGES.labels(profile.connector, channel, "duplicate").inc()
            return IngestResult(True, ids, duplicate=True)
        MESSAGES.labels(profile.connector, channel, "accepted").inc()
        EVENTS.labels(profile.connector).inc(published)
        LATENCY.labels(profile.connector, channel).observe(time.perf_counter() - started)
        if len(events) == 1 and isinstance(events[0], dict):
            # DEBUG: at thousands of messages a second one line each drowns the log (and was a
            # tenth of the connector's CPU); the raw topic is the message store, metrics the tally.
            if log.isEnabledFor(logging.DEBUG):
                log.debug("accepted %s %s for %s", profile.connector, events[0]["envelope"]["event_type"],
                          pseudonym(events[0]["patient"]["local_identifier"]["value"]))
        else:   # a bulk file: one line, not one per patient
            log.info("accepted %s %s message: %d events (%d already published)", profile.connector, channel,
                     len(events), len(events) - published)
        return IngestResult(True, ids)

    async def refuse_oversized(self, head: bytes, size: int, profile: SourceSystemProfile, channel: str,
                               content_type: str) -> None:
        """Park a message over the size limit (its first bytes and its size) and raise MessageTooLarge."""
        reason = (f"message of {size:,} bytes exceeds the {MAX_INBOUND_BYTES:,}-byte limit; "
                  "send large documents by reference or through the bulk file drop")
        await self.reject(head, profile, channel, content_type, reason, "TOO_LARGE")
        raise MessageTooLarge(reason)

    async def reject(self, raw: bytes, profile: SourceSystemProfile, channel: str, content_type: str,
                     reason: str, error_code: str) -> IngestResult:
        """Park rejected input on the dead-letter topic, then let the caller tell the sender."""
        dead_id = str(uuid.uuid4())
        if len(raw) > DEAD_LETTER_HEAD_BYTES:
            # A dead letter must fit on its topic: keep the head, which names the message (MSH,
            # resourceType) and the sender still has the whole of it.
            reason = f"{reason} [payload truncated to its first {DEAD_LETTER_HEAD_BYTES:,} bytes]"
            raw = raw[:DEAD_LETTER_HEAD_BYTES]
        try:
            await self.producer.send(DLQ_CONNECTORS.name, codec.encode("DeadLetter", messages.dead_letter(
                f"connector:{profile.connector}:{channel}", profile.code, reason, error_code, raw, content_type,
                failed_at=now_ms(), dead_letter_id=dead_id)), key=dead_id, headers=codec.headers("DeadLetter"))
        except Exception as exc:  # noqa: BLE001
            raise StoreUnavailable("rejection could not be recorded, please retry") from exc
        MESSAGES.labels(profile.connector, channel, "rejected").inc()
        log.warning("rejected %s message (%s): %s", profile.connector, error_code, reason)
        return IngestResult(False, reason=reason, error_code=error_code)
