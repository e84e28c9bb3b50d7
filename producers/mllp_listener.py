"""HL7 v2 over MLLP (Minimal Lower Layer Protocol): one listener per sending system.

Each frame is <VT> message <FS><CR>. Messages on one connection are processed strictly in
order and each is acknowledged before the next is read, which is both what HL7 senders expect
and natural backpressure: a slow Kafka slows the sender instead of filling memory.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from producers import hl7v2_mapper
from producers.ingest_pipeline import IngestPipeline, StoreUnavailable, now_ms
from producers.source_systems import SourceSystemProfile

START, END = b"\x0b", b"\x1c\x0d"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
log = logging.getLogger("carebus.mllp")


def frame(message: bytes) -> bytes:
    return START + message + END


@dataclass
class MllpListener:
    profile: SourceSystemProfile
    default_ods: str
    pipeline: IngestPipeline
    host: str = "127.0.0.1"
    port: int = 2575
    _server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_MESSAGE_BYTES + 16)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def handle(self, raw: bytes) -> bytes:
        """One message in, one ACK out. Never raises: every message gets an answer."""
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
        except StoreUnavailable as exc:
            return hl7v2_mapper.build_ack(raw, "AE", str(exc), "STORE_UNAVAILABLE")
        return hl7v2_mapper.build_ack(raw, "AA")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    data = await reader.readuntil(END)
                except asyncio.IncompleteReadError:
                    return  # sender closed the connection
                except asyncio.LimitOverrunError:
                    writer.write(frame(hl7v2_mapper.build_ack(b"", "AR", "message exceeds 4 MiB", "TOO_LARGE")))
                    await writer.drain()
                    return
                start = data.find(START)
                message = data[start + 1:-2] if start >= 0 else data[:-2]
                ack = await self.handle(message)
                writer.write(frame(ack))
                await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            return
        finally:
            writer.close()
