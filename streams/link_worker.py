"""`carebus link-worker`: one identity-linking / shared-record worker, a plain confluent-kafka loop.

It consumes carebus.source-events.v1 and carebus.link-review.v1 in batches (up to
CAREBUS_LINK_BATCH_SIZE events, waiting at most CAREBUS_LINK_BATCH_WAIT_MS), hands each batch
to link_stage.LinkStage and commits the batch's offsets only when every output is confirmed.
Start as many workers as there are partitions: there is no lock between them (see
identity_graph for why their decisions are those of one worker).

Why not a faust agent: the stage needs "commit only after the outputs of the whole batch are
acknowledged", and faust acknowledges events as the agent takes them from the stream; its
aiokafka consumer also costs several times more CPU per event than librdkafka, which is most of
the budget on a 2-core machine. The worker keeps faust's operational model (consumer group
carebus-linker, at-least-once, idempotent processing) without its per-event overhead.

Failures: a message that can never be processed goes to carebus.dlq.streams.v1 and the batch
goes on. An infrastructure error (Redis or Kafka unavailable) is not the message's fault: the
batch is retried with capped backoff and its offsets are not committed until it succeeds.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from functools import partial

import redis
from confluent_kafka import Consumer, KafkaException, TopicPartition

from foundation.config import Settings
from foundation.garbage_collection import settle_garbage_collector
from foundation.redis_connection import sync_client
from foundation.durable_producer import DurableProducer
from schemas.topics import LINK_REVIEW, SOURCE_EVENTS
from streams.fellegi_sunter import Parameters
from streams.identity_store import RedisGraphStore
from streams.link_pipeline import LinkPipeline, PipelineInterrupted
from streams.link_stage import InboundMessage, LinkStage, StageUnavailable
from streams.record_store import RedisRecordStore
from streams.worker_status import WorkerStatus

log = logging.getLogger("carebus.link_worker")
GROUP = "carebus-linker"
# Errors that say "not now", never "not this message": the batch waits and is retried. A Redis
# ResponseError (a script or command refused) is not among them: retrying it would stall the
# partition forever on one message, so it goes the way of any other bug (one by one, then park).
INFRASTRUCTURE_ERRORS = (redis.ConnectionError, redis.TimeoutError, KafkaException, StageUnavailable, OSError)


def consumer_config(settings: Settings, worker_id: str) -> dict[str, object]:
    return settings.kafka_client({
        "group.id": GROUP,
        "client.id": f"carebus-link-worker-{worker_id}" if worker_id else "carebus-link-worker",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        # A crashed worker's partitions move to the others within seconds, not a minute.
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 2_000,
        # Range, per topic: every worker gets its share of source-events. A strategy that balances
        # partition counts over both topics (cooperative-sticky) gave one worker all six
        # source-events partitions and the other all six link-review ones: two workers ran at the
        # speed of one. (Restart all workers together when changing it: a group has one strategy.)
        "partition.assignment.strategy": "range",
        # The broker answers a fetch once it holds fetch.min.bytes or after fetch.wait.max.ms. With
        # one byte it answered every few events (over a hundred fetches a second per worker at 250
        # events/s), and the broker's cost is per request; a batch waits up to
        # CAREBUS_LINK_BATCH_WAIT_MS for its events anyway.
        "fetch.wait.max.ms": settings.link_fetch_wait_ms,
        "fetch.min.bytes": 64 * 1024,
    })


def create_stage(settings: Settings) -> LinkStage:
    client = sync_client(settings, socket_timeout=30)
    # A batch's outputs are produced together and then flushed, and a flush sends at once whatever
    # linger.ms says: a long linger only stops librdkafka sending a partition's outputs in several
    # requests while the batch is still being encoded (it sends one request per partition, and the
    # broker's cost is per request).
    return LinkStage(RedisGraphStore(client), RedisRecordStore(client),
                     DurableProducer(settings, **{"linger.ms": 100}), Parameters.load(settings.linkage_parameters_in_use))


def _inbound(messages) -> list[InboundMessage]:  # noqa: ANN001 - confluent_kafka.Message
    return [InboundMessage(m.topic(), m.partition(), m.offset(), m.value()) for m in messages]


def _offsets(batch: list[InboundMessage]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for m in batch:
        last[(m.topic, m.partition)] = max(m.offset, last.get((m.topic, m.partition), -1))
    return [TopicPartition(t, p, o + 1) for (t, p), o in sorted(last.items())]


def _until_done(action, what: str, stopping, status: WorkerStatus | None = None) -> bool:  # noqa: ANN001
    """Run `action` until it succeeds (True) or the worker is asked to stop (False), waiting with
    capped backoff while Redis or Kafka is unavailable (reported on /ready). Any other error is
    the caller's to handle."""
    backoff = 0.2
    while True:
        try:
            action()
            return True
        except INFRASTRUCTURE_ERRORS as exc:
            service = "Redis" if isinstance(exc, redis.RedisError) else "Kafka"
            log.warning("%s waits: %s unavailable (%s); retrying in %.1f s", what, service, type(exc).__name__, backoff)
            if status is not None:
                status.waiting(service)
        if stopping():
            return False
        time.sleep(backoff)
        backoff = min(backoff * 2, 10.0)


