"""The Redis identity index (Lua, compact layout) reaches exactly the reference store's people.

Runs on the session's real Redis server, in a database of its own so the running link workers'
index is untouched: two interleaved workers, records that change (their old blocks must be left),
merges and unmerges, and the index read back through the store's own views.
"""
from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import date

import pytest
import redis

from simulator import population as pop
from streams.identity_graph import MemoryGraphStore, link_batch
from streams.identity_store import IndexLayoutError, RedisGraphStore, block_digest
from streams.index_rebuild import forget_index
from streams.blocking import keys as block_keys
from tests.builders import PARAMS, POPULATION, demo
from tests.linking_harness import link_all, run_interleaved, run_interleaved_demographics
from tests.builders import tangled_population

pytestmark = pytest.mark.integration
INDEX_DB = 7


@pytest.fixture
def index(bus_settings):
    # The database goes in the URL: a path in the URL (".../0") wins over a db= argument.
    client = redis.Redis.from_url(bus_settings.redis.rsplit("/", 1)[0] + f"/{INDEX_DB}")
    assert client.connection_pool.connection_kwargs["db"] == INDEX_DB     # never flush the live index
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def redis_persons(store: RedisGraphStore, records) -> dict[str, str]:
    return store.persons_of([pop.source_key(r) for r in records])


@pytest.mark.parametrize("seed", [1, 2])
def test_two_interleaved_workers_on_redis_reach_the_reference_people(index, seed):
    rnd = random.Random(seed)
    records = list(POPULATION.records)
    store = RedisGraphStore(index)
    run_interleaved(store, records, rnd, 2)
    assert redis_persons(store, records) == link_all(records)
    assert sorted(k for batch in store.all_keys(batch=97) for k in batch) == sorted(
        pop.source_key(r) for r in records)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_the_coherence_rule_in_lua_makes_the_reference_people(index, seed):
    """Populations where chains, relatives and mistyped NHS numbers meet: the Lua clustering
    refuses the same links and makes the same people as identity_graph.cluster_people."""
    demos = tangled_population(seed, n=60)
    reference = MemoryGraphStore()
    expected = link_batch(reference, demos, PARAMS)
    store = RedisGraphStore(index)
    run_interleaved_demographics(store, demos, random.Random(seed), 2)
    assert store.persons_of([d.key for d in demos]) == reference.persons()
    assert expected.refused
    # One batch on a fresh index reports the refused links as the reference does.
    index.flushdb()
    assert link_batch(RedisGraphStore(index), demos, PARAMS).refused == expected.refused
    # Without a batch token (nothing is published) the index keeps none of the moves.
    assert not any(index.hexists(key, "o") for key in index.scan_iter("carebus:n:*"))


def test_changed_records_leave_their_old_blocks_and_relink(index):
    records = list(POPULATION.records)
    faulty = [r for r in records if r.faults][:30]
    wrong = {pop.source_key(r): replace(r, given="Zebedee", birth_date=date(1901, 2, 3)) for r in faulty}
    store, reference = RedisGraphStore(index), MemoryGraphStore()
    for s in (store, reference):
        link_batch(s, [demo(wrong.get(pop.source_key(r), r)) for r in records], PARAMS)
        link_batch(s, [demo(r) for r in faulty], PARAMS)
    assert redis_persons(store, records) == reference.persons() == link_all(records)
    # The corrected records are in the blocks of what they now say, and in no block they left.
    for r in faulty:
        key = pop.source_key(r)
        node = index.hget("carebus:nid:" + __import__("hashlib").sha1(key.encode()).hexdigest()[:4], key).decode()
        now = {block_digest(b) for b in block_keys(demo(r))}
        before = {block_digest(b) for b in block_keys(demo(wrong[key]))} - now
        for digest, should_hold in [*((d, True) for d in now), *((d, False) for d in before)]:
            members = index.hget(f"carebus:b:{digest[:2].hex()}", digest[2:]) or b","
            assert (f",{node},".encode() in members) == should_hold


