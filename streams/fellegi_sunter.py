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
from dataclasses import asdict, dataclass
from pathlib import Path

from streams.record_comparison import FIELDS, LEVELS

DEFAULT_PARAMETERS = Path(__file__).with_name("linkage_parameters.json")
EPS = 1e-6


@dataclass(frozen=True)
class Parameters:
    m: dict[str, list[float]]
    u: dict[str, list[float]]
    prevalence: float
    match_posterior: float = 0.97   # at or above: link automatically
    review_posterior: float = 0.50  # at or above (and below match): ask a person

    def weight(self, field: str, level: int) -> float:
        return math.log2(max(self.m[field][level], EPS) / max(self.u[field][level], EPS))

    def score(self, vector: dict[str, int | None]) -> float:
        return sum(self.weight(f, lvl) for f, lvl in vector.items() if lvl is not None and f in self.m)

    def posterior(self, vector: dict[str, int | None]) -> float:
        prior_odds = self.prevalence / (1 - self.prevalence)
        log_odds = math.log2(prior_odds) + self.score(vector)
        if log_odds > 60:
            return 1.0
        odds = 2 ** log_odds
        return odds / (1 + odds)

    def decision(self, vector: dict[str, int | None]) -> str:
        p = self.posterior(vector)
        if p >= self.match_posterior:
            return "match"
        if p >= self.review_posterior:
            return "review"
        return "non-match"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Parameters":
        return cls(**json.loads(text))

    @classmethod
    def load(cls, path: Path = DEFAULT_PARAMETERS) -> "Parameters":
        return cls.from_json(path.read_text())


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
