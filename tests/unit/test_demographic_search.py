"""The PDQm demographic search's pure part: minimum criteria, who is found, how they rank."""
from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings, strategies as st

from simulator import population as pop
from streams.demographic_search import Query, SearchCriteriaError, parse_query, rank
from streams.fellegi_sunter import Parameters
from streams.record_comparison import Demographics, from_patient

PARAMS = Parameters.load()
PEOPLE = [from_patient(pop.source_key(r), pop.patient_dict(r)) for r in pop.build(400, seed=11).records]


@pytest.mark.parametrize("args", [dict(family="SMITH"), dict(birthdate="1970-01-02"),
                                  dict(family="SMITH", birthdate="1970-01"), dict(family="X", birthdate="1970-01-02",
                                                                                   gender="unknown")])
def test_the_minimum_criteria_are_enforced(args):
    with pytest.raises(SearchCriteriaError):
        parse_query(**args)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([p for p in PEOPLE if p.birth_date and p.family and p.given]), st.booleans())
def test_a_person_asked_for_exactly_is_found_and_nothing_ranks_above_an_exact_match(person, with_given):
    query = Query(family=person.family, given=person.given if with_given else "", birth_date=person.birth_date)
    ranked = rank(query, PEOPLE, PARAMS)
    assert person.key in [k for k, _ in ranked]
    top = ranked[0][1]
    assert dict(ranked)[person.key] == top, "an exact match on every field asked for is never outranked"
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)


def test_a_typo_and_a_nickname_are_found_below_the_exact_record():
    born = date(1970, 1, 2)
    exact = Demographics("A", None, "WILLIAM", "HARRISON", born, "MALE", "NW12AB")
    typo = Demographics("B", None, "BILL", "HARISON", born, "MALE", "NW12AB")
    stranger = Demographics("C", None, "WILLIAM", "HARRISON", date(1971, 5, 9), "MALE", "NW12AB")
    ranked = rank(Query(family="Harrison", given="William", birth_date=born), [typo, stranger, exact], PARAMS)
    assert [k for k, _ in ranked] == ["A", "B"], "the other birth date is not the person asked for"
    assert ranked[0][1] >= ranked[1][1]
