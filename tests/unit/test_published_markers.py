"""The connectors' published markers when Redis cannot answer: the question is "no", asked once.

A Redis that drops every connection stands in for one that is stopping or restarting (the
integration tests stop the real Redis; this counts the attempts, which a stopped Redis cannot)."""
from __future__ import annotations

import asyncio
from dataclasses import replace

from foundation.config import load_settings
from producers.published_markers import PublishedMarkers, markers_client


def test_a_question_redis_cannot_answer_is_no_after_one_attempt_each() -> None:
    """With the retries other Redis callers use, each question waited through six reconnections
    (some 6 s of backoff) before its "no", and every MLLP ACK behind it with it."""
    attempts = 0

    async def drop(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        writer.close()

    async def ask() -> list[bool]:
        server = await asyncio.start_server(drop, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = markers_client(replace(load_settings(), redis_url=f"redis://127.0.0.1:{port}/0"))
        markers = PublishedMarkers(client)
        try:
            return [await markers.seen(["event-1"]), await markers.seen(["event-2", "event-3"])]
        finally:
            await client.aclose()
            server.close()
            await server.wait_closed()

    assert asyncio.run(ask()) == [False, False]
    assert attempts == 2
