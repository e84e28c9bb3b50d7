"""Reading the patient-changes log: from a subscription's own position, or a time range.

Time ranges use Kafka's offsets-for-times index, so replaying last Tuesday does not scan the
year before it.
"""
from __future__ import annotations

import uuid
import zlib
from datetime import datetime
from collections.abc import Iterator

from confluent_kafka import OFFSET_END, Consumer, Message, TopicPartition

from foundation.config import Settings


def time_ms(value: str) -> int:
    """A time as an operator writes it: epoch milliseconds or ISO 8601."""
    return int(value) if value.isdigit() else int(datetime.fromisoformat(value).timestamp() * 1000)


def partition_for(key: str, partitions: int) -> int:
    """librdkafka's default partitioner (consistent_random): CRC-32 of the key."""
    return zlib.crc32(key.encode()) % partitions


def _consumer(settings: Settings, group: str | None = None) -> Consumer:
    return Consumer(settings.kafka_client({"group.id": group or f"carebus-reader-{uuid.uuid4().hex}",
                     "enable.auto.commit": False, "auto.offset.reset": "earliest", "enable.partition.eof": True}))


def offsets_at(consumer: Consumer, topic: str, partitions: list[int], at_ms: int) -> dict[int, int]:
    """First offset at or after at_ms per partition (end of partition if none).

    The ends are read *before* the time lookup: a message that lands between the two calls is
    then read (at worst one written just before at_ms is read too), never skipped."""
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)[1] for p in partitions}
    found = consumer.offsets_for_times([TopicPartition(topic, p, at_ms) for p in partitions], timeout=15)
    return {tp.partition: tp.offset if tp.offset >= 0 else ends[tp.partition] for tp in found}


def open_subscription_consumer(settings: Settings, group: str, created_at: int) -> Consumer:
    """A consumer on patient-changes at the group's committed position, or at `created_at` for a
    subscription that has never committed (new subscribers start when they subscribed)."""
    from schemas.topics import PATIENT_CHANGES

    consumer = Consumer(settings.kafka_client({"group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"}))
    topic = PATIENT_CHANGES.name
    partitions = sorted(consumer.list_topics(topic, timeout=15).topics[topic].partitions)
    committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=15)
    fresh = [tp.partition for tp in committed if tp.offset < 0]
    starts = offsets_at(consumer, topic, fresh, created_at) if fresh else {}
    positions = [TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else starts[tp.partition])
                 for tp in committed]
    consumer.assign(positions)
    if fresh:
        # Record the starting point at once, so lag reads true before the first delivery.
        consumer.commit(offsets=[p for p in positions if p.partition in fresh], asynchronous=False)
    return consumer


def read_range(settings: Settings, topic: str, from_ms: int, to_ms: int, partitions: list[int] | None = None,
               key: str | None = None) -> Iterator[Message]:
    """Messages with timestamp in [from_ms, to_ms], optionally only those with `key`."""
    consumer = _consumer(settings)
    try:
        all_partitions = sorted(consumer.list_topics(topic, timeout=15).topics[topic].partitions)
        if key is not None and partitions is None:
            partitions = [partition_for(key, len(all_partitions))]
        partitions = partitions if partitions is not None else all_partitions
        start = offsets_at(consumer, topic, partitions, from_ms)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)[1] for p in partitions}
        live = {p for p in partitions if start[p] < ends[p]}
        if not live:
            return
        consumer.assign([TopicPartition(topic, p, start[p]) for p in live])
        while live:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == -191:  # _PARTITION_EOF
                    live.discard(msg.partition())
                continue
            if msg.offset() >= ends[msg.partition()] - 1:
                live.discard(msg.partition())
            ts = msg.timestamp()[1]
            if ts > to_ms:
                live.discard(msg.partition())
                continue
            if key is None or msg.key() == key.encode():
                yield msg
    finally:
        consumer.close()


def read_one(settings: Settings, topic: str, partition: int, offset: int) -> Message | None:
    consumer = _consumer(settings)
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        for _ in range(30):
            msg = consumer.poll(1.0)
            if msg is not None and not msg.error():
                return msg
        return None
    finally:
        consumer.close()


__all__ = ["partition_for", "read_range", "read_one", "offsets_at", "time_ms", "OFFSET_END"]
