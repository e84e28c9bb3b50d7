"""Lag and topic ends read with kept clients (consumers/stream_lag), and the monitor built on them,
against the real broker."""
from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from consumers.bus_monitor import BusMonitor
from consumers.stream_lag import LagReader, total_lag
from foundation.clock import now_ms
from schemas import codec, messages
from schemas.topics import DLQ_CONNECTORS

pytestmark = pytest.mark.integration


def _topic_with(settings, name: str, per_partition: list[int]) -> None:
    admin = AdminClient(settings.kafka_client())
    admin.create_topics([NewTopic(name, num_partitions=len(per_partition), replication_factor=1)])[name].result()
    producer = Producer(settings.kafka_client({"acks": "all"}))
    for partition, n in enumerate(per_partition):
        for i in range(n):
            producer.produce(name, f"m{i}".encode(), partition=partition)
    assert producer.flush(30) == 0


def _commit(settings, group: str, topic: str, partition: int, offset: int) -> None:
    consumer = Consumer(settings.kafka_client({"group.id": group, "enable.auto.commit": False}))
    try:
        # A new group's coordinator may still be loading or moving: a commit then fails and is retried.
        for attempt in range(20):
            try:
                consumer.commit(offsets=[TopicPartition(topic, partition, offset)], asynchronous=False)
                return
            except KafkaException:
                if attempt == 19:
                    raise
                time.sleep(0.5)
    finally:
        consumer.close()


def test_lag_per_partition_from_committed_offsets_and_ends(bus_settings, unique):
    topic, group = f"test.lag.{unique}", f"test-lag-{unique}"
    _topic_with(bus_settings, topic, [10, 5, 0])
    _commit(bus_settings, group, topic, 0, 4)
    reader = LagReader(bus_settings)

    lags = {p.partition: p for p in reader.lag(group, topic)}
    assert {p: (lags[p].end, lags[p].lag) for p in lags} == {0: (10, 6), 1: (5, 5), 2: (0, 0)}
    assert lags[0].committed == 4 and lags[1].committed < 0      # never committed: behind by all of it
    assert reader.total(group, topic) == 11 == total_lag(bus_settings, group, topic)
    assert reader.total(f"never-{unique}", topic) == 15
    # Read again on the same reader, after the group moves on.
    _commit(bus_settings, group, topic, 1, 5)
    assert reader.total(group, topic) == 6
    assert reader.lag(group, f"test.no-such-topic.{unique}") == []


def test_monitor_counts_each_dead_letter_reason_once(bus_settings, redis_client, unique):
    monitor = BusMonitor(bus_settings)
    code = f"TEST_{unique.upper()}"
    before = monitor.snapshot(redis_client)
    producer = Producer(bus_settings.kafka_client({"acks": "all"}))
    for _ in range(2):
        dead = messages.dead_letter("test", "CERNER_MILLENNIUM", "a test", code, b"raw", "text/plain", failed_at=now_ms())
        producer.produce(DLQ_CONNECTORS.name, codec.encode("DeadLetter", dead))
    assert producer.flush(30) == 0

    after = monitor.snapshot(redis_client)
    dead_letters = after["dead_letters"][DLQ_CONNECTORS.name]
    assert dead_letters["reasons"].get(code) == 2
    assert dead_letters["count"] == before["dead_letters"][DLQ_CONNECTORS.name]["count"] + 2
    assert after["topics"][DLQ_CONNECTORS.name]["messages"] == dead_letters["count"]
    # A later snapshot reads only what is new: the same two, not four.
    assert monitor.snapshot(redis_client)["dead_letters"][DLQ_CONNECTORS.name]["reasons"].get(code) == 2
    assert any(lag["group"] == "carebus-linker" for lag in after["lag"])


def test_lags_of_several_groups_share_one_reading_and_forgotten_groups_are_closed(bus_settings, unique):
    topic, other = f"test.lags.{unique}", f"test.lags-other.{unique}"
    _topic_with(bus_settings, topic, [3, 4])
    _topic_with(bus_settings, other, [2])
    _commit(bus_settings, f"a-{unique}", topic, 1, 4)
    reader = LagReader(bus_settings)
    try:
        found = reader.lags([(f"a-{unique}", topic), (f"b-{unique}", topic), (f"a-{unique}", other),
                             (f"c-{unique}", f"test.no-such-topic.{unique}")])
        assert {k: sum(p.lag for p in v) for k, v in found.items()} == {
            (f"a-{unique}", topic): 3, (f"b-{unique}", topic): 7, (f"a-{unique}", other): 2,
            (f"c-{unique}", f"test.no-such-topic.{unique}"): 0}
        assert reader.groups == {f"a-{unique}", f"b-{unique}"}     # no consumer for a topic that is not there
        reader.keep_only([f"a-{unique}"])
        assert reader.groups == {f"a-{unique}"}
        assert reader.total(f"b-{unique}", topic) == 7            # a forgotten group can still be read again
    finally:
        reader.close()
    assert reader.groups == set()


def test_monitor_drops_the_lag_of_a_deleted_subscription(bus_settings, redis_client, unique):
    from prometheus_client import generate_latest

    monitor = BusMonitor(bus_settings)
    subscription = f"test-sub-{unique}"
    group = f"carebus-delivery-{subscription}"
    redis_client.sadd("carebus:subscriptions", subscription)
    try:
        lags = monitor.snapshot(redis_client)["lag"]
        assert any(lag["group"] == group for lag in lags)
        assert group.encode() in generate_latest()
    finally:
        redis_client.srem("carebus:subscriptions", subscription)
    lags = monitor.snapshot(redis_client)["lag"]
    assert not any(lag["group"] == group for lag in lags)
    assert group.encode() not in generate_latest()            # its series is gone from /metrics
    assert any(lag["group"] == "carebus-linker" for lag in lags)
