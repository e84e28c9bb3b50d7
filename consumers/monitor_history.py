"""The dashboard's last hour: a small sample of the monitor's figures every few seconds, kept in
Redis (so every delivery-service replica and every page reload sees the same history), turned
into per-interval series for the charts. `series` is pure; `MonitorHistory` is the Redis edge.
"""
from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from schemas.topics import DLQ_CONNECTORS, DLQ_DELIVERY, DLQ_STREAMS, PATIENT_CHANGES, SOURCE_EVENTS

KEY = "carebus:monitor:history"
HOUR_SECONDS = 3600


def sample(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The counters of one /monitor snapshot that the charts are made from (totals, not rates:
    rates come from differences, so a missed sample loses nothing)."""
    topics = snapshot["topics"]
    lag: dict[str, int] = {}
    for entry in snapshot["lag"]:
        if entry["lag"] >= 0:
            group = "linker" if entry["group"] == "carebus-linker" else "delivery"
            lag[group] = lag.get(group, 0) + entry["lag"]
    delivery = snapshot.get("delivery", {})
    return {"at": snapshot["at"],
            "source_events": topics.get(SOURCE_EVENTS.name, {}).get("messages", 0),
            "changes": topics.get(PATIENT_CHANGES.name, {}).get("messages", 0),
            "dead_letters": sum(topics.get(t.name, {}).get("messages", 0)
                                for t in (DLQ_CONNECTORS, DLQ_STREAMS, DLQ_DELIVERY)),
            "linker_lag": lag.get("linker", 0), "delivery_lag": lag.get("delivery", 0),
            "delivered": sum(int(d.get("delivered", 0)) for d in delivery.values()),
            "latency_ms_total": sum(int(d.get("latency_ms_total", 0)) for d in delivery.values())}


def series(samples: list[dict[str, Any]]) -> dict[str, list[float | None]]:
    """Per-interval series, oldest first: times (epoch seconds), source events/s, record
    changes/s, dead letters/min, linker and delivery lag, mean delivery latency (ms; None where
    nothing was delivered). Counters that went back (a rebuilt topic) count from zero."""
    ordered = sorted(samples, key=lambda s: s["at"])
    out: dict[str, list[float | None]] = {k: [] for k in (
        "at", "source_events_per_s", "changes_per_s", "dead_letters_per_min", "linker_lag", "delivery_lag",
        "delivery_latency_ms")}
    for before, now in zip(ordered, ordered[1:]):
        seconds = (now["at"] - before["at"]) / 1000
        if seconds <= 0:
            continue

        def grew(name: str) -> float:
            return now[name] - before[name] if now[name] >= before[name] else now[name]
        delivered = grew("delivered")
        out["at"].append(now["at"] / 1000)
        out["source_events_per_s"].append(round(grew("source_events") / seconds, 2))
        out["changes_per_s"].append(round(grew("changes") / seconds, 2))
        out["dead_letters_per_min"].append(round(60 * grew("dead_letters") / seconds, 2))
        out["linker_lag"].append(now["linker_lag"])
        out["delivery_lag"].append(now["delivery_lag"])
        out["delivery_latency_ms"].append(round(grew("latency_ms_total") / delivered, 1) if delivered else None)
    return out


class MonitorHistory:
    def __init__(self, client: aioredis.Redis, every_seconds: float) -> None:
        self.r = client
        self.keep = max(2, int(HOUR_SECONDS / every_seconds) + 1)

    async def append(self, one: dict[str, Any]) -> None:
        await self.r.lpush(KEY, json.dumps(one, separators=(",", ":")))
        await self.r.ltrim(KEY, 0, self.keep - 1)

    async def samples(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in await self.r.lrange(KEY, 0, self.keep - 1)]
