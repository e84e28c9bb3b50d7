"""Subscriptions and their delivery statistics, kept in Redis (AOF-persisted)."""
from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import asdict
from typing import Any

import redis.asyncio as aioredis

from consumers.sealed_secrets import seal, unseal
from consumers.subscription_scope import Subscription
from foundation.clock import now_ms

P = "carebus:subscription:"


def _to_json(sub: Subscription, secret: str, created_at: int, key: str) -> str:
    raw = asdict(sub)
    for k in ("change_types", "ods_codes", "persons", "sections"):
        raw[k] = sorted(raw[k])
    return json.dumps({**raw, "secret": seal(secret, key, sub.subscription_id), "created_at": created_at})


def _from_json(text: bytes | str, key: str) -> tuple[Subscription, str, int]:
    raw = json.loads(text)
    secret, created = raw.pop("secret"), raw.pop("created_at")
    for k in ("change_types", "ods_codes", "persons", "sections"):
        raw[k] = frozenset(raw[k])
    return Subscription(**raw), unseal(secret, key, raw["subscription_id"]), created


class SubscriptionStore:
    def __init__(self, client: aioredis.Redis, secrets_key: str) -> None:
        self.r = client
        self.key = secrets_key

    async def create(self, client_id: str, channel: str, endpoint: str, change_types: set[str], ods_codes: set[str],
                     persons: set[str], sections: set[str], max_attempts: int,
                     max_per_notification: int = 1) -> tuple[Subscription, str, int]:
        sub = Subscription(str(uuid.uuid4()), client_id, channel, endpoint, frozenset(change_types),
                           frozenset(o.upper() for o in ods_codes), frozenset(persons), frozenset(sections),
                           "active", max_attempts, max_per_notification)
        secret = secrets.token_urlsafe(32)
        created = now_ms()
        await self.r.set(f"{P}{sub.subscription_id}", _to_json(sub, secret, created, self.key))
        await self.r.sadd("carebus:subscriptions", sub.subscription_id)
        return sub, secret, created

    async def get(self, subscription_id: str) -> tuple[Subscription, str, int] | None:
        raw = await self.r.get(f"{P}{subscription_id}")
        return _from_json(raw, self.key) if raw else None

    async def all(self) -> list[tuple[Subscription, str, int]]:
        ids = sorted(b.decode() for b in await self.r.smembers("carebus:subscriptions"))
        out = []
        for i in ids:
            found = await self.get(i)
            if found:
                out.append(found)
        return out

    async def delete(self, subscription_id: str) -> None:
        await self.r.delete(f"{P}{subscription_id}")
        await self.r.srem("carebus:subscriptions", subscription_id)

    async def record(self, subscription_id: str, **counters: int) -> None:
        pipe = self.r.pipeline()
        for k, v in counters.items():
            pipe.hincrby(f"carebus:delivery:{subscription_id}", k, v)
        await pipe.execute()

    async def note(self, subscription_id: str, **values: Any) -> None:
        await self.r.hset(f"carebus:delivery:{subscription_id}", mapping={k: str(v) for k, v in values.items()})

    async def stats(self, subscription_id: str) -> dict[str, str]:
        raw = await self.r.hgetall(f"carebus:delivery:{subscription_id}")
        return {k.decode(): v.decode() for k, v in raw.items()}

    # Patients whose changes queue behind a parked one (subscriptions that chose parking).
    @staticmethod
    def _held(subscription_id: str) -> str:
        return f"carebus:delivery:{subscription_id}:held"

    async def hold(self, subscription_id: str, person: str) -> None:
        await self.r.sadd(self._held(subscription_id), person)

    async def is_held(self, subscription_id: str, person: str) -> bool:
        return bool(await self.r.sismember(self._held(subscription_id), person))

    async def release_all_but(self, subscription_id: str, still_held: set[str]) -> None:
        key = self._held(subscription_id)
        released = {m.decode() for m in await self.r.smembers(key)} - still_held
        if released:
            await self.r.srem(key, *released)

    async def next_event_number(self, subscription_id: str, count: int = 1) -> int:
        """Number `count` more events of this subscription; returns the last number."""
        return int(await self.r.hincrby(f"carebus:delivery:{subscription_id}", "events_since_start", count))
