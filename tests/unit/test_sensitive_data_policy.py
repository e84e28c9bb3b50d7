"""Withheld categories: each category's items are removed, whichever terminology codes them
(SNOMED exactly; ICD-10 and Read v2 by prefix, dotted or not) and whichever coded field holds it."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from consumers import sensitive_data_policy
from consumers.sensitive_data_policy import SNOMED, parse

POLICY = sensitive_data_policy.current()
ICD10 = "http://hl7.org/fhir/sid/icd-10"
READ = "http://read.info/readv2"
ALL = frozenset(POLICY.categories)


@pytest.mark.parametrize("category, system, code", [
    ("sexual-health", SNOMED, "86406008"),          # HIV infection
    ("sexual-health", ICD10, "B20.1"),              # HIV disease resulting in bacterial infections
    ("sexual-health", ICD10, "A540"),               # gonococcal infection, undotted
    ("sexual-health", READ, "43C3."),               # HIV positive
    ("ivf", SNOMED, "52637005"),                    # in vitro fertilisation
    ("ivf", ICD10, "Z31.2"),                        # in vitro fertilisation
    ("termination-of-pregnancy", SNOMED, "386639001"),
    ("termination-of-pregnancy", ICD10, "O04.9"),   # medical abortion
    ("gender-reassignment", SNOMED, "93461009"),    # gender dysphoria
    ("gender-reassignment", ICD10, "F64.0"),
])
def test_each_category_is_withheld_only_from_clients_that_withhold_it(category, system, code):
    coded = {"system": system, "code": code, "display": None}
    for field in ("code", "substance", "service", "type", "service_type"):
        item = {"id": "i", field: coded}
        assert POLICY.withheld(item, frozenset({category}))
        assert not POLICY.withheld(item, ALL - {category}), "another category's list does not cover it"
        assert not POLICY.withheld(item, frozenset())


@pytest.mark.parametrize("system, code", [(SNOMED, "195967001"), (ICD10, "J45"), (ICD10, "B2"), (READ, "H33.."),
                                          ("urn:carebus:local", "B20"), (SNOMED, "")])
def test_ordinary_or_unknown_codes_are_kept(system, code):
    assert not POLICY.withheld({"code": {"system": system, "code": code}}, ALL)


@given(st.sampled_from(["B20", "B21", "B22", "B23", "B24", "A50", "A64", "Z21"]), st.text("0123456789.", max_size=4))
def test_an_icd10_prefix_covers_everything_below_it(prefix, rest):
    assert POLICY.withheld({"code": {"system": ICD10, "code": prefix + rest}}, frozenset({"sexual-health"}))


def test_a_deployment_can_load_its_own_expanded_lists(tmp_path, monkeypatch):
    own = tmp_path / "sets.json"
    own.write_text('{"version": "trud-2026-10", "categories": {"sexual-health": {"http://snomed.info/sct": ["1234567"]}}}')
    monkeypatch.setenv("CAREBUS_SENSITIVE_VALUE_SETS", str(own))
    policy = sensitive_data_policy.current()
    assert policy.version == "trud-2026-10"
    assert policy.withheld({"code": {"system": SNOMED, "code": "1234567"}}, frozenset({"sexual-health"}))
    assert parse({"version": "x", "categories": {}}).withheld({"code": {"system": SNOMED, "code": "86406008"}}, ALL) is False


@pytest.mark.parametrize("category, system, code", [
    ("sexual-health", ICD10, "B20.1"), ("sexual-health", READ, "43C3."), ("ivf", ICD10, "Z31.2"),
    ("termination-of-pregnancy", SNOMED, "386639001"), ("gender-reassignment", ICD10, "F64.0")])
def test_every_coding_of_an_item_is_read_not_only_the_first(category, system, code):
    """A local or ordinary first code hides nothing: the second coding is in the category."""
    coded = {"system": "urn:carebus:local", "code": "X1", "display": None,
             "other_codings": [{"system": SNOMED, "code": "195967001", "display": None},
                               {"system": system, "code": code, "display": None}]}
    assert POLICY.withheld({"id": "i", "code": coded}, frozenset({category}))
    assert not POLICY.withheld({"id": "i", "code": {**coded, "other_codings": coded["other_codings"][:1]}}, ALL)


@pytest.mark.parametrize("service", [{"system": SNOMED, "code": "394808002"},      # genito-urinary medicine
                                     {"system": "http://terminology.hl7.org/CodeSystem/v2-0069", "code": "GUM"}])
def test_an_encounter_at_a_sexual_health_clinic_is_withheld(service):
    visit = {"id": "v", "encounter_class": "outpatient", "service_type": {**service, "display": None}}
    assert POLICY.withheld(visit, frozenset({"sexual-health"}))
    assert not POLICY.withheld({**visit, "service_type": {"system": SNOMED, "code": "394802001"}}, ALL)
    assert not POLICY.withheld({**visit, "service_type": None}, ALL)
