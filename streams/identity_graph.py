"""The enterprise master patient index as a graph. Pure logic over a small storage interface.

Source records are nodes. An edge says "same person", for one of three reasons: the same valid
NHS number (deterministic), a Fellegi-Sunter posterior at or above the match threshold
(probabilistic), or a person said so (HL7 A40 merge, an accepted review). A person is a
connected component; its id is derived from its members, so the same records always make the
same person whatever order they arrived in. A rejected review or an unmerge forbids an edge.

Every time a record arrives or changes, all its pairs with current block-mates are decided
again from current demographics, so the final graph depends only on the final data. Callers
serialise updates (see identity_store.RedisGraphStore) so that holds with many workers too.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol

from streams import blocking
from streams.fellegi_sunter import Parameters
from streams.record_comparison import Demographics, compare, contradicts

FORCED = "forced"          # merge or accepted review: never removed by re-scoring
NHS = "nhs-number"
PROBABILISTIC = "probabilistic"


class GraphStore(Protocol):
    def demographics(self, key: str) -> Demographics | None: ...
    def put_demographics(self, d: Demographics, block_keys: set[str]) -> set[str]: ...  # returns old block keys
    def block_members(self, block_key: str) -> set[str]: ...
    def edges(self, key: str) -> dict[str, str]: ...           # neighbour -> kind
    def set_edge(self, a: str, b: str, kind: str) -> None: ...
    def remove_edge(self, a: str, b: str) -> None: ...
    def forbidden(self, a: str, b: str) -> bool: ...
    def forbid(self, a: str, b: str) -> None: ...
    def person_of(self, key: str) -> str | None: ...
    def set_person(self, keys: set[str], person_id: str) -> None: ...


@dataclass
class Decision:
    """What one update did, as facts for identity events."""
    key: str
    person_before: str | None
    person_after: str
    joined: dict[str, str] = field(default_factory=dict)          # neighbour -> method
    merged_persons: set[str] = field(default_factory=set)         # persons absorbed into person_after
    split_persons: dict[str, set[str]] = field(default_factory=dict)  # person -> keys now apart
    reviews: list[tuple[str, str, float]] = field(default_factory=list)   # (a, b, posterior)
    conflicts: list[tuple[str, str]] = field(default_factory=list)        # same NHS, contradicting demographics
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def affected_persons(self) -> set[str]:
        return {self.person_after} | self.merged_persons | set(self.split_persons) | (
            {self.person_before} if self.person_before else set())


def person_id_for(keys: set[str]) -> str:
    # Hash, so a person id never reveals a local identifier.
    return "PER-" + min(hashlib.sha256(k.encode()).hexdigest()[:20] for k in keys)


def pair_decision(a: Demographics, b: Demographics, params: Parameters) -> tuple[str, str | None, float]:
    """(outcome, edge kind, posterior): outcome is match / review / conflict / non-match."""
    if a.nhs and b.nhs:
        if a.nhs != b.nhs:
            return "non-match", None, 0.0
        if contradicts(a, b):
            return "conflict", None, 0.5
        return "match", NHS, 1.0
    vector = compare(a, b)
    posterior = params.posterior(vector)
    outcome = params.decision(vector)
    return outcome, (PROBABILISTIC if outcome == "match" else None), posterior


def component(store: GraphStore, start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for n in store.edges(todo.pop()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def _relabel(store: GraphStore, keys: set[str]) -> str:
    person = person_id_for(keys)
    store.set_person(keys, person)
    return person


def upsert(store: GraphStore, d: Demographics, params: Parameters) -> Decision:
    """Add or update one source record and re-decide all its pairs."""
    before_component = component(store, d.key) if store.demographics(d.key) else {d.key}
    person_before = store.person_of(d.key)
    old_persons = {k: store.person_of(k) for k in before_component}
    store.put_demographics(d, blocking.keys(d))
    candidates: set[str] = set()
    for bk in blocking.keys(d):
        candidates |= store.block_members(bk)
    candidates.discard(d.key)
    decision = Decision(d.key, person_before, "")
    # Re-decide every scored edge from scratch (forced edges stay).
    for n, kind in list(store.edges(d.key).items()):
        if kind != FORCED:
            store.remove_edge(d.key, n)
    for c in sorted(candidates):
        other = store.demographics(c)
        if other is None or store.forbidden(d.key, c):
            continue
        outcome, kind, posterior = pair_decision(d, other, params)
        decision.scores[c] = posterior
        if outcome == "match" and kind:
            store.set_edge(d.key, c, kind)
        elif outcome == "review":
            decision.reviews.append((d.key, c, posterior))
        elif outcome == "conflict":
            decision.conflicts.append((d.key, c))
    return _settle(store, decision, before_component, old_persons)


def _settle(store: GraphStore, decision: Decision, before: set[str], old_persons: dict[str, str | None]) -> Decision:
    after = component(store, decision.key)
    for k in after - before:
        old_persons.setdefault(k, store.person_of(k))
    decision.person_after = _relabel(store, after)
    for k in after:
        old = old_persons.get(k)
        if old and old != decision.person_after:
            decision.merged_persons.add(old)
        if k != decision.key and k in (store.edges(decision.key)) and old != decision.person_after:
            decision.joined[k] = store.edges(decision.key)[k]
    # Records that were with us before and no longer are: their own component gets its own id.
    left = before - after
    while left:
        start = left.pop()
        comp = component(store, start)
        left -= comp
        new_person = _relabel(store, comp)
        decision.split_persons.setdefault(new_person, set()).update(comp)
    return decision


def force_link(store: GraphStore, a: str, b: str) -> Decision:
    """A40 merge or accepted review: a and b are the same person."""
    before = component(store, a) | component(store, b)
    old = {k: store.person_of(k) for k in before}
    store.set_edge(a, b, FORCED)
    decision = Decision(a, store.person_of(a), "")
    decision.joined[b] = FORCED
    return _settle(store, decision, before, old)


def forbid_link(store: GraphStore, a: str, b: str) -> Decision:
    """Rejected review or unmerge: a and b are different people, whatever the scores say."""
    before = component(store, a)
    old = {k: store.person_of(k) for k in before}
    store.forbid(a, b)
    store.remove_edge(a, b)
    decision = Decision(a, store.person_of(a), "")
    return _settle(store, decision, before, old)


class MemoryGraphStore:
    """Dict-backed store: for pure tests and for the batch linkage baseline."""

    def __init__(self) -> None:
        self._demo: dict[str, Demographics] = {}
        self._blocks_of: dict[str, set[str]] = {}
        self._blocks: dict[str, set[str]] = {}
        self._edges: dict[str, dict[str, str]] = {}
        self._forbidden: set[frozenset[str]] = set()
        self._person: dict[str, str] = {}

    def demographics(self, key: str) -> Demographics | None:
        return self._demo.get(key)

    def put_demographics(self, d: Demographics, block_keys: set[str]) -> set[str]:
        old = self._blocks_of.get(d.key, set())
        for bk in old - block_keys:
            self._blocks[bk].discard(d.key)
        for bk in block_keys:
            self._blocks.setdefault(bk, set()).add(d.key)
        self._blocks_of[d.key] = set(block_keys)
        self._demo[d.key] = d
        return old

    def block_members(self, block_key: str) -> set[str]:
        return set(self._blocks.get(block_key, ()))

    def edges(self, key: str) -> dict[str, str]:
        return dict(self._edges.get(key, {}))

    def set_edge(self, a: str, b: str, kind: str) -> None:
        self._edges.setdefault(a, {})[b] = kind
        self._edges.setdefault(b, {})[a] = kind

    def remove_edge(self, a: str, b: str) -> None:
        self._edges.get(a, {}).pop(b, None)
        self._edges.get(b, {}).pop(a, None)

    def forbidden(self, a: str, b: str) -> bool:
        return frozenset((a, b)) in self._forbidden

    def forbid(self, a: str, b: str) -> None:
        self._forbidden.add(frozenset((a, b)))

    def person_of(self, key: str) -> str | None:
        return self._person.get(key)

    def set_person(self, keys: set[str], person_id: str) -> None:
        for k in keys:
            self._person[k] = person_id

    def persons(self) -> dict[str, str]:
        return dict(self._person)
