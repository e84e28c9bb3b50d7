"""Redis markers of event ids already published, so a resent message is ACKed without a second publish.

Every inbound message asks "published already?" before it is produced and says "published" after
Kafka confirmed it. Asked one by one, that was two Redis round trips per message and a third of
an MLLP connector's CPU (redis-py's per-command cost, not Redis's). Here the questions and marks
of every sender that reaches this point in one turn of the event loop go to Redis together, in
one script call.

A message with several events (a bulk file's chunk of 2,000, a FHIR Bundle) is marked by one
marker for the whole chunk (`chunk_marker`), not one per event: a chunk is only ever produced,
confirmed and skipped as a whole. Per event, a first load of ten million patients kept ten
million keys in Redis for 30 days (about 1 GB) and cost Redis some 9 us of CPU per patient.

Marks are not awaited by the sender's ACK: the message is already durable in Kafka. A mark lost
to a crash or a Redis outage costs at most one duplicate publish of a resent message, which the
link stage ignores (event ids are deterministic); a question Redis cannot answer is "no" for the
same reason.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from foundation.config import Settings
from foundation.redis_connection import async_client

log = logging.getLogger("carebus.ingest")

SEEN_TTL_SECONDS = 30 * 24 * 3600
KEY_PREFIX = "carebus:ingested:"


def chunk_marker(event_ids: Sequence[str]) -> str:
    """The one marker of a chunk of events: a single event's own id (what a message of one event is
    marked by), or a digest of the chunk's ids in their order. A resent file or Bundle has the
    same events in the same order, so the same chunks (a chunk marked by an earlier version, one
    marker per event, is published once more under the same event ids: the linker ignores it)."""
    if len(event_ids) == 1:
        return event_ids[0]
    return "chunk:" + hashlib.blake2b("\n".join(event_ids).encode(), digest_size=16).hexdigest()


# One command for a whole turn's questions and marks: redis-py's cost is per command, and a
# pipeline of many small commands still pays it for each.
# ARGV: prefix, ttl, n questions, then per question: n ids, ids...; then the ids to mark.
# Returns per question 1 if every id was marked, else 0.
# Marks first: a mark was queued before the sender's ACK went out, so a resend's question, even
# in the same call, must find it.
_CHECK_AND_MARK = """
local prefix, ttl, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local i = 4
for q = 1, n do i = i + tonumber(ARGV[i]) + 1 end
for j = i, #ARGV do
  redis.call('SET', prefix .. ARGV[j], 1, 'EX', ttl)
end
local out = {}
i = 4
for q = 1, n do
  local count, all = tonumber(ARGV[i]), 1
  for j = i + 1, i + count do
    if all == 1 and redis.call('EXISTS', prefix .. ARGV[j]) == 0 then all = 0 end
  end
  out[q] = all
  i = i + count + 1
end
return out
"""


def markers_client(settings: Settings) -> aioredis.Redis:
    """The markers' Redis connection: one, held (they make one call at a time), with no retries
    and one-second timeouts, so that a question Redis cannot answer is "no" at once. With the
    retries other callers use (about 6 s of backoff) every MLLP ACK took 7-14 s while Redis was
    down, past many senders' ACK timeouts; now 8-13 ms."""
    return async_client(settings, retries=0, socket_timeout=1, socket_connect_timeout=1, single_connection_client=True)


class PublishedMarkers:
    def __init__(self, redis_client: aioredis.Redis | None) -> None:
        self.redis = redis_client
        self._questions: list[tuple[Sequence[str], asyncio.Future[bool]]] = []
        self._marks: list[str] = []
        self._flush_task: asyncio.Task | None = None
        self._script = redis_client.register_script(_CHECK_AND_MARK) if redis_client is not None else None

    async def seen(self, event_ids: Sequence[str]) -> bool:
        """True if every one of these ids was marked published."""
        if self.redis is None or not event_ids:
            return False
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._questions.append((event_ids, answer))
        self._schedule()
        return await answer

    def mark(self, event_ids: Sequence[str]) -> None:
        if self.redis is None or not event_ids:
            return
        self._marks.extend(event_ids)
        self._schedule()

    async def drain(self) -> None:
        """Wait until every mark so far has been sent (at shutdown, and for tests). Anything queued
        has a flush task, which ends only when nothing is left."""
        while self._flush_task is not None:
            await asyncio.shield(self._flush_task)     # a caller's timeout must not cancel the flush

    def _schedule(self) -> None:
        if self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(0)     # let every sender ready in this turn of the loop join in
            while self._questions or self._marks:
                questions, self._questions = self._questions, []
                marks, self._marks = self._marks, []
                await self._send(questions, marks)
        finally:
            self._flush_task = None

    async def _send(self, questions: list[tuple[Sequence[str], asyncio.Future[bool]]], marks: list[str]) -> None:
        assert self.redis is not None
        args: list[Any] = [KEY_PREFIX, SEEN_TTL_SECONDS, len(questions)]
        for ids, _ in questions:
            args += [len(ids), *ids]
        args += marks
        try:
            replies = await self._script(args=args)
        except (RedisError, OSError) as exc:
            log.warning("duplicate check and markers skipped: Redis unavailable (%s)", type(exc).__name__)
            replies = [0] * len(questions)
        for (_, answer), found in zip(questions, replies):
            if not answer.done():
                answer.set_result(bool(found))
