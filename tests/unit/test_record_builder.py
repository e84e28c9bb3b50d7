"""The shared record, pure: built from source states, and what a new version says changed."""
from __future__ import annotations

import hashlib

import orjson

from streams import record_builder
from tests.builders import adt
from tests.builders import ALLERGY, state_of


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


def test_digests_are_stable_across_releases():
    """Digests are stored with each record version: a release that digested the same record
    differently would publish a new version of every record it touched. Each part is the 8-byte
    BLAKE2b of its sorted JSON, empty parts included (and an empty map is not an empty list)."""
    for record in (record_builder.build_record("PER-1", [state_of(adt("R1", "C1", extra=ALLERGY))], 1, 10),
                   {**record_builder.build_record("PER-1", [state_of(adt("R1", "C1"))], 1, 10),
                    "demographics_provenance": {}}):
        parts = [[record["demographics"], record["sources"]]] + [record[n] for n in record_builder.DIGESTED_PARTS[1:]]
        expected = b"".join(hashlib.blake2b(orjson.dumps(p, option=orjson.OPT_SORT_KEYS, default=str),
                                            digest_size=8).digest() for p in parts)
        assert record_builder.part_digests(record) == expected


def test_a_first_version_reports_demographics_and_every_section_it_has():
    record = record_builder.build_record("PER-1", [state_of(adt("R1", "C1", extra=ALLERGY))], 1, 10)
    changed = record_builder.changed_sections(None, record, record_builder.part_digests(record))
    assert changed == ["demographics", "encounters", "allergies"]


def test_a_tpp_practice_is_a_gp_source_by_its_profile_alone():
    """TPP SystmOne is one profile entry (schemas/source_systems.py): its demographics outrank a
    hospital's, and it names the registered practice, as EMIS and Vision do."""
    import json

    from producers import fhir_mapper
    from schemas.source_systems import TPP

    body = json.dumps({"resourceType": "Patient", "id": "T1", "name": [{"family": "Systmone", "given": ["Tara"]}],
                       "generalPractitioner": [{"identifier": {"value": "F86001"}}]}).encode()
    [event] = fhir_mapper.map_payload(body, TPP, "F86001", 5000)
    assert event["patient"]["local_identifier"]["system"] == "urn:carebus:id:tpp:systmone-id:F86001"
    gp = record_builder.new_source_state("TPP_SYSTMONE|urn:x|T1", event)
    gp, _ = record_builder.apply_event(gp, event)
    hospital = state_of(adt("R1", "C1"))       # newer, but a hospital's
    record = record_builder.build_record("PER-1", [hospital, gp], 1, 10)
    assert record["demographics"]["names"][0]["family"] == "Systmone"
    assert record["demographics"]["registered_practice_ods"] == "F86001"
