"""The topic catalogue: every topic carebus uses, declared once.

Event logs keep history forever (they are the audit record and the source every view is
rebuilt from); snapshot topics are compacted to the latest value per key; every processing
stage has a dead-letter topic. min.insync.replicas follows the cluster size so a single-broker
laptop and a 3-broker cluster use the same catalogue.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from schemas import source_key

FOREVER = -1

# Message size limits, one definition for the whole path so they agree end to end:
# MAX_INBOUND_BYTES is the largest message a sender may send (an MLLP frame, a FHIR body);
# clinical documents and reports of several MB are normal. MAX_RECORD_BYTES is what every topic,
# every broker and every producer accepts: the inbound limit plus room for the Avro envelope.
# Larger input is refused as such (HL7 AR, HTTP 413) and parked with its first
# DEAD_LETTER_HEAD_BYTES, never answered "retry".
MAX_INBOUND_BYTES = 16 * 1024 * 1024
MAX_RECORD_BYTES = MAX_INBOUND_BYTES + 1024 * 1024
DEAD_LETTER_HEAD_BYTES = 1024 * 1024


@dataclass(frozen=True)
class TopicSpec:
    name: str
    message_type: str          # Avro message type (schemas.registry.MESSAGE_TYPES)
    key: str                   # what the key is; documents partitioning
    purpose: str
    cleanup_policy: str = "delete"
    retention_ms: int = FOREVER
    partitions: int | None = None  # None = settings.topic_partitions
    extra: dict[str, str] = field(default_factory=dict)
    # A topic whose partition p must go with this other topic's partition p (same count, same
    # keys' partitioner): a consumer group with "range" assignment then gives both to one member.
    co_partitioned_with: str | None = None

    def config(self, replication: int) -> dict[str, str]:
        cfg = {
            "cleanup.policy": self.cleanup_policy,
            "retention.ms": str(self.retention_ms),
            "min.insync.replicas": str(min(2, replication)),
            # Brokers timestamp nothing: event time is the producer's, so offsets-for-times
            # on the audit log finds messages by when the source sent them.
            "message.timestamp.type": "CreateTime",
            "max.message.bytes": str(MAX_RECORD_BYTES),
        }
        cfg.update(self.extra)
        return cfg


RAW = TopicSpec("carebus.raw.v1", "RawMessage", "raw id (sha256 of system and bytes)",
                "every inbound message exactly as received, for audit")
def source_event_key(event: dict) -> str:
    """The key of a SourcePatientEvent: "<system>|<identifier system>|<local id>".

    Part of the contract: connectors partition by it, the linker identifies source records by it.
    """
    return source_key.of_event(event)


SOURCE_EVENTS = TopicSpec("carebus.source-events.v1", "SourcePatientEvent", "source system | local patient id",
                          "canonical events from the vendor connectors")
IDENTITY_EVENTS = TopicSpec("carebus.identity-events.v1", "IdentityEvent", "person id",
                            "EMPI decisions: link, unlink, merge, unmerge, review")
LINK_REVIEW = TopicSpec("carebus.link-review.v1", "IdentityEvent",
                        "review id (a queued review); the pair's first source record (a decision)",
                        "uncertain matches waiting for a person to decide, and the decisions",
                        co_partitioned_with=SOURCE_EVENTS.name)


def review_decision_key(review: dict) -> str:
    """The key of a review decision on LINK_REVIEW: the source key of the pair's first record
    (the review's "a"). Part of the contract: with as many partitions as SOURCE_EVENTS and the
    same partitioner, a decision lands on the partition of that record's events, and the link
    worker that owns them (range assignment) links both, so no other worker's batch in flight
    holds moves kept on that record (identity_graph.link_batch, README: kept moves)."""
    return review["a"]


PATIENT_CHANGES = TopicSpec("carebus.patient-changes.v1", "RecordChange", "person id",
                            "every change to a shared record, the feed subscribers receive")
SHARED_RECORDS = TopicSpec("carebus.shared-records.v1", "SharedRecord", "person id",
                           "latest shared record per person", cleanup_policy="compact",
                           extra={"min.cleanable.dirty.ratio": "0.1", "segment.ms": "3600000"})
DLQ_CONNECTORS = TopicSpec("carebus.dlq.connectors.v1", "DeadLetter", "dead letter id",
                           "inbound messages the connectors rejected, with reason and original bytes",
                           partitions=1)
DLQ_STREAMS = TopicSpec("carebus.dlq.streams.v1", "DeadLetter", "dead letter id",
                        "events the stream processors could not process", partitions=1)
DLQ_DELIVERY = TopicSpec("carebus.dlq.delivery.v1", "DeadLetter", "subscription id",
                         "changes a subscriber could not take after every retry", partitions=1)
ACCESS_AUDIT = TopicSpec("carebus.access-audit.v1", "AccessEvent", "client id",
                         "every audit and record read: who looked at whom, when and why")

CATALOGUE: tuple[TopicSpec, ...] = (
    RAW, SOURCE_EVENTS, IDENTITY_EVENTS, LINK_REVIEW, PATIENT_CHANGES, SHARED_RECORDS,
    DLQ_CONNECTORS, DLQ_STREAMS, DLQ_DELIVERY, ACCESS_AUDIT,
)
BY_NAME = {t.name: t for t in CATALOGUE}
