"""Connector throughput next to a raw confluent-kafka producer of the same events, in one run.

    python -m bench.connector_throughput --messages 2000 --warmup 12000

Starts a bus of its own (Kafka and Redis on bench ports, removed afterwards) and `carebus
connectors`, sends Cerner HL7 over MLLP, EMIS FHIR Bundles over HTTP and a Vision extract file,
then publishes the same canonical events with a bare confluent-kafka producer (acks=all,
idempotent) as the baseline. Each path is warmed first, unmeasured (HL7 messages, and a smaller
Vision extract before the measured one), as a running connector is. Prints messages/s,
per-message latency percentiles (send to ACK) and the connector process's peak memory.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from confluent_kafka import Producer
from rich.console import Console

from bench.measurement import CpuMeter, bus_cpu, peak_rss_mb, percentile, with_descendants
from rich.table import Table

from bench import private_bus
from carebus.process_control import wait_http_ready
from foundation.durable_producer import producer_config
from producers import fhir_mapper, hl7v2_mapper
from schemas.source_systems import CERNER, EMIS
from schemas import codec
from schemas.topics import SOURCE_EVENTS
from simulator import population as pop
from simulator.traffic import MessageFactory, MllpClient, ack_code, vision_csv, write_drop_file


BENCH_PORTS = private_bus.ports(23)


def pct(values: list[float], q: float) -> float:
    return percentile(values, q) * 1000


async def run_mllp(port: int, messages: list[bytes], connections: int) -> list[float]:
    latencies: list[float] = []

    async def worker(chunk: list[bytes]) -> None:
        client = MllpClient("127.0.0.1", port)
        for m in chunk:
            t = time.perf_counter()
            assert ack_code(await client.send(m)) == "AA"
            latencies.append(time.perf_counter() - t)
        await client.close()

    await asyncio.gather(*(worker(messages[i::connections]) for i in range(connections)))
    return latencies


async def run_http(port: int, bodies: list[tuple[str, bytes]], connections: int) -> list[float]:
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=60) as http:
        async def worker(chunk):
            for ods, body in chunk:
                t = time.perf_counter()
                r = await http.post(f"http://127.0.0.1:{port}/fhir/emis", content=body,
                                    headers={"Authorization": "Bearer dev-emis-token", "X-Ods-Code": ods})
                assert r.status_code == 200, r.text
                latencies.append(time.perf_counter() - t)
        await asyncio.gather(*(worker(bodies[i::connections]) for i in range(connections)))
    return latencies


def cpu_meter(settings, connector: int | None) -> CpuMeter:
    """A started CPU meter over the connector process, the bus's servers and this process (the sender)."""
    meter = bus_cpu(settings, {"connector": with_descendants(connector) if connector else [],
                                "sender": [os.getpid()]})
    meter.start()
    return meter


CPU_COLUMNS = ("connector", "Kafka", "Redis", "sender")


def cpu_cell(used: dict[str, float], n: int) -> str:
    return " · ".join(f"{used[k] / max(n, 1) * 1e6:,.0f}" if used.get(k) else "-" for k in CPU_COLUMNS)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=12000,
                        help="HL7 messages sent over the same connections first, unmeasured: a freshly started "
                             "broker spends its first minutes of traffic compiling (JIT)")
    parser.add_argument("--vision-patients", type=int, default=20000,
                        help="patients in the one Vision extract file (the bulk-drop figure)")
    parser.add_argument("--vision-warmup", type=int, default=5000,
                        help="patients in a Vision extract dropped first, unmeasured: the extract workers' first "
                             "shard pays for their caches and memory, which a first load of many files pays once")
    args = parser.parse_args()
    # A bus of its own: the benchmark's synthetic patients never reach the bus you run, and a
    # restarted local bus with a large index does not have to load it first.
    bus = private_bus.start(BENCH_PORTS, "carebus-connbench-")
    try:
        measure(args, bus.settings)
    finally:
        bus.stop()


def load_extract(drop: Path, extract: bytes) -> None:
    """Drop an extract file and wait until the connector has published it (moved to processed/)."""
    name = f"bench-{time.time_ns()}.csv"
    write_drop_file(drop / "incoming", name, extract)
    while not (drop / "processed" / name).exists():
        time.sleep(0.005)