def test_merge_then_unmerge_on_redis(index):
    a = POPULATION.records[0]
    b = next(r for r in POPULATION.records if r.person_id != a.person_id)
    store = RedisGraphStore(index)
    link_batch(store, [demo(a), demo(b)], PARAMS)
    ka, kb = pop.source_key(a), pop.source_key(b)
    before = store.persons_of([ka, kb])
    assert before[ka] != before[kb]
    merged = link_batch(store, [], PARAMS, forced=[(ka, kb)])
    assert store.person_of(ka) == store.person_of(kb) and merged.emptied
    link_batch(store, [], PARAMS, forbidden=[(ka, kb)])
    assert store.persons_of([ka, kb]) == before


def test_an_index_in_the_old_layout_is_refused_with_what_to_do(index):
    index.set("carebus:nodeseq", 12)
    with pytest.raises(IndexLayoutError, match="rebuild-index"):
        RedisGraphStore(index)


def test_forgetting_the_index_removes_it_and_nothing_else(index):
    store = RedisGraphStore(index)
    link_batch(store, [demo(r) for r in POPULATION.records[:50]], PARAMS)
    index.set("carebus:subscription:keep-me", 1)
    assert forget_index(index) > 0
    assert index.keys("carebus:*") == [b"carebus:subscription:keep-me"]


def test_rebuild_index_refuses_while_link_workers_run(bus_settings, link_workers, redis_client):
    import os
    import subprocess
    import sys

    before = redis_client.dbsize()
    result = subprocess.run([sys.executable, "-m", "carebus.cli", "rebuild-index", "--yes"], capture_output=True,
                            text=True, timeout=120, env=os.environ.copy())
    assert result.returncode == 1 and "stop them first" in result.stdout
    assert redis_client.dbsize() >= before


def test_a_record_written_but_never_published_is_published_by_the_replay(bus_settings, index, unique):
    """Kafka refuses the batch's outputs after the record version is written (as in a crash
    before publishing): the replayed batch publishes that version, rebuilt from the same states."""
    from dataclasses import replace as with_fields

    from foundation.durable_producer import DurableProducer
    from producers import hl7v2_mapper
    from schemas.source_systems import CERNER
    from schemas import codec
    from schemas.topics import PATIENT_CHANGES, SOURCE_EVENTS
    from streams.link_stage import InboundMessage, LinkStage, StageUnavailable
    from streams.record_store import RedisRecordStore
    from tests.kafka_reading import read_all
    from tests.builders import adt

    event = hl7v2_mapper.map_message(adt(f"RP{unique}", f"C{unique}", nhs="9990000026"), CERNER, "RAL", 1).event
    message = InboundMessage(SOURCE_EVENTS.name, 0, 0, codec.encode("SourcePatientEvent", event))
    nowhere = DurableProducer(with_fields(bus_settings, kafka_bootstrap_servers="127.0.0.1:9"),
                              **{"message.timeout.ms": 1500, "log_level": 0})
    with pytest.raises(StageUnavailable):
        LinkStage(RedisGraphStore(index), RedisRecordStore(index), nowhere, PARAMS).process([message])
    person = RedisGraphStore(index).person_of(f"CERNER_MILLENNIUM|urn:carebus:id:cerner:mrn:RAL|RP{unique}")
    assert index.hget(f"carebus:record_meta:{person}", "emitted") == b"0"
    producer = DurableProducer(bus_settings)
    LinkStage(RedisGraphStore(index), RedisRecordStore(index), producer, PARAMS).process([message])
    producer.close()
    published = read_all(bus_settings, PATIENT_CHANGES.name, timeout=30, predicate=lambda m: m.key() == person.encode())
    assert len(published) == 1
    change = codec.decode(published[0].value(), "RecordChange")
    assert change["version"] == 1 and change["caused_by"] == [event["envelope"]["event_id"]]
    assert change["record"] == RedisRecordStore(index).record(person)
    assert index.hget(f"carebus:record_meta:{person}", "emitted") == b"1"


def test_a_waiting_review_gains_a_second_reason_once_and_a_closed_one_is_left_alone(index):
    store = RedisGraphStore(index)
    body = {"review_id": "r1", "a": "A", "b": "C", "score": 0.99, "reason": "in the review band",
            "person_a": "PER-1", "person_b": None}
    assert store.open_reviews_batch({"r1": body}) == {"r1"}
    assert store.open_reviews_batch({"r1": {**body, "reason": "they contradict"}}) == set()
    assert store.open_reviews_batch({"r1": {**body, "reason": "they contradict"}}) == set()
    stored = json.loads(index.hget("carebus:review:r1", "body"))
    assert stored["reason"] == "in the review band; they contradict"
    assert stored["person_b"] is None and stored["a"] == "A"
    store.close_review("r1", "accepted")
    assert store.open_reviews_batch({"r1": {**body, "reason": "another"}}) == set()
    assert "another" not in json.loads(index.hget("carebus:review:r1", "body"))["reason"]
    assert index.smembers("carebus:reviews:open") == set()


