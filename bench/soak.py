"""Soak: steady HL7 traffic while Redis, a broker and every service are restarted in turn.

    python -m bench.soak --minutes 5 --rate 50 --brokers 3

On its own bus (bench ports, fresh data folder) it starts the connectors, two link workers and
the delivery service with a webhook subscriber, then sends new patients' ADT messages over MLLP
at --rate per second, as an interface engine would (resend until AA; only AA counts). Through
the run it restarts, one after another: Redis (stopped 5 s), a Kafka broker (SIGKILL, then
started), the connectors, a link worker and the delivery service (each SIGKILL, then started).
Every 10 s it prints the linker's lag and each process's RSS. At the end, once the bus has
drained, it prints ACKed vs in the shared record vs delivered (distinct source records): the
three must be equal. Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis
from rich.console import Console
from rich.table import Table

from bench import private_bus
from bench.pipeline_throughput import BENCH_PORTS, DELIVERY_PORT, changes_pending, start_delivery, subscribe
from bench.webhook_sink import WebhookSink
from carebus import kafka_server, process_control, redis_server
from consumers.stream_lag import LagReader, total_lag
from schemas.topics import SOURCE_EVENTS
from simulator import population as pop
from simulator.traffic import MessageFactory, MllpClient, ack_code
from streams.identity_store import RedisGraphStore

console = Console(width=160)


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Services:
    """The carebus processes of the soak, restartable by name."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> None:
        if name == "connectors":
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "carebus.cli", "connectors"], env=self.env,
                                                stdout=open(self.logs / "connectors.log", "ab"), stderr=subprocess.STDOUT)
            process_control.wait_http_ready(f"http://127.0.0.1:{self.env['CAREBUS_HTTP_PORT']}/ready")
        elif name.startswith("link-worker"):
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "carebus.cli", "link-worker", "--worker-id", name],
                                                env=self.env, stdout=open(self.logs / f"{name}.log", "ab"),
                                                stderr=subprocess.STDOUT)
        elif name == "delivery":
            self.procs[name] = start_delivery({**self.env, "CAREBUS_DELIVERY_PORT": DELIVERY_PORT}, self.logs)

    def crash_and_restart(self, name: str) -> None:
        self.procs[name].kill()
        self.procs[name].wait()
        self.start(name)

    def stop_all(self) -> None:
        process_control.stop_children(list(self.procs.values()))


