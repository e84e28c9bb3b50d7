"""Figures about the bus for /monitor, /metrics and the dashboard: lag, throughput, dead
letters, linkage quality and delivery."""
from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from dataclasses import dataclass, field
from typing import Any

import redis
from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import Gauge

from foundation.config import Settings
from foundation.clock import now_ms
from consumers.stream_lag import LagReader
from schemas import codec
from streams.identity_store import linkage_statistics
from streams.worker_status import worker_states
from schemas.topics import CATALOGUE, DLQ_CONNECTORS, DLQ_DELIVERY, DLQ_STREAMS, PATIENT_CHANGES, SOURCE_EVENTS

LAG = Gauge("carebus_consumer_lag", "Messages behind the end of the topic", ["group", "topic", "partition"])
END = Gauge("carebus_topic_end_offset", "Messages ever written per topic", ["topic"])
RATE = Gauge("carebus_topic_messages_per_second", "Recent write rate per topic", ["topic"])
DEAD = Gauge("carebus_dead_letters", "Dead letters per topic", ["topic"])
LINKAGE = Gauge("carebus_linkage", "EMPI counters", ["what"])


@dataclass
class BusMonitor:
    settings: Settings
    _last: tuple[float, dict[str, int]] | None = None
    _reasons: dict[str, Tally] = field(default_factory=dict)
    _reasons_read: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _lag_reader: LagReader | None = None
    _lag_series: set[tuple[str, str, str]] = field(default_factory=set)

    def _reader(self) -> LagReader:
        # One reader for the monitor's life: each snapshot reads every topic's ends and each
        # group's offsets in a few requests on clients it keeps (stream_lag), not a consumer per reading.
        if self._lag_reader is None:
            self._lag_reader = LagReader(self.settings)
        return self._lag_reader

    def _partition_ends(self) -> dict[tuple[str, int], int]:
        """The end of every partition of the catalogue's topics, in one request."""
        reader = self._reader()
        return reader.ends(reader.partitions([t.name for t in CATALOGUE]))

    def _dead_letter_reasons(self, topic: str, end: int) -> dict[str, int]:
        """Why the dead letters of this (one-partition) topic were parked, reading only those new
        since the last snapshot (`end`: the topic's end now). A consumer is opened only for them."""
        tally = self._reasons.setdefault(topic, Tally())
        start = self._reasons_read.get(topic, 0)
        if end > start:
            consumer = Consumer(self.settings.kafka_client({"group.id": "carebus-monitor",
                                                            "enable.auto.commit": False}))
            try:
                self._read_reasons(consumer, topic, start, end, tally)
            finally:
                consumer.close()
        return dict(tally)

    def _read_reasons(self, consumer: Consumer, topic: str, start: int, end: int, tally: Tally) -> None:
        consumer.assign([TopicPartition(topic, 0, start)])
        read = start
        while read < end:
            msg = consumer.poll(2.0)
            if msg is None:
                break
            if msg.error():
                continue
            read = msg.offset() + 1
            try:
                tally[codec.decode(msg.value(), "DeadLetter")["error_code"]] += 1
            except Exception:  # noqa: BLE001
                tally["UNDECODABLE"] += 1
        self._reasons_read[topic] = read

    def snapshot(self, redis_client: redis.Redis) -> dict[str, Any]:
        # One at a time: /monitor and the history sampler both call this from worker threads, and
        # two snapshots reading the same new dead letters would count their reasons twice.
        with self._lock:
            return self._snapshot(redis_client)

    def _snapshot(self, redis_client: redis.Redis) -> dict[str, Any]:
        partition_ends = self._partition_ends()
        ends: dict[str, int] = {}
        for (topic, _), end in partition_ends.items():
            ends[topic] = ends.get(topic, 0) + end
        now = time.monotonic()
        rates = {}
        if self._last is not None:
            elapsed = max(now - self._last[0], 1e-6)
            rates = {t: max(0.0, (n - self._last[1].get(t, 0)) / elapsed) for t, n in ends.items()}
        self._last = (now, ends)
        reasons = {t.name: self._dead_letter_reasons(t.name, ends.get(t.name, 0))
                   for t in (DLQ_CONNECTORS, DLQ_STREAMS, DLQ_DELIVERY)}
        # carebus knows its own groups: the linker, and one per push subscription.
        subscriptions = sorted(b.decode() for b in redis_client.smembers("carebus:subscriptions"))
        groups = [("carebus-linker", SOURCE_EVENTS.name)] + [(f"carebus-delivery-{s}", PATIENT_CHANGES.name)
                                                             for s in subscriptions]
        lags, series = [], set()
        for (g, topic), found in self._reader().lags(groups, partition_ends).items():
            if isinstance(found, KafkaException):
                lags.append({"group": g, "topic": topic, "partition": -1, "lag": -1, "error": str(found.args[0])})
                series |= {s for s in self._lag_series if s[:2] == (g, topic)}    # unread now, not gone
                continue
            for p in found:
                lags.append({"group": g, "topic": topic, "partition": p.partition, "lag": p.lag})
                LAG.labels(g, topic, str(p.partition)).set(p.lag)
                series.add((g, topic, str(p.partition)))
        # A deleted subscription's group is read no more: close its consumer, and drop its lag
        # series rather than leave its last value standing in /metrics for ever.
        self._reader().keep_only(g for g, _ in groups)
        for gone in self._lag_series - series:
            LAG.remove(*gone)
        self._lag_series = series
        linkage = linkage_statistics(redis_client)
        for k, v in linkage.items():
            LINKAGE.labels(k).set(v)
        for t, n in ends.items():
            END.labels(t).set(n)
            RATE.labels(t).set(rates.get(t, 0.0))
        for t in (DLQ_CONNECTORS.name, DLQ_STREAMS.name, DLQ_DELIVERY.name):
            DEAD.labels(t).set(ends.get(t, 0))
        delivery = {}
        for sid in subscriptions:
            delivery[sid] = {k.decode(): v.decode() for k, v in redis_client.hgetall(f"carebus:delivery:{sid}").items()}
        return {"at": now_ms(), "topics": {t: {"messages": n, "per_second": round(rates.get(t, 0.0), 1)}
                                                          for t, n in ends.items()},
                "lag": lags, "dead_letters": {t: {"count": ends.get(t, 0), "reasons": r} for t, r in reasons.items()},
                "linkage": linkage, "delivery": delivery, "link_workers": worker_states(redis_client)}
