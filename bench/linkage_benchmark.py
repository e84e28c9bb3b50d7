"""Identity linking: quality and speed of the streaming linker next to a batch linkage of the
same records, in one run.

    python -m bench.linkage_benchmark --people 3000

Sends a synthetic population through the connectors (a bus of its own on bench ports, the
connectors and N link workers are started here), waits until the linkers have caught up, then
prints, for the stream and for a batch linkage of exactly the same events: precision, recall and
F1 against the simulator's ground truth, pairs sent to review, events/s, per-event latency
percentiles (event time on the source topic to its record change) and peak memory.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import tracemalloc

import redis
from rich.console import Console

from bench.measurement import peak_rss_mb, percentile
from rich.table import Table

from bench import private_bus
from carebus.process_control import wait_http_ready
from consumers.stream_lag import total_lag
from schemas import codec
from schemas.topics import PATIENT_CHANGES, SOURCE_EVENTS
from simulator import population as pop
from simulator.run import Target, drive
from streams.batch_linkage import link_events
from streams.fellegi_sunter import Parameters
from streams.identity_graph import MemoryGraphStore
from streams.identity_store import RedisGraphStore, linkage_statistics
from streams.linkage_quality import pairwise_quality
from tests.kafka_reading import read_all


pct = percentile
BENCH_PORTS = private_bus.ports(22)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--people", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    bus = private_bus.start(BENCH_PORTS, "carebus-linkbench-")   # the bus you run is never touched
    try:
        measure(args, bus.settings)
    finally:
        bus.stop()


def measure(args: argparse.Namespace, settings) -> None:  # noqa: ANN001 - foundation.config.Settings
    r = redis.Redis.from_url(settings.redis)
    seed = int(time.time()) % 1_000_000
    population = pop.build(args.people, seed=seed)
    truth = {pop.source_key(x): x.person_id for x in population.records}
    env = {**os.environ, "CAREBUS_ALLOW_DEV_SECRETS": "1"}     # synthetic patients only
    procs = [subprocess.Popen([sys.executable, "-m", "carebus.cli", "connectors"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    procs += [subprocess.Popen([sys.executable, "-m", "carebus.cli", "link-worker", "--worker-id", f"bench{i}"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(args.workers)]
    try:
        wait_http_ready(f"http://127.0.0.1:{settings.http_port}/ready")
        reviews_before = linkage_statistics(r).get("reviews", 0)
        started = time.time()
        asyncio.run(drive(population, Target("127.0.0.1", settings.mllp_port, settings.http_port, settings.drop_dir),
                          seed=seed, show_progress=True))
        keys = list(truth)
        while len(RedisGraphStore(r).persons_of(keys)) < len(keys) or \
                total_lag(settings, "carebus-linker", SOURCE_EVENTS.name) > 0:
            time.sleep(0.5)
        stream_seconds = time.time() - started
        stream_peak = max(peak_rss_mb(p.pid) for p in procs[1:])
    finally:
        for p in procs:
            p.terminate()
            p.wait()
    streamed = RedisGraphStore(r).persons_of(keys)
    stream_reviews = linkage_statistics(r).get("reviews", 0) - reviews_before

    ours = set(keys)
    events = [codec.decode(m.value(), "SourcePatientEvent") for m in read_all(settings, SOURCE_EVENTS.name, timeout=120)]
    events = [e for e in events if f"{e['envelope']['source_system']}|{e['patient']['local_identifier']['system']}|"
              f"{e['patient']['local_identifier']['value']}" in ours]
    # Latency: event time on the source topic (when the connector had it durably) to the change.
    source_ts = {e["envelope"]["event_id"]: e["envelope"]["recorded_at"] for e in events}
    latencies = []
    for m in read_all(settings, PATIENT_CHANGES.name, timeout=120):
        change = codec.decode(m.value(), "RecordChange")
        for cause in change["caused_by"]:
            if cause in source_ts:
                latencies.append((change["changed_at"] - source_ts[cause]) / 1000)

    tracemalloc.start()
    t = time.perf_counter()
    batch_store: MemoryGraphStore = link_events(events, Parameters.load())
    batch_seconds = time.perf_counter() - t
    batch_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    batch = {k: p for k, p in batch_store.persons().items() if k in ours}

    table = Table(title=f"identity linking: {len(population.people):,} people, {len(keys):,} source records, "
                        f"{len(events):,} events")
    for col in ("linker", "precision", "recall", "F1", "to review", "events/s", "p50 s", "p95 s", "p99 s", "peak MiB"):
        table.add_column(col)
    qs, qb = pairwise_quality(streamed, truth), pairwise_quality(batch, truth)
    table.add_row(f"stream ({args.workers} link workers, end to end)", f"{qs.precision:.4f}", f"{qs.recall:.4f}",
                  f"{qs.f1:.4f}", str(stream_reviews), f"{len(events) / stream_seconds:,.0f}",
                  f"{pct(latencies, .5):.2f}", f"{pct(latencies, .95):.2f}", f"{pct(latencies, .99):.2f}",
                  f"{stream_peak:.0f} (RSS, per worker)")
    table.add_row("batch (same events, in memory)", f"{qb.precision:.4f}", f"{qb.recall:.4f}", f"{qb.f1:.4f}", "-",
                  f"{len(events) / batch_seconds:,.0f}", "-", "-", "-", f"{batch_peak:.0f} (Python heap)")
    Console(width=200).print(table)
    same = sum(1 for k in batch if streamed.get(k) == batch[k])
    print(f"stream and batch agree on {same:,} of {len(batch):,} source records")


if __name__ == "__main__":
    main()
