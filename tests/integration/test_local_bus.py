"""The embedded bus against real servers: topics, round trips through Kafka, restarts, bad settings."""
from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings as hsettings

from carebus import kafka_server, local_bus, redis_server, topic_admin
from foundation.config import ConfigError, load_settings
from foundation.durable_producer import DurableProducer
from schemas import codec, registry
from schemas.topics import CATALOGUE, SHARED_RECORDS
from tests.avro_strategies import for_schema
from tests.kafka_reading import read_all
from tests.free_ports import free_ports

pytestmark = pytest.mark.integration


def test_catalogue_topics_exist_with_their_settings(bus_settings):
    states = topic_admin.verify_topics(bus_settings)
    assert {s.name for s in states} == {t.name for t in CATALOGUE}
    assert all(not s.problems for s in states), [s for s in states if s.problems]


def test_topics_that_must_go_together_with_different_partition_counts_are_reported(bus_settings, unique):
    """Review decisions land on their record's source-events partition only while both topics
    have as many partitions: a difference is drift, and `carebus up` fails on drift."""
    from schemas.topics import LINK_REVIEW, SOURCE_EVENTS, TopicSpec

    events = TopicSpec(f"test.events.{unique}", "SourcePatientEvent", "source key", "a test", partitions=6)
    decisions = dataclasses.replace(LINK_REVIEW, name=f"test.decisions.{unique}", partitions=4,
                                    co_partitioned_with=events.name)
    topic_admin.ensure_topics(bus_settings, (events, decisions))
    deadline = time.monotonic() + 30
    while True:     # a topic just created reaches the broker's metadata a moment later
        states = {s.name: s for s in topic_admin.verify_topics(bus_settings, (events, decisions))}
        if not any("missing" in s.problems for s in states.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert states[events.name].problems == ()
    assert states[decisions.name].problems == (
        f"4 partitions, {events.name} has 6 (they must match: each partition p goes with the other's p)",)
    assert LINK_REVIEW.co_partitioned_with == SOURCE_EVENTS.name


def test_topic_drift_is_reported(bus_settings):
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    admin = topic_admin.admin_client(bus_settings)
    resource = ConfigResource(ConfigResource.Type.TOPIC, SHARED_RECORDS.name,
                              incremental_configs=[ConfigEntry("cleanup.policy", "delete",
                                                               incremental_operation=AlterConfigOpType.SET)])
    for f in admin.incremental_alter_configs([resource]).values():
        f.result()
    try:
        # Config changes reach the broker's describe view asynchronously.
        problems: tuple[str, ...] = ()
        for _ in range(50):
            problems = {s.name: s for s in topic_admin.verify_topics(bus_settings)}[SHARED_RECORDS.name].problems
            if problems:
                break
            time.sleep(0.2)
        assert any("cleanup.policy=delete" in p for p in problems)
    finally:
        resource = ConfigResource(ConfigResource.Type.TOPIC, SHARED_RECORDS.name,
                                  incremental_configs=[ConfigEntry("cleanup.policy", "compact",
                                                                   incremental_operation=AlterConfigOpType.SET)])
        for f in admin.incremental_alter_configs([resource]).values():
            f.result()


@pytest.mark.parametrize("message_type", registry.MESSAGE_TYPES)
def test_every_schema_round_trips_through_kafka(bus_settings, message_type, unique):
    topic = next(t.name for t in CATALOGUE if t.message_type == message_type)
    strategy = for_schema(registry.current()[message_type].expanded)
    sent: list[bytes] = []

    @hsettings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(record):
        sent.append(codec.encode(message_type, record))

    collect()
    producer = DurableProducer(bus_settings)
    for i, data in enumerate(sent):
        producer.send_sync(topic, data, key=f"{unique}-{i}", headers=codec.headers(message_type))
    producer.close()
    got = read_all(bus_settings, topic, expect=len(sent),
                   predicate=lambda m: (m.key() or b"").decode().startswith(unique))
    assert sorted(m.value() for m in got) == sorted(sent)
    for m in got:
        decoded = codec.decode(m.value(), message_type)
        assert codec.encode(message_type, decoded) == m.value()
        assert dict(m.headers())[codec.SCHEMA_HEADER] == f"carebus.{message_type}".encode()


def test_up_twice_is_harmless(bus_settings):
    before = (kafka_server.status(bus_settings), redis_server.status(bus_settings))
    pid_file = kafka_server.nodes(bus_settings)[0].pid_file
    pid = pid_file.read_text()
    states = local_bus.up(bus_settings)
    assert pid_file.read_text() == pid, "a second up must not start another broker"
    assert not any(s.created for s in states)
    assert (kafka_server.status(bus_settings), redis_server.status(bus_settings)) == before


def test_embedded_redis_runs_with_the_memory_and_persistence_settings(redis_client):
    for name, value in {**redis_server.MEMORY_SETTINGS, **redis_server.PERSISTENCE_SETTINGS}.items():
        assert redis_client.config_get(name)[name] == value      # save "": the AOF only, no dump every minute


@pytest.fixture
def private_settings(monkeypatch):
    """Settings for a second, throwaway bus on free ports (for restart and fault tests)."""
    data_dir = Path(tempfile.mkdtemp(prefix="carebus-private-"))
    monkeypatch.setenv("CAREBUS_DATA_DIR", str(data_dir))
    kafka, controller, redis_port = free_ports(3)
    monkeypatch.setenv("CAREBUS_KAFKA_PORT", str(kafka))
    monkeypatch.setenv("CAREBUS_KAFKA_CONTROLLER_PORT", str(controller))
    monkeypatch.setenv("CAREBUS_REDIS_PORT", str(redis_port))
    settings = load_settings()
    yield settings
    local_bus.down(settings)


def test_broker_restart_keeps_the_data(bus_settings, private_settings):
    local_bus.up(private_settings)
    producer = DurableProducer(private_settings)
    payload = codec.encode("DeadLetter", {
        "dead_letter_id": "restart-1", "stage": "test", "source_system": "OTHER", "reason": "restart test",
        "error_code": "TEST", "failed_at": 0, "original_topic": None, "original_partition": None,
        "original_offset": None, "content_type": "text/plain", "payload": b"kept", "attempts": 1})
    producer.send_sync("carebus.dlq.connectors.v1", payload, key="restart-1")
    producer.close()
    import redis

    r = redis.Redis.from_url(private_settings.redis)
    r.set("carebus:test:restart", "kept")
    r.close()

    local_bus.down(private_settings)
    assert not any(kafka_server.status(private_settings).values())
    # Started again with the JVM's full compiler (CAREBUS_KAFKA_JIT=full, the default): the same data.
    full = dataclasses.replace(private_settings, kafka_jit="full")
    local_bus.up(full)
    assert b"-XX:TieredStopAtLevel=1" not in Path(f"/proc/{kafka_server.pids(full)[1]}/cmdline").read_bytes()

    got = read_all(private_settings, "carebus.dlq.connectors.v1", expect=1)
    assert codec.decode(got[0].value())["payload"] == b"kept"
    r = redis.Redis.from_url(private_settings.redis)
    assert r.get("carebus:test:restart") == b"kept"
    r.close()


def test_a_redis_loading_a_large_data_set_is_waited_for(private_settings):
    """After a restart Redis reads its append-only file back before it answers (33 s for the 2 GB
    index of a benchmark here), saying LOADING meanwhile: that is a server starting, not failing.
    Here the data set takes longer to load than the start-up timeout given."""
    import redis

    redis_server.up(private_settings)
    r = redis.Redis.from_url(private_settings.redis, socket_timeout=120)
    r.eval("for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'k:' .. i, string.rep('x', 200)) end", 0, 2_000_000)
    r.bgrewriteaof()
    while r.info("persistence")["aof_rewrite_in_progress"] or r.info("persistence")["aof_rewrite_scheduled"]:
        time.sleep(0.1)
    r.close()
    redis_server.down(private_settings)

    assert redis_server.up(private_settings, timeout=0.2)
    r = redis.Redis.from_url(private_settings.redis)
    assert r.dbsize() == 2_000_000
    r.close()


def test_busy_port_gives_a_clear_error(private_settings):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", private_settings.kafka_port))
        blocker.listen()
        with pytest.raises(kafka_server.KafkaSetupError, match=f"port {private_settings.kafka_port}.*CAREBUS_KAFKA_PORT"):
            kafka_server.up(private_settings)


def test_missing_redis_server_is_named(private_settings, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(redis_server.RedisSetupError, match="redis-server not found"):
        redis_server.up(private_settings)


def test_missing_java_is_named(private_settings, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(kafka_server.KafkaSetupError, match="java and mvn not found"):
        kafka_server.up(private_settings)


@pytest.mark.parametrize("variable,value,message", [
    ("CAREBUS_KAFKA_PORT", "nine", "not a whole number"),
    ("CAREBUS_REDIS_PORT", "70000", "outside"),
    ("KAFKA_BOOTSTRAP_SERVERS", "justahost", "not host:port"),
    ("REDIS_URL", "http://x", "must start with redis://"),
    ("CAREBUS_KAFKA_JIT", "fast", "quick or full"),
])
def test_bad_settings_give_a_clear_error(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=message):
        load_settings()
    # The CLI says the same, names the variable and exits 2 without a traceback.
    result = subprocess.run([sys.executable, "-m", "carebus.cli", "status"], capture_output=True, text=True,
                            env={**os.environ, variable: value})
    assert result.returncode == 2
    assert variable in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_the_embedded_broker_compiles_as_configured(bus_settings):
    # The tests' brokers run with the JVM's first compiler only (conftest: CAREBUS_KAFKA_JIT=quick).
    pid = kafka_server.pids(bus_settings)[1]
    assert pid is not None
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"-XX:TieredStopAtLevel=1" in args


def test_cluster_ids_never_look_like_an_option():
    ids = [kafka_server.new_cluster_id() for _ in range(3000)]
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids) and len(set(ids)) == len(ids)
