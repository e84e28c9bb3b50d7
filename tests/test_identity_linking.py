"""EMPI logic, pure: scoring, EM, blocking, order independence, merges and unmerges."""
from __future__ import annotations

import random
from dataclasses import replace
from datetime import date, timedelta

from hypothesis import given, settings, strategies as st

from simulator import population as pop
from streams import blocking
from streams.fellegi_sunter import Parameters, estimate, starting_point
from streams.identity_graph import MemoryGraphStore, forbid_link, force_link, upsert
from streams.linkage_quality import pairwise_quality
from streams.record_comparison import Demographics, compare, from_patient

PARAMS = Parameters.load()
POPULATION = pop.build(400, seed=21, hospital_rate=0.6, mental_health_rate=0.3,
                       rates=pop.FaultRates(0.15, 0.05, 0.15, 0.05, 0.05, 0.2, 0.05))


def demo(rec) -> Demographics:
    return from_patient(pop.source_key(rec), pop.patient_dict(rec))


def link_all(records) -> dict[str, str]:
    store = MemoryGraphStore()
    for r in records:
        upsert(store, demo(r), PARAMS)
    return store.persons()


def groups(persons: dict[str, str]) -> set[frozenset[str]]:
    out: dict[str, set[str]] = {}
    for k, p in persons.items():
        out.setdefault(p, set()).add(k)
    return {frozenset(v) for v in out.values()}


@settings(max_examples=15, deadline=None)
@given(st.randoms(use_true_random=False))
def test_links_do_not_depend_on_arrival_order(rnd):
    records = list(POPULATION.records)
    baseline = link_all(records)
    rnd.shuffle(records)
    shuffled = link_all(records)
    assert groups(shuffled) == groups(baseline)
    # Person ids are derived from members, so they agree too.
    assert shuffled == baseline


def test_quality_on_a_faulty_population_is_high():
    truth = {pop.source_key(r): r.person_id for r in POPULATION.records}
    q = pairwise_quality(link_all(POPULATION.records), truth)
    assert q.precision > 0.97 and q.recall > 0.9, q


people = st.builds(lambda seed: pop.build(1, seed=seed).people[0], st.integers(0, 10**6))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_comparison_is_symmetric(s1, s2):
    a, b = pop.build(1, seed=s1).records[0], pop.build(1, seed=s2).records[0]
    assert compare(demo(a), demo(b)) == compare(demo(b), demo(a))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from(["nickname", "swapped", "double", "dob", "moved", "no_nhs"]))
def test_one_fault_still_shares_a_block_and_still_matches(seed, fault):
    rec = pop.build(1, seed=seed).records[0]
    rng = random.Random(seed)
    changed = {
        "nickname": lambda r: replace(r, given=pop.NICKNAMES.get(r.given, r.given)),
        "swapped": lambda r: replace(r, given=r.family, family=r.given),
        "double": lambda r: replace(r, family=f"{r.family}-{rng.choice(pop.FAMILY)}"),
        "dob": lambda r: replace(r, birth_date=r.birth_date + timedelta(days=1)),
        "moved": lambda r: replace(r, postcode="ZZ9 9ZZ", house=1),
        "no_nhs": lambda r: replace(r, nhs_number=None),
    }[fault](replace(rec, nhs_number=None) if fault != "no_nhs" else rec)
    other = replace(changed, local_id="OTHER", system="CERNER_MILLENNIUM", ods="RAL")
    a, b = demo(replace(rec, nhs_number=None)), demo(other)
    assert blocking.keys(a) & blocking.keys(b), "the true match must share a block"
    assert PARAMS.posterior(compare(a, b)) >= PARAMS.review_posterior


def test_same_nhs_number_links_and_contradiction_goes_to_review():
    r = POPULATION.records[0]
    store = MemoryGraphStore()
    upsert(store, demo(r), PARAMS)
    twin = replace(r, local_id="X1", system="RIO", ods="RAT")
    d = upsert(store, demo(twin), PARAMS)
    assert d.person_after == store.person_of(pop.source_key(r)) and d.joined
    stranger = replace(r, local_id="X2", system="RIO", ods="RAT", given="Zebedee", family="Quux",
                       birth_date=date(1901, 1, 1))
    d2 = upsert(store, demo(stranger), PARAMS)
    assert d2.conflicts and d2.person_after != d.person_after


def test_merge_then_unmerge_restores_the_people():
    a = replace(POPULATION.records[0], nhs_number=None)
    b = replace(POPULATION.records[5], nhs_number=None)
    store = MemoryGraphStore()
    upsert(store, demo(a), PARAMS)
    upsert(store, demo(b), PARAMS)
    ka, kb = pop.source_key(a), pop.source_key(b)
    before = (store.person_of(ka), store.person_of(kb))
    assert before[0] != before[1]
    merged = force_link(store, ka, kb)
    assert store.person_of(ka) == store.person_of(kb) and merged.merged_persons
    split = forbid_link(store, ka, kb)
    assert (store.person_of(ka), store.person_of(kb)) == before and split.split_persons


def test_em_recovers_parameters_from_unlabelled_pairs():
    rng = random.Random(5)
    true_m, true_u = 0.95, 0.1
    vectors = []
    for _ in range(20000):
        match = rng.random() < 0.2
        vectors.append({f: int(rng.random() < (true_m if match else true_u)) for f in ("sex", "nhs")}
                       | {"given": (3 if rng.random() < (true_m if match else true_u) else 0)})
    fitted = estimate(vectors, start=starting_point())
    assert abs(fitted.prevalence - 0.2) < 0.05
    assert abs(fitted.m["sex"][1] - true_m) < 0.05 and abs(fitted.u["sex"][1] - true_u) < 0.05
