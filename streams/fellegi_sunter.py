"""Fellegi-Sunter match scoring with m/u probabilities estimated from the data by EM. Pure.

m[f][level] = P(level | same person), u[f][level] = P(level | different people). A pair's score
is the sum of log2(m/u) over the fields both records have; missing fields give no evidence.
`estimate` fits m, u and the match prevalence to unlabelled candidate pairs with the
expectation-maximisation algorithm (conditional independence between fields), so nothing
about London's data is hard-coded beyond the starting point.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path

from streams.record_comparison import EXACT, FIELDS, LEVEL_NAMES, LEVELS

TF_FIELDS = ("given", "family")

DEFAULT_PARAMETERS = Path(__file__).with_name("linkage_parameters.json")
EPS = 1e-6


@dataclass(frozen=True)
class Parameters:
    m: dict[str, list[float]]
    u: dict[str, list[float]]
    prevalence: float
    # Set on FEBRL 1, 2 and 4 and the London model (bench.linkage_quality): 0.8 gave the best F1 on
    # each; the household and sparse-record rules (identity_graph.pair_decision) keep precision.
    match_posterior: float = 0.80   # at or above: link automatically
    review_posterior: float = 0.50  # at or above (and below match): ask a person
    # Term frequencies of names (share of records with the value): agreeing on a rare surname is
    # stronger evidence than agreeing on SMITH. Values not listed count as tf_floor.
    tf: dict[str, dict[str, float]] = field(default_factory=dict)
    tf_floor: float = 1e-4

    def weight(self, field: str, level: int, value: str | None = None) -> float:
        m = max(self.m[field][level], EPS)
        if value and level == EXACT[field] and field in self.tf:
            # Splink's adjustment: u of an exact match on this value is the value's frequency.
            return math.log2(m / max(self.tf[field].get(value, self.tf_floor), self.tf_floor))
        return math.log2(m / max(self.u[field][level], EPS))

    @cached_property
    def level_weights(self) -> dict[str, tuple[float, ...]]:
        """weight() of each field's levels without a term-frequency adjustment (the hot path's table)."""
        return {f: tuple(self.weight(f, lvl) for lvl in range(len(self.m[f]))) for f in self.m}

    @cached_property
    def _tf_weights(self) -> dict[str, dict[str, float]]:
        return {f: {} for f in self.tf}

    @cached_property
    def below_exact(self) -> dict[str, float]:
        """Each field's highest weight short of exact agreement: the most two names that differ can
        add (identity_graph.beneath_review)."""
        return {f: max(w[:EXACT[f]]) for f, w in self.level_weights.items()}

    @cached_property
    def highest(self) -> dict[str, float]:
        """Each field's highest weight, or 0 (a missing field) when every level weighs against."""
        return {f: max(0.0, *w) for f, w in self.level_weights.items()}

    def exact_weight(self, field: str, value: str) -> float:
        """The weight of agreeing exactly on this value (term-frequency adjusted where that applies)."""
        cache = self._tf_weights.get(field)
        weight = cache.get(value) if cache is not None else None
        return weight if weight is not None else self.score({field: EXACT[field]}, {field: value})

    @cached_property
    def review_score(self) -> float:
        """The least score (evidence, without the prior) of a pair in the review band or above."""
        r = self.review_posterior
        if r <= 0:
            return -math.inf
        if r >= 1:
            return math.inf
        return math.log2(r / (1 - r)) - math.log2(self.prevalence / (1 - self.prevalence))

    def score(self, vector: dict[str, int | None], values: dict[str, str] | None = None) -> float:
        # The hot path of linking (once per candidate pair): weights come from tables computed
        # once per parameter set; equal to summing weight() over the fields.
        weights, tf_weights, total = self.level_weights, self._tf_weights, 0.0
        for f, lvl in vector.items():
            if lvl is None or f not in weights:
                continue
            value = values.get(f) if values else None
            if value and f in tf_weights and lvl == EXACT[f]:
                cache = tf_weights[f]
                w = cache.get(value)
                if w is None:
                    if len(cache) > 200_000:
                        cache.clear()
                    w = cache[value] = self.weight(f, lvl, value)
                total += w
            else:
                total += weights[f][lvl]
        return total

    def log_odds(self, vector: dict[str, int | None], values: dict[str, str] | None = None) -> float:
        """log2 of the odds that the pair is one person (prior and evidence): the match weight."""
        return math.log2(self.prevalence / (1 - self.prevalence)) + self.score(vector, values)

    def posterior(self, vector: dict[str, int | None], values: dict[str, str] | None = None) -> float:
        return self.posterior_of(self.log_odds(vector, values))

    @staticmethod
    def posterior_of(log_odds: float) -> float:
        if log_odds > 60:
            return 1.0
        odds = 2 ** log_odds
        return odds / (1 + odds)

    def decision(self, vector: dict[str, int | None], values: dict[str, str] | None = None) -> str:
        p = self.posterior(vector, values)
        if p >= self.match_posterior:
            return "match"
        if p >= self.review_posterior:
            return "review"
        return "non-match"

    def non_monotone(self) -> list[tuple[str, int]]:
        """(field, level) whose weight is below the level beneath it: more agreement, less evidence."""
        return [(f, lvl) for f in self.m for lvl in range(1, len(self.m[f]))
                if self.weight(f, lvl) < self.weight(f, lvl - 1) - 1e-9]

    def report(self) -> list[tuple[str, str, float, float, float]]:
        """(field, level name, m, u, weight in bits) for every level: what each comparison is worth."""
        return [(f, LEVEL_NAMES[f][lvl], self.m[f][lvl], self.u[f][lvl], self.weight(f, lvl))
                for f in self.m for lvl in range(len(self.m[f]))]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Parameters":
        raw = json.loads(text)
        for f, n in LEVELS.items():
            if f in raw["m"] and len(raw["m"][f]) != n:
                raise ValueError(f"parameters for {f} have {len(raw['m'][f])} levels, the comparison has {n}: "
                                 "fit them again with `carebus estimate-linkage`")
        return cls(**raw)

    @classmethod
    def load(cls, path: Path = DEFAULT_PARAMETERS) -> "Parameters":
        return cls.from_json(path.read_text())


