"""The stream stage under load: link workers draining a backlog on a pre-filled index, next to a
raw confluent-kafka consume-then-produce passthrough of the same events in the same run, then
end-to-end latency through the real MLLP connector at a fixed offered rate.

    python -m bench.pipeline_throughput --preload 100000 --backlog 10000 --rate 500 --seconds 20 --workers 2

It starts its own Kafka (KRaft) and Redis on bench ports with a fresh data folder, so nothing you
run is touched, warms the broker with --broker-warmup seconds of raw traffic (unmeasured), and prints:
  1. preload: the index filled from empty by the link workers (events/s while it grows);
  2. passthrough baseline: the same events consumed and produced again (acks=all), no linking;
  3. backlog drain on the filled index with 1 worker, then with 2 workers (events/s, peak RSS);
  4. candidates per linked record (p50/p99/max from the workers' histogram) and Redis bytes per
     source record;
  5. delivery: the changes the backlogs made, waiting for a webhook subscriber (registered before,
     delivery service stopped meanwhile), delivered as fast as the service can (changes/s from
     the subscriber's first arrival to its last, and waiting changes/s from the service's start
     to its last commit);
  6. end to end at --rate HL7 ADT messages/s over --connections MLLP connections, with a webhook subscriber,
     after --warmup seconds of the same traffic, unmeasured:
     ACK latency, source ACK to its record change on carebus.patient-changes.v1, and source ACK to
     the subscriber having it, p50/p95/p99, and linker lag.
Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console
from rich.table import Table

from bench import private_bus
from bench.measurement import bus_cpu, peak_rss_mb, percentile, with_descendants
from bench.webhook_sink import WebhookSink
from carebus.process_control import stop_children
from foundation.durable_producer import producer_config
from consumers.stream_lag import LagReader, total_lag
from schemas import codec
from schemas.topics import PATIENT_CHANGES, SOURCE_EVENTS, source_event_key
from simulator import population as pop
from streams.identity_store import RedisGraphStore
from streams.link_stage import CANDIDATE_BUCKETS

BENCH_PORTS = private_bus.ports(24)
console = Console(width=160)


def source_event(rec: pop.SourceRecord, n: int) -> dict:
    now = int(time.time() * 1000)
    patient = pop.patient_dict(rec)
    return {"envelope": {"event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench|{n}|{pop.source_key(rec)}")),
                         "source_system": rec.system, "source_ods_code": rec.ods, "source_record_id": rec.local_id,
                         "event_type": "PATIENT_UPSERT", "occurred_at": now, "recorded_at": now,
                         "correlation_id": f"bench-{n}", "raw_message": None},
            "patient": patient}


def produce_events(settings, records: list[pop.SourceRecord], start: int) -> None:
    p = Producer({"bootstrap.servers": settings.bootstrap, "acks": "all", "enable.idempotence": True,
                  "linger.ms": 20, "compression.type": "zstd"})
    for i, rec in enumerate(records):
        e = source_event(rec, start + i)
        while True:
            try:
                p.produce(SOURCE_EVENTS.name, codec.encode("SourcePatientEvent", e), key=source_event_key(e),
                          headers=codec.headers("SourcePatientEvent"))
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    p.flush(120)


def start_workers(n: int, env: dict[str, str], logs: Path) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-m", "carebus.cli", "link-worker", "--worker-id", f"bench{i}"],
                             env=env, stdout=open(logs / f"worker{i}.log", "ab"), stderr=subprocess.STDOUT)
            for i in range(n)]


def wait_group_stable(settings, members: int, timeout: float = 60.0) -> None:
    """Until the linker group has `members` members with partitions (so start-up is not timed)."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            group = admin.describe_consumer_groups(["carebus-linker"])["carebus-linker"].result(timeout=10)
            if len(group.members) == members and all(m.assignment.topic_partitions for m in group.members) \
                    and str(group.state).endswith("STABLE"):
                return
        except Exception:  # noqa: BLE001 - the group may not exist yet
            pass
        time.sleep(0.5)


