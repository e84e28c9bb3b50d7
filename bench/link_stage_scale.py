"""The link and record stage alone, in process, on a large index: what one worker's batches cost
once the index holds a million records, next to the same batches on an empty index (the
baseline: the issue's "cost stays flat as the index grows"), and next to the same stage taking one
batch at a time (the baseline for link_pipeline's batches in flight).

    python -m bench.link_stage_scale --index 1000000 --events 10000

A real Redis (Debian's redis-server, on a bench port, with carebus's memory and persistence
settings: the append-only file, fsynced every second) holds the index; Kafka is left out (a
producer that confirms at once), so the figures are the stage's own: Python CPU and Redis CPU
per event, Redis commands per event, events/s, bytes per source record.
Building a million-record index takes a while (the link stage itself fills it, at its own speed);
it is saved as a Redis snapshot under --cache (default .carebus/bench-cache) and reused by later
runs. Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path

import redis
from rich.console import Console
from rich.table import Table

from bench.pipeline_throughput import source_event
from carebus.redis_server import MEMORY_SETTINGS, PERSISTENCE_SETTINGS
from foundation.config import REPO_ROOT, load_settings
from foundation.garbage_collection import settle_garbage_collector
from schemas import codec
from schemas.topics import SOURCE_EVENTS
from simulator import population as pop
from streams.fellegi_sunter import Parameters
from streams.identity_store import RedisGraphStore
from streams.link_pipeline import LinkPipeline
from streams.link_stage import InboundMessage, LinkStage
from streams.record_store import RedisRecordStore

PORT = 24479
console = Console(width=140)


class ConfirmingProducer:
    """Confirms every message at once: the stage's own cost, without Kafka's."""

    def produce(self, topic, value=None, key=None, headers=None, timestamp_ms=None, on_delivery=None) -> None:
        if on_delivery:
            on_delivery(None, None)

    def flush(self, timeout=None) -> int:
        return 0


AOF_FOLDER = "link-stage-scale-aof"      # under --cache, removed after the run


def start_redis(folder: Path, snapshot: str) -> subprocess.Popen:
    subprocess.run(["redis-cli", "-p", str(PORT), "shutdown", "nosave"], capture_output=True)
    # Started without the append-only file, so that it loads the snapshot (with the file on, Redis
    # would load the file and start empty); `persist_as_carebus_does` turns it on once loaded.
    args = ["redis-server", "--port", str(PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(folder), "--dbfilename", snapshot, "--appenddirname", AOF_FOLDER]
    for name, value in MEMORY_SETTINGS.items():
        args += [f"--{name}", value]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    client = redis.Redis(port=PORT)
    while True:
        try:
            if client.info("persistence")["loading"] == 0:
                return server
        except (redis.ConnectionError, redis.exceptions.BusyLoadingError):
            pass
        time.sleep(0.3)


def persist_as_carebus_does(client: redis.Redis) -> None:
    """The append-only file on, as carebus runs Redis (carebus.redis_server), and its first
    rewrite (the index as it stands) finished: every write of a batch's scripts is appended to the
    file, about 21 commands and 2.3 KB per event, which costs Redis up to a fifth more CPU (bench
    runs before the thirteenth session left it off)."""
    for name, value in PERSISTENCE_SETTINGS.items():
        client.config_set(name, value)
    while True:
        persistence = client.info("persistence")
        if not (persistence["aof_rewrite_in_progress"] or persistence["aof_rewrite_scheduled"]):
            return
        time.sleep(0.3)


def messages(records: list[pop.SourceRecord], lo: int, hi: int) -> list[InboundMessage]:
    return [InboundMessage(SOURCE_EVENTS.name, 0, i, codec.encode("SourcePatientEvent", source_event(rec, i)))
            for i, rec in zip(range(lo, hi), records[lo:hi])]


def run(stage: LinkStage, client: redis.Redis, batches: list[list[InboundMessage]], pipelined: bool
        ) -> dict[str, float]:
    """Time the batches, in flight (link_pipeline, as a worker runs them) or one at a time."""
    client.config_resetstat()
    cpu = client.info("cpu")
    redis_cpu = cpu["used_cpu_user"] + cpu["used_cpu_sys"]
    events = sum(len(b) for b in batches)
    started, python_cpu = time.perf_counter(), time.process_time()
    if pipelined:
        pipeline = LinkPipeline(stage)
        for batch in batches:
            pipeline.step(batch)
        pipeline.drain()
    else:
        for batch in batches:
            stage.process(batch)
    elapsed, python_cpu = time.perf_counter() - started, time.process_time() - python_cpu
    cpu = client.info("cpu")
    redis_cpu = cpu["used_cpu_user"] + cpu["used_cpu_sys"] - redis_cpu
    commands = sum(v["calls"] for k, v in client.info("commandstats").items()
                   if k not in ("cmdstat_evalsha", "cmdstat_config", "cmdstat_info"))
    return {"events": events, "seconds": elapsed, "python": python_cpu, "redis": redis_cpu, "commands": commands}


def per_event(runs: list[dict[str, float]]) -> dict[str, float]:
    total = {k: sum(r[k] for r in runs) for k in runs[0]}
    n = total["events"]
    return {"events/s": n / total["seconds"], "python": 1e6 * total["python"] / n, "redis": 1e6 * total["redis"] / n,
            "commands": total["commands"] / n}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--index", type=int, default=1_000_000, help="source records already in the index")
    parser.add_argument("--events", type=int, default=10_000, help="new source records linked and measured")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--cache", type=Path, default=REPO_ROOT / ".carebus" / "bench-cache")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    # The synthetic population is drawn whole (pop.source_records(n) is not a prefix of a larger
    # draw): an index is only valid with the new records drawn with it, so its snapshot is named
    # after both sizes.
    snapshot = f"link-index-{args.index}.rdb" if args.events == 10_000 else f"link-index-{args.index}-{args.events}.rdb"
    records = pop.source_records(args.index + args.events)
    params = Parameters.load(load_settings().linkage_parameters_in_use)
    server = start_redis(args.cache, snapshot)
    try:
        client = redis.Redis(port=PORT)
        stage = LinkStage(RedisGraphStore(client), RedisRecordStore(client), ConfirmingProducer(), params)
        if not (args.cache / snapshot).exists():
            console.print(f"building an index of {args.index:,} records (once; kept in {args.cache})")
            client.flushdb()
            started = time.perf_counter()
            for lo in range(0, args.index, 10_000):
                chunk = messages(records, lo, min(args.index, lo + 10_000))
                for i in range(0, len(chunk), args.batch):
                    stage.process(chunk[i:i + args.batch])
                console.print(f"  {lo + len(chunk):,} records, {(lo + len(chunk)) / (time.perf_counter() - started):,.0f}"
                              " events/s")
            # SAVE answers once the whole snapshot is on disk: over a minute for a million
            # records, far past redis-py's default five-second socket timeout.
            redis.Redis(port=PORT, socket_timeout=None).save()
        persist_as_carebus_does(redis.Redis(port=PORT, socket_timeout=None))
        size = RedisGraphStore(client).size()
        bytes_per_record = client.info("memory")["used_memory"] / max(size, 1)
        new = messages(records, args.index, args.index + args.events)
        batches = [new[i:i + args.batch] for i in range(0, len(new), args.batch)]
        del records
        settle_garbage_collector()      # as a link worker runs it
        # Pipelined and one batch at a time take turns (pipelined, alone, alone, pipelined), a
        # quarter of the new records each, so that a machine that speeds up or slows down steadily
        # during the run favours neither.
        turns: dict[bool, list[dict[str, float]]] = {True: [], False: []}
        quarter = max(1, -(-len(batches) // 4))
        for n, lo in enumerate(range(0, len(batches), quarter)):
            pipelined = n in (0, 3)
            turns[pipelined].append(run(stage, client, batches[lo:lo + quarter], pipelined))
        big, big_alone = per_event(turns[True]), per_event(turns[False] or turns[True])
        # The baseline: the same batches on an empty index, in the same Redis, in the same run.
        empty = redis.Redis(port=PORT, db=1)
        empty.flushdb()
        baseline = per_event([run(LinkStage(RedisGraphStore(empty), RedisRecordStore(empty), ConfirmingProducer(),
                                            params), empty, batches, pipelined=True)])
        empty.flushdb()
    finally:
        subprocess.run(["redis-cli", "-p", str(PORT), "shutdown", "nosave"], capture_output=True)
        server.wait()
        shutil.rmtree(args.cache / AOF_FOLDER, ignore_errors=True)
    table = Table(title=f"link and record stage, one worker, in process: {args.events:,} new records in batches of "
                        f"{args.batch}, in flight as a worker runs them (Kafka left out)")
    for col in ("index", "events/s", "Python CPU µs/event", "Redis CPU µs/event", "Redis commands/event"):
        table.add_column(col)
    for label, r in ((f"{size:,} records", big), (f"{size:,} records, one batch at a time (baseline)", big_alone),
                     ("empty (baseline)", baseline)):
        table.add_row(label, f"{r['events/s']:,.0f}", f"{r['python']:,.0f}", f"{r['redis']:,.0f}",
                      f"{r['commands']:,.1f}")
    console.print(table)
    console.print(f"Redis: {bytes_per_record:,.0f} bytes per source record at {size:,} records")


if __name__ == "__main__":
    main()
