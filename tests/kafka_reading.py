"""Test-side Kafka reading: a plain consumer, as an external client would read the bus."""
from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, TopicPartition


def read_all(settings, topic: str, expect: int | None = None, timeout: float = 30.0,
             predicate=None) -> list:
    """Read `topic` from the beginning until `expect` matching messages arrived or timeout."""
    consumer = Consumer(settings.kafka_client({
        "group.id": f"test-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }))
    consumer.subscribe([topic])
    out = []
    deadline = time.monotonic() + timeout
    idle_after_expected = 0
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                if expect is None and out:
                    idle_after_expected += 1
                    if idle_after_expected > 4:
                        break
                continue
            if msg.error():
                continue
            if predicate is None or predicate(msg):
                out.append(msg)
            if expect is not None and len(out) >= expect:
                break
    finally:
        consumer.close()
    return out


def end_offsets(settings, topic: str) -> dict[int, int]:
    consumer = Consumer(settings.kafka_client({"group.id": "offsets-probe"}))
    try:
        md = consumer.list_topics(topic, timeout=10).topics[topic]
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions}
    finally:
        consumer.close()
