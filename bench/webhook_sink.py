"""A subscriber that answers at once (HTTP/1.1, keep-alive) and notes when each change arrived.

It runs in a process of its own, as a real subscriber would, on aiohttp: the standard library's
threaded server it replaces ran inside the benchmark's process, sharing one interpreter lock with
the load generator, and cost about 200 us of CPU per change (the client and it: 292 us per POST)
against 62-67 for this one, some 0.13 of this machine's two cores at 1,000 changes/s, taken from
the bus it measures. The parent asks it for what arrived over HTTP.

    python -m bench.webhook_sink      # prints its URL, then serves until stdin closes
"""
from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
import time

import httpx

_RECORD = struct.Struct("<dI")      # arrival time (s since the epoch), body length; then the body


class WebhookSink:
    """Start the subscriber process; `url` is where the delivery service should post."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "bench.webhook_sink"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE)
        assert self._proc.stdout is not None
        self.url = self._proc.stdout.readline().decode().strip()
        if not self.url:
            raise RuntimeError("the webhook sink did not start")
        self._base = self.url.rsplit("/", 1)[0]

    @property
    def pid(self) -> int:
        return self._proc.pid

    def count(self) -> int:
        return int(httpx.get(f"{self._base}/_count", timeout=30).text)

    def arrivals(self) -> list[tuple[float, dict]]:
        """(arrival time, webhook JSON) for everything received so far."""
        data = httpx.get(f"{self._base}/_arrivals", timeout=120).content
        out, at = [], 0
        while at < len(data):
            when, size = _RECORD.unpack_from(data, at)
            at += _RECORD.size
            out.append((when, json.loads(data[at:at + size])))
            at += size
        return out

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()


async def _serve() -> None:
    from aiohttp import web

    received: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        received.append(_RECORD.pack(time.time(), len(body)) + body)
        return web.Response(status=200)

    async def count(_request: web.Request) -> web.Response:
        return web.Response(text=str(len(received)))

    async def arrivals(_request: web.Request) -> web.Response:
        return web.Response(body=b"".join(received))

    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_get("/_count", count)
    app.router.add_get("/_arrivals", arrivals)
    app.router.add_post("/{tail:.*}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"http://127.0.0.1:{port}/hook", flush=True)
    # Until the parent closes stdin (or exits): never outlive the benchmark.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()


if __name__ == "__main__":
    import uvloop

    uvloop.run(_serve())
