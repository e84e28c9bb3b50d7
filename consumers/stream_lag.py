"""Consumer lag per group and partition, read from Kafka itself (committed offset vs end offset)."""
from __future__ import annotations

from dataclasses import dataclass

import time

from confluent_kafka import Consumer, KafkaException, TopicPartition

from foundation.config import Settings


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


def consumer_lag(settings: Settings, group: str, topic: str) -> list[PartitionLag]:
    consumer = Consumer(settings.kafka_client({"group.id": group, "enable.auto.commit": False}))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in partitions]
        committed = _committed_with_retry(consumer, tps)
        out = []
        for tp in committed:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
            out.append(PartitionLag(group, topic, tp.partition, tp.offset, high))
        return out
    finally:
        consumer.close()


def _committed_with_retry(consumer: Consumer, tps: list[TopicPartition], attempts: int = 10):
    # Right after a cluster or group is created its coordinator may still be moving
    # (NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS); these settle within seconds.
    for attempt in range(attempts):
        try:
            return consumer.committed(tps, timeout=10)
        except KafkaException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    return []


def total_lag(settings: Settings, group: str, topic: str) -> int:
    return sum(p.lag for p in consumer_lag(settings, group, topic))
