"""Two batches in flight (link_pipeline) publish exactly what one batch at a time publishes.

On the session's real Redis, in two databases of their own: the same source events, in the same
batches, once through LinkStage.process one batch at a time and once through LinkPipeline (each
batch's ingest running before the batch ahead of it is finished). Records are sent again with
corrections, so consecutive batches share source keys (the pipeline must not overlap those).
The stage's outputs are captured as it hands them to its producer: what is compared is what the
stage decided, which Kafka only carries.
"""
from __future__ import annotations

import random
import uuid
from dataclasses import replace

import pytest
import redis

from schemas import codec
from schemas.topics import PATIENT_CHANGES, SOURCE_EVENTS
from simulator import population as pop
from streams.identity_store import RedisGraphStore
from streams.link_pipeline import LinkPipeline, PipelineInterrupted
from streams.link_stage import InboundMessage, LinkStage
from streams.record_store import RedisRecordStore
from tests.builders import PARAMS, POPULATION

pytestmark = pytest.mark.integration


class CapturingProducer:
    """Confirms each output at once and keeps the record changes, in the order produced."""

    def __init__(self) -> None:
        self.changes: list[dict] = []

    def produce(self, topic, value=None, key=None, headers=None, timestamp_ms=None, on_delivery=None) -> None:
        if topic == PATIENT_CHANGES.name:
            self.changes.append(codec.decode(value, "RecordChange"))
        if on_delivery:
            on_delivery(None, None)

    def flush(self, timeout=None) -> int:
        return 0


class LoggedStage(LinkStage):
    """The stage, noting the order of its steps: ("prepare" | "finish", the batch's messages)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.calls: list[tuple[str, object]] = []

    def prepare(self, batch):
        self.calls.append(("prepare", batch.messages))
        return super().prepare(batch)

    def finish(self, prepared):
        self.calls.append(("finish", prepared.batch.messages))
        return super().finish(prepared)


def database(bus_settings, db: int) -> redis.Redis:
    client = redis.Redis.from_url(bus_settings.redis.rsplit("/", 1)[0] + f"/{db}")
    assert client.connection_pool.connection_kwargs["db"] == db     # never flush the live index
    client.flushdb()
    return client


def event(rec: pop.SourceRecord, n: int) -> InboundMessage:
    envelope = {"event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"pipeline-test|{n}")), "source_system": rec.system,
                "source_ods_code": rec.ods, "source_record_id": rec.local_id, "event_type": "PATIENT_UPSERT",
                "occurred_at": 1_700_000_000_000 + n, "recorded_at": 1_700_000_000_000 + n,
                "correlation_id": f"t-{n}", "raw_message": None}
    value = codec.encode("SourcePatientEvent", {"envelope": envelope, "patient": pop.patient_dict(rec)})
    return InboundMessage(SOURCE_EVENTS.name, 0, n, value)


def traffic(seed: int) -> list[list[InboundMessage]]:
    """The population's records in a shuffled order, a fifth of them sent again soon after with a
    correction (a new postcode), in batches of 3 to 12."""
    rnd = random.Random(seed)
    records = list(POPULATION.records)
    rnd.shuffle(records)
    stream: list[pop.SourceRecord] = []
    for rec in records:
        stream.append(rec)
        if rnd.random() < 0.2:
            stream.insert(len(stream) + rnd.randint(0, 10), replace(rec, postcode="E1 6AN", house=7))
    messages = [event(rec, n) for n, rec in enumerate(stream)]
    batches, i = [], 0
    while i < len(messages):
        size = rnd.randint(3, 12)
        batches.append(messages[i:i + size])
        i += size
    return batches


def people_and_records(client: redis.Redis) -> tuple[dict[str, str], dict[str, dict]]:
    graph, records = RedisGraphStore(client), RedisRecordStore(client)
    keys = [pop.source_key(r) for r in POPULATION.records]
    persons = graph.persons_of(keys)
    return persons, {p: records.record(p) for p in sorted(set(persons.values()))}


def comparable(change: dict) -> tuple:
    return (change["person_id"], change["version"], change["change_type"], tuple(change["changed_sections"]),
            tuple(change["caused_by"]))


@pytest.mark.parametrize("seed, overlap_from", [(1, 1), (2, 8)])
def test_two_batches_in_flight_publish_what_one_at_a_time_publishes(bus_settings, seed, overlap_from):
    batches = traffic(seed)
    one, two = database(bus_settings, 8), database(bus_settings, 9)
    try:
        alone, piped = CapturingProducer(), CapturingProducer()
        stage = LinkStage(RedisGraphStore(one), RedisRecordStore(one), alone, PARAMS)
        for batch in batches:
            stage.process(batch)
        logged = LoggedStage(RedisGraphStore(two), RedisRecordStore(two), piped, PARAMS)
        pipeline = LinkPipeline(logged, overlap_from)
        finished = []
        for batch in batches:
            finished += [m for m, _ in pipeline.step(batch)]
        finished += [m for m, _ in pipeline.drain()]

        assert finished == batches                      # every batch finished once, in order
        # Most large batches were prepared (their ingest started) before the batch ahead was
        # finished; those that share a source key with it were not, nor were small ones.
        overlapped = [a[1] for a, b in zip(logged.calls, logged.calls[1:]) if a[0] == "prepare" and b[0] == "finish"
                      and b[1] is not a[1]]
        # A batch can be in flight beside the one before it only if both are large.
        eligible = sum(1 for a, b in zip(batches, batches[1:]) if len(a) >= overlap_from and len(b) >= overlap_from)
        assert eligible // 2 < len(overlapped) < eligible
        assert all(len(b) >= overlap_from for b in overlapped)
        assert [comparable(c) for c in piped.changes] == [comparable(c) for c in alone.changes]
        assert people_and_records(two)[0] == people_and_records(one)[0]
        persons, records = people_and_records(two)
        assert {p: {k: v for k, v in r.items() if k != "updated_at"} for p, r in records.items()} == {
            p: {k: v for k, v in r.items() if k != "updated_at"} for p, r in people_and_records(one)[1].items()}
        assert len(set(persons.values())) < len(persons)       # records were linked, not left alone
    finally:
        one.flushdb()
        two.flushdb()


def test_a_failed_step_hands_back_the_batches_in_flight_and_they_process_again(bus_settings):
    """Redis goes away between steps (here: the pipeline's own connection is cut under it): the
    step hands back the batch in flight and the new one, and processing them again one at a time
    reaches the same records as if nothing had happened."""
    batches = traffic(3)[:6]
    one, two = database(bus_settings, 8), database(bus_settings, 9)
    try:
        stage = LinkStage(RedisGraphStore(one), RedisRecordStore(one), CapturingProducer(), PARAMS)
        for batch in batches:
            stage.process(batch)
        graph = RedisGraphStore(two)
        piped = LinkStage(graph, RedisRecordStore(two), CapturingProducer(), PARAMS)
        pipeline = LinkPipeline(piped)
        done = [m for m, _ in pipeline.step(batches[0])]
        assert done == [] and pipeline.ahead is not None
        graph._ahead.disconnect()        # the ingest's reply is lost with its connection
        with pytest.raises(PipelineInterrupted) as broken:
            pipeline.step(batches[1])
        assert broken.value.finished == [] and broken.value.unfinished == [batches[0], batches[1]]
        assert pipeline.ahead is None
        for messages in broken.value.unfinished + batches[2:]:
            piped.process(messages)
        assert people_and_records(two)[0] == people_and_records(one)[0]
    finally:
        one.flushdb()
        two.flushdb()
