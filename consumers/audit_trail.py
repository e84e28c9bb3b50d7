"""Audit replay from the retained log: a person's timeline across systems, and their record as
it stood at any moment (exactly the version subscribers were sent then).

Every topic involved is keyed so that one person's (or one source record's) messages sit in one
partition; reads go straight to that partition and start from offsets-for-times.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from foundation.config import Settings
from consumers.change_reader import read_one, read_range
from schemas import codec
from schemas.record_sections import CLINICAL_SECTIONS
from schemas.topics import IDENTITY_EVENTS, PATIENT_CHANGES, RAW, SOURCE_EVENTS
from schemas.source_key import source_key

FOREVER = 2**62


@dataclass(frozen=True)
class TimelineEntry:
    at: int                 # epoch ms
    kind: str               # source-event | identity | record-change
    system: str
    organisation: str
    what: str
    detail: dict[str, Any]
    original: str | None = None   # the original message as received (source events)

    def as_row(self) -> dict[str, Any]:
        return {"at": self.at, "kind": self.kind, "system": self.system, "organisation": self.organisation,
                "what": self.what, "detail": json.dumps(self.detail, sort_keys=True), "original": self.original or ""}


def record_as_of(settings: Settings, person_id: str, at_ms: int) -> dict[str, Any] | None:
    """The RecordChange in force at `at_ms` (the newest version changed at or before it)."""
    best = None
    for msg in read_range(settings, PATIENT_CHANGES.name, 0, at_ms, key=person_id):
        change = codec.decode(msg.value(), "RecordChange")
        if change["changed_at"] <= at_ms and (best is None or change["version"] >= best["version"]):
            best = change
    return best


def timeline(settings: Settings, person_id: str, source_keys: set[str], since_ms: int = 0,
             include_original: bool = True, progress: Callable[[str], None] | None = None) -> list[TimelineEntry]:
    """Each event once: a log can hold copies of one, under its event id (a connector's resend
    caught between publishing and marking it, a link worker's replayed batch)."""
    entries: list[TimelineEntry] = []
    keys = set(source_keys)
    shown: set[str] = set()

    def first_time(event_id: str) -> bool:
        if event_id in shown:
            return False
        shown.add(event_id)
        return True

    for msg in read_range(settings, PATIENT_CHANGES.name, since_ms, FOREVER, key=person_id):
        c = codec.decode(msg.value(), "RecordChange")
        # An index rebuilt from the log makes a person's versions again under the same event ids,
        # at a later time: shown again. A replayed copy keeps its first copy's time.
        if not first_time(f"{c['event_id']}|{c['changed_at']}"):
            continue
        keys |= {source_key(s['system'], s['local_identifier']['system'], s['local_identifier']['value'])
                 for s in c["record"]["sources"]}
        entries.append(TimelineEntry(c["changed_at"], "record-change", "CAREBUS", ",".join(c["ods_codes"]),
                                     f"record {c['change_type']} to version {c['version']}",
                                     {"version": c["version"], "changed_sections": c["changed_sections"],
                                      "caused_by": c["caused_by"]}))
    if progress:
        progress("record changes read")
    for msg in read_range(settings, IDENTITY_EVENTS.name, since_ms, FOREVER, key=person_id):
        e = codec.decode(msg.value(), "IdentityEvent")
        if not first_time(e["event_id"]):
            continue
        entries.append(TimelineEntry(e["recorded_at"], "identity", "CAREBUS", "", f"{e['type']} ({e['method']})",
                                     {"other_person_id": e["other_person_id"], "score": e["score"],
                                      "reasons": e["reasons"], "caused_by": e["caused_by"]}))
    if progress:
        progress("identity events read")
    for key in sorted(keys):
        for msg in read_range(settings, SOURCE_EVENTS.name, since_ms, FOREVER, key=key):
            e = codec.decode(msg.value(), "SourcePatientEvent")
            env = e["envelope"]
            if not first_time(env["event_id"]):
                continue
            original = None
            ref = env.get("raw_message")
            if include_original and ref:
                raw_msg = _original(settings, ref, env["recorded_at"])
                if raw_msg is not None:
                    original = codec.decode(raw_msg.value(), "RawMessage")["payload"].decode("utf-8", "replace")
            counts = {s: len(e[s]) for s in CLINICAL_SECTIONS if e[s]}
            entries.append(TimelineEntry(env["occurred_at"], "source-event", env["source_system"], env["source_ods_code"],
                                         f"{env['event_type']} from {env['source_system']}",
                                         {"event_id": env["event_id"], "source_record_id": env["source_record_id"],
                                          "items": counts, "flags": e["data_quality_flags"]}, original))
        if progress:
            progress(f"source record {len(entries)} entries")
    return sorted(entries, key=lambda x: (x.at, x.kind))


def _original(settings: Settings, ref: dict[str, Any], received_at: int):  # noqa: ANN202 - a Kafka Message
    """The raw original: at its offset when the event has one, else found by key from its receipt time."""
    if ref["offset"] >= 0:
        return read_one(settings, RAW.name, ref["partition"], ref["offset"])
    return next(read_range(settings, RAW.name, received_at, FOREVER, key=ref["raw_id"]), None)


# A cell starting with one of these is a formula to a spreadsheet ("CSV injection"): a sender's
# text such as =HYPERLINK(...) would run when an auditor opens the export.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """The value, with a leading apostrophe if a spreadsheet would read it as a formula (OWASP's advice)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def to_csv(entries: list[TimelineEntry]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["at", "kind", "system", "organisation", "what", "detail", "original"])
    writer.writeheader()
    for e in entries:
        writer.writerow({k: spreadsheet_safe(v) for k, v in e.as_row().items()})
    return buf.getvalue()


def to_json(entries: list[TimelineEntry]) -> str:
    return json.dumps([e.as_row() | {"detail": e.detail} for e in entries], indent=1)
