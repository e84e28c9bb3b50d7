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

from producers import fhir_mapper, vision_extract
from producers.ingest_pipeline import IngestPipeline, StoreUnavailable, now_ms
from producers.source_systems import EMIS, VISION, SourceSystemProfile

log = logging.getLogger("carebus.filedrop")


class FileDrop:
    def __init__(self, root: Path, profile: SourceSystemProfile, pipeline: IngestPipeline, default_ods: str) -> None:
        self.profile = profile
        self.pipeline = pipeline
        self.default_ods = default_ods
        self.incoming = root / profile.connector / "incoming"
        self.processed = root / profile.connector / "processed"
        self.failed = root / profile.connector / "failed"
        for d in (self.incoming, self.processed, self.failed):
            d.mkdir(parents=True, exist_ok=True)

    def pending(self) -> list[Path]:
        suffix = ".csv" if self.profile is VISION else ".json"
        # Writers create *.part and rename when done, so half-written files are never read.
        return sorted(p for p in self.incoming.iterdir() if p.suffix == suffix)

    async def process_file(self, path: Path) -> tuple[int, int]:
        """Returns (events published, items rejected)."""
        raw = path.read_bytes()
        received = now_ms()
        if self.profile is VISION:
            result = vision_extract.parse_extract(raw, path.name, received)
            for err in result.errors:
                await self.pipeline.reject(err.row, self.profile, "file", "text/csv",
                                           f"{path.name}: {err.reason}", "VISION_BAD_ROW")
            by_ods: dict[str, list] = {}
            for event in result.events:
                by_ods.setdefault(event["envelope"]["source_ods_code"], []).append(event)
            for ods, events in by_ods.items():
                await self.pipeline.publish(raw, self.profile, ods, "file", "text/csv", events, received)
            published, rejected = len(result.events), len(result.errors)
        else:
            try:
                events = fhir_mapper.map_payload(raw, self.profile, self.default_ods, received)
            except fhir_mapper.FHIRMappingError as exc:
                await self.pipeline.reject(raw, self.profile, "file", "application/fhir+json",
                                           f"{path.name}: {exc}"[:1000], exc.error_code)
                shutil.move(path, self.failed / path.name)
                (self.failed / f"{path.name}.reason").write_text(str(exc))
                return 0, 1
            await self.pipeline.publish(raw, self.profile, self.default_ods, "file", "application/fhir+json",
                                        events, received)
            published, rejected = len(events), 0
        shutil.move(path, self.processed / path.name)
        return published, rejected

    async def run(self, poll_seconds: float = 1.0) -> None:
        while True:
            for path in self.pending():
                try:
                    published, rejected = await self.process_file(path)
                    log.info("%s: %s published %d events, rejected %d", self.profile.connector, path.name, published, rejected)
                except StoreUnavailable:
                    log.warning("%s: Kafka unavailable, will retry %s", self.profile.connector, path.name)
                    await asyncio.sleep(poll_seconds)
                    break
            await asyncio.sleep(poll_seconds)


def emis_and_vision(root: Path, pipeline: IngestPipeline) -> list[FileDrop]:
    return [FileDrop(root, EMIS, pipeline, "F84001"), FileDrop(root, VISION, pipeline, "F84700")]
