"""HL7 v2 (ADT and ORU) to the canonical SourcePatientEvent. Pure: no I/O.

Fields are read through `hl7v2_message` (python-hl7's rules, without its per-message tree of
containers); this module knows which fields carry what in the UK flavour of
v2.4 that Cerner Millennium and RiO send (NHS number in PID-3 with type NH, its trace status
in PID-32, the registered GP practice in PD1-3), and turns each message into one event.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from producers import birth_date, nhs_number
from producers.hl7v2_message import HL7v2Message
from schemas.source_systems import NHS_NUMBER_SYSTEM, SourceSystemProfile
from schemas import messages
from schemas.event_ids import name_based
from schemas.errors import MappingError

EVENT_NAMESPACE = uuid.UUID("6f1f5d1c-1d4e-4c1b-9b8e-2b7f5e0c0a11")

# Trigger events accepted, and the encounter movement each one means.
ADT_MOVEMENTS = {
    "A01": "admit", "A02": "transfer", "A03": "discharge", "A04": "register", "A05": "pre-admit",
    "A08": "update", "A11": "cancel-admit", "A13": "cancel-discharge", "A28": "update",
    "A31": "update", "A40": "merge",
}
SUPPORTED = {("ADT", t) for t in ADT_MOVEMENTS} | {("ORU", "R01"), ("REF", "I12")}
PATIENT_CLASS = {"I": "inpatient", "E": "emergency", "O": "outpatient", "P": "pre-admit",
                 "R": "recurring", "C": "community", "B": "obstetrics"}
SEX = {"M": "MALE", "F": "FEMALE", "O": "OTHER", "U": "UNKNOWN", "A": "OTHER", "N": "UNKNOWN"}
# PID-32 values the NHS uses for NHS number status (01 = number present and verified).
VERIFIED_STATUS = {"01"}


class HL7MappingError(MappingError):
    """The message cannot become a canonical event. `code` chooses the ACK: AR rejects, AE errors."""

    def __init__(self, reason: str, ack_code: str = "AE", error_code: str = "HL7_INVALID") -> None:
        super().__init__(reason)
        self.reason = reason
        self.ack_code = ack_code
        self.error_code = error_code


@dataclass(frozen=True)
class MappedHL7:
    event: dict[str, Any]
    message: HL7v2Message
    control_id: str
    message_type: str


def decode_bytes(raw: bytes) -> str:
    # HL7 v2 from UK trusts is mostly ASCII with the odd Latin-1 name; never fail on decoding.
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\r\n", "\r").replace("\n", "\r").strip("\r\x0b\x1c ")


def parse(raw: bytes) -> HL7v2Message:
    text = decode_bytes(raw)
    if not text.startswith("MSH"):
        raise HL7MappingError("message does not start with an MSH segment", "AR", "HL7_NO_MSH")
    if len(text) < 8:
        raise HL7MappingError("MSH segment too short to hold its encoding characters", "AR", "HL7_BAD_MSH")
    return HL7v2Message(text)


def field(msg: HL7v2Message, segment: str, number: int, rep: int = 1, comp: int = 1,
          sub: int = 1, occurrence: int = 1) -> str:
    """One value, '' when absent. `number` counts HL7-style (PID-3 is 3, MSH-9 is 9)."""
    return msg.value(segment, number, rep, comp, sub, occurrence).strip()


def parse_ts(value: str, what: str) -> int | None:
    """HL7 DTM (YYYY[MM[DD[HH[MM[SS]]]]][+ZZZZ]) to epoch millis, UTC when no offset is given."""
    if not value:
        return None
    core, offset = value, ""
    for sign in ("+", "-"):
        if sign in value[8:]:
            idx = value.index(sign, 8)
            core, offset = value[:idx], value[idx:]
    core = core.split(".")[0]
    if len(core) not in (14, 12, 10, 8, 6, 4) or not core.isascii() or not core.isdigit():
        raise HL7MappingError(f"{what} is not an HL7 date/time", "AE", "HL7_BAD_DATETIME")
    try:
        # By hand, not strptime (a tenth of an HL7 message's mapping time): YYYY[MM[DD[HH[MM[SS]]]]].
        parsed = datetime(int(core[:4]), int(core[4:6] or 1), int(core[6:8] or 1), int(core[8:10] or 0),
                          int(core[10:12] or 0), int(core[12:14] or 0))
    except ValueError:
        raise HL7MappingError(f"{what} is not a real date/time", "AE", "HL7_BAD_DATETIME") from None
    if offset and len(offset) == 5 and offset[1:].isdigit():
        minutes = int(offset[1:3]) * 60 + int(offset[3:5])
        minutes = minutes if offset[0] == "+" else -minutes
        return int((parsed.replace(tzinfo=timezone.utc).timestamp() - minutes * 60) * 1000)
    return int(parsed.replace(tzinfo=timezone.utc).timestamp() * 1000)


def event_id(system: str, ods: str, control_id: str, raw: bytes) -> str:
    # The same sender message (same control id and content) always gets the same id, so a
    # redelivery after a lost ACK is recognised downstream as a duplicate.
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return name_based(EVENT_NAMESPACE, f"{system}|{ods}|{control_id}|{digest}")


def _identity(msg: HL7v2Message, profile: SourceSystemProfile, ods: str) -> tuple[dict[str, Any], list[str]]:
    flags: list[str] = []
    local: dict[str, str] | None = None
    others: list[dict[str, str]] = []
    nhs: str | None = None
    for rep in range(1, msg.repetitions("PID", 3) + 1):
        value = field(msg, "PID", 3, rep, 1)
        authority = field(msg, "PID", 3, rep, 4)
        id_type = field(msg, "PID", 3, rep, 5)
        if not value:
            continue
        if id_type == "NH" or authority.upper() in ("NHS", "NHSNMBR"):
            nhs = nhs_number.normalise(value)
        elif local is None and id_type in ("MR", "PI", "PT", ""):
            local = {"system": profile.identifier_system(authority or ods), "value": value}
        else:
            others.append({"system": f"urn:carebus:id:{profile.connector}:{(id_type or 'id').lower()}:{authority or ods}",
                           "value": value})
    if local is None:
        raise HL7MappingError("PID-3 has no local patient identifier (type MR/PI)", "AE", "HL7_NO_PATIENT_ID")
    if nhs:
        if not nhs_number.is_valid(nhs):
            status = "INVALID_CHECKSUM"
            flags.append("NHS_NUMBER_INVALID_CHECKSUM")
        elif field(msg, "PID", 32) in VERIFIED_STATUS:
            status = "VERIFIED"
        else:
            status = "PRESENT_UNVERIFIED"
        others.append({"system": NHS_NUMBER_SYSTEM, "value": nhs})
    else:
        status = "ABSENT"
    names = []
    for rep in range(1, msg.repetitions("PID", 5) + 1):
        family = field(msg, "PID", 5, rep, 1)
        given = [g for g in (field(msg, "PID", 5, rep, 2), field(msg, "PID", 5, rep, 3)) if g]
        if family or given:
            names.append({"use": "official" if rep == 1 else "usual", "family": family, "given": given,
                          "prefix": field(msg, "PID", 5, rep, 5) or None})
    addresses = []
    for rep in range(1, msg.repetitions("PID", 11) + 1):
        lines = [x for x in (field(msg, "PID", 11, rep, 1), field(msg, "PID", 11, rep, 2)) if x]
        postcode = field(msg, "PID", 11, rep, 5)
        if lines or postcode:
            addresses.append({"use": "home", "lines": lines, "city": field(msg, "PID", 11, rep, 3) or None,
                              "postcode": postcode.upper() or None})
    telecom = []
    phone = field(msg, "PID", 13)
    if phone:
        telecom.append({"system": "phone", "value": phone, "use": "home"})
    deceased = parse_ts(field(msg, "PID", 29), "PID-29 death date")
    birth_days, birth_flags = birth_date.parse(field(msg, "PID", 7), "hl7")
    flags += birth_flags
    patient = {
        "local_identifier": local,
        "other_identifiers": others,
        "nhs_number": nhs,
        "nhs_number_status": status,
        "names": names,
        "birth_date": birth_days,
        "birth_date_as_sent": birth_date.digits_as_sent(field(msg, "PID", 7), "hl7") if birth_flags else None,
        "sex": SEX.get(field(msg, "PID", 8).upper(), "UNKNOWN"),
        "addresses": addresses,
        "telecom": telecom,
        "registered_practice_ods": field(msg, "PD1", 3, 1, 3) or field(msg, "PD1", 4, 1, 1) or None,
        "deceased_at": deceased,
        "sharing_objection": field(msg, "PD1", 12).upper() == "Y",
    }
    if not names:
        flags.append("NO_NAME")
    return patient, flags


CODE_SYSTEMS = {"SCT": "http://snomed.info/sct", "LN": "http://loinc.org", "I10": "http://hl7.org/fhir/sid/icd-10",
                "READ": "http://read.info/readv2", "DMD": "https://dmd.nhs.uk", "NPL": "https://nicip.nhs.uk"}
HOSPITAL_SERVICE = "http://terminology.hl7.org/CodeSystem/v2-0069"     # PV1-10: site-defined codes


def _coded(value: str, text: str, system: str) -> dict[str, Any]:
    return {"system": CODE_SYSTEMS.get(system.upper(), system or "urn:carebus:local"), "code": value,
            "display": text or None}


def _ce(msg: HL7v2Message, segment: str, number: int, occurrence: int, fallback: str = "") -> dict[str, Any]:
    """A CE/CWE field: its code (components 1-3) and its alternate code (4-6) as a second coding."""
    def part(component: int) -> str:
        return field(msg, segment, number, 1, component, occurrence=occurrence)

    concept = _coded(part(1) or fallback, part(2), part(3))
    alternate = part(4)
    concept["other_codings"] = [_coded(alternate, part(5), part(6))] if alternate else []
    return concept


def map_message(raw: bytes, profile: SourceSystemProfile, default_ods: str, received_at_ms: int) -> MappedHL7:
    msg = parse(raw)
    msg_type, trigger = field(msg, "MSH", 9, 1, 1).upper(), field(msg, "MSH", 9, 1, 2).upper()
    control_id = field(msg, "MSH", 10)
    if not control_id:
        raise HL7MappingError("MSH-10 message control id is empty", "AR", "HL7_NO_CONTROL_ID")
    if (msg_type, trigger) not in SUPPORTED:
        raise HL7MappingError(f"unsupported message type {msg_type}^{trigger}", "AR", "HL7_UNSUPPORTED_TYPE")
    if msg.count("PID") == 0:
        raise HL7MappingError("no PID segment", "AE", "HL7_NO_PID")
    ods = (field(msg, "MSH", 4) or default_ods).upper()
    patient, flags = _identity(msg, profile, ods)
    occurred = (parse_ts(field(msg, "EVN", 6), "EVN-6 event occurred")
                or parse_ts(field(msg, "EVN", 2), "EVN-2 recorded time")
                or parse_ts(field(msg, "MSH", 7), "MSH-7 message time") or received_at_ms)
    eid = event_id(profile.code, ods, control_id, raw)
    event = messages.source_event(
        messages.envelope(eid, profile.code, ods, control_id, f"{msg_type}^{trigger}", occurred, received_at_ms,
                          control_id), patient, data_quality_flags=flags)
    if msg_type == "ADT" and trigger == "A40":
        prior = field(msg, "MRG", 1, 1, 1)
        if not prior:
            raise HL7MappingError("A40 without MRG-1 prior patient identifier", "AE", "HL7_NO_MRG")
        event["action"] = "MERGE"
        event["merged_from"] = [{"system": profile.identifier_system(field(msg, "MRG", 1, 1, 4) or ods), "value": prior}]
    if msg.count("PV1") and trigger not in ("A28", "A31", "A40"):
        pclass = field(msg, "PV1", 2).upper()
        service = field(msg, "PV1", 10)
        visit = field(msg, "PV1", 19) or control_id
        movement = ADT_MOVEMENTS.get(trigger, "update") if msg_type == "ADT" else "update"
        status = {"discharge": "finished", "cancel-admit": "cancelled", "pre-admit": "planned"}.get(movement, "in-progress")
        event["encounters"].append({
            "id": visit,
            "encounter_class": "mental-health" if profile.connector == "rio" and pclass in ("I", "") else PATIENT_CLASS.get(pclass, "outpatient"),
            "status": status, "movement": movement,
            "location": "/".join(x for x in (field(msg, "PV1", 3, 1, 1), field(msg, "PV1", 3, 1, 2)) if x) or None,
            "service_type": {**_coded(service, "", HOSPITAL_SERVICE), "other_codings": []} if service else None,
            "start": parse_ts(field(msg, "PV1", 44), "PV1-44 admit time"),
            "end": parse_ts(field(msg, "PV1", 45), "PV1-45 discharge time"),
            "care_provider_ods": ods, "episode_id": field(msg, "PV1", 19) or None, "provenance": [],
        })
    for i in range(1, msg.count("AL1") + 1):
        event["allergies"].append({
            "id": f"{control_id}-AL1-{i}",
            "substance": _ce(msg, "AL1", 3, i),
            "reaction": field(msg, "AL1", 5, occurrence=i) or None,
            "severity": field(msg, "AL1", 4, occurrence=i) or None,
            "status": "active", "recorded": parse_ts(field(msg, "AL1", 6, occurrence=i), "AL1-6"), "provenance": [],
        })
    for i in range(1, msg.count("DG1") + 1):
        event["problems"].append({
            "id": f"{control_id}-DG1-{i}",
            "code": _ce(msg, "DG1", 3, i),
            "status": "active", "onset": parse_ts(field(msg, "DG1", 5, occurrence=i), "DG1-5"), "abatement": None,
            "provenance": [],
        })
    for i in range(1, msg.count("RF1") + 1):
        event["referrals"].append({
            "id": field(msg, "RF1", 6, occurrence=i) or f"{control_id}-RF1-{i}",
            "service": _ce(msg, "RF1", 3, i, fallback="unspecified"),
            "status": field(msg, "RF1", 1, occurrence=i).lower() or "active",
            "priority": field(msg, "RF1", 2, occurrence=i) or None,
            "referred_at": parse_ts(field(msg, "RF1", 7, occurrence=i), "RF1-7 effective date"),
            "episode_id": field(msg, "PV1", 19) or None, "provenance": [],
        })
    for i in range(1, msg.count("OBX") + 1):
        value = field(msg, "OBX", 5, occurrence=i)
        vtype = field(msg, "OBX", 2, occurrence=i).upper()
        quantity = None
        if vtype in ("NM", "SN"):
            try:
                quantity = float(value)
            except ValueError:
                raise HL7MappingError(f"OBX-5 in OBX {i} is not numeric although OBX-2 says {vtype}", "AE",
                                      "HL7_BAD_OBX_VALUE") from None
        event["observations"].append({
            "id": f"{field(msg, 'OBR', 3) or control_id}-OBX-{field(msg, 'OBX', 1, occurrence=i) or i}",
            "code": _ce(msg, "OBX", 3, i),
            "value_quantity": quantity, "unit": field(msg, "OBX", 6, occurrence=i) or None,
            "value_text": None if quantity is not None else (value or None),
            "reference_range": field(msg, "OBX", 7, occurrence=i) or None,
            "interpretation": field(msg, "OBX", 8, occurrence=i) or None,
            "status": {"F": "final", "P": "preliminary", "C": "corrected", "X": "cancelled"}.get(
                field(msg, "OBX", 11, occurrence=i).upper(), "final"),
            "effective": parse_ts(field(msg, "OBX", 14, occurrence=i), "OBX-14") or parse_ts(field(msg, "OBR", 7), "OBR-7"),
            "provenance": [],
        })
    return MappedHL7(event, msg, control_id, f"{msg_type}^{trigger}")


def build_ack(raw: bytes, ack_code: str, text: str = "", error_code: str = "") -> bytes:
    """An HL7 ACK for `raw` in original acknowledgement mode; works even for unparseable input."""
    now = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    # MSH-10 holds 20 characters: 80 random bits, as a uuid4 cut to 20 hex digits gave, for a
    # fifth of its cost (uuid4 builds a UUID object for every ACK).
    ack_id = os.urandom(10).hex()
    try:
        # The ACK needs only the MSH segment: do not parse the whole message a second time.
        msg = parse(raw.split(b"\r", 1)[0])
        control = field(msg, "MSH", 10)
        sender_app, sender_fac = field(msg, "MSH", 3), field(msg, "MSH", 4)
        trigger = field(msg, "MSH", 9, 1, 2)
        version = field(msg, "MSH", 12) or "2.4"
    except HL7MappingError:
        control, sender_app, sender_fac, trigger, version = "", "", "", "", "2.4"
    clean = _escape(text)
    segments = [
        f"MSH|^~\\&|CAREBUS|LONDON|{_escape(sender_app)}|{_escape(sender_fac)}|{now}||ACK^{_escape(trigger)}^ACK|{ack_id}|P|{_escape(version)}",
        f"MSA|{ack_code}|{_escape(control)}|{clean}",
    ]
    if ack_code != "AA":
        segments.append(f"ERR|||{_escape(error_code) or '207'}|E||||{clean}")
    return ("\r".join(segments) + "\r").encode()


def _escape(value: str) -> str:
    return (value.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
            .replace("&", "\\T\\").replace("~", "\\R\\").replace("\r", " ").replace("\n", " "))[:200]
