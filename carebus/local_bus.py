"""`carebus up` / `down` / `status`: the embedded Kafka and Redis plus the topic catalogue."""
from __future__ import annotations

from dataclasses import dataclass

from carebus import kafka_server, redis_server, topic_admin
from foundation.config import Settings


@dataclass
class BusStatus:
    kafka_nodes: dict[int, bool]
    redis: bool
    external_kafka: bool
    external_redis: bool


def up(settings: Settings) -> list[topic_admin.TopicState]:
    """Start whatever is not yet running (only the embedded parts), then create and verify topics."""
    if settings.uses_embedded_kafka:
        kafka_server.up(settings)
    if settings.uses_embedded_redis:
        redis_server.up(settings)
    return topic_admin.ensure_topics(settings)


def down(settings: Settings) -> None:
    kafka_server.down(settings)
    redis_server.down(settings)


def status(settings: Settings) -> BusStatus:
    return BusStatus(kafka_server.status(settings), redis_server.status(settings),
                     not settings.uses_embedded_kafka, not settings.uses_embedded_redis)