def drain(settings, workers: list[subprocess.Popen], records: list[pop.SourceRecord], first: int
          ) -> tuple[float, float]:
    """Produce a backlog for running, settled workers; seconds until they have no lag, peak RSS."""
    wait_group_stable(settings, len(workers))
    # One reader for the whole drain: a reading is a few requests to the broker, which runs on the
    # same two cores as the workers measured (stream_lag).
    lag = LagReader(settings)
    started = time.perf_counter()
    produce_events(settings, records, first)
    peak = 0.0
    while lag.total("carebus-linker", SOURCE_EVENTS.name) > 0:
        peak = max([peak] + [peak_rss_mb(w.pid) for w in workers])
        time.sleep(0.1)
    lag.close()
    return time.perf_counter() - started, max([peak] + [peak_rss_mb(w.pid) for w in workers])


def warm_broker(settings, records: list[pop.SourceRecord], seconds: float) -> int:
    """Produce, consume and commit on a scratch topic for `seconds`, unmeasured; returns the
    messages sent. A broker just started spends its first minutes of traffic compiling its hot
    paths (JIT): one link worker's outputs cost a fresh bench broker 358-472 us of CPU per event
    and the same broker 107-163 once warm, so drains on a broker just started charged its compiler
    to the stage. A broker that has run for days has paid that long ago."""
    topic = "carebus.bench.warmup"
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=settings.topic_partitions, replication_factor=1)])[topic].result()
    values = [(source_event_key(e), codec.encode("SourcePatientEvent", e))
              for e in (source_event(r, i) for i, r in enumerate(records[:2000]))]
    producer = Producer(producer_config(settings, **{"linger.ms": 5}))
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": "bench-warmup",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    sent, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key, value in values[sent % len(values):][:500]:
            producer.produce(topic, value, key=key)
            sent += 1
        producer.flush(60)
        if [m for m in consumer.consume(1000, 0.05) if not m.error()]:
            consumer.commit(asynchronous=False)
    consumer.close()
    return sent


def passthrough(settings, expected: int) -> float:
    """The baseline: consume the source events and produce each again (acks=all), committing per batch."""
    topic = "carebus.bench.passthrough"
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=settings.topic_partitions, replication_factor=1)])[topic].result()
    c = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": f"bench-passthrough-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    p = Producer({"bootstrap.servers": settings.bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 2})
    c.subscribe([SOURCE_EVENTS.name])
    seen, started = 0, None
    while seen < expected:
        msgs = [m for m in c.consume(500, 1.0) if not m.error()]
        if not msgs:
            continue
        started = started or time.perf_counter()
        for m in msgs:
            p.produce(topic, m.value(), key=m.key())
        p.flush(60)
        c.commit(asynchronous=False)
        seen += len(msgs)
    seconds = time.perf_counter() - (started or time.perf_counter())
    c.close()
    return seen / seconds if seconds else 0.0


def candidates_summary(hist: dict[str, int]) -> tuple[str, str, str]:
    order = [f"le{b}" for b in CANDIDATE_BUCKETS] + ["gt500"]
    total = sum(hist.values())
    if not total:
        return "-", "-", "-"

    def q(frac: float) -> str:
        acc = 0
        for b in order:
            acc += hist.get(b, 0)
            if acc >= frac * total:
                return "≤" + b[2:] if b.startswith("le") else ">500"
        return ">500"
    biggest = next((b for b in reversed(order) if hist.get(b)), "le0")
    return q(0.5), q(0.99), ("≤" + biggest[2:]) if biggest.startswith("le") else ">500"


async def end_to_end(settings, records: list[pop.SourceRecord], rate: int, seconds: int, connections: int
                     ) -> tuple[list[float], dict[str, int]]:
    """HL7 A04s at a fixed rate over `connections` MLLP connections, each sending its next message
    when it is due and its last one is ACKed; returns ACK latencies and sent ids."""
    from simulator.traffic import MessageFactory, MllpClient, ack_code

    factory = MessageFactory(random.Random(5))
    clients = [MllpClient("127.0.0.1", settings.mllp_port) for _ in range(connections)]
    acks: list[float] = []
    sent_at: dict[str, int] = {}
    total = min(len(records), rate * seconds)
    started = time.perf_counter()

    async def one(i: int, rec: pop.SourceRecord) -> None:
        due = started + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        t = time.perf_counter()
        ack = await clients[i % connections].send(factory.hl7_adt(rec, "A04"))
        acks.append(time.perf_counter() - t)
        if ack_code(ack) == "AA":
            sent_at[pop.source_key(rec)] = int(time.time() * 1000)

    lock = [asyncio.Lock() for _ in clients]

    async def paced(i: int, rec: pop.SourceRecord) -> None:
        async with lock[i % connections]:
            await one(i, rec)

    await asyncio.gather(*(paced(i, r) for i, r in enumerate(records[:total])))
    for c in clients:
        await c.close()
    return acks, sent_at


