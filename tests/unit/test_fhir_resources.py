"""FHIR R4 resources made from shared records (consumers/fhir_read_api.py), pure: every one of them
validates with fhir.resources, every clinical item carries its provenance."""
from __future__ import annotations

import random

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from hypothesis import given, settings, strategies as st

from consumers import fhir_read_api
from producers import fhir_mapper, hl7v2_mapper
from schemas.source_systems import CERNER, EMIS
from schemas.topics import source_event_key
from simulator import population as pop
from simulator.traffic import MessageFactory
from streams import record_builder


def record_of_a_person(seed: int) -> dict:
    """A person's shared record from what their systems would send: EMIS Bundles, Cerner ADT and ORU."""
    people = pop.build(40, seed=seed, hospital_rate=1.0)
    factory = MessageFactory(random.Random(seed))
    person = next(p for p in people.people if {r.system for r in people.records if r.person_id == p.person_id}
                  >= {"EMIS_WEB", "CERNER_MILLENNIUM"})
    events = []
    for r in (r for r in people.records if r.person_id == person.person_id):
        if r.system == "EMIS_WEB":
            events += fhir_mapper.map_payload(factory.emis_bundle(r), EMIS, r.ods, 1)
        elif r.system == "CERNER_MILLENNIUM":
            events += [hl7v2_mapper.map_message(m, CERNER, r.ods, 2).event
                       for m in (factory.hl7_adt(r, "A01"), factory.hl7_oru(r))]
    states: dict[str, dict] = {}
    for e in events:
        key = source_event_key(e)
        states[key], _ = record_builder.apply_event(states.get(key) or record_builder.new_source_state(key, e), e)
    return record_builder.build_record("PER-test", list(states.values()), 1, 1_700_000_000_000)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_everything_is_valid_fhir_with_provenance_for_every_item(seed):
    record = record_of_a_person(seed)
    bundle = fhir_read_api.everything(record, "https://carebus.example/fhir")
    Bundle.model_validate(bundle)
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    for entry in bundle["entry"]:
        get_fhir_model_class(entry["resource"]["resourceType"]).model_validate(entry["resource"])
    items = sum(len(record[s]) for s in record_builder.SECTIONS)
    assert kinds[0] == "Patient" and kinds.count("Provenance") == items
    assert len(kinds) == 1 + 2 * items
    assert {"Encounter", "Observation"} <= set(kinds)
    clinical = [e["resource"] for e in bundle["entry"][1:] if e["resource"]["resourceType"] != "Provenance"]
    assert all(r["meta"]["source"].startswith("urn:carebus:source:") for r in clinical)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_any_shared_record_the_contract_allows_becomes_valid_fhir(data):
    from schemas import registry
    from tests.avro_strategies import for_schema

    record = data.draw(for_schema(registry.current()["SharedRecord"].expanded))
    bundle = fhir_read_api.everything(record, "https://carebus.example/fhir")
    for entry in bundle["entry"][1:]:
        get_fhir_model_class(entry["resource"]["resourceType"]).model_validate(entry["resource"])


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["created", "updated"]))
def test_a_rest_hook_notification_carries_the_changed_resources_valid_fhir(seed, change_type):
    from consumers.notification_format import fhir_rest_hook_notification

    record = record_of_a_person(seed)
    changed = ["encounters"] if change_type == "updated" else list(record_builder.SECTIONS)
    change = {"event_id": "00000000-0000-0000-0000-000000000001", "person_id": "PER-test", "version": 1,
              "change_type": change_type, "changed_sections": changed, "changed_at": 1_700_000_000_000,
              "record": record}
    bundle = fhir_rest_hook_notification([change], "sub-1", 3)
    Bundle.model_validate(bundle)
    resources = [e["resource"] for e in bundle["entry"]]
    for r in resources:
        get_fhir_model_class(r["resourceType"]).model_validate(r)
    kinds = [r["resourceType"] for r in resources]
    assert kinds[:2] == ["Parameters", "Patient"]
    expected = sum(len(record[s]) for s in changed)
    assert kinds.count("Provenance") == expected and len(kinds) == 2 + 2 * expected
    if change_type == "updated":
        assert set(kinds[2:]) <= {"Encounter", "Provenance"}, "only the changed section rides along"
    assert all(e["request"]["method"] == "PUT" for e in bundle["entry"][1:])
