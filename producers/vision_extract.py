"""INPS Vision bulk extract (CSV) to canonical events. Pure: no I/O.

The extract format is documented in docs/vision-extract.md: one row per fact, every row
carrying the patient's Vision id and practice, `record_type` saying what the row is. Rows
are grouped per patient into one event; a bad row is rejected on its own (with its line
number) and never stops the rest of the file.
"""
from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from producers import birth_date, nhs_number, sharing_dissent
from producers.hl7v2_mapper import EVENT_NAMESPACE
from schemas import messages
from schemas.event_ids import name_based
from schemas.source_systems import NHS_NUMBER_SYSTEM, VISION

COLUMNS = ("record_type", "patient_id", "practice_ods", "nhs_number", "nhs_verified", "family", "given",
           "birth_date", "sex", "address_line", "city", "postcode", "phone", "item_id", "code_system",
           "code", "display", "value", "unit", "status", "date")
OPTIONAL_COLUMNS = ("other_code_system", "other_code")     # a second code for the same item
RECORD_TYPES = {"PATIENT", "PROBLEM", "MEDICATION", "ALLERGY", "OBSERVATION"}
CODE_SYSTEMS = {"SNOMED": "http://snomed.info/sct", "DMD": "https://dmd.nhs.uk", "READ2": "http://read.info/readv2"}
SEX = {"M": "MALE", "F": "FEMALE", "I": "OTHER", "U": "UNKNOWN"}


def _code_system(name: str | None) -> str:
    return CODE_SYSTEMS.get((name or "").upper(), name or "urn:carebus:local")


@dataclass(frozen=True)
class RowError:
    line: int
    reason: str
    row: bytes


@dataclass(frozen=True)
class ExtractResult:
    events: list[dict[str, Any]]
    errors: list[RowError]


def _date(value: str, line: int) -> date | None:
    if not value:
        return None
    try:
        # fromisoformat is several times strptime's speed; it also takes other ISO forms, so the
        # shape is checked first.
        if len(value) != 10 or value[4] != "-" or value[7] != "-":
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"line {line}: a date is not YYYY-MM-DD") from None


def _ms(d: date | None) -> int | None:
    return None if d is None else int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp() * 1000)


def decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def digest_of(raw: bytes) -> str:
    """The file's digest in its events' ids: the same file loaded again gives the same ids."""
    return hashlib.sha256(raw).hexdigest()[:16]


def split_header(text: str) -> tuple[list[str] | None, list[tuple[int, str]], RowError | None]:
    """(column names, the numbered data lines, or the header's error). Blank lines are skipped, so
    every line number is the file's own."""
    lines = text.splitlines()
    fieldnames = next(csv.reader(lines[:1]), []) if lines else []
    missing = [c for c in COLUMNS if c not in fieldnames]
    if missing:
        return None, [], RowError(1, f"header lacks columns: {', '.join(missing)}", text[:2000].encode())
    return fieldnames, [(n, line) for n, line in enumerate(lines[1:], start=2) if line.strip()], None


def parse_extract(raw: bytes, file_name: str, received_at_ms: int) -> ExtractResult:
    fieldnames, numbered, header_error = split_header(decode(raw))
    if header_error is not None:
        return ExtractResult([], [header_error])
    return parse_lines(numbered, fieldnames, file_name, digest_of(raw), received_at_ms)


def parse_lines(numbered: Sequence[tuple[int, str]], fieldnames: list[str], file_name: str, digest: str,
                received_at_ms: int) -> ExtractResult:
    """Events from numbered data lines (every row of a patient must be among them: rows are grouped
    per patient). The whole file, or one of its shards (bulk_extract_workers)."""
    events: dict[tuple[str, str], dict[str, Any]] = {}
    errors: list[RowError] = []
    reader = csv.DictReader([line for _, line in numbered], fieldnames=fieldnames)
    for (index, line), row in zip(numbered, reader):
        try:
            _apply_row(row, index, events, file_name, digest, received_at_ms)
        except ValueError as exc:
            errors.append(RowError(index, str(exc), line.encode()))
    for event in events.values():
        sharing_dissent.apply(event)
    return ExtractResult(list(events.values()), errors)


def patient_columns(fieldnames: list[str]) -> tuple[int, int]:
    """Where a data line holds its practice and its patient id (the last column of each name, as
    csv.DictReader reads a header that names one twice): `patient_of_line` takes them."""
    last = {name: i for i, name in enumerate(fieldnames)}
    return last["practice_ods"], last["patient_id"]


def patient_of_line(line: str, columns: tuple[int, int]) -> tuple[str, str]:
    """(practice, patient id) of a data line, as _apply_row reads them: which shard it goes to.
    A large file's lines are all read here, in one process, before its shards start, so a line
    without quotes is split on its commas (what the csv module makes of it, several times faster).
    A quoted line is read by the csv module on its own, so an unclosed quote cannot run on into the
    next line."""
    values = line.split(",") if '"' not in line else next(csv.reader([line]), [])
    ods_at, pid_at = columns
    ods = values[ods_at] if ods_at < len(values) else ""
    pid = values[pid_at] if pid_at < len(values) else ""
    return ods.strip().upper(), pid.strip()