def test_an_ingest_whose_reply_went_with_a_reset_connection_is_lost_not_taken_from_the_next(index):
    """Two ingests are started before either is read (link_pipeline). If the connection is reset
    between them, redis-py sends the second on a new socket, and the first's reply is gone: reading
    it must fail (the batches are processed again), never return the second batch's candidates."""
    graph = RedisGraphStore(index)
    first = graph.start_ingest([demo(r) for r in POPULATION.records[:5]])
    graph._ahead.disconnect()
    second = graph.start_ingest([demo(r) for r in POPULATION.records[5:10]])
    with pytest.raises(redis.ConnectionError):
        first()
    with pytest.raises(redis.ConnectionError):      # everything started on it was abandoned with it
        second()
    again = graph.start_ingest([demo(r) for r in POPULATION.records[5:10]])
    assert set(again()) == {demo(r).key for r in POPULATION.records[5:10]}


class WorkerDied(redis.ConnectionError):
    pass


def records_that_die(client: redis.Redis):  # noqa: ANN201 - a RedisRecordStore
    """A record store whose record writes fail: the worker stops after the links are written,
    before the records are."""
    from streams.record_store import RedisRecordStore

    store = RedisRecordStore(client)

    def write(_writes):  # noqa: ANN001, ANN202
        raise WorkerDied("the worker died here")
    store.write = write
    return store


def stopped_and_replayed(index: redis.Redis, producer, message, a: str, b: str,  # noqa: ANN001
                         before: set[str]) -> tuple[str, str]:
    """Process `message` with a worker that dies before writing the records (the links of a and b
    are written), then replay it as a restarted worker would: (survivor, person merged away)."""
    from streams.link_stage import LinkStage
    from streams.record_store import RedisRecordStore

    graph = RedisGraphStore(index)
    with pytest.raises(WorkerDied):
        LinkStage(RedisGraphStore(index), records_that_die(index), producer, PARAMS).process([message])
    assert graph.person_of(a) == graph.person_of(b)      # the links were written
    LinkStage(RedisGraphStore(index), RedisRecordStore(index), producer, PARAMS).process([message])
    producer.close()
    survivor = graph.person_of(a)
    (merged_away,) = before - {survivor}
    assert graph.survivor_of(merged_away) == survivor
    return survivor, merged_away


def assert_merge_published(bus_settings, index: redis.Redis, survivor: str, merged_away: str) -> None:  # noqa: ANN001
    """The MERGED identity event of the join is on its topic, and the index keeps no moves."""
    from schemas import codec
    from schemas.topics import IDENTITY_EVENTS
    from tests.kafka_reading import read_all

    events = [codec.decode(m.value(), "IdentityEvent") for m in read_all(
        bus_settings, IDENTITY_EVENTS.name, timeout=30, predicate=lambda m: m.key() == survivor.encode())]
    assert any(e["type"] == "MERGED" and e["other_person_id"] == merged_away for e in events)
    assert not any(index.hexists(key, "o") for key in index.scan_iter("carebus:n:*"))


def cerner_event(raw: bytes, offset: int):  # noqa: ANN201 - an InboundMessage
    from producers import hl7v2_mapper
    from schemas import codec
    from schemas.source_systems import CERNER
    from schemas.topics import SOURCE_EVENTS
    from streams.link_stage import InboundMessage

    event = hl7v2_mapper.map_message(raw, CERNER, "RAL", offset).event
    return InboundMessage(SOURCE_EVENTS.name, 0, offset, codec.encode("SourcePatientEvent", event))


