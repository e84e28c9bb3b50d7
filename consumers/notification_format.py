"""The bytes a subscriber receives: signed JSON webhooks and FHIR R4 Subscription rest-hook bundles. Pure.

Webhook signature (documented in the README for subscribers to verify):
    X-Carebus-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>
    Idempotency-Key: <change event id>   (the same change redelivered has the same key)
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson

from consumers.fhir_resources import SECTIONS, clinical_resources, fhir_patient, iso_instant


def webhook_body(change: dict[str, Any], subscription_id: str) -> bytes:
    # orjson: compact, keys sorted, UTF-8; a tenth of json.dumps's time on the delivery hot path
    # (once per change and subscriber).
    return orjson.dumps({"subscription_id": subscription_id, "event_id": change["event_id"],
                         "person_id": change["person_id"], "version": change["version"],
                         "change_type": change["change_type"], "changed_sections": change["changed_sections"],
                         "changed_at": change["changed_at"], "record": change["record"]},
                        option=orjson.OPT_SORT_KEYS)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, body: bytes, header: str, now: int, tolerance: int = 300) -> bool:
    """What a subscriber does: check the MAC and reject stale timestamps (replay protection)."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def fhir_rest_hook_notification(changes: list[dict[str, Any]], subscription_id: str, last_event_number: int,
                                base_url: str = "urn:carebus") -> dict[str, Any]:
    """A subscription-notification per the FHIR R4 Subscriptions Backport IG (history Bundle) for
    one or more changes, in log order: the SubscriptionStatus names each as a notification-event,
    numbered so that the last is `last_event_number`, and each change's resources follow it."""
    first = last_event_number - len(changes) + 1
    events = [{"name": "notification-event", "part": [
        {"name": "event-number", "valueString": str(first + i)},
        {"name": "timestamp", "valueInstant": iso_instant(c["changed_at"])},
        {"name": "focus", "valueReference": {"reference": f"Patient/{c['person_id']}"}}]}
        for i, c in enumerate(changes)]
    status = {"resourceType": "Parameters", "id": changes[0]["event_id"], "parameter": [
        {"name": "subscription", "valueReference": {"reference": f"{base_url}/Subscription/{subscription_id}"}},
        {"name": "topic", "valueCanonical": "https://carebus.london.nhs.uk/SubscriptionTopic/patient-record-change"},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": "event-notification"},
        {"name": "events-since-subscription-start", "valueString": str(last_event_number)}, *events]}
    entries = [{"fullUrl": f"urn:uuid:{changes[0]['event_id']}", "resource": status,
                "request": {"method": "GET", "url": f"Subscription/{subscription_id}/$status"},
                "response": {"status": "200"}}]
    for change in changes:
        entries += _change_entries(change, base_url)
    return {"resourceType": "Bundle", "id": changes[0]["event_id"], "type": "history",
            "timestamp": iso_instant(changes[-1]["changed_at"]), "entry": entries}


def _change_entries(change: dict[str, Any], base_url: str) -> list[dict[str, Any]]:
    if change["change_type"] == "merged":
        return []
    entries = [{"fullUrl": f"{base_url}/Patient/{change['person_id']}", "resource": fhir_patient(change["record"]),
                "request": {"method": "PUT", "url": f"Patient/{change['person_id']}"},
                "response": {"status": "200"}}]
    # The changed sections' resources ride along (a created record: all of them), each with
    # its Provenance, so a subscriber need not read the record back to see what changed.
    changed = tuple(s for s in SECTIONS if change["change_type"] == "created" or s in change["changed_sections"])
    for resource, provenance in clinical_resources(change["record"], changed):
        for r in (resource, provenance) if provenance is not None else (resource,):
            url = f"{r['resourceType']}/{r['id']}"
            entries.append({"fullUrl": f"{base_url}/{url}", "resource": r, "request": {"method": "PUT", "url": url},
                            "response": {"status": "200"}})
    return entries