def process_with_retry(stage: LinkStage, batch: list[InboundMessage], stopping,  # noqa: ANN001
                       status: WorkerStatus | None = None) -> bool:
    """Process until it succeeds (True) or the worker is asked to stop (False)."""
    try:
        return _until_done(lambda: stage.process(batch), f"batch of {len(batch)}", stopping, status)
    except Exception as exc:  # noqa: BLE001 - a bug on some message: find it, park it, go on
        if len(batch) == 1:
            log.exception("message %s:%d:%d cannot be processed", batch[0].topic, batch[0].partition,
                          batch[0].offset)
            return _until_done(partial(stage.park, batch[0], exc), "parking a message", stopping, status)
        log.exception("batch failed; processing its %d messages one by one", len(batch))
        return all(process_with_retry(stage, [m], stopping, status) for m in batch)


def run_worker(settings: Settings, worker_id: str = "", status_port: int = 0) -> None:
    from foundation.log_privacy import configure_logging

    configure_logging()
    stage = create_stage(settings)
    settle_garbage_collector()
    status = WorkerStatus(worker=f"{socket.gethostname()}:{worker_id or os.getpid()}", redis_client=stage.records.r)
    if status_port:
        status.serve(status_port)
    consumer = Consumer(consumer_config(settings, worker_id))
    # Batches in flight only when batches are large (a backlog): light traffic comes in small
    # batches, and keeping one in flight would only make them smaller (measured: 15-25% more CPU
    # per event at 500 events/s, for no gain in latency).
    pipeline = LinkPipeline(stage, overlap_from=max(1, settings.link_batch_size // 4))
    # Offsets processed but not yet committed (a commit can fail while the group rebalances):
    # committed with the next batch, or dropped when the partition moves (its new owner replays).
    pending: dict[tuple[str, int], int] = {}

    def revoked(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The batches in flight are dropped, not finished: their offsets were never committed, and
        # after a rebalance ("range" is an eager strategy) the consumer starts again from committed offsets.
        pipeline.abandon()
        # Batches already published may still have their records to mark as published: marked
        # now, the partitions' next owner does not take them for unpublished and send them again.
        try:
            stage.settle()
        except INFRASTRUCTURE_ERRORS as exc:
            log.warning("could not mark published records before the rebalance (%s)", type(exc).__name__)
        for tp in partitions:
            pending.pop((tp.topic, tp.partition), None)

    consumer.subscribe([SOURCE_EVENTS.name, LINK_REVIEW.name], on_revoke=revoked, on_lost=revoked)
    stop = {"now": False}

    def request_stop(*_: object) -> None:
        stop["now"] = True

    def done(batches: list[Sequence[InboundMessage]]) -> None:
        for batch in batches:
            status.processed(len(batch))
            for tp in _offsets(batch):
                pending[(tp.topic, tp.partition)] = tp.offset

    def step(batch: list[InboundMessage]) -> bool:
        """One pipeline step; on a failure, what was in flight is processed again one batch at a
        time (retrying while Redis or Kafka is away, parking what fails on its own). False: stop."""
        try:
            done([m for m, _ in pipeline.step(batch)])
            return True
        except PipelineInterrupted as broken:
            log.warning("batches in flight failed (%s); processing them again one at a time", broken)
            done([m for m, _ in broken.finished])
            for messages in broken.unfinished:
                if not process_with_retry(stage, list(messages), lambda: stop["now"], status):
                    return False
                done([messages])
            return True

    def commit() -> None:
        if not pending:
            return
        try:
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in sorted(pending.items())],
                            asynchronous=False)
            pending.clear()
        except KafkaException as exc:
            log.warning("commit failed (%s); retried with the next batch", exc)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log.info("link worker %s started (batch %d, wait %d ms)", worker_id or "-", settings.link_batch_size,
             settings.link_batch_wait_ms)
    try:
        while not stop["now"]:
            # With batches in flight, take only what has arrived: finishing them must not wait.
            wait = 0 if pipeline.in_flight else settings.link_batch_wait_ms / 1000
            messages = consumer.consume(settings.link_batch_size, wait)
            batch = []
            for m in messages:
                if m.error():
                    log.warning("consumer: %s", m.error())
                else:
                    batch.append(m)
            if (batch or pipeline.in_flight) and not step(_inbound(batch)):
                break
            commit()
        if pipeline.in_flight:
            step([])      # finish the batches in flight before leaving
        commit()
    finally:
        consumer.close()
        stage.producer.close()