def monotone(params: Parameters) -> Parameters:
    """Pool adjacent levels whose weights decrease (pool-adjacent-violators on m/u), keeping each
    field's m summing to one, so that more agreement never counts as less evidence."""
    new_m = {}
    for f in params.m:
        m, u = params.m[f], params.u[f]
        blocks = [[i] for i in range(len(m))]
        ratio = lambda b: sum(m[i] for i in b) / max(sum(u[i] for i in b), EPS)  # noqa: E731
        merged = True
        while merged:
            merged = False
            for j in range(1, len(blocks)):
                if ratio(blocks[j]) < ratio(blocks[j - 1]):
                    blocks[j - 1:j + 1] = [blocks[j - 1] + blocks[j]]
                    merged = True
                    break
        out = list(m)
        for b in blocks:
            r = ratio(b)
            for i in b:
                out[i] = u[i] * r
        new_m[f] = out
    return replace(params, m=new_m)


def term_frequencies(values_by_field: dict[str, list[str]], keep: int = 20_000) -> tuple[dict[str, dict[str, float]], float]:
    """Share of records per name (the `keep` commonest), and the floor for the rest."""
    tf: dict[str, dict[str, float]] = {}
    floor = 1.0
    for f, values in values_by_field.items():
        values = [v for v in values if v]
        if not values:
            continue
        counts: dict[str, int] = {}
        for v in values:
            counts[v] = counts.get(v, 0) + 1
        common = sorted(counts.items(), key=lambda kv: -kv[1])[:keep]
        tf[f] = {v: n / len(values) for v, n in common}
        floor = min(floor, 1 / len(values))
    return tf, floor


def starting_point() -> Parameters:
    """Deliberately vague priors: agreement likelier among matches, that is all EM is told."""
    m, u = {}, {}
    for f in FIELDS:
        n = LEVELS[f]
        m[f] = [0.05 + 0.9 * (i / (n - 1)) ** 2 for i in range(n)]
        u[f] = [0.05 + 0.9 * ((n - 1 - i) / (n - 1)) ** 2 for i in range(n)]
        m[f] = [x / sum(m[f]) for x in m[f]]
        u[f] = [x / sum(u[f]) for x in u[f]]
    return Parameters(m, u, 0.1)


def u_from_random_pairs(vectors: list[dict[str, int | None]], start: Parameters | None = None
                        ) -> dict[str, list[float]]:
    """u straight from random pairs, which are almost all non-matches (as Splink estimates u).

    Blocked pairs are no sample of non-matches: they agree on the blocked fields by construction,
    so an EM fit of u on them makes agreement look common among strangers.
    """
    base = start or starting_point()
    u = {}
    for f in FIELDS:
        counts = [1.0] * LEVELS[f]        # add-one: a level never seen is rare, not impossible
        for vec in vectors:
            lvl = vec.get(f)
            if lvl is not None:
                counts[lvl] += 1
        u[f] = [c / sum(counts) for c in counts] if sum(counts) > LEVELS[f] else list(base.u[f])
    return u


def estimate(vectors: list[dict[str, int | None]], iterations: int = 60, start: Parameters | None = None,
             tolerance: float = 1e-7, fixed_u: dict[str, list[float]] | None = None) -> Parameters:
    """EM over unlabelled comparison vectors; with `fixed_u`, only m and the prevalence are fitted."""
    params = start or starting_point()
    if not vectors:
        return params
    m = {f: list(v) for f, v in params.m.items()}
    u = {f: list(v) for f, v in (fixed_u or params.u).items()}
    p = params.prevalence
    # Pairs share a handful of distinct patterns: iterate over patterns weighted by count.
    patterns: dict[tuple, int] = {}
    for vec in vectors:
        key = tuple(sorted(vec.items()))
        patterns[key] = patterns.get(key, 0) + 1
    weighted = [(dict(k), n) for k, n in patterns.items()]
    for _ in range(iterations):
        m_counts = {f: [EPS] * LEVELS[f] for f in FIELDS}
        u_counts = {f: [EPS] * LEVELS[f] for f in FIELDS}
        total_g = 0.0
        for vec, count in weighted:
            lm, lu = math.log(p), math.log(1 - p)
            for f, lvl in vec.items():
                if lvl is None:
                    continue
                lm += math.log(max(m[f][lvl], EPS))
                lu += math.log(max(u[f][lvl], EPS))
            g = 1 / (1 + math.exp(min(700, lu - lm)))
            total_g += g * count
            for f, lvl in vec.items():
                if lvl is None:
                    continue
                m_counts[f][lvl] += g * count
                u_counts[f][lvl] += (1 - g) * count
        new_p = min(max(total_g / len(vectors), 1e-4), 1 - 1e-4)
        new_m = {f: [c / sum(cs) for c in cs] for f, cs in m_counts.items()}
        new_u = u if fixed_u else {f: [c / sum(cs) for c in cs] for f, cs in u_counts.items()}
        delta = abs(new_p - p) + sum(abs(a - b) for f in FIELDS for a, b in zip(new_m[f], m[f]))
        m, u, p = new_m, new_u, new_p
        if delta < tolerance:
            break
    return Parameters(m, u, p, params.match_posterior, params.review_posterior)
