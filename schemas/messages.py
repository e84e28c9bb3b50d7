"""Builders for the messages that travel on the bus, so no part assembles one by hand.

Each returns the dict the Avro schema of the same name describes (schemas/avro), with every
field set, ready for `codec.encode`. Pure.
"""
from __future__ import annotations

import uuid
from typing import Any

from schemas.record_sections import CLINICAL_SECTIONS


def dead_letter(stage: str, source_system: str, reason: str, error_code: str, payload: bytes, content_type: str, *,
                failed_at: int, dead_letter_id: str | None = None, original_topic: str | None = None,
                original_partition: int | None = None, original_offset: int | None = None,
                attempts: int = 1) -> dict[str, Any]:
    """A DeadLetter: what failed where, why (`reason` for people, `error_code` for machines), and
    the original bytes, so it can be replayed once the cause is fixed."""
    return {"dead_letter_id": dead_letter_id or str(uuid.uuid4()), "stage": stage, "source_system": source_system,
            "reason": reason, "error_code": error_code, "failed_at": failed_at,
            "original_topic": original_topic, "original_partition": original_partition,
            "original_offset": original_offset, "content_type": content_type, "payload": payload,
            "attempts": attempts}


def source_event(envelope: dict[str, Any], patient: dict[str, Any], *,
                 data_quality_flags: list[str] | None = None) -> dict[str, Any]:
    """A SourcePatientEvent with no clinical items yet (a mapper appends them) and action UPSERT."""
    event: dict[str, Any] = {"envelope": {"raw_message": None, **envelope}, "patient": patient, "action": "UPSERT",
                             "merged_from": []}
    event.update({section: [] for section in CLINICAL_SECTIONS})
    event["data_quality_flags"] = list(data_quality_flags or [])
    return event


def envelope(event_id: str, source_system: str, ods: str, record_id: str, event_type: str, occurred_at: int,
             recorded_at: int, correlation_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "source_system": source_system, "source_ods_code": ods,
            "source_record_id": record_id, "event_type": event_type, "occurred_at": occurred_at,
            "recorded_at": recorded_at, "correlation_id": correlation_id, "raw_message": None}


def identity_event(event_id: str, kind: str, person_id: str, *, recorded_at: int, caused_by: str,
                   other_person_id: str | None = None, sources: list[dict[str, Any]] | None = None,
                   score: float | None = None, method: str = "", reasons: list[str] | None = None) -> dict[str, Any]:
    """An IdentityEvent (LINKED, MERGED, UNMERGED, REVIEW_NEEDED, REVIEW_ACCEPTED, REVIEW_REJECTED)."""
    return {"event_id": event_id, "recorded_at": recorded_at,
            "caused_by": caused_by, "type": kind, "person_id": person_id, "other_person_id": other_person_id,
            "sources": list(sources or []), "score": score, "method": method, "reasons": list(reasons or [])}
