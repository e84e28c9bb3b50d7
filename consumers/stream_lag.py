"""Consumer lag per group and partition, read from Kafka itself (committed offset vs end offset).

Through the admin API: one ListOffsets request for every partition's end and one OffsetFetch for
the group's committed offsets. Reading them through a consumer, as carebus did until the tenth
session, opened a new consumer (connection, metadata, group coordinator) for every reading and
asked for each partition's end in a request of its own: the broker spent some 15-40 ms of CPU per
reading against 2-4 ms now (measured by polling ten times a second on an idle bus, alternated:
10-25% of a core against 2-3%). The benchmarks poll lag while they measure, and the monitor every
CAREBUS_MONITOR_SAMPLE_SECONDS and on every /monitor request: what the broker spent answering
them was counted as the stage's cost, and taken from the two cores the stage runs on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from foundation.config import Settings

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
    """Reads lag and topic ends again and again on one admin client (keep one for repeated readings)."""

    def __init__(self, settings: Settings) -> None:
        self.admin = AdminClient(settings.kafka_client())

    def partitions(self, topics: list[str]) -> list[TopicPartition]:
        """Every partition of these topics that exist (a topic not yet created has none)."""
        # Metadata for one topic when one is asked for: a cluster's whole metadata is the larger answer.
        md = self.admin.list_topics(topics[0] if len(topics) == 1 else None, timeout=TIMEOUT).topics
        return [TopicPartition(t, p) for t in topics if t in md for p in sorted(md[t].partitions)]

    def ends(self, partitions: list[TopicPartition]) -> dict[tuple[str, int], int]:
        """The end offset (messages ever written) of each partition, in one request."""
        if not partitions:
            return {}
        futures = self.admin.list_offsets({TopicPartition(tp.topic, tp.partition): OffsetSpec.latest()
                                           for tp in partitions}, request_timeout=TIMEOUT)
        return {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}

    def committed(self, group: str, partitions: list[TopicPartition], attempts: int = 10) -> dict[tuple[str, int], int]:
        """The group's committed offset per partition (negative: never committed)."""
        request = [ConsumerGroupTopicPartitions(group, [TopicPartition(tp.topic, tp.partition) for tp in partitions])]
        # Right after a cluster or group is created its coordinator may still be moving
        # (NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS); these settle within seconds.
        for attempt in range(attempts):
            try:
                result = self.admin.list_consumer_group_offsets(request, request_timeout=TIMEOUT)[group].result()
                return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}
            except KafkaException:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.5)
        return {}

    def lag(self, group: str, topic: str) -> list[PartitionLag]:
        partitions = self.partitions([topic])
        if not partitions:      # not created yet: nothing to be behind on
            return []
        ends, committed = self.ends(partitions), self.committed(group, partitions)
        return [PartitionLag(group, topic, tp.partition, committed.get((topic, tp.partition), -1),
                             ends[(topic, tp.partition)]) for tp in partitions]

    def total(self, group: str, topic: str) -> int:
        return sum(p.lag for p in self.lag(group, topic))


def consumer_lag(settings: Settings, group: str, topic: str) -> list[PartitionLag]:
    """One reading (a reader of its own: keep a LagReader to read again and again)."""
    return LagReader(settings).lag(group, topic)


def total_lag(settings: Settings, group: str, topic: str) -> int:
    return sum(p.lag for p in consumer_lag(settings, group, topic))
