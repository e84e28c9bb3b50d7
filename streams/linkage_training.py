"""Estimating the linkage parameters from data, the way Splink does. Pure.

  u   from random pairs (almost all non-matches), never from blocked pairs;
  m   by EM with u fixed, once per comparison, on pairs from blocking keys that do not use that
      comparison's field (pairs blocked on a birth date all agree on it, which says nothing
      about how often true matches do);
  prior  the expected matches over all pairs, not over blocked pairs;
then name term frequencies, and weights made to rise with agreement.

`carebus estimate-linkage` runs this over the demographics on the source-events topic and
writes <data dir>/linkage_parameters.json; link workers load it when they start.
"""
from __future__ import annotations

import random
from dataclasses import replace

from streams import blocking
from streams.fellegi_sunter import Parameters, estimate, monotone, term_frequencies, u_from_random_pairs
from streams.record_comparison import Demographics, compare


# Blocking keys (streams/blocking.py prefixes) that do not involve each scored field.
KEYS_WITHOUT = {
    "given": ("fd", "dp", "fp"),
    "family": ("gd", "dp", "gp"),
    "birth_date": ("nsp", "nsd", "fp", "gp"),
    "postcode": ("fd", "gd", "fgy", "fgm", "ns"),
    "sex": ("fd", "gd", "fgy", "fgm", "dp", "ns", "nsp", "nsd", "fp", "gp"),
}


def candidate_pairs(records: list[Demographics], max_block: int = 200, prefixes: tuple[str, ...] | None = None
                    ) -> list[tuple[Demographics, Demographics]]:
    """Pairs sharing a blocking key (only keys with these prefixes, if given)."""
    blocks: dict[str, list[Demographics]] = {}
    for d in records:
        for k in blocking.keys(d):
            if prefixes is None or k.split(":", 1)[0] in prefixes:
                blocks.setdefault(k, []).append(d)
    seen: set[tuple[str, str]] = set()
    pairs = []
    for members in blocks.values():
        if len(members) > max_block:
            continue  # a key this common carries no information
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                pair = (a.key, b.key) if a.key < b.key else (b.key, a.key)
                if a.key != b.key and pair not in seen:
                    seen.add(pair)
                    pairs.append((a, b))
    return pairs


def _vector(a: Demographics, b: Demographics) -> dict[str, int | None]:
    # NHS number agreement is decided by rule, not scored; leave it out of the fitted evidence.
    return {k: v for k, v in compare(a, b).items() if k != "nhs"}


def estimate_from(records: list[Demographics], sample: int = 200_000, seed: int = 1) -> Parameters:
    rng = random.Random(seed)
    pairs = candidate_pairs(records)
    blocked = len(pairs)
    if len(pairs) > sample:
        pairs = rng.sample(pairs, sample)
    randoms = [_vector(*rng.sample(records, 2)) for _ in range(min(sample, 50 * len(records)))] \
        if len(records) > 1 else []
    u = u_from_random_pairs(randoms)
    fitted = estimate([_vector(a, b) for a, b in pairs], fixed_u=u)
    m = dict(fitted.m)
    for f, prefixes in KEYS_WITHOUT.items():
        own = candidate_pairs(records, prefixes=prefixes)
        if len(own) > sample:
            own = rng.sample(own, sample)
        if own:
            m[f] = estimate([_vector(a, b) for a, b in own], fixed_u=u, start=fitted).m[f]
    fitted = replace(fitted, m=m)
    # EM's prevalence is among blocked pairs, which are mostly matches by construction. The prior
    # a pair must overcome is that two records taken at random are one person (Splink's
    # "probability two random records match"): the expected matches over all pairs.
    all_pairs = len(records) * (len(records) - 1) / 2
    matches = fitted.prevalence * blocked
    tf, floor = term_frequencies({"given": [d.given for d in records], "family": [d.family for d in records]})
    return monotone(replace(fitted, prevalence=min(max(matches / all_pairs, 1e-9), 0.5) if all_pairs else fitted.prevalence,
                            tf=tf, tf_floor=floor))
