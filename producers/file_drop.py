"""Bulk extract file drops: EMIS initial loads (FHIR Bundles as .json) and INPS Vision extracts (.csv).

A file appears in <drop>/<connector>/incoming; when every event from it is durable in Kafka
it moves to processed/ (rows that failed go to the dead-letter topic with their line number).
A file that cannot be read at all moves to failed/ with a .reason file beside it. A crash
part-way simply reprocesses the file on restart: event ids are deterministic, so nothing is
published twice.
"""
from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from foundation.clock import now_ms
from producers import fhir_mapper, vision_extract
from producers.bulk_extract_workers import PARALLEL_FROM_BYTES, ExtractWorkers
from producers.ingest_pipeline import IngestPipeline, MessageTooLarge, StoreUnavailable, raw_reference
from schemas.source_systems import FILE, SourceSystemProfile, speaking
from schemas.topics import DEAD_LETTER_HEAD_BYTES, MAX_INBOUND_BYTES

log = logging.getLogger("carebus.filedrop")


class FileDrop:
    def __init__(self, root: Path, profile: SourceSystemProfile, pipeline: IngestPipeline, default_ods: str,
                 extract_workers: ExtractWorkers | None = None) -> None:
        self.profile = profile
        self.extract_workers = extract_workers
        self.pipeline = pipeline
        self.default_ods = default_ods
        self.incoming = root / profile.connector / "incoming"
        self.processed = root / profile.connector / "processed"
        self.failed = root / profile.connector / "failed"
        for d in (self.incoming, self.processed, self.failed):
            d.mkdir(parents=True, exist_ok=True)
        # What /ready reports for this drop: False while it waits out an outage or after an error.
        self.healthy = True
        self.last_error = ""

    @property
    def is_extract(self) -> bool:
        """A CSV extract (Vision's format, vision_extract.py); otherwise FHIR Bundles as .json."""
        return self.profile.file_suffix == ".csv"

    @property
    def content_type(self) -> str:
        return "text/csv" if self.is_extract else "application/fhir+json"

    def pending(self) -> list[Path]:
        suffix = self.profile.file_suffix or ".json"
        # Writers create *.part and rename when done, so half-written files are never read.
        return sorted(p for p in self.incoming.iterdir() if p.suffix == suffix)

    async def fail(self, path: Path, reason: str, error_code: str, raw: bytes = b"") -> None:
        """To failed/ with a .reason file, and on the dead-letter topic; later files go on."""
        await self.pipeline.reject(raw, self.profile, "file", self.content_type, f"{path.name}: {reason}"[:1000],
                                   error_code)
        self._set_aside(path, error_code, reason)

    def _set_aside(self, path: Path, error_code: str, reason: str) -> None:
        """Out of incoming/ into failed/, with a .reason file beside it. A symbolic link is removed,
        not moved: failed/ must not point anywhere else on the machine either."""
        if path.is_symlink():
            path.unlink()
        else:
            shutil.move(path, self.failed / path.name)
        (self.failed / f"{path.name}.reason").write_text(f"{error_code}: {reason}\n")

    async def process_file(self, path: Path) -> tuple[int, int]:
        """Returns (events published, items rejected)."""
        if path.is_symlink():
            # Only files put here are loaded, never what a link points at (anywhere on the machine).
            await self.fail(path, "symbolic link refused", "SYMLINK_REFUSED")
            return 0, 1
        size = path.stat().st_size
        if size > MAX_INBOUND_BYTES:
            with path.open("rb") as f:
                head = f.read(DEAD_LETTER_HEAD_BYTES)
            await self.fail(path, f"file of {size:,} bytes exceeds the {MAX_INBOUND_BYTES:,}-byte limit; "
                                  "split the extract", "TOO_LARGE", head)
            return 0, 1
        raw = path.read_bytes()
        received = now_ms()
        if self.is_extract:
            in_workers = self.extract_workers is not None and size >= PARALLEL_FROM_BYTES
            if in_workers:
                assert self.extract_workers is not None
                ref = raw_reference(raw, self.profile)
                result = await self.extract_workers.parse(raw, path.name, received, ref)
                practices = {event.ods for event in result.events}
            else:
                # In a thread: parsing takes CPU, and the MLLP and FHIR senders on this event loop
                # must still get their ACKs meanwhile.
                result = await asyncio.to_thread(vision_extract.parse_extract, raw, path.name, received)
                practices = {event["envelope"]["source_ods_code"] for event in result.events}
            if not result.events and any(err.line == 1 for err in result.errors):
                await self.fail(path, result.errors[0].reason, "VISION_BAD_HEADER", raw)
                return 0, 1
            for err in result.errors:
                await self.pipeline.reject(err.row, self.profile, "file", "text/csv",
                                           f"{path.name}: {err.reason}", "VISION_BAD_ROW")
            # The file is kept once, whatever practices it covers; each event carries its own ODS code.
            ods = practices.pop() if len(practices) == 1 else self.default_ods
            if in_workers:
                await self.pipeline.publish_encoded(raw, ref, self.profile, ods, "file", "text/csv", result.events,
                                                    received)
            else:
                await self.pipeline.publish(raw, self.profile, ods, "file", "text/csv", result.events, received)
            published, rejected = len(result.events), len(result.errors)
        else:
            try:
                events = await asyncio.to_thread(fhir_mapper.map_payload, raw, self.profile, self.default_ods, received)
            except fhir_mapper.FHIRMappingError as exc:
                await self.fail(path, str(exc), exc.error_code, raw)
                return 0, 1
            await self.pipeline.publish(raw, self.profile, self.default_ods, "file", "application/fhir+json",
                                        events, received)
            published, rejected = len(events), 0
        shutil.move(path, self.processed / path.name)
        return published, rejected

    async def run(self, poll_seconds: float = 1.0) -> None:
        """Never returns: an outage waits and retries the file; a file that cannot be loaded goes
        to failed/; anything else is logged, reported in /ready, and the loop goes on."""
        while True:
            try:
                for path in self.pending():
                    try:
                        published, rejected = await self.process_file(path)
                        log.info("%s: a file published %d events, rejected %d", self.profile.connector,
                                 published, rejected)
                    except MessageTooLarge:     # already parked by the pipeline
                        self._set_aside(path, "TOO_LARGE", "an event exceeds the size limit")
                    except StoreUnavailable:
                        self.healthy, self.last_error = False, "Kafka unavailable"
                        log.warning("%s: Kafka unavailable, the file will be retried", self.profile.connector)
                        break
                    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
                        await self.fail(path, f"cannot be loaded ({type(exc).__name__})", "FILE_UNREADABLE",
                                        path.read_bytes()[:DEAD_LETTER_HEAD_BYTES] if path.exists() else b"")
                        log.warning("%s: a file moved to failed/ (%s)", self.profile.connector, type(exc).__name__)
                else:
                    self.healthy, self.last_error = True, ""
            except Exception as exc:  # noqa: BLE001 - the drop must outlive any error (Redis blip, disk)
                self.healthy, self.last_error = False, type(exc).__name__
                log.warning("%s drop: %s; retrying", self.profile.connector, type(exc).__name__, exc_info=True)
            await asyncio.sleep(max(poll_seconds, 0.01))


def file_drops(root: Path, pipeline: IngestPipeline, extract_workers: ExtractWorkers | None = None) -> list[FileDrop]:
    """One drop folder per system that sends files (schemas/source_systems.py)."""
    return [FileDrop(root, p, pipeline, p.default_ods, extract_workers) for p in speaking(FILE)]
