"""Estimating the linkage parameters from data (EM over blocked candidate pairs). Pure.

`carebus estimate-linkage` runs this over the demographics on the source-events topic and
writes streams/linkage_parameters.json (or CAREBUS_LINKAGE_PARAMETERS); the workers load that
file at start, so every worker scores with the same parameters.
"""
from __future__ import annotations

import random
from dataclasses import replace

from streams import blocking
from streams.fellegi_sunter import Parameters, estimate, monotone, term_frequencies, u_from_random_pairs
from streams.record_comparison import Demographics, compare


def candidate_pairs(records: list[Demographics], max_block: int = 200) -> list[tuple[Demographics, Demographics]]:
    blocks: dict[str, list[Demographics]] = {}
    for d in records:
        for k in blocking.keys(d):
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
    fitted = estimate([_vector(a, b) for a, b in pairs], fixed_u=u_from_random_pairs(randoms))
    # EM's prevalence is among blocked pairs, which are mostly matches by construction. The prior
    # a pair must overcome is that two records taken at random are one person (Splink's
    # "probability two random records match"): the expected matches over all pairs.
    all_pairs = len(records) * (len(records) - 1) / 2
    matches = fitted.prevalence * blocked
    tf, floor = term_frequencies({"given": [d.given for d in records], "family": [d.family for d in records]})
    return monotone(replace(fitted, prevalence=min(max(matches / all_pairs, 1e-9), 0.5) if all_pairs else fitted.prevalence,
                            tf=tf, tf_floor=floor))
