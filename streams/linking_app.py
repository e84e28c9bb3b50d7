"""The faust-streaming application: `carebus link-worker` runs one worker of it.

Agents:
  link      carebus.source-events.v1  -> identity events, record changes, shared-record snapshots
  decide    carebus.link-review.v1    -> applies REVIEW_ACCEPTED / REVIEW_REJECTED decisions
Start as many workers as you like (up to the partition count): Kafka spreads partitions over
them, and the linker lock in Redis makes their decisions those of a single worker. Offsets are
committed only after an event has been fully processed (at-least-once); processing is
idempotent, so a crashed worker's events are simply processed again by whoever takes over.
"""
from __future__ import annotations

import asyncio
import logging
import os

import faust
import redis

from carebus.config import Settings
from carebus.durable_producer import DurableProducer
from streams.event_processor import EventProcessor
from streams.fellegi_sunter import Parameters
from streams.identity_store import RedisGraphStore
from schemas.topics import LINK_REVIEW, SOURCE_EVENTS

log = logging.getLogger("carebus.linking_app")


def create_app(settings: Settings, worker_id: str = "") -> tuple[faust.App, EventProcessor]:
    params = Parameters.load(settings.linkage_parameters)
    store = RedisGraphStore(redis.Redis.from_url(settings.redis))
    processor = EventProcessor(store, DurableProducer(settings, **{"linger.ms": 2}), params)
    app = faust.App(
        "carebus-linker",
        broker=f"kafka://{settings.bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",            # all state is in Redis (see identity_store)
        topic_allow_declare=False,    # topics come from the catalogue, created by `carebus up/topics`
        topic_disable_leader=True,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_commit_every=50,
        broker_commit_interval=1.0,
        # A crashed worker's partitions move to the others within seconds, not a minute.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        datadir=str(settings.data_dir / f"faust-{worker_id or os.getpid()}"),
    )
    source = app.topic(SOURCE_EVENTS.name, value_serializer="raw", key_serializer="raw")
    reviews = app.topic(LINK_REVIEW.name, value_serializer="raw", key_serializer="raw")

    @app.agent(source)
    async def link(stream):  # noqa: ANN001 - faust's stream type
        async for event in stream.events():
            msg = event.message
            await asyncio.to_thread(processor.handle_source_event, event.value, msg.topic, msg.partition, msg.offset)

    @app.agent(reviews)
    async def decide(stream):  # noqa: ANN001
        async for value in stream:
            await asyncio.to_thread(processor.handle_review_decision, value)

    return app, processor


def run_worker(settings: Settings, worker_id: str = "") -> None:
    from carebus.log_privacy import configure_logging

    configure_logging()
    app, _ = create_app(settings, worker_id)
    worker = faust.Worker(app, loglevel="WARNING", redirect_stdouts=False)
    worker.execute_from_commandline()
