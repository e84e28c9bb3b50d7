"""What a link worker does with one batch of events (link_worker.py feeds it batches).

1. fold each source event into its source state (idempotent on event id); one MGET;
2. link the batch's records (identity_graph.link_batch): one Redis script reads every
   candidate, scoring happens in memory, the source states are written (one MSET), one script
   writes the decisions and relabels people;
3. rebuild the shared record of every person the batch touched (record_builder), written with
   compare-and-set on the version, built again if another worker got there first;
4. produce identity events, reviews, record changes and snapshots without waiting for each,
   then wait once for the whole batch to be confirmed (acks=all) and mark the versions emitted.
The worker commits the batch's offsets only after `process` returns. A crash anywhere replays
the batch: steps 1-3 change nothing the second time, and step 4 publishes again any version
still marked unemitted, under the same deterministic event ids.
"""
from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from foundation.clock import now_ms
from foundation.durable_producer import DurableProducer
from foundation.log_privacy import pseudonym
from schemas import codec, messages
from schemas.event_ids import name_based
from schemas.errors import Unavailable
from schemas.source_key import SourceKey, source_key
from schemas.topics import (DLQ_STREAMS, IDENTITY_EVENTS, LINK_REVIEW, PATIENT_CHANGES, SHARED_RECORDS,
                            source_event_key)
from streams import identity_graph, record_builder
from streams.fellegi_sunter import Parameters
from streams.identity_store import RedisGraphStore
from streams.record_comparison import Demographics, from_patient
from streams.record_store import RETIRED, RecordWrite, RedisRecordStore, StoredPerson

log = logging.getLogger("carebus.linker")
NS = uuid.UUID("0b9d1c9e-5a43-4b8e-9f55-4c1d7e2e8a01")
# Candidates-per-record histogram buckets (upper bounds) kept in Redis for the monitor and benchmarks.
CANDIDATE_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500)


REVIEW_REASONS = {
    "review": "match probability {p:.3f} in the review band",
    "too-little-evidence": "match probability {p:.3f}, but too few fields agree, or neither given name nor birth "
                           "date does (a household, or one person?)",
    "conflict": "same NHS number, contradicting name and birth date",
    "nhs-mismatch": "different valid NHS numbers, same name and birth date (a mistyped number?)",
    "name-and-birth-date-differ": "match probability {p:.3f}, but surname and birth date both differ (a relative "
                                  "at the same address?)",
    "refused-link": "they match, but joining them would put records with different valid NHS numbers into one "
                    "person: they cannot be one person",
    "incoherent": "in one person through other records, but they contradict each other",
    "merge-across-nhs-numbers": "a merge (HL7 A40) asked for across two different valid NHS numbers",
}


class StageUnavailable(Unavailable):
    """Kafka or Redis did not do what was asked in time: retry the batch, the messages are fine."""


@dataclass(frozen=True)
class InboundMessage:
    """A consumed Kafka message, as the stage needs it (so tests need no broker)."""
    topic: str
    partition: int
    offset: int
    value: bytes | None


@dataclass
class BatchStats:
    events: int = 0
    records_linked: int = 0
    candidates: list[int] = field(default_factory=list)
    changes_published: int = 0
    dead_letters: int = 0
    record_retries: int = 0


@dataclass
class _Outputs:
    identity_events: list[dict[str, Any]] = field(default_factory=list)
    reviews: list[dict[str, Any]] = field(default_factory=list)
    changes: list[tuple[dict[str, Any], dict[str, Any] | None]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    emitted: dict[str, int] = field(default_factory=dict)
    merged: dict[str, str] = field(default_factory=dict)        # person merged away -> survivor


@dataclass
class DecodedBatch:
    messages: Sequence[InboundMessage]
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)    # source key -> its events
    decisions: list[dict[str, Any]] = field(default_factory=list)            # review decisions
    out: _Outputs = field(default_factory=_Outputs)

    @property
    def keys(self) -> set[str]:
        return set(self.events)

    @property
    def exclusive(self) -> bool:
        """Merges and review decisions join records beyond the batch's own: such a batch is never
        in flight beside another (link_pipeline)."""
        return bool(self.decisions) or any(e.get("merged_from") for evs in self.events.values() for e in evs)


