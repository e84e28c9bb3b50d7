"""A subscriber that answers at once (HTTP/1.1, keep-alive) and notes when each change arrived."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookSink:
    def __init__(self) -> None:
        self._bodies: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"     # keep the connection: a subscriber as fast as it gets
            # http.server writes the status line and each header separately: without this, Nagle's
            # algorithm and delayed ACKs hold every response for ~40 ms.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                at = time.time()
                with sink._lock:
                    sink._bodies.append((at, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self._lock:
            return len(self._bodies)

    def arrivals(self) -> list[tuple[float, dict]]:
        """(arrival time, webhook JSON) for everything received so far."""
        with self._lock:
            bodies = list(self._bodies)
        return [(at, json.loads(body)) for at, body in bodies]

    def close(self) -> None:
        self.server.shutdown()
