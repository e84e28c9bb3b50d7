"""Delivery channels, pure: what each puts on the wire for one change."""
from __future__ import annotations

import asyncio
import json

from consumers.channels import CHANNELS


CHANGE = {"event_id": "e1", "person_id": "PER-1", "version": 2, "changed_at": 1_700_000_000_000,
          "change_type": "updated", "changed_sections": ["problems"], "caused_by": ["c1"], "ods_codes": ["RAL"],
          "record": {"person_id": "PER-1", "version": 2, "updated_at": 1_700_000_000_000,
                     "demographics": {"local_identifier": {"system": "urn:carebus:person", "value": "PER-1"},
                                      "other_identifiers": [], "nhs_number": None, "nhs_number_status": "ABSENT",
                                      "names": [], "birth_date": None, "sex": "UNKNOWN", "addresses": [],
                                      "telecom": [], "registered_practice_ods": None, "deceased_at": None,
                                      "sharing_objection": False},
                     "demographics_provenance": {}, "encounters": [], "problems": [], "medications": [],
                     "allergies": [], "observations": [], "referrals": [], "documents": [],
                     "sources": [{"system": "CERNER_MILLENNIUM",
                                  "local_identifier": {"system": "urn:carebus:id:cerner:mrn:RAL", "value": "R1"}}]}}


def render(name: str, number: int = 7, changes: list | None = None) -> tuple[bytes, str]:
    asked: list[int] = []

    async def next_number(count: int) -> int:
        asked.append(count)
        return number
    out = asyncio.run(CHANNELS[name].render(changes or [CHANGE], "sub-1", next_number))
    assert asked in ([], [len(changes or [CHANGE])])
    return out


def test_the_channels_and_who_pushes():
    assert sorted(CHANNELS) == ["fhir-rest-hook", "sse", "webhook"]
    assert CHANNELS["webhook"].pushes and CHANNELS["fhir-rest-hook"].pushes and not CHANNELS["sse"].pushes


def test_a_webhook_body_is_the_change_as_json():
    body, content_type = render("webhook")
    assert content_type == "application/json"
    sent = json.loads(body)
    assert sent["event_id"] == "e1" and sent["person_id"] == "PER-1" and sent["subscription_id"] == "sub-1"


def test_a_webhook_body_is_utf8_json_with_sorted_keys_and_every_field_of_the_record():
    record = {**CHANGE["record"], "demographics": {**CHANGE["record"]["demographics"],
                                                   "names": [{"use": "official", "family": "Nuñez", "given": ["Zoë"]}]}}
    body, _ = render("webhook", changes=[{**CHANGE, "record": record}])
    sent = json.loads(body.decode("utf-8"))
    assert sent["record"] == record
    assert list(sent) == sorted(sent) and "Zoë".encode() in body


def test_a_fhir_rest_hook_notification_is_a_numbered_history_bundle():
    body, content_type = render("fhir-rest-hook", number=7)
    assert content_type == "application/fhir+json"
    bundle = json.loads(body)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "history"
    assert "7" in json.dumps(bundle["entry"][0])


def test_a_server_sent_event_names_the_change():
    body, content_type = render("sse")
    assert content_type == "text/event-stream"
    text = body.decode()
    assert text.startswith("id: e1\nevent: record-change\ndata: {") and text.endswith("\n\n")


def test_a_fhir_rest_hook_notification_may_carry_several_changes_in_order():
    second = {**CHANGE, "event_id": "e2", "person_id": "PER-2", "record": {**CHANGE["record"], "person_id": "PER-2"}}
    body, _ = render("fhir-rest-hook", number=9, changes=[CHANGE, second])
    bundle = json.loads(body)
    status = bundle["entry"][0]["resource"]
    events = [p for p in status["parameter"] if p["name"] == "notification-event"]
    assert [[x for x in e["part"] if x["name"] == "event-number"][0]["valueString"] for e in events] == ["8", "9"]
    assert [[x for x in e["part"] if x["name"] == "focus"][0]["valueReference"]["reference"] for e in events] == \
        ["Patient/PER-1", "Patient/PER-2"]
    patients = [e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert patients == ["urn:carebus/Patient/PER-1", "urn:carebus/Patient/PER-2"]
    assert CHANNELS["fhir-rest-hook"].carries_several and not CHANNELS["webhook"].carries_several
