"""What a link worker is doing, for operators: /health, /ready and /metrics on its status port,
and a line in Redis that the monitor and dashboard show.

/ready answers 503 while the worker waits out an outage (Redis or Kafka unavailable), naming
what it waits for and since when, so an orchestrator or an on-call engineer sees the stall
before lag alerts fire. The Redis line is best effort: when Redis is the thing that is down,
the dashboard cannot read it either, and /ready is the source of truth.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
from dataclasses import dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from foundation.clock import now_ms

log = logging.getLogger("carebus.link_worker")
WAITING = Gauge("carebus_link_worker_waiting", "1 while the link worker waits for Redis or Kafka to come back")
STATUS_KEY = "carebus:link_workers"


@dataclass
class WorkerStatus:
    worker: str = field(default_factory=socket.gethostname)
    state: str = "running"            # running | waiting
    waiting_for: str = ""             # Redis | Kafka
    since: int = 0                    # epoch ms the current state began
    retries: int = 0
    batches: int = 0
    events: int = 0
    redis_client: object = field(default=None, repr=False)

    def _publish(self) -> None:
        if self.redis_client is None:
            return
        try:
            body = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "redis_client"}
            self.redis_client.hset(STATUS_KEY, self.worker, json.dumps({**body, "updated_at": now_ms()}))
        except Exception:  # noqa: BLE001 - best effort: Redis may be the thing that is down
            pass

    def waiting(self, what: str) -> None:
        if self.state != "waiting" or self.waiting_for != what:
            self.state, self.waiting_for, self.since = "waiting", what, now_ms()
        self.retries += 1
        WAITING.set(1)
        self._publish()

    def processed(self, events: int) -> None:
        self.batches += 1
        self.events += events
        if self.state != "running":
            self.state, self.waiting_for, self.since = "running", "", now_ms()
            WAITING.set(0)
            self._publish()
        elif self.batches % 100 == 1:
            self._publish()

    def ready(self) -> bool:
        return self.state == "running"

    def serve(self, port: int) -> ThreadingHTTPServer:
        """/health, /ready, /metrics on 127.0.0.1:port, in a daemon thread."""
        status = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                if self.path == "/metrics":
                    body, code, kind = generate_latest(), 200, CONTENT_TYPE_LATEST
                elif self.path in ("/ready", "/health"):
                    ok = status.ready() or self.path == "/health"
                    body = json.dumps({"ready": status.ready(), "state": status.state, "waiting_for": status.waiting_for,
                                       "since": status.since, "retries": status.retries}).encode()
                    code, kind = (200 if ok else 503), "application/json"
                else:
                    body, code, kind = b"{}", 404, "application/json"
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # requests are not logged
                pass

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=server.serve_forever, name="status", daemon=True).start()
        return server


def worker_states(redis_client) -> dict[str, dict]:  # noqa: ANN001 - a redis.Redis
    """Each link worker's last reported state (the monitor's read-only view of STATUS_KEY)."""
    return {k.decode(): json.loads(v) for k, v in redis_client.hgetall(STATUS_KEY).items()}