def _apply_row(row: dict[str, str], line: int, events: dict, file_name: str, digest: str, now: int) -> None:
    rtype = (row.get("record_type") or "").strip().upper()
    if rtype not in RECORD_TYPES:
        raise ValueError(f"line {line}: record_type {rtype!r} is not one of {sorted(RECORD_TYPES)}")
    pid, ods = (row.get("patient_id") or "").strip(), (row.get("practice_ods") or "").strip().upper()
    if not pid or not ods:
        raise ValueError(f"line {line}: patient_id and practice_ods are required")
    key = (ods, pid)
    event = events.get(key)
    if event is None:
        event = events[key] = messages.source_event(
            messages.envelope(name_based(EVENT_NAMESPACE, f"INPS_VISION|{ods}|{pid}|{digest}"), VISION.code, ods,
                              f"{file_name}#{pid}", "vision.extract", now, now, file_name),
            {"local_identifier": {"system": VISION.identifier_system(ods), "value": pid},
             "other_identifiers": [], "nhs_number": None, "nhs_number_status": "ABSENT", "names": [],
             "birth_date": None, "sex": "UNKNOWN", "addresses": [], "telecom": [],
             "registered_practice_ods": ods, "deceased_at": None, "sharing_objection": False})
    if rtype == "PATIENT":
        p = event["patient"]
        number = nhs_number.normalise(row.get("nhs_number"))
        birth, birth_flags = birth_date.parse(row.get("birth_date"), "iso")
        event["data_quality_flags"] += birth_flags
        if number:
            p["nhs_number"] = number
            p["other_identifiers"] = [{"system": NHS_NUMBER_SYSTEM, "value": number}]
            if not nhs_number.is_valid(number):
                p["nhs_number_status"] = "INVALID_CHECKSUM"
                event["data_quality_flags"].append("NHS_NUMBER_INVALID_CHECKSUM")
            else:
                p["nhs_number_status"] = "VERIFIED" if (row.get("nhs_verified") or "").upper() == "Y" else "PRESENT_UNVERIFIED"
        family, given = (row.get("family") or "").strip(), (row.get("given") or "").strip()
        if not family and not given:
            raise ValueError(f"line {line}: a PATIENT row needs family or given name")
        p["names"] = [{"use": "official", "family": family, "given": given.split(), "prefix": None}]
        p["birth_date"] = birth
        p["birth_date_as_sent"] = birth_date.digits_as_sent(row.get("birth_date"), "iso") if birth_flags else None
        p["sex"] = SEX.get((row.get("sex") or "U").strip().upper()[:1], "UNKNOWN")
        if row.get("address_line") or row.get("postcode"):
            p["addresses"] = [{"use": "home", "lines": [row["address_line"]] if row.get("address_line") else [],
                               "city": row.get("city") or None, "postcode": (row.get("postcode") or "").upper() or None}]
        if row.get("phone"):
            p["telecom"] = [{"system": "phone", "value": row["phone"], "use": "home"}]
        return
    code = (row.get("code") or "").strip()
    if not code:
        raise ValueError(f"line {line}: {rtype} row has no code")
    coded = {"system": _code_system(row.get("code_system")), "code": code, "display": row.get("display") or None,
             "other_codings": []}
    if (row.get("other_code") or "").strip():
        # Vision keeps the Read v2 code it was recorded with beside the SNOMED one.
        coded["other_codings"] = [{"system": _code_system(row.get("other_code_system")),
                                   "code": row["other_code"].strip(), "display": None}]
    item_id = (row.get("item_id") or "").strip() or f"{pid}-{line}"
    when = _ms(_date((row.get("date") or "").strip(), line))
    status = (row.get("status") or "active").strip().lower()
    if rtype == "PROBLEM":
        event["problems"].append({"id": item_id, "code": coded, "status": status, "onset": when, "abatement": None, "provenance": []})
    elif rtype == "MEDICATION":
        event["medications"].append({"id": item_id, "code": coded, "dosage": row.get("value") or None, "status": status,
                                     "start": when, "end": None, "provenance": []})
    elif rtype == "ALLERGY":
        event["allergies"].append({"id": item_id, "substance": coded, "reaction": row.get("value") or None, "severity": None,
                                   "status": status, "recorded": when, "provenance": []})
    else:
        value = (row.get("value") or "").strip()
        try:
            quantity = float(value) if value else None
            text = None
        except ValueError:
            quantity, text = None, value
        event["observations"].append({"id": item_id, "code": coded, "value_quantity": quantity, "unit": row.get("unit") or None,
                                      "value_text": text, "reference_range": None, "interpretation": None,
                                      "status": "final", "effective": when, "provenance": []})