@dataclass
class PreparedBatch:
    """A batch folded, its ingest under way: what `finish` needs."""
    batch: DecodedBatch
    states: dict[str, dict[str, Any]]       # the batch's source states, folded
    changed: dict[str, dict[str, Any]]      # those the batch changed (to write)
    demos: list[Demographics]
    causes: dict[str, list[str]]            # source key -> the event ids that touched it
    ods: dict[str, set[str]]
    methods: dict[str, str]                 # source key -> how a forced link came (merge, review)
    forced: list[tuple[str, str]]
    forbidden: list[tuple[str, str]]
    held: list[tuple[str, str]]             # merges across NHS numbers, for review
    ingested: Callable[[], dict[str, identity_graph.Ingested]]


@dataclass
class LinkedBatch:
    """A batch whose links and records are written: what is left is to publish its outputs."""
    messages: Sequence[InboundMessage]
    out: _Outputs
    stats: BatchStats
    counts: tuple[dict[str, int], dict[str, int]]      # link counts and candidate histogram (graph.count)
    token: str = ""                                    # the batch's name in the index's pending moves
    kept: list[tuple[str, str]] = field(default_factory=list)   # pending moves to forget once published


def _ref(key: str) -> dict[str, Any]:
    parsed = SourceKey.parse(key)
    return {"system": parsed.source_system,
            "local_identifier": {"system": parsed.identifier_system, "value": parsed.local_id}}


def _bucket(n: int) -> str:
    return next((f"le{b}" for b in CANDIDATE_BUCKETS if n <= b), "gt500")


