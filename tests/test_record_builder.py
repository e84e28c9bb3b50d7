"""The shared record, pure: built from source states, and what a new version says changed."""
from __future__ import annotations

from producers import hl7v2_mapper
from producers.source_systems import CERNER
from streams import record_builder
from tests.test_connectors_e2e import adt

ALLERGY = "AL1|1|DA|91936005^Penicillin^SCT|SV|Rash\r"


def state_of(*messages: bytes) -> dict:
    events = [hl7v2_mapper.map_message(m, CERNER, "RAL", 1000 + i).event for i, m in enumerate(messages)]
    state = record_builder.new_source_state("CERNER_MILLENNIUM|urn:x|R1", events[0])
    for e in events:
        state, _ = record_builder.apply_event(state, e)
    return state


def test_a_new_allergy_changes_the_allergies_section_only():
    before = record_builder.build_record("PER-1", [state_of(adt("R1", "C1"))], 1, 10)
    after = record_builder.build_record("PER-1", [state_of(adt("R1", "C1"), adt("R1", "C2", extra=ALLERGY))], 2, 20)
    old, new = record_builder.part_digests(before), record_builder.part_digests(after)
    assert "allergies" in record_builder.changed_sections(old, after, new)
    assert "problems" not in record_builder.changed_sections(old, after, new)


def test_version_and_time_are_not_content():
    state = state_of(adt("R1", "C1"))
    assert record_builder.part_digests(record_builder.build_record("PER-1", [state], 1, 10)) == \
        record_builder.part_digests(record_builder.build_record("PER-1", [state], 7, 99))


def test_a_first_version_reports_demographics_and_every_section_it_has():
    record = record_builder.build_record("PER-1", [state_of(adt("R1", "C1", extra=ALLERGY))], 1, 10)
    changed = record_builder.changed_sections(None, record, record_builder.part_digests(record))
    assert changed == ["demographics", "encounters", "allergies"]

