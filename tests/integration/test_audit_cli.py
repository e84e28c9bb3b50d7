"""`carebus audit` as an auditor would run it, against the running delivery service: find a
patient by NHS number or local identifier, export their timeline and a past record, and find
each read recorded on carebus.access-audit.v1 (who, whom, when, why)."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time

import pytest

from foundation.log_privacy import pseudonym
from schemas import codec
from schemas.topics import ACCESS_AUDIT
from tests.kafka_reading import read_all
from tests.builders import cerner_key, unique_nhs
from tests.bus_clients import person_of, send_story

pytestmark = pytest.mark.integration


def carebus_audit(delivery, *args: str, token: str = "dev-auditor-token") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carebus.cli", "audit", *args, "--url", delivery.base],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CAREBUS_API_TOKEN": token})


@pytest.fixture(scope="module")
def patient(bus_settings, connectors, link_workers, delivery, redis_client):
    unique = f"AU{time.time_ns() % 10**9}"
    send_story(bus_settings, unique)
    person = person_of(redis_client, cerner_key(f"S{unique}"))
    return {"unique": unique, "nhs": unique_nhs(unique), "person": person}


def test_find_by_nhs_number_and_by_local_identifier(delivery, patient):
    by_nhs = carebus_audit(delivery, "find", "--nhs-number", patient["nhs"], "--why", "complaint 123")
    assert by_nhs.returncode == 0, by_nhs.stdout + by_nhs.stderr
    assert patient["person"] in by_nhs.stdout
    by_id = carebus_audit(delivery, "find", "--identifier", f"urn:carebus:id:cerner:mrn:RAL|S{patient['unique']}",
                          "--why", "complaint 123")
    assert by_id.returncode == 0 and patient["person"] in by_id.stdout


def test_timeline_exports_csv_with_every_source_event(delivery, patient, tmp_path):
    out = tmp_path / "timeline.csv"
    result = carebus_audit(delivery, "timeline", "--nhs-number", patient["nhs"], "--why", "SAR request",
                           "--format", "csv", "--output", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert {r["person_id"] for r in rows} == {patient["person"]}
    assert sum(r["kind"] == "source-event" for r in rows) == 3        # admission, update, discharge
    assert any(r["kind"] == "record-change" for r in rows)
    assert all("MSH|" in r["original"] for r in rows if r["kind"] == "source-event")


def test_as_of_gives_the_version_in_force_then(delivery, patient):
    result = carebus_audit(delivery, "as-of", "--person", patient["person"], "--at", str(int(time.time() * 1000)),
                           "--why", "incident review")
    assert result.returncode == 0, result.stdout + result.stderr
    [change] = json.loads(result.stdout)
    assert change["person_id"] == patient["person"] and change["version"] >= 1


def test_every_read_is_recorded_with_who_whom_and_why(bus_settings, delivery, patient):
    why = f"audit trail check {patient['unique']}"
    assert carebus_audit(delivery, "find", "--nhs-number", patient["nhs"], "--why", why).returncode == 0
    events = [codec.decode(m.value(), "AccessEvent") for m in
              read_all(bus_settings, ACCESS_AUDIT.name, timeout=30, predicate=lambda m: m.key() == b"audit-team")]
    mine = [e for e in events if e["purpose"] == why]
    assert len(mine) == 1
    assert mine[0]["client_id"] == "audit-team" and mine[0]["action"] == "find"
    assert mine[0]["person_ids"] == [patient["person"]]
    # The NHS number searched for is kept as a pseudonym, never in clear.
    assert mine[0]["query"]["nhs_number"] == pseudonym(patient["nhs"])
    assert patient["nhs"] not in json.dumps(events)


def test_a_subscriber_token_cannot_audit(delivery, patient):
    result = carebus_audit(delivery, "timeline", "--person", patient["person"], "--why", "curious",
                           token="dev-subscriber-token")
    assert result.returncode == 1 and "403" in result.stdout


def test_records_show_prints_the_record_as_tables_and_as_json(delivery, patient):
    shown = carebus_audit_records(delivery, "--nhs-number", patient["nhs"], "--why", "clinical query")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert patient["person"] in shown.stdout and "Encounters" in shown.stdout
    assert "CERNER_MILLENNIUM RAL" in shown.stdout
    as_json = carebus_audit_records(delivery, "--person", patient["person"], "--why", "clinical query", "--json")
    [record] = json.loads(as_json.stdout)
    assert record["person_id"] == patient["person"] and record["encounters"]


def carebus_audit_records(delivery, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carebus.cli", "records", "show", *args, "--url", delivery.base],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CAREBUS_API_TOKEN": "dev-auditor-token", "COLUMNS": "200"})
