"""Rebuild the identity index and shared records from Kafka (`carebus rebuild-index`).

Redis holds derived state only: every source event is on carebus.source-events.v1 and every
review decision on carebus.link-review.v1. Rebuilding forgets the index and restarts the link
workers' consumer group from the beginning, so the next workers started replay the topics and
decide every link again. It refuses while any link worker is running: a worker mid-batch would
write into the index being removed.
"""
from __future__ import annotations

import redis
from confluent_kafka.admin import AdminClient

from foundation.config import Settings
from streams import identity_store, record_store
from streams.link_worker import GROUP
from schemas.errors import CarebusError


class WorkersStillRunning(CarebusError, RuntimeError):
    pass


def running_workers(settings: Settings) -> int:
    admin = AdminClient(settings.kafka_client())
    description = admin.describe_consumer_groups([GROUP])[GROUP].result(timeout=30)
    return len(description.members)


def forget_index(client: redis.Redis) -> int:
    """Remove every key of the index (graph, source states, records); returns how many."""
    removed = 0
    for pattern in (*identity_store.KEY_PATTERNS, *record_store.KEY_PATTERNS):
        batch: list[bytes] = []
        for key in client.scan_iter(match=identity_store.P + pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                removed += client.unlink(*batch)
                batch = []
        if batch:
            removed += client.unlink(*batch)
    return removed


def rebuild(settings: Settings, client: redis.Redis) -> int:
    if running_workers(settings):
        raise WorkersStillRunning("link workers are running in the group carebus-linker: stop them first")
    removed = forget_index(client)
    admin = AdminClient(settings.kafka_client())
    try:
        admin.delete_consumer_groups([GROUP])[GROUP].result(timeout=30)
    except Exception as exc:  # noqa: BLE001 - a group that never committed does not exist: nothing to reset
        if "GROUP_ID_NOT_FOUND" not in str(exc):
            raise
    return removed