def test_a_crash_between_linking_and_the_records_loses_no_record_change(bus_settings, index, unique):
    """A batch joins two people and the worker dies after the links are written, before the
    records are: the replayed batch finds the links already made (nothing moves the second time),
    yet the person merged away must still be retired, published as merged and lead to its survivor."""
    from foundation.durable_producer import DurableProducer
    from schemas import codec
    from schemas.topics import PATIENT_CHANGES
    from streams.link_stage import LinkStage
    from streams.record_store import RedisRecordStore
    from tests.builders import adt, cerner_key, given_and_born, own_identity
    from tests.kafka_reading import read_all

    first, second = own_identity(f"A{unique}"), own_identity(f"B{unique}")
    born = given_and_born(f"RA{unique}")[1]
    producer = DurableProducer(bus_settings)
    graph = RedisGraphStore(index)
    LinkStage(graph, RedisRecordStore(index), producer, PARAMS).process(
        [cerner_event(adt(f"RA{unique}", f"C1{unique}", dob=born, **first), 1),
         cerner_event(adt(f"RB{unique}", f"C2{unique}", **second), 2)])
    a, b = cerner_key(f"RA{unique}"), cerner_key(f"RB{unique}")
    before = {graph.person_of(a), graph.person_of(b)}
    assert len(before) == 2

    # An hour later, B's record carries A's NHS number, surname and birth date: one person.
    later = adt(f"RB{unique}", f"C3{unique}", dob=born, **first).replace(b"202611241015", b"202611241115")
    joining = cerner_event(later.replace(b"202611241010", b"202611241110"), 3)
    survivor, merged_away = stopped_and_replayed(index, producer, joining, a, b, before)
    changes = read_all(bus_settings, PATIENT_CHANGES.name, timeout=30,
                       predicate=lambda m: m.key() in (survivor.encode(), merged_away.encode()))
    kinds = {(m.key().decode(), codec.decode(m.value(), "RecordChange")["change_type"]) for m in changes}
    assert (merged_away, "merged") in kinds
    assert RedisRecordStore(index).persons([merged_away])[merged_away].retired
    last = codec.decode([m for m in changes if m.key() == survivor.encode()][-1].value(), "RecordChange")
    assert sorted(s["local_identifier"]["value"] for s in last["record"]["sources"]) == [f"RA{unique}", f"RB{unique}"]
    # The identity events of the join, which only the crashed run's moves produced, are published too.
    assert_merge_published(bus_settings, index, survivor, merged_away)


def test_a_review_decision_stopped_between_linking_and_the_records_loses_nothing(bus_settings, index, unique):
    """The same stop for an accepted review, whose batch ingests neither record: the replay takes
    the moves kept on the pair's first record, retires the person merged away and publishes the merge."""
    import uuid

    from foundation.durable_producer import DurableProducer
    from schemas import codec, messages
    from schemas.topics import LINK_REVIEW
    from streams.link_stage import InboundMessage, LinkStage
    from streams.record_store import RedisRecordStore
    from tests.builders import adt, cerner_key, own_identity

    producer = DurableProducer(bus_settings)
    graph = RedisGraphStore(index)
    LinkStage(graph, RedisRecordStore(index), producer, PARAMS).process(
        [cerner_event(adt(f"RA{unique}", f"C1{unique}", **own_identity(f"A{unique}")), 1),
         cerner_event(adt(f"RB{unique}", f"C2{unique}", **own_identity(f"B{unique}")), 2)])
    a, b = cerner_key(f"RA{unique}"), cerner_key(f"RB{unique}")
    before = {graph.person_of(a), graph.person_of(b)}
    assert len(before) == 2
    review_id = f"review-{unique}"
    graph.open_reviews_batch({review_id: {"review_id": review_id, "a": a, "b": b, "score": 0.9,
                                          "reason": "a person looked", "person_a": graph.person_of(a),
                                          "person_b": graph.person_of(b)}})
    accepted = messages.identity_event(str(uuid.uuid4()), "REVIEW_ACCEPTED", graph.person_of(a) or "",
                                       recorded_at=1, caused_by=review_id, other_person_id=graph.person_of(b),
                                       score=0.9, method="review", reasons=["decided by a test"])
    decision = InboundMessage(LINK_REVIEW.name, 0, 1, codec.encode("IdentityEvent", accepted))
    survivor, merged_away = stopped_and_replayed(index, producer, decision, a, b, before)
    assert RedisRecordStore(index).persons([merged_away])[merged_away].retired
    assert_merge_published(bus_settings, index, survivor, merged_away)


