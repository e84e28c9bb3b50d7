"""A 3-node KRaft cluster on one host (CAREBUS_KAFKA_BROKERS=3): losing one broker loses nothing."""
from __future__ import annotations

import pytest

from carebus import kafka_server, local_bus, process_control
from foundation.durable_producer import DurableProducer
from schemas import codec
from schemas.topics import DLQ_CONNECTORS
from tests.kafka_reading import read_all
from tests.free_ports import free_port, free_ports

pytestmark = pytest.mark.integration


def test_three_node_cluster_survives_a_broker_crash(tmp_path, monkeypatch):
    from foundation.config import load_settings

    base = free_ports(1, width=6)[0]
    monkeypatch.setenv("CAREBUS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CAREBUS_KAFKA_BROKERS", "3")
    monkeypatch.setenv("CAREBUS_KAFKA_PORT", str(base))
    monkeypatch.setenv("CAREBUS_KAFKA_CONTROLLER_PORT", str(base + 1))
    monkeypatch.setenv("CAREBUS_REDIS_PORT", str(free_port()))
    monkeypatch.setenv("CAREBUS_KAFKA_HEAP", "384m")
    settings = load_settings()
    if any(process_control.port_open(base + i) for i in range(6)):
        pytest.skip("ports next to the chosen one are busy")
    try:
        local_bus.up(settings)
        states = {s.name: s for s in local_bus.up(settings)}
        assert not any(s.problems for s in states.values())

        def dead_letter(i: int) -> bytes:
            return codec.encode("DeadLetter", {
                "dead_letter_id": f"d{i}", "stage": "test", "source_system": "OTHER", "reason": "r", "error_code": "T",
                "failed_at": 0, "original_topic": None, "original_partition": None, "original_offset": None,
                "content_type": "text/plain", "payload": str(i).encode(), "attempts": 1})

        producer = DurableProducer(settings)
        for i in range(20):
            producer.send_sync(DLQ_CONNECTORS.name, dead_letter(i), key=f"k{i}")
        # Crash one of the three brokers, node 1: the other replicas carry on (replication 3,
        # min.insync.replicas 2), and a client started after the crash still finds the cluster.
        node = kafka_server.nodes(settings)[0]
        process_control.stop(node.pid_file, node.marker, hard=True)
        for i in range(20, 30):
            producer.send_sync(DLQ_CONNECTORS.name, dead_letter(i), key=f"k{i}", timeout=120)
        producer.close()
        started_after = DurableProducer(settings)
        for i in range(30, 40):
            started_after.send_sync(DLQ_CONNECTORS.name, dead_letter(i), key=f"k{i}", timeout=120)
        started_after.close()
        got = read_all(settings, DLQ_CONNECTORS.name, expect=40, timeout=120)
        assert sorted(int(codec.decode(m.value())["payload"]) for m in got) == list(range(40))
    finally:
        local_bus.down(settings)
