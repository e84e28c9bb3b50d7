"""Turns source records into each system's native messages and sends them through the connectors'
real interfaces: HL7 v2 over an MLLP socket (Cerner, RiO), FHIR Bundles over HTTP (EMIS) and
CSV extract files (Vision).
"""
from __future__ import annotations

import asyncio
import csv
import io
import json
import random
import ssl
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

from foundation.mllp_framing import END, frame, unframe
from schemas.source_systems import CERNER, EMIS, NHS_NUMBER_SYSTEM, RIO
from simulator.population import SourceRecord

PROBLEMS = [("73211009", "Diabetes mellitus"), ("38341003", "Hypertensive disorder"), ("195967001", "Asthma"),
            ("35489007", "Depressive disorder"), ("13645005", "Chronic obstructive lung disease")]
MEDICATIONS = [("322236009", "Paracetamol 500mg tablets"), ("317896006", "Atorvastatin 20mg tablets"),
               ("325278001", "Metformin 500mg tablets"), ("318135000", "Ramipril 5mg capsules")]
ALLERGENS = [("91936005", "Penicillin"), ("91935009", "Peanut"), ("294505008", "Amoxicillin")]
LABS = [("4548-4", "HbA1c", "mmol/mol", 30, 80), ("2160-0", "Creatinine", "umol/L", 50, 150),
        ("718-7", "Haemoglobin", "g/L", 100, 170)]


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y%m%d%H%M%S")


@dataclass
class MessageFactory:
    rng: random.Random
    clock: datetime = field(default_factory=lambda: datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc))
    counter: int = 0

    def _next(self, prefix: str) -> str:
        self.counter += 1
        self.clock += timedelta(seconds=self.rng.randrange(1, 90))
        return f"{prefix}{self.counter:09d}"

    def _pid(self, rec: SourceRecord, authority: str) -> str:
        ids = f"{rec.local_id}^^^{authority}^MR"
        if rec.nhs_number:
            ids += f"~{rec.nhs_number}^^^NHS^NH"
        sex = rec.sex
        return (f"PID|1||{ids}||{rec.family}^{rec.given}||{rec.birth_date:%Y%m%d}|{sex}|||"
                f"{rec.house} {rec.street}^^LONDON^^{rec.postcode}")

    def hl7_adt(self, rec: SourceRecord, trigger: str, visit: str | None = None) -> bytes:
        control = self._next("MSG")
        app = "CERNER" if rec.system == "CERNER_MILLENNIUM" else "RIO"
        segments = [f"MSH|^~\\&|{app}|{rec.ods}|CAREBUS|LONDON|{_ts(self.clock)}||ADT^{trigger}^ADT_A01|{control}|P|2.4",
                    f"EVN|{trigger}|{_ts(self.clock)}", self._pid(rec, rec.ods), f"PD1|||^^{rec.practice_ods}"]
        if trigger not in ("A28", "A31"):
            pclass = "I" if rec.system == "CERNER_MILLENNIUM" else "C"
            ward = self.rng.choice(["AMU", "WARD7", "ITU", "CDU"]) if app == "CERNER" else "CMHT"
            admit = f"{_ts(self.clock - timedelta(hours=2))}"
            discharge = _ts(self.clock) if trigger == "A03" else ""
            segments.append(f"PV1|1|{pclass}|{ward}^B{self.rng.randrange(1, 30)}|||||||||||||||{visit or 'V' + control}"
                            + "|" * 25 + f"{admit}|{discharge}")
        if rec.system == "CERNER_MILLENNIUM" and self.rng.random() < 0.3:
            code, text = self.rng.choice(ALLERGENS)
            segments.append(f"AL1|1|DA|{code}^{text}^SCT|MO|Rash")
        if rec.system == "RIO" and trigger == "A04":
            segments.append(f"RF1|A|R|CMHT^Community mental health team^LOCAL|||REF{self.counter:07d}|{_ts(self.clock)}")
        return "\r".join(segments).encode() + b"\r"

    def hl7_oru(self, rec: SourceRecord) -> bytes:
        control = self._next("LAB")
        obx = []
        for i, (code, text, unit, lo, hi) in enumerate(self.rng.sample(LABS, 2), start=1):
            obx.append(f"OBX|{i}|NM|{code}^{text}^LN||{self.rng.randrange(lo, hi)}|{unit}|{lo}-{hi}|N|||F|||{_ts(self.clock)}")
        return "\r".join([f"MSH|^~\\&|CERNER|{rec.ods}|CAREBUS|LONDON|{_ts(self.clock)}||ORU^R01^ORU_R01|{control}|P|2.4",
                          self._pid(rec, rec.ods), f"OBR|1||ACC{control}|CHEM^Chemistry|||{_ts(self.clock)}", *obx]).encode() + b"\r"

    def emis_bundle(self, rec: SourceRecord) -> bytes:
        patient_ref = f"urn:uuid:{rec.local_id}"
        identifiers = [{"system": EMIS.identifier_system(rec.ods), "value": rec.local_id}]
        if rec.nhs_number:
            identifiers.append({"system": NHS_NUMBER_SYSTEM, "value": rec.nhs_number})
        entries = [{"fullUrl": patient_ref, "resource": {
            "resourceType": "Patient", "id": rec.local_id, "identifier": identifiers,
            "name": [{"use": "official", "family": rec.family, "given": [rec.given]}],
            "gender": "male" if rec.sex == "M" else "female", "birthDate": rec.birth_date.isoformat(),
            "address": [{"use": "home", "line": [f"{rec.house} {rec.street}"], "city": "London", "postalCode": rec.postcode}],
            "generalPractitioner": [{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": rec.ods}}]},
            "request": {"method": "PUT", "url": f"Patient/{rec.local_id}"}}]
        for i in range(self.rng.randrange(0, 3)):
            code, text = self.rng.choice(PROBLEMS)
            entries.append({"resource": {"resourceType": "Condition", "id": f"{rec.local_id}-c{i}",
                                         "subject": {"reference": patient_ref}, "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                                         "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": text}]}},
                            "request": {"method": "PUT", "url": f"Condition/{rec.local_id}-c{i}"}})
        for i in range(self.rng.randrange(0, 3)):
            code, text = self.rng.choice(MEDICATIONS)
            entries.append({"resource": {"resourceType": "MedicationStatement", "id": f"{rec.local_id}-m{i}", "status": "active",
                                         "subject": {"reference": patient_ref},
                                         "medicationCodeableConcept": {"coding": [{"system": "https://dmd.nhs.uk", "code": code, "display": text}]}},
                            "request": {"method": "PUT", "url": f"MedicationStatement/{rec.local_id}-m{i}"}})
        self._next("EMIS")
        return json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}).encode()

    def vision_rows(self, rec: SourceRecord) -> list[dict[str, str]]:
        base = {"patient_id": rec.local_id, "practice_ods": rec.ods}
        rows = [{**base, "record_type": "PATIENT", "nhs_number": rec.nhs_number or "", "nhs_verified": "Y",
                 "family": rec.family, "given": rec.given, "birth_date": rec.birth_date.isoformat(), "sex": rec.sex,
                 "address_line": f"{rec.house} {rec.street}", "city": "London", "postcode": rec.postcode}]
        for i in range(self.rng.randrange(0, 3)):
            code, text = self.rng.choice(PROBLEMS)
            rows.append({**base, "record_type": "PROBLEM", "item_id": f"{rec.local_id}-p{i}", "code_system": "SNOMED",
                         "code": code, "display": text, "status": "active", "date": "2020-03-01"})
        return rows


def vision_csv(rows: list[dict[str, str]]) -> bytes:
    from producers.vision_extract import COLUMNS, OPTIONAL_COLUMNS

    buf = io.StringIO()
    columns = COLUMNS + OPTIONAL_COLUMNS
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in columns})
    return buf.getvalue().encode()