def test_runs_keep_their_moves_on_one_node_side_by_side(index):
    """A run that stopped before publishing left its moves on a node; another run (a relink, a
    review decision) moves people homed on the same node before the replay comes. Its moves must
    not erase the first run's: publishing it settles only its own, and the replay still finds and
    takes over the stopped run's moves."""
    from datetime import date

    from streams.identity_graph import LINK_WORKER_RUN, run_token
    from tests.builders import person

    graph = RedisGraphStore(index)
    a, b, c = (person("A|x|1", "ZEBEDEE", "QUORN", date(1950, 1, 1), "MALE", "E11AA"),
               person("B|x|2", "YOLANDA", "PRIMM", date(1990, 6, 2), "FEMALE", "SE11AB"),
               person("C|x|3", "XAVIER", "OSTLER", date(1970, 3, 3), "MALE", "NW11AC"))
    link_batch(graph, [a, b, c], PARAMS)           # three people; no token, so nothing is kept
    assert len(set(graph.persons_of([a.key, b.key, c.key]).values())) == 3
    stopped, other = run_token(LINK_WORKER_RUN), run_token(LINK_WORKER_RUN)
    first = graph.apply({}, [], forced=[(a.key, b.key)], token=stopped)      # stops before publishing
    second = graph.apply({}, [], forced=[(a.key, c.key)], token=other)       # homed on a's node too
    assert first.pending_at == second.pending_at
    (kept,) = graph.pending_of([a.key])
    assert [k.token for k in kept.kept] == [stopped, other]
    graph.settle_pending([(second.pending_at[0], other)])                  # the other run is published
    (kept,) = graph.pending_of([a.key])
    assert [k.token for k in kept.kept] == [stopped]
    assert {r.person for r in kept.kept[0].relabels} == {r.person for r in first.relabels}

    replay = link_batch(graph, [], PARAMS, ingested={}, token=run_token(LINK_WORKER_RUN), kept_elsewhere=[kept])
    assert replay.taken_over == [(first.pending_at[0], stopped)]
    assert {r.person for r in replay.relabels} == {r.person for r in first.relabels}
    graph.settle_pending(replay.taken_over)
    assert graph.pending_of([a.key]) == []


def test_a_relink_beside_a_batch_being_published_publishes_its_merge_once(bus_settings, index, unique):
    """`carebus relink` runs beside live workers. A worker's batch has joined two people and is
    publishing them when the relink reads the same records: the relink must leave the batch's
    moves to the batch (it publishes them), or the merge goes out twice."""
    from foundation.durable_producer import DurableProducer
    from schemas import codec
    from schemas.topics import IDENTITY_EVENTS
    from streams.link_stage import LinkStage
    from streams.record_store import RedisRecordStore
    from tests.builders import adt, cerner_key, given_and_born, own_identity
    from tests.kafka_reading import read_all

    first, second = own_identity(f"A{unique}"), own_identity(f"B{unique}")
    born = given_and_born(f"RA{unique}")[1]
    producer = DurableProducer(bus_settings)
    graph = RedisGraphStore(index)
    worker = LinkStage(graph, RedisRecordStore(index), producer, PARAMS)
    worker.process([cerner_event(adt(f"RA{unique}", f"C1{unique}", dob=born, **first), 1),
                    cerner_event(adt(f"RB{unique}", f"C2{unique}", **second), 2)])
    a, b = cerner_key(f"RA{unique}"), cerner_key(f"RB{unique}")
    before = {graph.person_of(a), graph.person_of(b)}
    later = adt(f"RB{unique}", f"C3{unique}", dob=born, **first).replace(b"202611241015", b"202611241115")
    joining = cerner_event(later.replace(b"202611241010", b"202611241110"), 3)

    linked = worker.link(worker.prepare(worker.decode([joining])))      # links written, not yet published
    relinker = LinkStage(RedisGraphStore(index), RedisRecordStore(index), producer, PARAMS)
    relinker.relink([a, b])
    worker.publish(linked)
    producer.close()

    survivor = graph.person_of(a)
    (merged_away,) = before - {survivor}
    merges = [e for e in (codec.decode(m.value(), "IdentityEvent") for m in read_all(
        bus_settings, IDENTITY_EVENTS.name, timeout=30, predicate=lambda m: m.key() == survivor.encode()))
        if e["type"] == "MERGED" and e["other_person_id"] == merged_away]
    assert len(merges) == 1
    assert not any(index.hexists(key, "o") for key in index.scan_iter("carebus:n:*"))
