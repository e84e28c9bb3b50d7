"""A large Vision extract parsed and encoded in worker processes, one shard of patients each.

Parsing rows and Avro-encoding events is pure CPU under Python's one lock: one process tops out
at about 6,000-8,000 patients a second, whatever the machine. A first load is millions of
patients, so the file is split by patient (every row of a patient goes to the same shard, because
rows are grouped per patient) and each shard is parsed and encoded in its own process. The
connector's event loop then only produces the ready bytes to Kafka.

Workers are started once, when the connectors start, with "spawn": forking a process that runs
librdkafka's threads is not safe. They run the garbage collector as a link worker does
(foundation.garbage_collection): with Python's default thresholds its full collections, walking
the shard's growing list of events, took a quarter of a worker's CPU.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from foundation.garbage_collection import settle_garbage_collector
from producers import vision_extract
from producers.ingest_pipeline import EncodedEvent, encode_event
from producers.vision_extract import RowError

# Below this a file is parsed in the connector itself: a shard's hand-over costs more than it saves.
PARALLEL_FROM_BYTES = 512 * 1024


@dataclass(frozen=True)
class EncodedExtract:
    events: list[EncodedEvent]
    errors: list[RowError]


def encode_shard(numbered: list[tuple[int, str]], fieldnames: list[str], file_name: str, digest: str,
                 received_at_ms: int, raw_ref: dict[str, Any]) -> EncodedExtract:
    """In a worker: one shard's lines to encoded events (raw_ref: the original's reference, as the
    ingest pipeline sets it on every event)."""
    result = vision_extract.parse_lines(numbered, fieldnames, file_name, digest, received_at_ms)
    return EncodedExtract([encode_event(event, raw_ref) for event in result.events], result.errors)


class ExtractWorkers:
    def __init__(self, processes: int | None = None) -> None:
        self.processes = processes or max(2, os.cpu_count() or 2)
        self._pool: ProcessPoolExecutor | None = None

    def warm_up(self) -> None:
        """Start the workers now and have them import what a shard needs (a second or so each),
        so the first large file does not wait for it."""
        for _ in range(self.processes):
            self._executor().submit(encode_shard, [], list(vision_extract.COLUMNS), "", "", 0, {})

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=settle_garbage_collector)
        return self._pool

    async def parse(self, raw: bytes, file_name: str, received_at_ms: int,
                    raw_ref: dict[str, Any]) -> EncodedExtract:
        """Encoded events and row errors (only a line-1 error if the header is unusable)."""
        text = vision_extract.decode(raw)
        fieldnames, numbered, header_error = vision_extract.split_header(text)
        if header_error is not None or fieldnames is None:
            return EncodedExtract([], [header_error] if header_error else [])
        shards: list[list[tuple[int, str]]] = [[] for _ in range(self.processes)]
        columns = vision_extract.patient_columns(fieldnames)
        for n, line in numbered:
            ods, pid = vision_extract.patient_of_line(line, columns)
            shards[zlib.crc32(f"{ods}|{pid}".encode()) % self.processes].append((n, line))
        loop = asyncio.get_running_loop()
        digest = vision_extract.digest_of(raw)
        parts = await asyncio.gather(*(
            loop.run_in_executor(self._executor(), encode_shard, shard, fieldnames, file_name, digest,
                                 received_at_ms, raw_ref) for shard in shards if shard))
        return EncodedExtract([e for p in parts for e in p.events],
                              sorted((err for p in parts for err in p.errors), key=lambda err: err.line))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
