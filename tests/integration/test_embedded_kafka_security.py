"""The embedded Kafka with SASL_SSL (CAREBUS_KAFKA_SECURE=1): a real broker that speaks only
SCRAM-SHA-512 over TLS, the bus's own clients reaching it through their settings, and clients
without the credential refused."""
from __future__ import annotations

import stat

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from carebus import kafka_server, topic_admin
from foundation import kafka_tls
from foundation.durable_producer import DurableProducer
from schemas import codec
from schemas.topics import DLQ_CONNECTORS
from tests.free_ports import free_ports
from tests.kafka_reading import read_all

pytestmark = pytest.mark.integration


def _refused(conf: dict) -> bool:
    try:
        AdminClient({**conf, "socket.timeout.ms": 3000}).list_topics(timeout=6)
    except KafkaException:
        return True
    return False


def test_the_embedded_kafka_speaks_sasl_ssl_when_asked_and_refuses_anyone_without_the_credential(
        tmp_path, monkeypatch):
    from foundation.config import load_settings

    base = free_ports(1, width=2)[0]
    monkeypatch.setenv("CAREBUS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CAREBUS_KAFKA_PORT", str(base))
    monkeypatch.setenv("CAREBUS_KAFKA_CONTROLLER_PORT", str(base + 1))
    monkeypatch.setenv("CAREBUS_KAFKA_HEAP", "384m")
    monkeypatch.setenv("CAREBUS_KAFKA_SECURE", "1")
    settings = load_settings()
    try:
        kafka_server.up(settings)
        client = settings.kafka_client()
        assert client["security.protocol"] == "SASL_SSL" and client["sasl.mechanism"] == "SCRAM-SHA-512"
        assert not [s for s in topic_admin.ensure_topics(settings, (DLQ_CONNECTORS,)) if s.problems]
        producer = DurableProducer(settings)
        producer.send_sync(DLQ_CONNECTORS.name, codec.encode("DeadLetter", {
            "dead_letter_id": "d1", "stage": "test", "source_system": "OTHER", "reason": "r", "error_code": "T",
            "failed_at": 0, "original_topic": None, "original_partition": None, "original_offset": None,
            "content_type": "text/plain", "payload": b"over TLS", "attempts": 1}), key="d1")
        producer.close()
        [got] = read_all(settings, DLQ_CONNECTORS.name, expect=1, timeout=60)
        assert codec.decode(got.value())["payload"] == b"over TLS"

        assert _refused({"bootstrap.servers": settings.bootstrap}), "a plaintext client was let in"
        assert _refused({**client, "sasl.password": "not the password"}), "a wrong password was accepted"
        assert _refused({**{k: v for k, v in client.items() if k != "ssl.ca.location"},
                         "ssl.ca.location": str(tmp_path / "kafka-1" / "server.properties")}), \
            "a client that does not trust the broker's CA connected anyway"
        folder = tmp_path / kafka_tls.FOLDER
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE((folder / "client-password").stat().st_mode) == 0o600
        assert stat.S_IMODE(kafka_server.nodes(settings)[0].properties_file.stat().st_mode) == 0o600

        # A cluster made with SCRAM users cannot quietly come back as plaintext (or the reverse).
        kafka_server.down(settings)
        monkeypatch.setenv("CAREBUS_KAFKA_SECURE", "0")
        with pytest.raises(kafka_server.KafkaSetupError, match="CAREBUS_KAFKA_SECURE"):
            kafka_server.up(load_settings())
    finally:
        kafka_server.down(settings)
