"""Published markers against the real Redis: a resend's question finds the mark made before its
ACK, even when both reach Redis in the same call; questions and marks of one turn share a call."""
from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from producers.published_markers import PublishedMarkers

pytestmark = pytest.mark.integration
MARKERS_DB = 8


def run(settings, scenario):
    async def go():
        client = aioredis.Redis.from_url(settings.redis.rsplit("/", 1)[0] + f"/{MARKERS_DB}")
        try:
            return await scenario(PublishedMarkers(client), client)
        finally:
            await client.aclose()
    return asyncio.run(go())


def test_a_mark_made_before_the_ack_answers_the_resend_in_the_same_call(bus_settings):
    ids = [str(uuid.uuid4())]

    async def scenario(markers, client):
        markers.mark(ids)                    # published; the ACK goes out now
        again = await markers.seen(ids)      # the sender resends before the mark reached Redis
        return again, await client.ttl(f"carebus:ingested:{ids[0]}")

    again, ttl = run(bus_settings, scenario)
    assert again and ttl > 24 * 3600


def test_only_ids_all_marked_count_as_seen(bus_settings):
    a, b = str(uuid.uuid4()), str(uuid.uuid4())

    async def scenario(markers, _client):
        markers.mark([a])
        await markers.drain()
        return await asyncio.gather(markers.seen([a]), markers.seen([a, b]), markers.seen([b]))

    assert run(bus_settings, scenario) == [True, False, False]


def test_many_senders_in_one_turn_share_one_call(bus_settings):
    ids = [str(uuid.uuid4()) for _ in range(50)]

    async def scenario(markers, client):
        calls = []
        original = markers._script

        async def counted(**kwargs):
            calls.append(1)
            return await original(**kwargs)

        markers._script = counted
        answers = await asyncio.gather(*(markers.seen([i]) for i in ids))
        return answers, len(calls)

    answers, calls = run(bus_settings, scenario)
    assert answers == [False] * 50 and calls == 1


def test_without_redis_nothing_is_seen_and_marks_are_dropped():
    async def scenario():
        markers = PublishedMarkers(None)
        markers.mark(["x"])
        await markers.drain()
        return await markers.seen(["x"])

    assert asyncio.run(scenario()) is False
