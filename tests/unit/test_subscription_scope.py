"""What a subscriber may see of a change (consumers/subscription_scope.py), without a broker."""
from __future__ import annotations

import pytest

from consumers.subscription_scope import ClientScope, Subscription, visible_change
from schemas.record_sections import CLINICAL_SECTIONS

SUB = Subscription("s1", "client", "webhook", "https://example.org/hook")
RAL_ONLY = ClientScope("client", frozenset({"RAL"}), frozenset({"sexual-health"}))


def change(change_type: str, ods: str, objection: bool = False, problems: list | None = None) -> dict:
    record = {"person_id": "PER-1", "demographics": {"sharing_objection": objection, "registered_practice_ods": None},
              "sources": [{"local_identifier": {"system": f"urn:carebus:id:cerner:mrn:{ods}", "value": "1"}}],
              **{s: [] for s in CLINICAL_SECTIONS}}
    record["problems"] = problems or []
    return {"person_id": "PER-1", "change_type": change_type, "changed_sections": ["demographics", "problems"],
            "record": record}


@pytest.mark.parametrize("change_type", ["created", "updated", "merged", "unmerged"])
def test_a_change_outside_the_clients_organisations_is_never_sent_merges_included(change_type):
    assert visible_change(change(change_type, "RF4"), SUB, RAL_ONLY) is None
    assert visible_change(change(change_type, "RAL"), SUB, RAL_ONLY) is not None


def test_an_objecting_patient_is_never_sent_and_withheld_items_are_removed():
    assert visible_change(change("updated", "RAL", objection=True), SUB, RAL_ONLY) is None
    hiv = {"id": "p1", "code": {"system": "http://snomed.info/sct", "code": "8098009", "display": "STI"}}
    asthma = {"id": "p2", "code": {"system": "http://snomed.info/sct", "code": "195967001", "display": "Asthma"}}
    seen = visible_change(change("updated", "RAL", problems=[hiv, asthma]), SUB, RAL_ONLY)
    assert [p["id"] for p in seen["record"]["problems"]] == ["p2"]


def test_what_a_subscriber_sees_leaves_the_change_itself_as_it_was():
    hiv = {"id": "p1", "code": {"system": "http://snomed.info/sct", "code": "8098009", "display": "STI"}}
    asthma = {"id": "p2", "code": {"system": "http://snomed.info/sct", "code": "195967001", "display": "Asthma"}}
    original = change("updated", "RAL", problems=[hiv, asthma])
    original["record"]["allergies"] = [{"id": "a1"}]
    original["changed_sections"] = ["demographics", "problems", "allergies"]
    problems_only = Subscription("s2", "client", "webhook", "https://example.org/hook", sections=frozenset({"problems"}))
    seen = visible_change(original, problems_only, RAL_ONLY)
    assert [p["id"] for p in seen["record"]["problems"]] == ["p2"] and seen["record"]["allergies"] == []
    assert seen["changed_sections"] == ["demographics", "problems"]
    # The next subscriber of the same decoded change must still find everything in it.
    assert [p["id"] for p in original["record"]["problems"]] == ["p1", "p2"]
    assert original["record"]["allergies"] == [{"id": "a1"}]
    assert original["changed_sections"] == ["demographics", "problems", "allergies"]
