"""Redis storage for the EMPI graph, source states and shared records (the thin I/O edge).

Redis is the shared state of every linking worker, persisted with an append-only file; all of
it can be rebuilt by replaying carebus.source-events.v1 from the start (`carebus rebuild`), so
Kafka stays the system of record. Linking decisions take a short Redis lock so many workers
reach exactly the decisions one worker would.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from datetime import date
from typing import Any

import redis

from streams.record_comparison import Demographics

P = "carebus:"


def _demo_to_json(d: Demographics) -> str:
    raw = asdict(d)
    raw["birth_date"] = d.birth_date.isoformat() if d.birth_date else None
    return json.dumps(raw)


def _demo_from_json(text: bytes | str) -> Demographics:
    raw = json.loads(text)
    raw["birth_date"] = date.fromisoformat(raw["birth_date"]) if raw["birth_date"] else None
    return Demographics(**raw)


class RedisGraphStore:
    """identity_graph.GraphStore over Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    def linker_lock(self, timeout: float = 30.0):
        return self.r.lock(f"{P}lock:linker", timeout=timeout, blocking_timeout=120)

    # --- GraphStore -----------------------------------------------------------------
    def demographics(self, key: str) -> Demographics | None:
        raw = self.r.get(f"{P}demo:{key}")
        return _demo_from_json(raw) if raw else None

    def put_demographics(self, d: Demographics, block_keys: set[str]) -> set[str]:
        old = {b.decode() for b in self.r.smembers(f"{P}blocks:{d.key}")}
        pipe = self.r.pipeline()
        for bk in old - block_keys:
            pipe.srem(f"{P}block:{bk}", d.key)
        for bk in block_keys:
            pipe.sadd(f"{P}block:{bk}", d.key)
        pipe.delete(f"{P}blocks:{d.key}")
        if block_keys:
            pipe.sadd(f"{P}blocks:{d.key}", *block_keys)
        pipe.set(f"{P}demo:{d.key}", _demo_to_json(d))
        pipe.execute()
        return old

    def block_members(self, block_key: str) -> set[str]:
        return {b.decode() for b in self.r.smembers(f"{P}block:{block_key}")}

    def edges(self, key: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.r.hgetall(f"{P}edges:{key}").items()}

    def set_edge(self, a: str, b: str, kind: str) -> None:
        pipe = self.r.pipeline()
        pipe.hset(f"{P}edges:{a}", b, kind)
        pipe.hset(f"{P}edges:{b}", a, kind)
        pipe.execute()

    def remove_edge(self, a: str, b: str) -> None:
        pipe = self.r.pipeline()
        pipe.hdel(f"{P}edges:{a}", b)
        pipe.hdel(f"{P}edges:{b}", a)
        pipe.execute()

    def forbidden(self, a: str, b: str) -> bool:
        return bool(self.r.sismember(f"{P}forbidden", "|".join(sorted((a, b)))))

    def forbid(self, a: str, b: str) -> None:
        self.r.sadd(f"{P}forbidden", "|".join(sorted((a, b))))

    def person_of(self, key: str) -> str | None:
        raw = self.r.get(f"{P}person_of:{key}")
        return raw.decode() if raw else None

    def set_person(self, keys: set[str], person_id: str) -> None:
        olds = self.r.mget([f"{P}person_of:{k}" for k in keys])
        pipe = self.r.pipeline()
        for k, old in zip(keys, olds):
            if old and old.decode() != person_id:
                pipe.srem(f"{P}members:{old.decode()}", k)
            pipe.set(f"{P}person_of:{k}", person_id)
        pipe.sadd(f"{P}members:{person_id}", *keys)
        pipe.execute()

    # --- source states and records ---------------------------------------------------------
    def members(self, person_id: str) -> set[str]:
        return {b.decode() for b in self.r.smembers(f"{P}members:{person_id}")}

    def source_state(self, key: str) -> dict[str, Any] | None:
        raw = self.r.get(f"{P}source:{key}")
        return json.loads(raw) if raw else None

    def put_source_state(self, key: str, state: dict[str, Any]) -> None:
        self.r.set(f"{P}source:{key}", json.dumps(state))

    def record_meta(self, person_id: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.r.hgetall(f"{P}record_meta:{person_id}").items()}

    def record(self, person_id: str) -> dict[str, Any] | None:
        raw = self.r.get(f"{P}record:{person_id}")
        return json.loads(raw) if raw else None

    def put_record(self, record: dict[str, Any], content_hash: str, change: dict[str, Any]) -> None:
        """Versioned write: only a higher version replaces what is there (idempotent on replay)."""
        script = self.r.register_script("""
            local current = tonumber(redis.call('HGET', KEYS[2], 'version') or '0')
            if tonumber(ARGV[2]) <= current then return 0 end
            redis.call('SET', KEYS[1], ARGV[1])
            redis.call('HSET', KEYS[2], 'version', ARGV[2], 'hash', ARGV[3], 'emitted', '0', 'change', ARGV[4])
            return 1
        """)
        script(keys=[f"{P}record:{record['person_id']}", f"{P}record_meta:{record['person_id']}"],
               args=[json.dumps(record), record["version"], content_hash, json.dumps(change)])

    def retire_record(self, person_id: str, version: int) -> None:
        pipe = self.r.pipeline()
        pipe.delete(f"{P}record:{person_id}")
        pipe.hset(f"{P}record_meta:{person_id}", mapping={"version": version, "hash": "retired", "emitted": "0",
                                                           "change": "{}"})
        pipe.execute()

    def mark_emitted(self, person_id: str, version: int) -> None:
        script = self.r.register_script("""
            if redis.call('HGET', KEYS[1], 'version') == ARGV[1] then redis.call('HSET', KEYS[1], 'emitted', '1') end
        """)
        script(keys=[f"{P}record_meta:{person_id}"], args=[str(version)])

    # --- reviews and statistics --------------------------------------------------------------
    def open_review(self, review_id: str, body: dict[str, Any]) -> bool:
        if self.r.hsetnx(f"{P}review:{review_id}", "body", json.dumps(body)):
            self.r.sadd(f"{P}reviews:open", review_id)
            return True
        return False

    def close_review(self, review_id: str, outcome: str) -> dict[str, Any] | None:
        raw = self.r.hget(f"{P}review:{review_id}", "body")
        if raw is None:
            return None
        self.r.srem(f"{P}reviews:open", review_id)
        self.r.hset(f"{P}review:{review_id}", "outcome", outcome)
        return json.loads(raw)

    def open_reviews(self) -> list[dict[str, Any]]:
        ids = sorted(b.decode() for b in self.r.smembers(f"{P}reviews:open"))
        bodies = [self.r.hget(f"{P}review:{i}", "body") for i in ids]
        return [json.loads(b) for b in bodies if b]

    def count(self, name: str, n: int = 1) -> None:
        self.r.hincrby(f"{P}stats", name, n)

    def stats(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.r.hgetall(f"{P}stats").items()}
