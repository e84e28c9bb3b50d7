"""Reading the dead-letter topics and sending parked messages back where they came from
(`carebus dead-letters list|show|replay`).

Where a parked message goes back to depends on where it was parked:
  streams     a SourcePatientEvent goes back on carebus.source-events.v1 (keyed by its source
              record, so it lands where the original did), a review decision on
              carebus.link-review.v1 (keyed by its review's first record, as the review API
              sends it); the link workers process it as any other event
  connectors  an HL7 v2 message is sent again to its connector over MLLP and gets a fresh ACK;
              FHIR bodies and extract rows need their sender's credentials: resend from the source
  delivery    parked changes are redelivered by the delivery service, which holds the
              subscription's secret and scope: POST /subscriptions/{id}/dead-letters/redeliver
Each replayed dead letter is remembered in Redis, so running replay twice sends nothing twice.
"""
from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any


from foundation.config import Settings
from foundation.mllp_framing import END, frame, unframe
from foundation.redis_connection import sync_client
from foundation.durable_producer import DurableProducer
from consumers.change_reader import read_range
from schemas.source_systems import BY_CODE
from schemas import codec
from schemas.topics import (DLQ_CONNECTORS, DLQ_DELIVERY, DLQ_STREAMS, LINK_REVIEW, SOURCE_EVENTS, review_decision_key,
                            source_event_key)
from streams.identity_store import review_of

TOPICS = {"connectors": DLQ_CONNECTORS.name, "streams": DLQ_STREAMS.name, "delivery": DLQ_DELIVERY.name}


@dataclass(frozen=True)
class Outcome:
    dead_letter_id: str
    result: str          # replayed / skipped / not-replayable
    detail: str


def read(settings: Settings, which: str, from_ms: int, to_ms: int) -> list[dict[str, Any]]:
    return [codec.decode(m.value(), "DeadLetter") for m in read_range(settings, TOPICS[which], from_ms, to_ms)]


def summary(dead: dict[str, Any]) -> dict[str, Any]:
    """What an operator may see in a list: where, when, why; never the payload."""
    return {k: dead[k] for k in ("dead_letter_id", "failed_at", "stage", "source_system", "error_code", "reason",
                                 "original_topic", "original_partition", "original_offset", "attempts")}


def decoded_payload(dead: dict[str, Any]) -> str:
    payload = dead["payload"]
    if dead["content_type"] == "avro/binary":
        try:
            return json.dumps(codec.decode(payload), indent=1, default=str)
        except codec.UnknownSchemaError as exc:
            return f"(not carebus Avro: {exc}) {payload[:200]!r}"
    return payload.decode("utf-8", "replace")


def _mllp(host: str, port: int, message: bytes, timeout: float = 30.0) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(frame(message))
        reply = b""
        while not reply.endswith(END):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    return unframe(reply)


class Replayer:
    def __init__(self, settings: Settings, which: str) -> None:
        self.settings, self.which = settings, which
        self.redis = sync_client(settings)
        self.done_key = f"carebus:dead-letters:replayed:{TOPICS[which]}"
        self._producer: DurableProducer | None = None

    @property
    def producer(self) -> DurableProducer:
        if self._producer is None:
            self._producer = DurableProducer(self.settings)
        return self._producer

    def replay(self, dead: dict[str, Any], again: bool = False) -> Outcome:
        did = dead["dead_letter_id"]
        if not again and self.redis.sismember(self.done_key, did):
            return Outcome(did, "skipped", "replayed before (use --again to send it once more)")
        outcome = {"streams": self._stream, "connectors": self._connector, "delivery": self._delivery}[self.which](dead)
        if outcome.result == "replayed":
            self.redis.sadd(self.done_key, did)
        return outcome

    def _stream(self, dead: dict[str, Any]) -> Outcome:
        try:
            kind = codec.message_type_of(dead["payload"])
            value = codec.decode(dead["payload"], kind)
        except codec.UnknownSchemaError as exc:
            return Outcome(dead["dead_letter_id"], "not-replayable", f"payload is not carebus Avro ({exc})")
        if kind == "SourcePatientEvent":
            topic, key = SOURCE_EVENTS.name, source_event_key(value)
        elif kind == "IdentityEvent":
            # A review decision goes where its review's first record's events go (the review
            # outlives its decision in the index); a review the index no longer has, by its id.
            review = review_of(self.redis, value["caused_by"])
            topic, key = LINK_REVIEW.name, review_decision_key(review) if review else value["caused_by"]
        else:
            return Outcome(dead["dead_letter_id"], "not-replayable", f"a {kind} has no stream to go back to")
        self.producer.send_sync(topic, dead["payload"], key=key, headers=codec.headers(kind))
        return Outcome(dead["dead_letter_id"], "replayed", f"to {topic}")

    def _connector(self, dead: dict[str, Any]) -> Outcome:
        profile = BY_CODE.get(dead["source_system"])
        offset = profile.mllp_port_offset if profile else None
        if offset is None or not dead["payload"].startswith(b"MSH"):
            return Outcome(dead["dead_letter_id"], "not-replayable",
                           "not HL7 v2: resend it from the source system (it needs the sender's credentials)")
        ack = _mllp("127.0.0.1", self.settings.mllp_port + offset, dead["payload"])
        code = next((seg.split(b"|")[1].decode() for seg in ack.split(b"\r") if seg.startswith(b"MSA|")), "?")
        return Outcome(dead["dead_letter_id"], "replayed" if code == "AA" else "not-replayable", f"connector answered {code}")

    def _delivery(self, dead: dict[str, Any]) -> Outcome:
        return Outcome(dead["dead_letter_id"], "not-replayable",
                       "redeliver with POST /subscriptions/{id}/dead-letters/redeliver (the delivery service holds "
                       "the subscription's secret and scope)")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