class LinkStage:
    def __init__(self, graph: RedisGraphStore, records: RedisRecordStore, producer: DurableProducer,
                 params: Parameters) -> None:
        self.graph = graph
        self.records = records
        self.producer = producer
        self.params = params
        # Batches published whose records are not yet marked as published, nor the batch counted.
        self._unsettled: list[tuple[dict[str, int], tuple[dict[str, int], dict[str, int]], list[tuple[str, str]]]] = []
        # Batches published lately: their pending moves, still in the index or read from it by a
        # batch prepared before they were settled, are not a replay's to publish again.
        self._published: deque[str] = deque(maxlen=16)

    # ---- the batch ------------------------------------------------------------------------------
    def process(self, messages: Sequence[InboundMessage]) -> BatchStats:
        """One batch, start to finish (link_pipeline runs the steps of consecutive batches
        interleaved: decode, prepare, link, publish)."""
        return self.finish(self.prepare(self.decode(messages)))

    def decode(self, messages: Sequence[InboundMessage]) -> DecodedBatch:
        """The batch's events by source key and its review decisions. No I/O; an undecodable
        message becomes a dead letter."""
        batch = DecodedBatch(messages)
        for m in messages:
            try:
                if m.topic == LINK_REVIEW.name:
                    decision = codec.decode(m.value or b"", "IdentityEvent")
                    if decision["type"] in ("REVIEW_ACCEPTED", "REVIEW_REJECTED"):
                        batch.decisions.append(decision)
                else:
                    event = codec.decode(m.value or b"", "SourcePatientEvent")
                    batch.events.setdefault(source_event_key(event), []).append(event)
            except Exception as exc:  # noqa: BLE001 - a poison message is parked, the stream goes on
                batch.out.dead_letters.append(self._dead_letter(m, f"undecodable event: {type(exc).__name__}",
                                                                "UNDECODABLE"))
        return batch

    def prepare(self, batch: DecodedBatch) -> PreparedBatch:
        """Fold the events into their source states (written by `finish`), and start the
        ingest of the batch's demographics: Redis runs it while the caller finishes the batch
        before this one."""
        out = batch.out
        states, changed, demos, causes, ods = self._fold(batch.events, out)
        methods: dict[str, str] = {}
        forced, held = self._merges(batch.events, demos)
        for key, old_key in forced:
            methods[key] = methods[old_key] = "hl7-merge"
        forbidden: list[tuple[str, str]] = []
        for d in batch.decisions:
            review = self.graph.close_review(d["caused_by"], d["type"])
            if review is None:
                continue
            pair = (review["a"], review["b"])
            (forced if d["type"] == "REVIEW_ACCEPTED" else forbidden).append(pair)
            methods[pair[0]] = methods[pair[1]] = "review"
            causes.setdefault(pair[0], []).append(d["event_id"])
            out.identity_events.append(d)
        ingest = self.graph.start_ingest(demos) if demos else dict
        return PreparedBatch(batch, states, changed, demos, causes, ods, methods, forced, forbidden, held, ingest)

    def finish(self, p: PreparedBatch) -> BatchStats:
        """Decide and apply the links, write the source states, rebuild and publish the records."""
        return self.publish(self.link(p))

    def link(self, p: PreparedBatch) -> LinkedBatch:
        """Decide and apply the links, write the source states and rebuild the records: every
        Redis write of the batch. Its outputs are published by `publish`."""
        stats, out = BatchStats(events=len(p.batch.messages)), p.batch.out
        # The source states are written once the links are decided, just before they are written:
        # before the decisions, the write would hold them up behind the next batch's ingest (Redis
        # runs one thing at a time); before the links, because another worker rebuilding a person
        # must find the state of every record linked into it. A crash before it replays the events
        # into the same states (folding is idempotent on event id).
        ingested, published = p.ingested(), frozenset(self._published)
        token = identity_graph.run_token(identity_graph.LINK_WORKER_RUN)
        # A review decision joins or parts records its batch does not ingest: what an earlier run of
        # it kept is on the first record of the pair (the apply script keeps it there).
        elsewhere = self.graph.pending_of(sorted({a for a, _ in p.forced + p.forbidden} - set(ingested)))
        outcome = identity_graph.link_batch(self.graph, p.demos, self.params, p.forced, p.forbidden,
                                            ingested=ingested, before_apply=lambda: self._before_apply(p.changed),
                                            token=token, own_tokens=published, kept_elsewhere=elsewhere)
        stats.candidates = [outcome.candidates.get(d.key, 0) for d in p.demos]
        stats.records_linked = len(p.demos)
        persons_now = self.graph.persons_of(sorted({*p.states, *(k for pair in p.forced + p.forbidden for k in pair)}))
        self._check_coherence(outcome)
        outcome.decisions += [identity_graph.PairDecision(a, b, 0, "merge-across-nhs-numbers", None, 0.0)
                              for a, b in p.held]
        self._identity_events(outcome, p.causes, p.methods, persons_now, out)
        self._queue_reviews(outcome, p.causes, persons_now, out)

        touched = set(persons_now.values()) | outcome.persons_touched()
        stats.record_retries = self._rebuild(touched, p.causes, p.ods, out, p.states)
        stats.changes_published = len(out.changes)
        stats.dead_letters = len(out.dead_letters)
        # The index has already moved the members (apply), so the old id's survivor is noted
        # now, not after publication: a crash in between must not lose it (a replay relabels nothing).
        self.graph.note_merged(out.merged)
        return LinkedBatch(p.batch.messages, out, stats, self._counts(outcome, stats, len(out.reviews)), token,
                           self._kept(outcome, token))

    def publish(self, linked: LinkedBatch, settle: bool = True) -> BatchStats:
        """Produce the batch's outputs and wait until Kafka has every one. Then the records are
        marked as published and the batch counted (`settle`); with settle=False that waits for the
        next batch's first write (link_pipeline: a Redis call now would wait behind the ingest of
        the batch after, which is running while this one publishes). Either way a record is
        marked before any later batch rebuilds it; a crash before the mark only means a replay
        publishes the same change again, with the same event id."""
        self._produce(linked.out)
        self._unsettled.append((linked.out.emitted, linked.counts, linked.kept))
        self._published.append(linked.token)
        if settle:
            self.settle()
        return linked.stats

    def settle(self) -> None:
        """Write the marks and counts of batches published and not yet settled."""
        while self._unsettled:
            emitted, (counts, histogram), kept = self._unsettled[0]
            self.records.mark_emitted(emitted)
            self.graph.count(counts, histogram)
            self.graph.settle_pending(kept)
            self._unsettled.pop(0)

    @staticmethod
    def _kept(outcome: identity_graph.BatchOutcome, token: str) -> list[tuple[str, str]]:
        """The pending moves to forget once the batch is published: its own, and those of an earlier
        run it has taken over (link_batch)."""
        return [(node, token) for node in outcome.pending_at] + outcome.taken_over

    def _before_apply(self, changed: dict[str, dict[str, Any]]) -> None:
        self.settle()
        self.records.put_source_states(changed)

    def _merges(self, events: dict[str, list[dict[str, Any]]], demos: Sequence[Demographics]
                ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The merges the batch's events ask for (HL7 A40: MRG names the record merged away), as
        (forced links, merges held for review). A merge of two records with different valid NHS
        numbers is what a merge done on the wrong patient looks like, and whoever can reach a
        sender's port could ask for one: a person confirms it (accepting the review links them)."""
        asked = [(key, source_key(e['envelope']['source_system'], old['system'], old['value']))
                 for key, evs in events.items() for e in evs for old in e.get("merged_from") or []]
        if not asked:
            return [], []
        nhs = {d.key: d.nhs for d in demos}
        nhs.update({d.key: d.nhs for d in self.graph.demographics(sorted({b for _, b in asked} - set(nhs)))})
        forced, held = [], []
        for a, b in asked:
            (held if nhs.get(a) and nhs.get(b) and nhs[a] != nhs[b] else forced).append((a, b))
        return forced, held

    def relink(self, keys: Sequence[str]) -> BatchStats:
        """Decide again every link of these records from their stored demographics with the
        current parameters (`carebus relink`). Only what changes produces identity events and
        record changes. Safe beside live workers: the same versioned writes as any batch."""
        stats, out = BatchStats(), _Outputs()
        demos = self.graph.demographics(keys)
        # A relink's own kind of token: it takes over only what a stopped relink kept, never the
        # moves of a live worker's batch that is being published at this moment (link_batch).
        token = identity_graph.run_token(identity_graph.RELINK_RUN)
        outcome = identity_graph.link_batch(self.graph, demos, self.params, token=token,
                                            own_tokens=frozenset(self._published))
        stats.records_linked = len(demos)
        persons_now = self.graph.persons_of(sorted(keys))
        self._check_coherence(outcome)
        self._identity_events(outcome, {}, {}, persons_now, out)
        self._queue_reviews(outcome, {}, persons_now, out)
        stats.record_retries = self._rebuild(outcome.persons_touched(), {}, {}, out, {})
        stats.changes_published = len(out.changes)
        self._publish(out, token, self._kept(outcome, token))
        return stats

    def _fold(self, events: dict[str, list[dict[str, Any]]], out: _Outputs
              ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], list[Demographics], dict[str, list[str]],
                         dict[str, set[str]]]:
        stored = self.records.source_states(sorted(events))
        states, changed, demos = {}, {}, []
        causes: dict[str, list[str]] = {}
        ods: dict[str, set[str]] = {}
        for key, evs in events.items():
            state = stored.get(key)
            try:
                state = state or record_builder.new_source_state(key, evs[0])
                any_change = False
                for e in evs:
                    state, was_changed = record_builder.apply_event(state, e)
                    any_change |= was_changed
                    causes.setdefault(key, []).append(e["envelope"]["event_id"])
                    ods.setdefault(key, set()).add(e["envelope"]["source_ods_code"])
                demo = from_patient(key, record_builder.patient_view(state))
            except Exception as exc:  # noqa: BLE001 - one bad record must not stop the batch
                log.exception("cannot fold events for %s", pseudonym(key))
                for e in evs:
                    raw = codec.encode("SourcePatientEvent", e)
                    out.dead_letters.append(self._dead_letter(
                        InboundMessage("", -1, -1, raw), f"processing failed: {type(exc).__name__}",
                        "PROCESSING_FAILED", e["envelope"]["event_id"]))
                causes.pop(key, None)
                continue
            states[key] = state
            demos.append(demo)
            if any_change:
                changed[key] = state
        return states, changed, demos, causes, ods

    # ---- identity events --------------------------------------------------------------------
    def _event(self, cause: str, kind: str, person: str, other: str | None, keys: list[str], score: float | None,
               how: str, reasons: list[str]) -> dict[str, Any]:
        return messages.identity_event(
            name_based(NS, f"{cause}|{kind}|{person}|{other}|{','.join(sorted(keys))}"), kind, person,
            recorded_at=now_ms(), caused_by=cause, other_person_id=other, sources=[_ref(k) for k in sorted(keys)],
            score=score, method=how, reasons=reasons)

    def _check_coherence(self, outcome: identity_graph.BatchOutcome) -> None:
        """What coherence asks of a person goes to review. Links the rule refused
        (identity_graph.cluster_people): accepting one joins the two records whatever the rule
        says. Persons that grew in this batch: pairs of their records that contradict each other
        (given name and birth date); the links stay, which is wrong is for a person to say."""
        outcome.decisions += [identity_graph.PairDecision(a, b, 0, "refused-link", None, 0.0)
                              for a, b in outcome.refused]
        grown = [r for r in outcome.relabels if len(r.members) >= 3]
        if not grown:
            return
        demos = {d.key: d for d in self.graph.demographics(sorted({k for r in grown for k in r.members}))}
        for r in grown:
            for a, b in identity_graph.incoherent_pairs([demos[k] for k in r.members if k in demos]):
                outcome.decisions.append(identity_graph.PairDecision(a, b, 0, "incoherent", None, 0.0))

    def _identity_events(self, outcome: identity_graph.BatchOutcome, causes: dict[str, list[str]],
                         methods: dict[str, str], persons_now: dict[str, str], out: _Outputs) -> None:
        matched: dict[str, tuple[str, float]] = {}
        for d in outcome.decisions:
            if d.kind and d.posterior >= matched.get(d.a, ("", -1.0))[1]:
                matched[d.a] = (d.kind, d.posterior)
        for r in outcome.relabels:
            moved = sorted(r.moved)
            cause = next((causes[k][-1] for k in sorted(r.members) if causes.get(k)), "relink")
            how = next((methods[k] for k in sorted(r.members) if k in methods), None) or next(
                (matched[k][0] for k in moved if k in matched), None)
            score = max((matched[k][1] for k in moved if k in matched), default=None)
            new_alone = len(r.members) == 1 and all(v is None for v in r.moved.values())
            reasons = ["no match: new person"] if new_alone else [f"{len(r.members)} record(s) in this person"]
            out.identity_events.append(self._event(cause, "LINKED", r.person, None, moved, score,
                                                   "new" if new_alone else (how or "probabilistic"), reasons))
            for old in sorted({p for p in r.moved.values() if p and p != r.person}):
                from_old = [k for k, p in r.moved.items() if p == old]
                if old in outcome.emptied:
                    out.merged[old] = r.person
                    out.identity_events.append(self._event(cause, "MERGED", r.person, old, from_old, None,
                                                           how or "probabilistic", ["persons joined by a new link"]))
                else:
                    out.identity_events.append(self._event(cause, "UNMERGED", r.person, old, from_old, None,
                                                           how or "probabilistic", ["link removed"]))

    def _queue_reviews(self, outcome: identity_graph.BatchOutcome, causes: dict[str, list[str]],
                       persons_now: dict[str, str], out: _Outputs) -> None:
        pairs: dict[str, tuple[identity_graph.PairDecision, str]] = {}
        for d in outcome.decisions:
            if d.outcome not in REVIEW_REASONS:
                continue
            review_id = name_based(NS, "|".join(sorted((d.a, d.b))))
            reason = REVIEW_REASONS[d.outcome].format(p=d.posterior)
            pairs[review_id] = (d, reason)
        if not pairs:
            return
        others = self.graph.persons_of(sorted({d.b for d, _ in pairs.values()} - set(persons_now)))
        person = {**persons_now, **others}.get
        bodies = {rid: {"review_id": rid, "a": d.a, "b": d.b, "score": d.posterior, "reason": reason,
                        "person_a": person(d.a), "person_b": person(d.b)} for rid, (d, reason) in pairs.items()}
        for rid in sorted(self.graph.open_reviews_batch(bodies)):
            d, reason = pairs[rid]
            cause = (causes.get(d.a) or ["review"])[-1]
            event = self._event(cause, "REVIEW_NEEDED", person(d.a) or "", person(d.b), [d.a, d.b], d.posterior,
                                "probabilistic", [reason])
            event["event_id"] = rid
            out.reviews.append(event)

    # ---- shared records ---------------------------------------------------------------------------
    def _rebuild(self, persons: set[str], causes: dict[str, list[str]], ods: dict[str, set[str]],
                 out: _Outputs, ours: dict[str, dict[str, Any]]) -> int:
        """`ours`: this batch's source states (this worker owns their partitions: no one else writes them)."""
        todo, retries = persons, 0
        for attempt in range(20):
            if not todo:
                return retries
            stored = self.records.persons(todo)
            wanted = {m for p in stored.values() for m in p.members}
            states = {**self.records.source_states(sorted(wanted - set(ours))), **ours}
            writes, built = [], {}
            for p in sorted(todo):
                write = self._build(stored[p], states, causes, ods, out)
                if write is not None:
                    writes.append(write)
                    built[p] = write
            failed = self.records.write(writes)
            for p, w in built.items():
                if p not in failed:
                    out.changes.append((self._change(p, w.record, w.change, w.expected_version + 1), w.record))
                    out.emitted[p] = w.expected_version + 1
            retries += len(failed)
            todo = failed
        raise StageUnavailable(f"records still contended after 20 attempts: {len(todo)} persons")

    def _build(self, sp: StoredPerson, states: dict[str, dict[str, Any]], causes: dict[str, list[str]],
               ods: dict[str, set[str]], out: _Outputs) -> RecordWrite | None:
        member_states = [states[m] for m in sorted(sp.members) if m in states]
        if not member_states:
            if sp.version and not sp.retired:
                return RecordWrite(sp.person_id, sp.version, None, RETIRED, {})
            if sp.version and not sp.emitted:      # a replay: the retirement was never published
                out.changes.append((self._change(sp.person_id, None, {}, sp.version), None))
                out.emitted[sp.person_id] = sp.version
            return None
        record = record_builder.build_record(sp.person_id, member_states, sp.version + 1, now_ms())
        digests = record_builder.part_digests(record)
        if digests == sp.digests:
            if not sp.emitted:   # a replay: written but never published; the same states gave this record
                stored = {**record, "version": sp.version, "updated_at": sp.updated_at}
                out.changes.append((self._change(sp.person_id, stored, sp.change, sp.version), stored))
                out.emitted[sp.person_id] = sp.version
            return None
        why = sorted({c for m in sp.members for c in causes.get(m, [])})
        where = sorted({o for m in sp.members for o in ods.get(m, set()) if o})
        change = {"changed": record_builder.changed_sections(sp.digests, record, digests), "causes": why,
                  "ods": where}
        return RecordWrite(sp.person_id, sp.version, record, digests, change)

    def _change(self, person: str, record: dict[str, Any] | None, change: dict[str, Any], version: int
                ) -> dict[str, Any]:
        if record is None:
            record = record_builder.build_record(person, [], version, now_ms())
            change_type = "merged"
        else:
            change_type = "created" if version == 1 else "updated"
        return {"event_id": name_based(NS, f"{person}|{version}"), "person_id": person, "version": version,
                "changed_at": record["updated_at"], "change_type": change_type,
                "changed_sections": change.get("changed", []), "caused_by": change.get("causes", []),
                "ods_codes": change.get("ods", []), "record": record}

    # ---- publication ---------------------------------------------------------------------------
    def _publish(self, out: _Outputs, token: str = "", kept: list[tuple[str, str]] | None = None) -> None:
        """Publish at once, outside the batch path (relink, parking a message): a batch with no
        counts (counting nothing sends nothing to Redis), settled at once."""
        self.graph.note_merged(out.merged)
        self.publish(LinkedBatch([], out, BatchStats(), ({}, {}), token, kept or []))

    def _produce(self, out: _Outputs) -> None:
        errors: list[Any] = []

        def confirm(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(err)

        p = self.producer
        for e in out.identity_events:
            p.produce(IDENTITY_EVENTS.name, codec.encode("IdentityEvent", e), key=e["person_id"],
                      headers=codec.headers("IdentityEvent"), on_delivery=confirm)
        for r in out.reviews:
            p.produce(LINK_REVIEW.name, codec.encode("IdentityEvent", r), key=r["event_id"],
                      headers=codec.headers("IdentityEvent"), on_delivery=confirm)
        for change, record in out.changes:
            person = change["person_id"]
            # The record is encoded once, for both the change feed and the snapshot.
            record_body = codec.body("SharedRecord", change["record"])
            head = {k: v for k, v in change.items() if k != "record"}
            p.produce(PATIENT_CHANGES.name, codec.encode_with_last("RecordChange", head, record_body), key=person,
                      headers=codec.headers("RecordChange"), timestamp_ms=change["changed_at"], on_delivery=confirm)
            if record is None:
                p.produce(SHARED_RECORDS.name, None, key=person, on_delivery=confirm)   # tombstone: compacted away
            else:
                p.produce(SHARED_RECORDS.name, codec.frame("SharedRecord", record_body), key=person,
                          headers=codec.headers("SharedRecord"), on_delivery=confirm)
        for dead in out.dead_letters:
            p.produce(DLQ_STREAMS.name, codec.encode("DeadLetter", dead), key=dead["dead_letter_id"],
                      headers=codec.headers("DeadLetter"), on_delivery=confirm)
        # One wait for the whole batch: every output is confirmed by all in-sync replicas.
        if p.flush(60) != 0 or errors:
            raise StageUnavailable(f"Kafka did not confirm the linker's output ({len(errors)} errors)")

    def park(self, m: InboundMessage, exc: Exception) -> None:
        """A message that fails on its own, whatever is retried: to the dead-letter topic."""
        log.error("parking a message that cannot be processed: %s", type(exc).__name__)
        self._publish(_Outputs(dead_letters=[self._dead_letter(m, f"processing failed: {type(exc).__name__}",
                                                               "PROCESSING_FAILED")]))

    def _dead_letter(self, m: InboundMessage, reason: str, code: str, extra: str = "") -> dict[str, Any]:
        return messages.dead_letter(
            "streams:linker", "CAREBUS", reason, code, m.value or b"", "avro/binary", failed_at=now_ms(),
            dead_letter_id=name_based(NS, f"dlq|{m.topic}|{m.partition}|{m.offset}|{extra}"),
            original_topic=m.topic or None, original_partition=m.partition if m.partition >= 0 else None,
            original_offset=m.offset if m.offset >= 0 else None)

    @staticmethod
    def _counts(outcome: identity_graph.BatchOutcome, stats: BatchStats, reviews: int
                ) -> tuple[dict[str, int], dict[str, int]]:
        counts = {"links": sum(1 for r in outcome.relabels),
                  "merges": sum(1 for r in outcome.relabels for p in set(r.moved.values()) if p in outcome.emptied),
                  "unmerges": sum(1 for r in outcome.relabels for p in set(r.moved.values())
                                  if p and p != r.person and p not in outcome.emptied),
                  "reviews": reviews, "records_linked": stats.records_linked, "candidate_pairs": sum(stats.candidates),
                  "blocks_over_cap": outcome.skipped_blocks}
        hist: dict[str, int] = {}
        for n in stats.candidates:
            hist[_bucket(n)] = hist.get(_bucket(n), 0) + 1
        return counts, hist
