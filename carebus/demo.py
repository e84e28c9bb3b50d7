"""`carebus demo`: the whole bus on the embedded default, with something to watch.

Starts Kafka and Redis (carebus up), the connectors, a linking worker and the delivery service
as their own processes, registers a sample subscriber (a real HTTP endpoint that checks every
signature), then drives synthetic London traffic through the connectors' real interfaces in
batches while a live table shows what the bus is doing. The web dashboard shows the same.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from carebus import local_bus
from carebus.process_control import stop_children, wait_http_ready
from foundation.config import Settings
from consumers.notification_format import verify
from simulator import population as pop
from simulator.run import Target, drive
from simulator.traffic import MllpClient

OPERATOR = "dev-auditor-token"
SUBSCRIBER = "dev-subscriber2-token"


@dataclass
class SampleSubscriber:
    """What a subscribing system does: verify the signature, de-duplicate by idempotency key."""
    secret: str = ""
    received: int = 0
    bad_signatures: int = 0
    keys: set[str] = field(default_factory=set)
    port: int = 0

    def start(self) -> None:
        sub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not verify(sub.secret, body, self.headers.get("X-Carebus-Signature", ""), int(time.time())):
                    sub.bad_signatures += 1
                    self.send_response(401)
                else:
                    sub.keys.add(self.headers.get("Idempotency-Key", ""))
                    sub.received += 1
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = server.server_address[1]
        Thread(target=server.serve_forever, daemon=True).start()


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "carebus.cli", *args], env=env, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT)


def _view(m: dict, sub: SampleSubscriber, sent: int, phase: str, dashboard: str) -> Group:
    flow = Table("stage", "messages", "per second", title="the bus, live")
    names = {"carebus.raw.v1": "1 received (raw)", "carebus.source-events.v1": "2 canonical events",
             "carebus.identity-events.v1": "3 identity decisions", "carebus.patient-changes.v1": "4 record changes",
             "carebus.shared-records.v1": "5 record snapshots"}
    for topic, label in names.items():
        t = m["topics"].get(topic, {"messages": 0, "per_second": 0})
        flow.add_row(label, f"{t['messages']:,}", f"{t['per_second']:,.0f}")
    link = Table("linkage", "count")
    for k, v in sorted(m["linkage"].items()):
        link.add_row(k, f"{v:,}")
    other = Table("health", "value")
    other.add_row("linker lag", str(sum(l["lag"] for l in m["lag"] if l["group"] == "carebus-linker")))
    for topic, d in m["dead_letters"].items():
        other.add_row(topic.replace("carebus.", ""), f"{d['count']} {d['reasons'] or ''}")
    other.add_row("sample subscriber received", f"{sub.received:,} ({len(sub.keys):,} distinct changes)")
    other.add_row("bad signatures", str(sub.bad_signatures))
    return Group(Panel(f"{phase} · source records sent: {sent:,} · dashboard: {dashboard}"), flow, link, other)


async def _inject_bad_messages(settings: Settings) -> None:
    """A couple of broken messages, so the dead-letter path has something to show."""
    client = MllpClient("127.0.0.1", settings.mllp_port)
    await client.send(b"MSH|^~\\&|CERNER|RAL|CAREBUS|LONDON|20260101||ADT^A01|BAD1|P|2.4\rPID|1||X^^^RAL^MR||A^B||19801399\r")
    await client.send(b"this is not HL7")
    await client.close()


def _rebuild_an_old_index(settings: Settings, console: Console) -> None:
    """The demo's own data, written by an older carebus: rebuild the index from Kafka rather
    than let the link worker refuse it (outside the demo that is the operator's decision)."""
    from foundation.redis_connection import sync_client
    from streams.identity_store import IndexLayoutError, RedisGraphStore
    from streams.index_rebuild import rebuild

    client = sync_client(settings)
    try:
        RedisGraphStore(client)
    except IndexLayoutError:
        console.print("the demo's identity index is in an older layout: rebuilding it from Kafka")
        rebuild(settings, client)


def run(settings: Settings, people: int, batch: int, duration: float, live: bool, seed: int) -> int:
    console = Console()
    console.print("starting Kafka (KRaft) and Redis ...")
    local_bus.up(settings)
    _rebuild_an_old_index(settings, console)
    logs = settings.data_dir / "logs"
    # A throw-away local bus: the published development credentials and log key are fine here.
    env = {**os.environ, "CAREBUS_ALLOW_DEV_SECRETS": "1"}
    procs = [_start(["connectors"], logs / "connectors.log", env), _start(["link-worker"], logs / "link-worker.log", env),
             _start(["delivery"], logs / "delivery.log", env)]
    created: dict = {}
    api = f"http://127.0.0.1:{settings.delivery_port}"
    try:
        wait_http_ready(f"http://127.0.0.1:{settings.http_port}/ready")
        wait_http_ready(f"http://127.0.0.1:{settings.delivery_port}/ready")
        sub = SampleSubscriber()
        sub.start()
        created = httpx.post(f"{api}/subscriptions", headers={"Authorization": f"Bearer {SUBSCRIBER}"},
                             json={"channel": "webhook", "endpoint": f"http://127.0.0.1:{sub.port}/carebus"}).json()
        sub.secret = created["secret"]
        code = httpx.post(f"{api}/dashboard/sign-in-codes", headers={"Authorization": f"Bearer {OPERATOR}"}).json()
        dashboard = f"{api}/dashboard (sign in with {OPERATOR})"
        console.print(f"dashboard: {api}{code['open']} (a one-time link for the next two minutes; after that open "
                      f"{api}/dashboard and sign in with the development operator token {OPERATOR})")
        asyncio.run(_inject_bad_messages(settings))
        target = Target("127.0.0.1", settings.mllp_port, settings.http_port, settings.drop_dir)
        sent = 0
        started = time.monotonic()
        state = {"phase": "sending traffic"}

        def monitor() -> dict:
            return httpx.get(f"{api}/monitor", headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=30).json()

        with Live(console=console, refresh_per_second=2, transient=False) as screen:
            def show() -> None:
                if live:
                    screen.update(_view(monitor(), sub, sent, state["phase"], dashboard))

            for start in range(0, people, batch):
                population = pop.build(min(batch, people - start), seed=seed + start)
                stats = asyncio.run(drive(population, target, seed=seed + start, show_progress=False))
                sent += len(population.records)
                del stats
                show()
            state["phase"] = "traffic sent; bus settling (Ctrl-C to stop)"
            while duration <= 0 or time.monotonic() - started < duration:
                show()
                time.sleep(2)
                m = monitor()
                ours = ("carebus-linker", f"carebus-delivery-{created['id']}")
                settled = sum(l["lag"] for l in m["lag"] if l["group"] in ours) == 0
                if duration == 0 and settled:
                    break
        m = monitor()
        console.print(_view(m, sub, sent, "final", dashboard))
        console.print(f"[bold]{m['linkage'].get('persons_with_records', 0):,} shared records from {sent:,} source records; "
                      f"the sample subscriber verified {sub.received:,} signed notifications.[/bold]")
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if created:
            # The sample subscriber dies with the demo; leave no subscription behind to fail forever.
            httpx.delete(f"{api}/subscriptions/{created['id']}", headers={"Authorization": f"Bearer {SUBSCRIBER}"})
        stop_children(procs, timeout=20)