async def traffic(port: int, rate: int, stop: threading.Event, acked: dict[str, int], records: list[pop.SourceRecord]
                  ) -> None:
    """New patients' A01s at `rate`/s over 8 connections; resend until AA (AR never expected)."""
    factory = MessageFactory(random.Random(7))
    queue: asyncio.Queue[pop.SourceRecord] = asyncio.Queue()

    async def sender() -> None:
        client = MllpClient("127.0.0.1", port)
        while not stop.is_set() or not queue.empty():
            try:
                rec = await asyncio.wait_for(queue.get(), 1)
            except asyncio.TimeoutError:
                continue
            message = factory.hl7_adt(rec, "A01")
            while True:
                try:
                    ack = await client.send(message, timeout=60)
                    if ack_code(ack) == "AA":
                        acked[pop.source_key(rec)] = int(time.time() * 1000)
                        break
                    if ack_code(ack) == "AR":
                        console.print(f"[red]AR: {ack[:200]!r}[/red]")
                        break
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                    await client.close()
                    client = MllpClient("127.0.0.1", port)
                await asyncio.sleep(0.5)       # an AE or a lost connection: resend shortly
        await client.close()

    senders = [asyncio.create_task(sender()) for _ in range(8)]
    i = 0
    started = time.monotonic()
    while not stop.is_set() and i < len(records):
        due = started + i / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        queue.put_nowait(records[i])
        i += 1
    await asyncio.gather(*senders)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=int, default=50, help="HL7 messages/s offered")
    parser.add_argument("--brokers", type=int, default=3)
    args = parser.parse_args()

    os.environ["CAREBUS_KAFKA_BROKERS"] = str(args.brokers)
    os.environ["CAREBUS_KAFKA_HEAP"] = "384m"
    bus = private_bus.start(BENCH_PORTS, "carebus-soak-")
    settings, env, logs = bus.settings, bus.env, bus.logs
    sink = WebhookSink()
    services = Services(env, logs)
    acked: dict[str, int] = {}
    samples: list[tuple[float, int, dict[str, float]]] = []
    try:
        for name in ("connectors", "link-worker-0", "link-worker-1", "delivery"):
            services.start(name)
        subscribe(sink.url)
        seconds = args.minutes * 60
        # About a third of source records are Cerner (the MLLP feed): build enough people for the whole run.
        records = [r for r in pop.build(int(args.rate * seconds * 3.5) + 100, seed=11, practices=500).records
                   if r.system == "CERNER_MILLENNIUM"]
        stop = threading.Event()
        sender = threading.Thread(target=lambda: asyncio.run(traffic(settings.mllp_port, args.rate, stop, acked, records)))
        sender.start()
        node = kafka_server.nodes(settings)[-1]
        faults = [("Redis stopped for 5 s", lambda: (redis_server.down(settings), time.sleep(5), redis_server.up(settings))),
                  (f"Kafka broker {node.node_id} killed and restarted",
                   lambda: (process_control.stop(node.pid_file, node.marker, hard=True), time.sleep(5),
                            kafka_server.up(settings))),
                  ("connectors killed and restarted", lambda: services.crash_and_restart("connectors")),
                  ("link worker killed and restarted", lambda: services.crash_and_restart("link-worker-1")),
                  ("delivery killed and restarted", lambda: services.crash_and_restart("delivery"))]
        began = time.monotonic()
        next_fault, next_sample = seconds / (len(faults) + 1), 0.0
        while time.monotonic() - began < seconds:
            elapsed = time.monotonic() - began
            if faults and elapsed >= next_fault:
                what, act = faults.pop(0)
                console.print(f"[yellow]{elapsed:5.0f} s: {what}[/yellow]")
                act()
                next_fault += seconds / 6
            if elapsed >= next_sample:
                try:
                    lag = total_lag(settings, "carebus-linker", SOURCE_EVENTS.name)
                except Exception:  # noqa: BLE001 - a broker may be down at this moment
                    lag = -1
                rss = {n: rss_mb(p.pid) for n, p in services.procs.items()}
                samples.append((elapsed, lag, rss))
                console.print(f"{elapsed:5.0f} s  acked {len(acked):6d}  linker lag {lag:6d}  RSS MB "
                              + "  ".join(f"{n} {v:.0f}" for n, v in rss.items()))
                next_sample += 10
            time.sleep(0.5)
        stop.set()
        sender.join()
        console.print("traffic stopped; waiting for the bus to drain")
        graph = RedisGraphStore(redis.Redis.from_url(settings.redis))
        sub = redis.Redis.from_url(settings.redis).smembers("carebus:subscriptions").pop().decode()
        deadline = time.monotonic() + 300
        lag_reader = LagReader(settings)
        while time.monotonic() < deadline:
            if lag_reader.total("carebus-linker", SOURCE_EVENTS.name) == 0 and changes_pending(lag_reader, sub) == 0:
                break
            time.sleep(2)
        keys = sorted(acked)
        in_record = sum(1 for v in graph.persons_of(keys).values() if v)
        delivered = set()
        for _at, body in sink.arrivals():
            for s in body["record"]["sources"]:
                delivered.add(f"{s['system']}|{s['local_identifier']['system']}|{s['local_identifier']['value']}")
        table = Table("measure", "value", title=f"soak: {args.minutes:g} min at {args.rate} msg/s, {args.brokers} broker(s)")
        table.add_row("source records ACKed (AA)", f"{len(keys):,}")
        table.add_row("of them in the shared record", f"{in_record:,}")
        table.add_row("of them delivered to the subscriber", f"{len(delivered & set(keys)):,}")
        table.add_row("equal", "yes" if len(keys) == in_record == len(delivered & set(keys)) else "[red]NO[/red]")
        table.add_row("max linker lag", f"{max((s[1] for s in samples), default=0):,}")
        for name in services.procs:
            series = [s[2].get(name, 0.0) for s in samples]
            table.add_row(f"RSS {name} MB (first → max → last)",
                          f"{series[0]:.0f} → {max(series):.0f} → {series[-1]:.0f}" if series else "-")
        console.print(table)
    finally:
        services.stop_all()
        sink.close()
        bus.stop()
        # A broker restarted mid-run can outlive `down` (its pid file was rewritten): end
        # whatever still runs from this run's data folder.
        subprocess.run(["pkill", "-f", str(bus.data)], check=False)


if __name__ == "__main__":
    main()
