"""A patient's objection to sharing, as GP systems record it: coded entries and UK Core Consent.

EMIS Web and Vision record a patient's decision about their record being shared as a coded
entry in the record. The codes are the NHS "DocumentConsentSnCT" subset of SNOMED CT (subset
43961000000137); the ones about a local shared record, which carebus is, are used here:

    dissent  416409005        Refused consent for upload to local shared electronic record
             320011000000108  Declined consent to share patient data with specified third party
    consent  417528008        Consent given for upload to local shared electronic record
             425691002        Consent given for electronic record sharing

The latest dated entry decides. A FHIR Consent resource (UK Core: scope patient-privacy) with
provision.type "deny" is a dissent, "permit" a consent. An objection stops every subscriber
receiving the patient (consumers/subscription_scope.py). Pure.

VALUE_SET_VERSION names this list; change it when the list changes, so an audit can tell which
rules were in force.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

VALUE_SET_VERSION = "2026-11-26.1"
SNOMED = "http://snomed.info/sct"
DISSENT = frozenset({(SNOMED, "416409005"), (SNOMED, "320011000000108")})
CONSENT = frozenset({(SNOMED, "417528008"), (SNOMED, "425691002")})
_WHEN = ("effective", "onset", "recorded", "start")


def decision_of(item: dict[str, Any]) -> bool | None:
    """True for a dissent entry, False for a consent entry, None for anything else."""
    code = item.get("code") or {}
    pair = (code.get("system"), code.get("code"))
    return True if pair in DISSENT else False if pair in CONSENT else None


def objection(items: Iterable[dict[str, Any]], default: bool = False) -> bool:
    """The patient's decision from their coded entries: the latest dated one wins (undated count
    as oldest); `default` if there is none."""
    decisions = [(next((item[k] for k in _WHEN if item.get(k) is not None), -1), decided)
                 for item in items if (decided := decision_of(item)) is not None]
    if not decisions:
        return default
    return max(decisions, key=lambda d: (d[0], d[1]))[1]


def consent_decision(consent: Any) -> dict[str, Any] | None:
    """A FHIR Consent (R4 / UK Core) about privacy, as a dated decision entry; None if it is not
    an active patient-privacy consent with a provision type."""
    scope = consent.scope.coding if consent.scope is not None and consent.scope.coding else []
    privacy = any(c.code == "patient-privacy" for c in scope)
    kind = consent.provision.type if consent.provision is not None else None
    if not privacy or consent.status != "active" or kind not in ("deny", "permit"):
        return None
    when = int(consent.dateTime.timestamp() * 1000) if consent.dateTime is not None else None
    return {"code": {"system": SNOMED, "code": "416409005" if kind == "deny" else "417528008"}, "recorded": when}


# Where a mapper keeps Consent decisions on an event until `apply` reads them (never encoded).
DECISIONS = "_sharing_decisions"


def apply(event: dict[str, Any]) -> None:
    """Set the event's sharing objection from its coded entries (observations and problems) and
    Consent decisions."""
    patient = event["patient"]
    decisions = event.pop(DECISIONS, [])
    patient["sharing_objection"] = objection([*event.get("observations", []), *event.get("problems", []), *decisions],
                                             default=bool(patient.get("sharing_objection")))