class MllpClient:
    """A sender as a hospital interface engine would be: send, wait for the ACK, resend on AE."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.tls = host, port, tls
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, message: bytes, timeout: float = 30.0) -> bytes:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port, ssl=self.tls)
        self._writer.write(frame(message))
        await self._writer.drain()
        return unframe(await asyncio.wait_for(self._reader.readuntil(END), timeout))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def ack_code(ack: bytes) -> str:
    for seg in ack.split(b"\r"):
        if seg.startswith(b"MSA|"):
            return seg.split(b"|")[1].decode()
    return ""


# carebus's contract: AE with one of these ERR codes is worth resending (after TOO_MANY_CONNECTIONS
# the connector has closed the connection: the sender reconnects); anything else will fail again.
TRANSIENT_ERRORS = (b"STORE_UNAVAILABLE", b"TOO_MANY_CONNECTIONS", b"INTERNAL")


def is_transient(ack: bytes) -> bool:
    return ack_code(ack) == "AE" and any(b"|" + code + b"|" in ack for code in TRANSIENT_ERRORS)


def write_drop_file(folder: Path, name: str, data: bytes) -> Path:
    """Write then rename, the convention the file-drop connector relies on."""
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f"{name}.part"
    part.write_bytes(data)
    final = folder / name
    part.rename(final)
    return final


@dataclass
class TrafficStats:
    sent: int = 0
    acked: int = 0
    rejected: int = 0
    retried: int = 0


async def send_hl7_with_retry(client: MllpClient, message: bytes, stats: TrafficStats, attempts: int = 20) -> str:
    for _ in range(attempts):
        stats.sent += 1
        try:
            ack = await client.send(message)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            await client.close()
            stats.retried += 1
            await asyncio.sleep(0.5)
            continue
        code = ack_code(ack)
        if code == "AA":
            stats.acked += 1
            return code
        if not is_transient(ack):
            stats.rejected += 1
            return code
        if b"|TOO_MANY_CONNECTIONS|" in ack:
            await client.close()
        stats.retried += 1
        await asyncio.sleep(0.2)
    return "GAVE_UP"


async def post_fhir(http: httpx.AsyncClient, url: str, token: str, ods: str, body: bytes, stats: TrafficStats) -> int:
    for _ in range(20):
        stats.sent += 1
        try:
            resp = await http.post(url, content=body, headers={"Authorization": f"Bearer {token}", "X-Ods-Code": ods,
                                                               "Content-Type": "application/fhir+json"})
        except httpx.HTTPError:
            stats.retried += 1
            await asyncio.sleep(0.5)
            continue
        if resp.status_code < 300:
            stats.acked += 1
            return resp.status_code
        if resp.status_code != 503:
            stats.rejected += 1
            return resp.status_code
        stats.retried += 1
        await asyncio.sleep(0.2)
    return 0


__all__ = ["MessageFactory", "MllpClient", "ack_code", "vision_csv", "write_drop_file", "send_hl7_with_retry",
           "post_fhir", "TrafficStats", "CERNER", "RIO"]