def measure(args: argparse.Namespace, settings) -> None:  # noqa: ANN001 - foundation.config.Settings
    rng = random.Random(1)
    # Some 15-20% of the population is registered with a Vision practice.
    people = pop.build(max(args.messages + args.warmup, (args.vision_patients + args.vision_warmup) * 7),
                       seed=int(time.time()) % 100000, hospital_rate=1.0)
    factory = MessageFactory(rng)
    cerner = [r for r in people.records if r.system == "CERNER_MILLENNIUM"]
    warm = [factory.hl7_adt(r, "A01") for r in cerner[args.messages:args.messages + args.warmup]]
    hl7 = [factory.hl7_adt(r, "A01") for r in cerner[: args.messages]]
    fhir = [(r.ods, factory.emis_bundle(r)) for r in people.records if r.system == "EMIS_WEB"][: args.messages // 2]
    vision_all = [r for r in people.records if r.system == "INPS_VISION"]
    vision_recs = vision_all[: args.vision_patients]
    vision_warm = vision_all[args.vision_patients: args.vision_patients + args.vision_warmup]
    env = {**os.environ, "CAREBUS_FILE_DROP_POLL_MS": "20", "CAREBUS_ALLOW_DEV_SECRETS": "1"}   # the bulk figure is loading, not waiting
    proc = subprocess.Popen([sys.executable, "-m", "carebus.cli", "connectors"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http_ready(f"http://127.0.0.1:{settings.http_port}/ready")
        results = []
        # Warm-up, not measured: the connector's first messages pay for connections, caches and
        # lazy imports, and a freshly started broker's first minutes of traffic for its JIT
        # compiler (16 connections gave 825 msg/s on a broker just started, 1,293 on the same
        # broker a run later), which a running feed paid long ago.
        asyncio.run(run_mllp(settings.mllp_port, hl7[:100], 1))
        if warm:
            t = time.perf_counter()
            asyncio.run(run_mllp(settings.mllp_port, warm, args.connections))
            print(f"warm-up: {len(warm):,} messages over {args.connections} connections, "
                  f"{len(warm) / (time.perf_counter() - t):,.0f} msg/s (not measured)", flush=True)
        # Low load: one sender, one message at a time (the ACK latency a quiet feed sees).
        quiet = hl7[100:300]
        meter, t = cpu_meter(settings, proc.pid), time.perf_counter()
        lat = asyncio.run(run_mllp(settings.mllp_port, quiet, 1))
        results.append(("cerner HL7 ADT over MLLP, 1 connection", len(quiet), time.perf_counter() - t, lat,
                        meter.stop()))
        hl7 = hl7[300:]
        meter, t = cpu_meter(settings, proc.pid), time.perf_counter()
        lat = asyncio.run(run_mllp(settings.mllp_port, hl7, args.connections))
        results.append((f"cerner HL7 ADT over MLLP, {args.connections} connections", len(hl7), time.perf_counter() - t,
                        lat, meter.stop()))
        meter, t = cpu_meter(settings, proc.pid), time.perf_counter()
        lat = asyncio.run(run_http(settings.http_port, fhir, args.connections))
        results.append(("emis FHIR Bundle over HTTP", len(fhir), time.perf_counter() - t, lat, meter.stop()))
        drop = settings.drop_dir / "vision"
        if vision_warm:
            warm_extract = vision_csv([row for r in vision_warm for row in factory.vision_rows(r)])
            t = time.perf_counter()
            load_extract(drop, warm_extract)
            print(f"warm-up: a Vision extract of {len(vision_warm):,} patients, "
                  f"{len(vision_warm) / (time.perf_counter() - t):,.0f} patients/s (not measured)", flush=True)
        extract = vision_csv([row for r in vision_recs for row in factory.vision_rows(r)])
        meter, t = cpu_meter(settings, proc.pid), time.perf_counter()
        load_extract(drop, extract)
        results.append((f"vision CSV extract, one {len(extract) / 1e6:.1f} MB file (patients)", len(vision_recs),
                        time.perf_counter() - t, [], meter.stop()))
        peak = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait()

    # Baseline: the same canonical events, encoded and produced by a bare client.
    events = [hl7v2_mapper.map_message(m, CERNER, "RAL", 0).event for m in hl7]
    events += [e for ods, b in fhir for e in fhir_mapper.map_payload(b, EMIS, ods, 0)]
    producer = Producer(producer_config(settings))
    meter, t = cpu_meter(settings, None), time.perf_counter()
    for e in events:
        producer.produce(SOURCE_EVENTS.name, codec.encode("SourcePatientEvent", e), key=e["patient"]["local_identifier"]["value"])
        producer.poll(0)
    producer.flush()
    baseline, baseline_cpu = time.perf_counter() - t, meter.stop()
    # The low-load baseline: one event at a time, each waited for (acks=all), as a quiet feed's
    # message is; what the connector adds to it is parsing, mapping, the raw copy and the ACK.
    one_by_one = []
    for e in events[:200]:
        confirmed: list[object] = []
        t = time.perf_counter()
        producer.produce(SOURCE_EVENTS.name, codec.encode("SourcePatientEvent", e),
                         key=e["patient"]["local_identifier"]["value"], on_delivery=lambda err, _m: confirmed.append(err))
        while not confirmed:
            producer.poll(0.0005)
        one_by_one.append(time.perf_counter() - t)

    table = Table(title="connector throughput (same run)")
    for col in ("path", "messages", "msg/s", "p50 ms", "p95 ms", "p99 ms", "CPU µs/msg: " + " · ".join(CPU_COLUMNS)):
        table.add_column(col)
    for name, n, secs, lat, cpu in results:
        if lat:
            table.add_row(name, str(n), f"{n / secs:,.0f}", f"{pct(lat, .5):.1f}", f"{pct(lat, .95):.1f}",
                          f"{pct(lat, .99):.1f}", cpu_cell(cpu, n))
        else:
            table.add_row(name, str(n), f"{n / secs:,.0f}", "-", "-", "-", cpu_cell(cpu, n))
    table.add_row("baseline: raw confluent-kafka producer", str(len(events)), f"{len(events) / baseline:,.0f}", "-", "-",
                  "-", cpu_cell(baseline_cpu, len(events)))
    table.add_row("baseline: raw producer, one event at a time", str(len(one_by_one)), "-",
                  f"{pct(one_by_one, .5):.1f}", f"{pct(one_by_one, .95):.1f}", f"{pct(one_by_one, .99):.1f}", "-")
    Console(width=200).print(table)
    print(f"connector process peak RSS: {peak:.0f} MiB; mean MLLP latency {statistics.mean(results[1][3]) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
