"""Consumer lag per group and partition, read from Kafka itself (committed offset vs end offset).

A LagReader keeps its clients for repeated readings: every partition's end in one ListOffsets
request (the admin API), the group's committed offsets in one OffsetFetch (a consumer of that
group, kept). Until the tenth session each reading opened a new consumer (connection, metadata,
group coordinator) and asked for each partition's end in a request of its own: the broker spent
some 15-45 ms of CPU per reading, against a few now (polled ten times a second on an idle bus,
alternated). The benchmarks poll lag while they measure, and the monitor every
CAREBUS_MONITOR_SAMPLE_SECONDS and on every /monitor request: what the broker spent answering
them was counted as the stage's cost, and taken from the two cores the stage runs on.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import wait
from dataclasses import dataclass
from typing import TypeVar

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from foundation.config import Settings

T = TypeVar("T")

TIMEOUT = 10.0      # seconds for any one request


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - max(self.committed, 0))


class LagReader:
    """Reads lag and topic ends again and again on the clients it keeps: an admin client for the
    ends, a consumer per group for its committed offsets (keep one reader for repeated readings)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.admin = AdminClient(settings.kafka_client())
        self._consumers: dict[str, Consumer] = {}

    def close(self) -> None:
        """Close its consumers and let its admin client go: librdkafka keeps a client reconnecting
        for as long as it exists (a benchmark's closed reader logged a failed connection every 50 ms
        once its bus had stopped)."""
        for consumer in self._consumers.values():
            consumer.close()
        self._consumers.clear()
        self.__dict__.pop("admin", None)

    def partitions(self, topics: list[str]) -> list[TopicPartition]:
        """Every partition of these topics that exist (a topic not yet created has none)."""
        # Metadata for one topic when one is asked for: a cluster's whole metadata is the larger answer.
        md = self.admin.list_topics(topics[0] if len(topics) == 1 else None, timeout=TIMEOUT).topics
        return [TopicPartition(t, p) for t in topics if t in md for p in sorted(md[t].partitions)]

    def ends(self, partitions: list[TopicPartition]) -> dict[tuple[str, int], int]:
        """The end offset (messages ever written) of each partition, in one request."""
        if not partitions:
            return {}

        def read() -> dict[tuple[str, int], int]:
            futures = self.admin.list_offsets({TopicPartition(tp.topic, tp.partition): OffsetSpec.latest()
                                               for tp in partitions}, request_timeout=TIMEOUT)
            wait(futures.values())
            return {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}
        return _retrying(read)

    def committed(self, group: str, partitions: list[TopicPartition], attempts: int = 10) -> dict[tuple[str, int], int]:
        """The group's committed offset per partition (negative: never committed), in one request.
        Asked through a consumer of that group (kept), not the admin API: librdkafka 2.16's admin
        OffsetFetch crashes the process when the group's coordinator answers NOT_COORDINATOR, as
        it does on a cluster just started (confluent-kafka-python issue 1982)."""
        consumer = self._consumers.get(group)
        if consumer is None:
            consumer = self._consumers[group] = Consumer(self.settings.kafka_client(
                {"group.id": group, "enable.auto.commit": False}))
        return _retrying(lambda: {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(
            [TopicPartition(tp.topic, tp.partition) for tp in partitions], timeout=TIMEOUT)}, attempts)

    def lag(self, group: str, topic: str) -> list[PartitionLag]:
        found = self.lags([(group, topic)])[(group, topic)]
        if isinstance(found, KafkaException):
            raise found
        return found

    def lags(self, groups: list[tuple[str, str]], ends: dict[tuple[str, int], int] | None = None
             ) -> dict[tuple[str, str], list[PartitionLag] | KafkaException]:
        """The lag of each (group, topic): the topics' partitions and ends in one request each
        (or `ends`, every partition's end already read), then each group's committed offsets.
        A group whose offsets cannot be read gets its error in place of its lag; the rest are read.
        A topic not created yet has no partitions, so nothing to be behind on."""
        if ends is None:
            ends = self.ends(self.partitions(sorted({topic for _, topic in groups})))
        by_topic: dict[str, list[TopicPartition]] = {}
        for t, p in sorted(ends):
            by_topic.setdefault(t, []).append(TopicPartition(t, p))
        out: dict[tuple[str, str], list[PartitionLag] | KafkaException] = {}
        for group, topic in groups:
            partitions = by_topic.get(topic, [])
            if not partitions:
                out[(group, topic)] = []
                continue
            try:
                committed = self.committed(group, partitions)
            except KafkaException as exc:
                out[(group, topic)] = exc
                continue
            out[(group, topic)] = [PartitionLag(group, topic, tp.partition, committed.get((topic, tp.partition), -1),
                                                ends[(topic, tp.partition)]) for tp in partitions]
        return out

    @property
    def groups(self) -> set[str]:
        """The groups this reader keeps a consumer for."""
        return set(self._consumers)

    def keep_only(self, groups: Iterable[str]) -> None:
        """Close the consumers of every other group (a deleted subscription's, say): a reader
        that lives as long as the monitor would otherwise keep one per group it ever read."""
        wanted = set(groups)
        for group in sorted(set(self._consumers) - wanted):
            self._consumers.pop(group).close()

    def total(self, group: str, topic: str) -> int:
        return sum(p.lag for p in self.lag(group, topic))


def _retrying(read: Callable[[], T], attempts: int = 10) -> T:
    # Right after a cluster or group is created, partition leaders and group coordinators may
    # still be moving (NOT_LEADER_FOR_PARTITION, NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS):
    # these settle within seconds.
    for attempt in range(attempts):
        try:
            return read()
        except KafkaException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def consumer_lag(settings: Settings, group: str, topic: str) -> list[PartitionLag]:
    """One reading (a reader of its own: keep a LagReader to read again and again)."""
    reader = LagReader(settings)
    try:
        return reader.lag(group, topic)
    finally:
        reader.close()


def total_lag(settings: Settings, group: str, topic: str) -> int:
    return sum(p.lag for p in consumer_lag(settings, group, topic))
