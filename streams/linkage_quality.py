"""Precision, recall and F1 of links against the simulator's ground truth. Pure."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations


@dataclass(frozen=True)
class Quality:
    precision: float
    recall: float
    f1: float
    true_pairs: int
    predicted_pairs: int


def _pairs(groups: dict[str, set[str]]) -> set[frozenset[str]]:
    return {frozenset(p) for members in groups.values() for p in combinations(sorted(members), 2)}


def pairwise_quality(predicted: dict[str, str], truth: dict[str, str]) -> Quality:
    """predicted/truth: source key -> person id (ids need not agree, only the grouping)."""
    keys = set(predicted) & set(truth)
    pg: dict[str, set[str]] = {}
    tg: dict[str, set[str]] = {}
    for k in keys:
        pg.setdefault(predicted[k], set()).add(k)
        tg.setdefault(truth[k], set()).add(k)
    p, t = _pairs(pg), _pairs(tg)
    tp = len(p & t)
    precision = tp / len(p) if p else 1.0
    recall = tp / len(t) if t else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Quality(precision, recall, f1, len(t), len(p))
