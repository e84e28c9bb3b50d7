"""HL7 v2 over MLLP (Minimal Lower Layer Protocol): one listener per sending system.

Each frame is <VT> message <FS><CR>. Messages on one connection are processed strictly in
order and each is acknowledged before the next is read, which is both what HL7 senders expect
and natural backpressure: a slow Kafka slows the sender instead of filling memory.

Every message gets an answer: AA stored; AR never storable (invalid, or over the size limit:
read to its end, parked with its first bytes, the connection stays open); AE try again. Limits
keep one sender from exhausting the connector: an idle connection is closed after
`idle_timeout` seconds, a message must arrive whole within `message_timeout` seconds of its first
byte, and past `max_connections` a new connection's first message is answered AE ("connection
limit reached") and the connection closed. Memory per connection is at most one message.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field

from foundation.clock import now_ms
from foundation.mllp_framing import END, START, frame
from producers import hl7v2_mapper, mllp_senders
from producers.ingest_pipeline import IngestPipeline, MessageTooLarge, StoreUnavailable
from producers.mllp_senders import SenderIdentity
from schemas.source_systems import SourceSystemProfile
from schemas.topics import DEAD_LETTER_HEAD_BYTES, MAX_INBOUND_BYTES

READ_CHUNK = 1024 * 1024      # the stream buffer; a message is gathered from chunks of this size
log = logging.getLogger("carebus.mllp")


@dataclass(frozen=True)
class Frame:
    message: bytes        # the whole message, or only its head when `size` is over the limit
    size: int

    @property
    def too_large(self) -> bool:
        return self.size > MAX_INBOUND_BYTES

    @property
    def header(self) -> bytes:
        """The MSH segment alone: enough for an ACK to name the message, whatever follows it."""
        return self.message.split(b"\r", 1)[0]


async def read_frame(reader: asyncio.StreamReader, prefix: bytes = b"") -> Frame:
    """One frame (`prefix`: bytes of it already read). Holds at most the size limit in memory,
    then only the head, however much is sent."""
    cap = MAX_INBOUND_BYTES + len(START) + len(END)
    parts, size = [prefix], len(prefix)
    while True:
        try:
            chunk, done = await reader.readuntil(END), True
        except asyncio.LimitOverrunError as exc:      # no end yet: take what is buffered
            chunk, done = await reader.readexactly(max(1, exc.consumed)), False
        size += len(chunk)
        if size <= cap:
            parts.append(chunk)
        elif len(parts) > 1 or len(parts[0]) < DEAD_LETTER_HEAD_BYTES:
            parts = [b"".join([*parts, chunk])[:DEAD_LETTER_HEAD_BYTES + len(START)]]
        if done:
            break
    data = b"".join(parts)
    start = data.find(START) + 1 if START in data[:16] else 0
    if size <= cap:
        body = data[start:-len(END)]
        return Frame(body, len(body))
    return Frame(data[start:start + DEAD_LETTER_HEAD_BYTES], size - start - len(END))


@dataclass
class MllpListener:
    profile: SourceSystemProfile
    default_ods: str
    pipeline: IngestPipeline
    host: str = "127.0.0.1"
    port: int = 2575
    idle_timeout: float = 600.0
    message_timeout: float = 30.0
    max_connections: int = 200
    # Mutual TLS and who may send what (mllp_senders); None: plain MLLP (development only).
    tls: ssl.SSLContext | None = None
    senders: dict[str, SenderIdentity] | None = None
    _server: asyncio.base_events.Server | None = None
    _open: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=READ_CHUNK, ssl=self.tls,
                                                  ssl_handshake_timeout=30 if self.tls else None)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._open):
                writer.close()
            await self._server.wait_closed()

    async def handle(self, raw: bytes, sender: SenderIdentity | None = None) -> bytes:
        """One message in, one ACK out. Never raises: every message gets an answer. With TLS,
        `sender` is the connection's verified identity (None: its certificate is not registered)."""
        try:
            if self.tls is not None:
                refused = mllp_senders.refusal(sender, self.profile, raw)
                if refused is not None:
                    return await self._refuse_sender(raw, refused)
            return await self._handle(raw)
        except Exception:  # noqa: BLE001 - whatever went wrong, the sender hears "try again"
            log.exception("unexpected failure on a %s message", self.profile.connector)
            return hl7v2_mapper.build_ack(raw, "AE", "internal error; please retry", "INTERNAL")

    async def _handle(self, raw: bytes) -> bytes:
        received = now_ms()
        try:
            mapped = hl7v2_mapper.map_message(raw, self.profile, self.default_ods, received)
        except hl7v2_mapper.HL7MappingError as exc:
            try:
                await self.pipeline.reject(raw, self.profile, "mllp", "application/hl7-v2", exc.reason, exc.error_code)
            except StoreUnavailable:
                return hl7v2_mapper.build_ack(raw, "AE", "temporarily unable to record the rejection; retry", "STORE_UNAVAILABLE")
            return hl7v2_mapper.build_ack(raw, exc.ack_code, exc.reason, exc.error_code)
        except Exception as exc:  # noqa: BLE001 - a mapper bug must not kill the connection
            log.exception("mapper failure on %s message", self.profile.connector)
            try:
                await self.pipeline.reject(raw, self.profile, "mllp", "application/hl7-v2",
                                           f"internal mapping error: {type(exc).__name__}", "MAPPER_BUG")
            except StoreUnavailable:
                pass
            return hl7v2_mapper.build_ack(raw, "AE", "internal mapping error; message parked for investigation", "MAPPER_BUG")
        try:
            await self.pipeline.publish(raw, self.profile, mapped.event["envelope"]["source_ods_code"], "mllp",
                                        "application/hl7-v2", [mapped.event], received)
        except MessageTooLarge as exc:
            return hl7v2_mapper.build_ack(raw, "AR", str(exc), "TOO_LARGE")
        except StoreUnavailable as exc:
            return hl7v2_mapper.build_ack(raw, "AE", str(exc), "STORE_UNAVAILABLE")
        return hl7v2_mapper.build_ack(raw, "AA")

    async def _refuse_sender(self, raw: bytes, reason: str) -> bytes:
        # The reason names the certificate and an organisation code, never patient data.
        log.warning("%s: refused a message: %s", self.profile.connector, reason)
        try:
            await self.pipeline.reject(raw, self.profile, "mllp", "application/hl7-v2", reason, "SENDER_NOT_AUTHORISED")
        except StoreUnavailable:
            return hl7v2_mapper.build_ack(raw, "AE", "temporarily unable to record the rejection; retry",
                                          "STORE_UNAVAILABLE")
        return hl7v2_mapper.build_ack(raw, "AR", reason, "SENDER_NOT_AUTHORISED")

    async def refuse_oversized(self, f: Frame) -> bytes:
        try:
            await self.pipeline.refuse_oversized(f.message, f.size, self.profile, "mllp", "application/hl7-v2")
        except MessageTooLarge as exc:
            return hl7v2_mapper.build_ack(f.header, "AR", str(exc), "TOO_LARGE")
        except StoreUnavailable:
            pass
        return hl7v2_mapper.build_ack(f.header, "AE", "temporarily unable to record the rejection; retry",
                                      "STORE_UNAVAILABLE")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        over_cap = len(self._open) >= self.max_connections
        self._open.add(writer)
        sender = None
        if self.tls is not None:
            cn = mllp_senders.common_name(writer.get_extra_info("peercert"))
            sender = (self.senders or {}).get(cn or "")
            if sender is None:
                log.warning("%s: a TLS connection whose certificate (CN %s) is not a registered sender",
                            self.profile.connector, cn)
        try:
            while True:
                try:
                    # asyncio.timeout, not wait_for: wait_for wraps each read in a task of its own.
                    async with asyncio.timeout(self.idle_timeout):
                        first = await reader.readexactly(1)
                    async with asyncio.timeout(self.message_timeout):
                        f = await read_frame(reader, first)
                except asyncio.IncompleteReadError:
                    return  # sender closed the connection
                except asyncio.TimeoutError:
                    log.info("%s: closing an idle or stalled connection", self.profile.connector)
                    return
                if over_cap:
                    ack = hl7v2_mapper.build_ack(f.header, "AE",
                                                 f"connection limit reached ({self.max_connections}); retry later",
                                                 "TOO_MANY_CONNECTIONS")
                    writer.write(frame(ack))
                    await writer.drain()
                    return
                ack = await self.refuse_oversized(f) if f.too_large else await self.handle(f.message, sender)
                writer.write(frame(ack))
                await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            return
        finally:
            self._open.discard(writer)
            writer.close()
