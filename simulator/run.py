"""`carebus simulate`: drive a synthetic London population through the running connectors."""
from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from simulator import population as pop
from simulator.traffic import (MessageFactory, MllpClient, TrafficStats, post_fhir, send_hl7_with_retry, vision_csv,
                               write_drop_file)


@dataclass(frozen=True)
class Target:
    host: str
    mllp_port: int        # Cerner; RiO is mllp_port + 1
    http_port: int
    drop_dir: Path
    emis_token: str = "dev-emis-token"


async def drive(population: pop.Population, target: Target, seed: int = 11, connections: int = 4,
                vision_file_size: int = 250, show_progress: bool = True) -> TrafficStats:
    rng = random.Random(seed)
    factory = MessageFactory(rng)
    stats = TrafficStats()
    # Messages for one source record stay on one connection so they arrive in order.
    queues: dict[str, list[asyncio.Queue]] = {"cerner": [asyncio.Queue(1000) for _ in range(connections)],
                                              "rio": [asyncio.Queue(1000) for _ in range(connections)],
                                              "emis": [asyncio.Queue(1000) for _ in range(connections)]}
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        disable=not show_progress)
    task = progress.add_task("source records", total=len(population.records))

    async def hl7_worker(queue: asyncio.Queue, port: int) -> None:
        client = MllpClient(target.host, port)
        while (item := await queue.get()) is not None:
            for message in item:
                await send_hl7_with_retry(client, message, stats)
            progress.advance(task)
        await client.close()

    async def emis_worker(queue: asyncio.Queue, http: httpx.AsyncClient) -> None:
        while (item := await queue.get()) is not None:
            ods, body = item
            await post_fhir(http, f"http://{target.host}:{target.http_port}/fhir/emis", target.emis_token, ods, body, stats)
            progress.advance(task)

    with progress:
        async with httpx.AsyncClient(timeout=60) as http:
            workers = [asyncio.create_task(hl7_worker(q, target.mllp_port)) for q in queues["cerner"]]
            workers += [asyncio.create_task(hl7_worker(q, target.mllp_port + 1)) for q in queues["rio"]]
            workers += [asyncio.create_task(emis_worker(q, http)) for q in queues["emis"]]
            vision_rows: list[dict[str, str]] = []
            file_no = 0
            for rec in population.records:
                shard = hash(rec.local_id) % connections
                if rec.system == "CERNER_MILLENNIUM":
                    visit = f"V{rng.randrange(10**8):08d}"
                    messages = [factory.hl7_adt(rec, "A01", visit)]
                    if rng.random() < 0.5:
                        messages.append(factory.hl7_oru(rec))
                    if rng.random() < 0.7:
                        messages.append(factory.hl7_adt(rec, "A03", visit))
                    await queues["cerner"][shard].put(messages)
                elif rec.system == "RIO":
                    await queues["rio"][shard].put([factory.hl7_adt(rec, "A04")])
                elif rec.system == "EMIS_WEB":
                    await queues["emis"][shard].put((rec.ods, factory.emis_bundle(rec)))
                else:
                    vision_rows.extend(factory.vision_rows(rec))
                    progress.advance(task)
                    if len({r["patient_id"] for r in vision_rows}) >= vision_file_size:
                        file_no += 1
                        write_drop_file(target.drop_dir / "vision" / "incoming", f"extract-{seed}-{file_no:05d}.csv",
                                        vision_csv(vision_rows))
                        stats.sent += 1
                        vision_rows = []
            if vision_rows:
                file_no += 1
                write_drop_file(target.drop_dir / "vision" / "incoming", f"extract-{seed}-{file_no:05d}.csv",
                                vision_csv(vision_rows))
                stats.sent += 1
            for qs in queues.values():
                for q in qs:
                    await q.put(None)
            await asyncio.gather(*workers)
    return stats


def write_truth(population: pop.Population, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in population.truth():
            f.write(json.dumps(row) + "\n")