def change_latencies(settings, since_ms: int, sent_at: dict[str, int]) -> list[float]:
    """Source ACK to the record change that carries the record, per source record."""
    c = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": f"bench-changes-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False})
    meta = c.list_topics(PATIENT_CHANGES.name, timeout=10).topics[PATIENT_CHANGES.name]
    parts = c.offsets_for_times([TopicPartition(PATIENT_CHANGES.name, p, since_ms) for p in meta.partitions])
    c.assign(parts)
    arrivals: list[tuple[float, dict]] = []
    idle = 0
    while idle < 5:
        msgs = c.consume(1000, 1.0)
        if not msgs:
            idle += 1
            continue
        idle = 0
        arrivals += [(m.timestamp()[1] / 1000, codec.decode(m.value(), "RecordChange")) for m in msgs
                     if not m.error() and m.value() is not None]
    c.close()
    return first_arrival_latencies(arrivals, sent_at)


DELIVERY_PORT = "24090"
SUBSCRIBER = {"Authorization": "Bearer dev-subscriber2-token"}     # all organisations (dev credentials)


def start_delivery(env: dict[str, str], logs: Path) -> subprocess.Popen:
    from carebus.process_control import wait_http_ready

    proc = subprocess.Popen([sys.executable, "-m", "carebus.cli", "delivery"], env=env,
                            stdout=open(logs / "delivery.log", "ab"), stderr=subprocess.STDOUT)
    wait_http_ready(f"http://127.0.0.1:{DELIVERY_PORT}/ready")
    return proc


def subscribe(url: str) -> str:
    import httpx

    resp = httpx.post(f"http://127.0.0.1:{DELIVERY_PORT}/subscriptions", headers=SUBSCRIBER, timeout=30,
                      json={"channel": "webhook", "endpoint": url})
    resp.raise_for_status()
    return resp.json()["id"]


def changes_pending(lag: LagReader, subscription: str) -> int:
    """Changes on patient-changes past the subscription's committed position (what it will deliver)."""
    return lag.total(f"carebus-delivery-{subscription}", PATIENT_CHANGES.name)


