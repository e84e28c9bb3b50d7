"""What the linking worker does with each event (called by the faust agents in linking_app.py).

1. fold the source event into its source state (idempotent on event id);
2. under the linker lock, re-decide the record's links (identity_graph) and rebuild the shared
   record of every person the decision touched (record_builder), writing versioned records to
   Redis with `emitted=0`;
3. outside the lock, publish identity events, record changes and snapshots (acks=all) and mark
   each version emitted.
A crash anywhere replays the event: steps 1-2 change nothing the second time, and step 3
re-publishes any version still marked `emitted=0` under the same deterministic event ids.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from carebus.durable_producer import DurableProducer
from carebus.log_privacy import pseudonym
from schemas import codec
from schemas.topics import (DLQ_STREAMS, IDENTITY_EVENTS, LINK_REVIEW, PATIENT_CHANGES, SHARED_RECORDS,
                           source_event_key)
from streams import identity_graph, record_builder
from streams.fellegi_sunter import Parameters
from streams.identity_store import RedisGraphStore
from streams.record_comparison import from_patient

log = logging.getLogger("carebus.linker")
NS = uuid.UUID("0b9d1c9e-5a43-4b8e-9f55-4c1d7e2e8a01")


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Outputs:
    identity_events: list[dict[str, Any]] = field(default_factory=list)
    reviews: list[dict[str, Any]] = field(default_factory=list)
    persons: set[str] = field(default_factory=set)


class EventProcessor:
    def __init__(self, store: RedisGraphStore, producer: DurableProducer, params: Parameters) -> None:
        self.store = store
        self.producer = producer
        self.params = params

    # ---- entry points ----------------------------------------------------------------------
    def handle_source_event(self, value: bytes, topic: str = "", partition: int = -1, offset: int = -1) -> None:
        try:
            event = codec.decode(value, "SourcePatientEvent")
        except Exception as exc:  # noqa: BLE001 - poison message: park it, keep the stream going
            self._dead_letter(value, f"undecodable event: {type(exc).__name__}", "UNDECODABLE", topic, partition, offset)
            return
        try:
            outputs = self._link_and_build(event)
        except Exception as exc:  # noqa: BLE001
            log.exception("linking failed for %s", pseudonym(source_event_key(event)))
            self._dead_letter(value, f"processing failed: {type(exc).__name__}", "PROCESSING_FAILED", topic, partition, offset)
            return
        self._publish(outputs)

    def handle_review_decision(self, value: bytes) -> None:
        """REVIEW_ACCEPTED / REVIEW_REJECTED events from the review API, on the link-review topic."""
        decision = codec.decode(value, "IdentityEvent")
        if decision["type"] not in ("REVIEW_ACCEPTED", "REVIEW_REJECTED"):
            return
        review = self.store.close_review(decision["caused_by"], decision["type"])
        if review is None:
            return
        a, b = review["a"], review["b"]
        with self.store.linker_lock():
            if decision["type"] == "REVIEW_ACCEPTED":
                d = identity_graph.force_link(self.store, a, b)
            else:
                d = identity_graph.forbid_link(self.store, a, b)
            outputs = Outputs()
            self._identity_events(d, decision["event_id"], "review", outputs)
            outputs.identity_events.append(decision)
            self._rebuild(d.affected_persons, [decision["event_id"]], outputs)
        self._publish(outputs)

    # ---- the work ------------------------------------------------------------------------------
    def _link_and_build(self, event: dict[str, Any]) -> Outputs:
        key = source_event_key(event)
        eid = event["envelope"]["event_id"]
        outputs = Outputs()
        with self.store.linker_lock():
            state = self.store.source_state(key) or record_builder.new_source_state(key, event)
            state, changed = record_builder.apply_event(state, event)
            if changed:
                self.store.put_source_state(key, state)
            demo = from_patient(key, record_builder.patient_view(state))
            decisions = []
            # A replay (not changed) re-decides the links too: the worker that first handled this
            # event may have died half-way through writing them. Deciding again is idempotent.
            if not changed or self.store.demographics(key) != demo or self.store.person_of(key) is None:
                decisions.append(identity_graph.upsert(self.store, demo, self.params))
            for old in event.get("merged_from") or []:
                old_key = f"{event['envelope']['source_system']}|{old['system']}|{old['value']}"
                if self.store.person_of(old_key) is None:
                    self.store.set_person({old_key}, identity_graph.person_id_for({old_key}))
                decisions.append(identity_graph.force_link(self.store, key, old_key))
            persons = {self.store.person_of(key)}
            method = "hl7-merge" if event.get("merged_from") else None
            for d in decisions:
                self._identity_events(d, eid, method, outputs)
                persons |= d.affected_persons
            self._rebuild({p for p in persons if p}, [eid], outputs, ods=event["envelope"]["source_ods_code"])
        return outputs

    def _identity_events(self, d: identity_graph.Decision, cause: str, method: str | None, out: Outputs) -> None:
        def ev(kind: str, person: str, other: str | None, keys: list[str], score: float | None, how: str,
               reasons: list[str]) -> dict[str, Any]:
            return {"event_id": str(uuid.uuid5(NS, f"{cause}|{kind}|{person}|{other}|{','.join(sorted(keys))}")),
                    "recorded_at": now_ms(), "caused_by": cause, "type": kind, "person_id": person,
                    "other_person_id": other, "sources": [self._ref(k) for k in sorted(keys)], "score": score,
                    "method": how, "reasons": reasons}
        if d.person_before != d.person_after:
            how = method or (next(iter(d.joined.values()), "new") if d.joined else "new")
            out.identity_events.append(ev("LINKED", d.person_after, None, [d.key, *d.joined], max(d.scores.values(), default=None),
                                          how, [f"{len(d.joined)} matching record(s)"] if d.joined else ["no match: new person"]))
            self.store.count("links")
        for old in sorted(d.merged_persons):
            out.identity_events.append(ev("MERGED", d.person_after, old, [d.key], None, method or "probabilistic",
                                          ["persons joined by a new link"]))
            self.store.count("merges")
        for new_person, keys in sorted(d.split_persons.items()):
            out.identity_events.append(ev("UNMERGED", new_person, d.person_before, sorted(keys), None, method or "probabilistic",
                                          ["link removed"]))
            self.store.count("unmerges")
        for a, b, posterior in d.reviews + [(a, b, 0.5) for a, b in d.conflicts]:
            review_id = str(uuid.uuid5(NS, "|".join(sorted((a, b)))))
            reason = "same NHS number, contradicting name and birth date" if (a, b) in d.conflicts else \
                f"match probability {posterior:.2f} in the review band"
            if self.store.open_review(review_id, {"review_id": review_id, "a": a, "b": b, "score": posterior,
                                                  "reason": reason, "person_a": self.store.person_of(a),
                                                  "person_b": self.store.person_of(b)}):
                review_event = ev("REVIEW_NEEDED", self.store.person_of(a) or "", self.store.person_of(b), [a, b], posterior,
                                  "probabilistic", [reason])
                review_event["event_id"] = review_id
                out.reviews.append(review_event)
                self.store.count("reviews")

    def _ref(self, key: str) -> dict[str, Any]:
        system, id_system, value = key.split("|", 2)
        return {"system": system, "local_identifier": {"system": id_system, "value": value}}

    def _rebuild(self, persons: set[str], causes: list[str], out: Outputs, ods: str = "") -> None:
        for person in persons:
            members = self.store.members(person)
            meta = self.store.record_meta(person)
            version = int(meta.get("version", "0"))
            if not members or all(self.store.person_of(m) != person for m in members):
                if meta and meta.get("hash") != "retired":
                    self.store.retire_record(person, version + 1)
                    out.persons.add(person)
                continue
            states = [s for s in (self.store.source_state(m) for m in sorted(members)) if s]
            record = record_builder.build_record(person, states, version + 1, now_ms())
            digest = record_builder.content_hash(record)
            if digest == meta.get("hash"):
                if meta.get("emitted") == "0":
                    out.persons.add(person)
                continue
            change = {"changed": record_builder.changed_sections(self.store.record(person), record),
                      "causes": causes, "ods": sorted({ods} if ods else set())}
            self.store.put_record(record, digest, change)
            out.persons.add(person)

    # ---- publication (outside the lock) -----------------------------------------------------
    def _publish(self, out: Outputs) -> None:
        for e in out.identity_events:
            self.producer.produce(IDENTITY_EVENTS.name, codec.encode("IdentityEvent", e), key=e["person_id"],
                                  headers=codec.headers("IdentityEvent"))
        for r in out.reviews:
            self.producer.produce(LINK_REVIEW.name, codec.encode("IdentityEvent", r), key=r["event_id"],
                                  headers=codec.headers("IdentityEvent"))
        for person in sorted(out.persons):
            meta = self.store.record_meta(person)
            version = int(meta.get("version", "0"))
            stored = self.store.record(person)
            pending = json.loads(meta.get("change") or "{}")
            sections, causes, ods = pending.get("changed", []), pending.get("causes", []), pending.get("ods", [])
            if stored is None:
                record = record_builder.build_record(person, [], version, now_ms())
                change_type = "merged"
            else:
                change_type = "created" if version == 1 else "updated"
                record = stored
            change = {"event_id": str(uuid.uuid5(NS, f"{person}|{version}")), "person_id": person, "version": version,
                      "changed_at": record["updated_at"], "change_type": change_type, "changed_sections": sections,
                      "caused_by": causes, "ods_codes": ods, "record": record}
            self.producer.produce(PATIENT_CHANGES.name, codec.encode("RecordChange", change), key=person,
                                  headers=codec.headers("RecordChange"), timestamp_ms=record["updated_at"])
            if stored is None:
                self.producer.produce(SHARED_RECORDS.name, None, key=person)  # tombstone: compacted away
            else:
                self.producer.produce(SHARED_RECORDS.name, codec.encode("SharedRecord", record), key=person,
                                      headers=codec.headers("SharedRecord"))
        if self.producer.flush(60) != 0:
            raise RuntimeError("Kafka did not confirm the linker's output")
        for person in out.persons:
            self.store.mark_emitted(person, int(self.store.record_meta(person).get("version", "0")))

    def _dead_letter(self, value: bytes, reason: str, code: str, topic: str, partition: int, offset: int) -> None:
        dead_id = str(uuid.uuid5(NS, f"dlq|{topic}|{partition}|{offset}"))
        self.producer.send_sync(DLQ_STREAMS.name, codec.encode("DeadLetter", {
            "dead_letter_id": dead_id, "stage": "streams:linker", "source_system": "CAREBUS", "reason": reason,
            "error_code": code, "failed_at": now_ms(), "original_topic": topic or None,
            "original_partition": partition if partition >= 0 else None,
            "original_offset": offset if offset >= 0 else None, "content_type": "avro/binary", "payload": value,
            "attempts": 1}), key=dead_id, headers=codec.headers("DeadLetter"))