def first_arrival_latencies(arrivals: list[tuple[float, dict]], sent_at: dict[str, int]) -> list[float]:
    """Seconds from each source record's ACK (`sent_at`, ms) to the first arrival (a change on the
    feed or a webhook: (time in s, body with a `record`)) whose record carries it."""
    first: dict[str, float] = {}
    for at, body in arrivals:
        for s in body["record"]["sources"]:
            key = f"{s['system']}|{s['local_identifier']['system']}|{s['local_identifier']['value']}"
            if key in sent_at and key not in first:
                first[key] = at
    return [first[k] - sent_at[k] / 1000 for k in first]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preload", type=int, default=10_000, help="source records in the index before measuring")
    parser.add_argument("--backlog", type=int, default=10_000, help="events drained per worker count")
    parser.add_argument("--rate", type=int, default=500, help="end-to-end offered HL7 messages/s (0: skip)")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=64,
                        help="MLLP connections the end-to-end traffic is offered over; each waits for its ACK, "
                             "so the rate offered is reached only while ACKs take under connections/rate seconds")
    parser.add_argument("--warmup", type=int, default=15,
                        help="seconds of the same end-to-end traffic offered, unmeasured, before the measured "
                             "--seconds: a freshly started broker spends its first minutes compiling (JIT)")
    parser.add_argument("--workers", type=int, default=2, help="link workers to compare with one (and to run end to end)")
    parser.add_argument("--broker-warmup", type=float, default=60,
                        help="seconds of raw produce, consume and commit on a scratch topic before anything is "
                             "measured, so the broker has compiled its hot paths as a running one has (0: none)")
    args = parser.parse_args()

    bus = private_bus.start(BENCH_PORTS, "carebus-bench-")
    settings, env, logs = bus.settings, bus.env, bus.logs
    r = redis.Redis.from_url(settings.redis)
    rows: list[tuple[str, ...]] = []
    delivery = None
    try:
        need = args.preload + 2 * args.backlog + 5 * args.rate * (args.seconds + args.warmup)   # about a quarter are Cerner
        with console.status(f"building a synthetic population of about {need:,} source records"):
            records = pop.source_records(need)
        pre, back1, back2 = (records[:args.preload], records[args.preload:args.preload + args.backlog],
                             records[args.preload + args.backlog:args.preload + 2 * args.backlog])
        live = [x for x in records[args.preload + 2 * args.backlog:] if x.system == "CERNER_MILLENNIUM"]

        if args.broker_warmup:
            sent = warm_broker(settings, records, args.broker_warmup)
            console.print(f"broker warm-up: {sent:,} messages produced, consumed and committed in "
                          f"{args.broker_warmup:.0f} s (not measured)")
        console.print(f"preloading {len(pre):,} source records through {args.workers} link workers")
        workers = start_workers(args.workers, env, logs)
        secs, rss = drain(settings, workers, pre, 0)
        stop_children(workers)
        rows.append(("preload: link stage, index growing 0 → " + f"{len(pre):,}", str(args.workers), f"{len(pre) / secs:,.0f}",
                     f"{rss:.0f}"))
        console.print(rows[-1])

        baseline = passthrough(settings, len(pre))
        rows.append(("baseline: raw confluent-kafka consume → produce (acks=all), same events", "1",
                     f"{baseline:,.0f}", "-"))
        console.print(rows[-1])

        # A subscriber registered now receives every change the backlogs make, while the delivery
        # service is stopped: started afterwards, it delivers them as fast as it can.
        delivery_env = {**env, "CAREBUS_DELIVERY_PORT": DELIVERY_PORT}
        sink = WebhookSink()
        delivery = start_delivery(delivery_env, logs)
        subscription = subscribe(sink.url)
        time.sleep(3)          # its dispatcher records its starting position
        stop_children([delivery])
        for run, (n, batch) in enumerate(((1, back1), (args.workers, back2))):
            workers = start_workers(n, env, logs)
            meter = bus_cpu(settings, {"link workers": [w.pid for w in workers]})
            meter.start()
            secs, rss = drain(settings, workers, batch, 10_000_000 * n)
            meter.stop()
            stop_children(workers)
            rows.append((f"backlog of {len(batch):,} on an index of {len(pre) + run * len(back1):,}", str(n),
                         f"{len(batch) / secs:,.0f}", f"{rss:.0f} (per worker, max)"))
            console.print(rows[-1])
            # The drain also produces the backlog (in this process): Kafka's share includes taking it in.
            console.print(f"  CPU per event: {meter.per_message(len(batch))}")

        lag = LagReader(settings)
        pending = changes_pending(lag, subscription)
        delivery = start_delivery(delivery_env, logs)
        started, peak = time.perf_counter(), 0.0
        while changes_pending(lag, subscription) > 0 and time.perf_counter() - started < 600:
            peak = max(peak, peak_rss_mb(delivery.pid))
            time.sleep(0.2)
        secs = time.perf_counter() - started
        lag.close()
        # The rate the subscriber received them at, from its first arrival to its last. The time
        # from the service's start to its last commit also holds the dispatcher opening its
        # consumer and the last commit's interval (COMMIT_EVERY): printed beside it, as it was
        # the only figure before the fourteenth session.
        arrived = [at for at, _ in sink.arrivals()]
        span = max(arrived) - min(arrived) if len(arrived) > 1 else 0.0
        received = f"{(len(arrived) - 1) / span:,.0f}" if span > 0 else "-"
        rows.append((f"delivery: {pending:,} waiting changes ({len(arrived):,} delivered, the rest out of scope) to "
                     f"one fast webhook subscriber, first to last arrival ({pending / secs:,.0f}/s from the "
                     "service's start to its last commit)", "1", received, f"{peak:.0f} (delivery service)"))
        console.print(rows[-1])

        table = Table(title="link and record stage (Kafka and Redis on this machine)")
        for col in ("run", "workers", "events/s", "peak RSS MiB"):
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        console.print(table)

        graph = RedisGraphStore(r)
        p50, p99, biggest = candidates_summary(graph.candidates_histogram())
        indexed = graph.size()
        used = int(r.info("memory")["used_memory"])
        baseline_mem = int(r.info("memory")["used_memory_startup"])
        console.print(f"candidates per linked record: p50 {p50}, p99 {p99}, max {biggest}  ·  "
                      f"blocks skipped as over the cap: {graph.stats().get('blocks_over_cap', 0):,}")
        console.print(f"Redis: {used / 2**20:,.0f} MiB for {indexed:,} source records = "
                      f"{(used - baseline_mem) / max(indexed, 1):,.0f} bytes per source record "
                      f"(graph, blocks, source states, record metadata)")

        if args.rate:
            received_before = sink.count()
            connectors = subprocess.Popen([sys.executable, "-m", "carebus.cli", "connectors"], env=env,
                                          stdout=open(logs / "connectors.log", "ab"), stderr=subprocess.STDOUT)
            workers = start_workers(args.workers, env, logs)
            from carebus.process_control import wait_http_ready
            wait_http_ready(f"http://127.0.0.1:{settings.http_port}/ready")
            time.sleep(3)
            warm, live = live[:args.rate * args.warmup], live[args.rate * args.warmup:]
            if warm:
                # Unmeasured: the broker's JIT compiler used a third of a core in the first minutes
                # of end-to-end traffic (per-thread CPU of a fresh bench broker), which a broker that
                # has been up for days no longer pays.
                started = time.perf_counter()
                asyncio.run(end_to_end(settings, warm, args.rate, args.warmup, args.connections))
                console.print(f"warm-up: {len(warm) / (time.perf_counter() - started):,.0f} msg/s achieved "
                              f"over {args.warmup} s (not measured)")
                time.sleep(3)
            since = int(time.time() * 1000)
            lag_before = total_lag(settings, "carebus-linker", SOURCE_EVENTS.name)
            meter = bus_cpu(settings, {"connectors": with_descendants(connectors.pid),
                                       "link workers": [w.pid for w in workers],
                                       "delivery": [delivery.pid], "subscriber": [sink.pid],
                                       "load generator": [os.getpid()]})
            meter.start()
            acks, sent_at = asyncio.run(end_to_end(settings, live, args.rate, args.seconds, args.connections))
            meter.stop()
            elapsed = (int(time.time() * 1000) - since) / 1000
            lag_after = total_lag(settings, "carebus-linker", SOURCE_EVENTS.name)
            time.sleep(5)
            lat = change_latencies(settings, since, sent_at)
            webhook = first_arrival_latencies(sink.arrivals()[received_before:], sent_at)
            stop_children(workers + [connectors, delivery])
            t = Table(title=f"end to end: {args.rate} HL7 ADT/s offered for {args.seconds} s over {args.connections} MLLP connections, "
                            f"{args.workers} link workers")
            for col in ("measure", "n", "p50 ms", "p95 ms", "p99 ms"):
                t.add_column(col)
            t.add_row("MLLP ACK (durable in Kafka)", str(len(acks)), *(f"{percentile(acks, q) * 1000:.1f}"
                                                                     for q in (.5, .95, .99)))
            t.add_row("source ACK → record change on patient-changes", str(len(lat)),
                      *(f"{percentile(lat, q) * 1000:.0f}" for q in (.5, .95, .99)))
            t.add_row("source ACK → webhook subscriber has the change", str(len(webhook)),
                      *(f"{percentile(webhook, q) * 1000:.0f}" for q in (.5, .95, .99)))
            console.print(t)
            console.print(f"achieved {len(acks) / elapsed:,.0f} msg/s; linker lag {lag_before} before, "
                          f"{lag_after} at the end of sending")
            console.print(f"CPU per message ACKed while sending ({len(acks):,} messages, {elapsed:.1f} s, "
                          f"{sum(meter.used.values()) / elapsed:.2f} of {os.cpu_count()} cores busy): "
                          + meter.per_message(len(acks), outside=("load generator", "subscriber")))
    finally:
        if delivery is not None:
            stop_children([delivery])
        bus.stop()


if __name__ == "__main__":
    main()
