"""The enterprise master patient index as a graph. Pure logic over a small storage interface.

Source records are nodes. An edge says "same person", for one of three reasons: the same valid
NHS number (deterministic), a Fellegi-Sunter posterior at or above the match threshold
(probabilistic), or a person said so (HL7 A40 merge, an accepted review). A person is a
connected component; its id is derived from its members, so the same records always make the
same person whatever order they arrived in. A rejected review or an unmerge forbids an edge.

A chain of good links can join records that cannot be one person (A-B and B-C match, A and C
have different valid NHS numbers), so a person is not simply a component: `cluster_people`
joins a component's records link by link, strongest first, and refuses a link that would put
two records that `cannot_join` into one person; a person reviews each refused link. Only links
a person made (merges, accepted reviews) join whatever the rule says. Softer contradictions
inside a person (given name and birth date both different) are queued for review, not refused:
on public data refusing them cost recall and gained no precision (README, Linkage quality).

Linking works on batches and needs no lock, so many workers can link at once:

1. `ingest` writes a batch's demographics and block memberships and returns, atomically, each
   record's version and its current block-mates (the candidates). Of any two records that
   share a block, whichever was ingested later sees the other.
2. The pairs are scored here, in memory, without I/O (`decide`).
3. `apply` writes the decisions atomically, but only those made on current data: a pair is
   written only if neither record's version has moved since it was read, and an edge scored
   against an older version of a record is dropped when that record is re-decided. A decision
   skipped because the other record changed is made again by whoever changed it, who saw ours.
   The same call relabels every component it touched.
So the final edges depend only on the final demographics (and forced or forbidden pairs), not
on arrival order or the number of workers. `MemoryGraphStore` is the reference implementation
of the two calls; `identity_store.RedisGraphStore` does the same in Redis scripts.
"""
from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from streams import blocking
from streams.fellegi_sunter import Parameters
from streams.record_comparison import (BIRTH_DATE, FAMILY, GIVEN, Demographics, birth_date_level, compare, contradicts,
                                       postcode_level, sex_level)

FORCED = "forced"          # merge or accepted review: never removed by re-scoring
NHS = "nhs-number"
PROBABILISTIC = "probabilistic"
# A block with more members than this carries no information (a placeholder name or date);
# it is skipped, so a record meets tens of candidates, never the population.
BLOCK_CAP = 200
# A probabilistic link needs at least this many of these fields present on both records.
EVIDENCE_FIELDS = ("given", "family", "birth_date", "postcode")
MIN_FIELDS_TO_LINK = 3
# An NHS-number edge's weight (centibits): above any probabilistic link's.
NHS_WEIGHT = 10_000_000
# What kind of run applied a batch of moves: the first character of its token (`run_token`). A
# run takes over the moves another run kept (link_batch) only if it is of the same kind: only a
# link worker replays a link worker's batch, only a relink finishes a relink.
LINK_WORKER_RUN, RELINK_RUN = "w", "r"


def run_token(kind: str) -> str:
    """A new name for one run of a batch, in what the index keeps of its moves until published."""
    return kind + uuid.uuid4().hex


def run_kind(token: str) -> str:
    """The kind of run a token names. A token from before kinds (bare hex, where neither kind's
    letter occurs) was a link worker's: the only runs that kept moves then were batches and
    relinks, and a stopped batch left behind by an upgrade must still be replayed."""
    return token[:1] if token[:1] in (LINK_WORKER_RUN, RELINK_RUN) else LINK_WORKER_RUN


def node_hash(key: str) -> str:
    # A person id is built from these, so it never reveals a local identifier.
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def person_id_for(keys: Iterable[str]) -> str:
    return "PER-" + min(node_hash(k) for k in keys)


class Candidate(NamedTuple):
    key: str
    demo: Demographics
    version: int
    linked: bool = False       # an edge joined the two when they were read


class KeptMoves(NamedTuple):
    """Moves a run applied and has not yet published, kept on a record's node until it has: a
    run that stops in between leaves them for its replay (link_batch)."""
    token: str                        # the run's token (`run_token`)
    relabels: tuple[Relabel, ...]
    emptied: frozenset[str]           # persons the run left without members


@dataclass(frozen=True)
class Ingested:
    version: int
    candidates: tuple[Candidate, ...]
    skipped_blocks: int = 0      # blocks over BLOCK_CAP
    # Moves runs applied on this record's node and have not published: several runs' side by
    # side, so one run's moves never overwrite another's that still waits for its replay.
    kept: tuple[KeptMoves, ...] = ()
    node: str = ""               # the record's node id (where its pending moves are kept)


class PairDecision(NamedTuple):
    a: str
    b: str
    version_b: int
    outcome: str           # match / review / too-little-evidence / name-and-birth-date-differ / conflict /
    #                        nhs-mismatch / incoherent / non-match
    kind: str | None       # edge kind when outcome is match
    posterior: float
    # The pair's match weight (log2 odds, in hundredths of a bit): the order in which a person's
    # links are taken when the coherence rule must choose between them.
    weight: int = 0


@dataclass(frozen=True)
class Relabel:
    """One component whose members' person changed."""
    person: str
    members: frozenset[str]
    moved: dict[str, str | None]      # member -> its person before (None: new record)


@dataclass
class Applied:
    """What `GraphStore.apply` changed."""
    relabels: list[Relabel] = field(default_factory=list)
    emptied: set[str] = field(default_factory=set)     # persons left without members
    refused: list[tuple[str, str]] = field(default_factory=list)   # links the coherence rule held back
    pending_at: list[str] = field(default_factory=list)    # node ids the moves are kept on until published
    taken_over: list[tuple[str, str]] = field(default_factory=list)   # (node id, token) of a replay's kept moves


@dataclass
class BatchOutcome(Applied):
    """What a batch decided (`decisions`) and what applying it changed (the Applied fields)."""
    decisions: list[PairDecision] = field(default_factory=list)
    skipped_blocks: int = 0
    candidates: dict[str, int] = field(default_factory=dict)     # record -> candidates it was compared with

    def take(self, applied: Applied) -> None:
        self.relabels, self.emptied, self.refused = applied.relabels, applied.emptied, applied.refused
        self.pending_at = applied.pending_at

    def persons_touched(self) -> set[str]:
        out = set(self.emptied)
        for r in self.relabels:
            out.add(r.person)
            out |= {p for p in r.moved.values() if p}
        return out


class GraphStore(Protocol):
    def ingest(self, demos: Sequence[Demographics]) -> dict[str, Ingested]: ...

    def start_ingest(self, demos: Sequence[Demographics]) -> Callable[[], dict[str, Ingested]]:
        """`ingest` begun now, its result read when called (results in the order begun)."""
        ...

    def apply(self, versions: dict[str, int], decisions: Sequence[PairDecision],
              forced: Sequence[tuple[str, str]] = (), forbidden: Sequence[tuple[str, str]] = (),
              token: str = "") -> Applied: ...

    def person_of(self, key: str) -> str | None: ...


def cannot_join(a: Demographics, b: Demographics) -> bool:
    """Two records that cannot be one person, however they came to be linked: two different valid
    NHS numbers (checksums pass, so neither is a typo the checksum would catch; one mistyped
    number is a question for a person, who can join them). identity_store's apply script
    implements the same rule in Lua."""
    return bool(a.nhs and b.nhs and a.nhs != b.nhs)


def _centibits(log_odds: float) -> int:
    return max(-NHS_WEIGHT + 1, min(NHS_WEIGHT - 1, round(100 * log_odds)))


def pair_decision(a: Demographics, b: Demographics, params: Parameters) -> tuple[str, str | None, float, int]:
    """(outcome, edge kind, posterior, match weight in centibits when it links, else 0).

    outcome: match / review / non-match from the score; "too-little-evidence" for a score in the
    match band from too few fields, or with neither given name nor birth date agreeing;
    "name-and-birth-date-differ" for one whose surname and birth date both differ; "conflict" for the same NHS number with
    contradicting demographics, "nhs-mismatch" for two different valid NHS numbers on records
    that otherwise agree (name, birth date, and what else both have): a transcription error looks
    exactly like that, so a person decides. Neither ever links by itself.
    """
    if a.nhs and b.nhs and a.nhs == b.nhs:
        if contradicts(a, b):
            return "conflict", None, 0.5, 0
        return "match", NHS, 1.0, NHS_WEIGHT
    vector = compare(a, b)
    values = {"given": a.given, "family": a.family}
    if a.nhs and b.nhs:
        vector["nhs"] = None        # the numbers differ: judge the rest on its own
        log_odds = params.log_odds(vector, values)
        posterior = params.posterior_of(log_odds)
        same_person_otherwise = (posterior >= params.match_posterior and (vector["given"] or 0) >= GIVEN.alike
                                 and (vector["family"] or 0) >= FAMILY.alike
                                 and vector["birth_date"] == BIRTH_DATE.same)
        return ("nhs-mismatch" if same_person_otherwise else "non-match"), None, posterior, 0
    log_odds = params.log_odds(vector, values)
    posterior = params.posterior_of(log_odds)
    outcome = "match" if posterior >= params.match_posterior else \
        "review" if posterior >= params.review_posterior else "non-match"
    personal = (vector["given"] or 0) >= GIVEN.alike or (vector["birth_date"] or 0) >= BIRTH_DATE.typo
    if outcome == "match" and (sum(vector[f] is not None for f in EVIDENCE_FIELDS) < MIN_FIELDS_TO_LINK
                               or not personal):
        # Surname and postcode are shared by a household, and a sparse record (surname and
        # postcode only) would glue unrelated people together through itself: a link also needs
        # something personal (given name or birth date) and enough fields compared.
        outcome = "too-little-evidence"
    elif (outcome == "match" and vector["family"] == FAMILY.different
          and vector["birth_date"] == BIRTH_DATE.different):
        # A relative at the same address (same given name and postcode, another surname and
        # birth date) scores like a match; a real person changing both is rare enough to ask.
        outcome = "name-and-birth-date-differ"
    if outcome != "match":
        return outcome, None, posterior, 0      # the weight orders links only: most candidates are not
    return outcome, PROBABILISTIC, posterior, _centibits(log_odds)


def beneath_review(a: Demographics, b: Demographics, params: Parameters) -> bool:
    """True when the pair cannot reach the review band however its names compare (so pair_decision
    would call it a non-match). Most candidates are strangers who share a block (surname sound and
    birth year, say) and little else, and names are the costly comparisons: this bound takes two
    names that differ at their best weight short of exact, computes sex and postcode, and the
    birth date only if the bound still leaves room. About five candidates in six at a million
    records stop here, at a third of the cost of scoring them."""
    if a.nhs and b.nhs and a.nhs == b.nhs:
        return False        # a shared NHS number is decided on its own rules
    below_exact, weights = params.below_exact, params.level_weights
    bound = 0.0
    if a.given and b.given:
        bound += params.exact_weight("given", a.given) if a.given == b.given else below_exact["given"]
    if a.family and b.family:
        bound += params.exact_weight("family", a.family) if a.family == b.family else below_exact["family"]
    sex, postcode = sex_level(a, b), postcode_level(a.postcode, b.postcode)
    if sex is not None:
        bound += weights["sex"][sex]
    if postcode is not None:
        bound += weights["postcode"][postcode]
    # A margin far above float rounding: a pair at the threshold is always scored in full.
    threshold = params.review_score - 1e-6
    if bound + params.highest["birth_date"] < threshold:
        return True
    birth = birth_date_level(a, b)
    return bound + (0.0 if birth is None else weights["birth_date"][birth]) < threshold


def incoherent_pairs(members: Sequence[Demographics]) -> list[tuple[str, str]]:
    """Pairs of one person's records that contradict each other without a rule refusing them:
    given name and birth date both recorded and both different (A-B and B-C match, A and C
    contradict). The links stay; a person reviews the pair."""
    out = []
    ordered = sorted(members, key=lambda d: d.key)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1:]:
            v = compare(a, b)
            if v["given"] == GIVEN.different and v["birth_date"] == BIRTH_DATE.different:
                out.append((a.key, b.key))
    return out


@dataclass(frozen=True)
class Edge:
    a: str
    b: str
    kind: str
    weight: int


def cluster_people(members: dict[str, Demographics | None], edges: Sequence[Edge]
                   ) -> tuple[list[set[str]], list[tuple[str, str]]]:
    """The people of one connected component, and the links refused to make them.

    Links are taken strongest first (a person's links before any other; then by weight; ties by
    the records' hashes, so the order never depends on arrival), and one that would put two
    records that `cannot_join` into one person is refused. The result depends only on the
    component's records and links: any arrival order, any number of workers, the same people.
    """
    parent = {k: k for k in members}
    groups = {k: [k] for k in members}

    def root(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    def order(e: Edge) -> tuple[int, int, str, str]:
        ha, hb = sorted((node_hash(e.a), node_hash(e.b)))
        return (0 if e.kind == FORCED else 1), -e.weight, ha, hb

    refused = []
    for e in sorted(edges, key=order):
        ra, rb = root(e.a), root(e.b)
        if ra == rb:
            continue
        if e.kind != FORCED and any(cannot_join(members[x], members[y])  # type: ignore[arg-type]
                                    for x in groups[ra] for y in groups[rb] if members[x] and members[y]):
            refused.append(tuple(sorted((e.a, e.b))))
            continue
        parent[rb] = ra
        groups[ra] += groups.pop(rb)
    return [set(g) for g in groups.values()], sorted(refused)  # type: ignore[arg-type]


def decide(demo: Demographics, ingested: Ingested, params: Parameters) -> list[PairDecision]:
    """The decisions that can change something: links, pairs for review, and non-matches of pairs
    an edge joins (the edge goes). Most candidates are strangers, and a non-match between records
    with no edge changes nothing (an edge written since would have moved a version and made the
    decision stale anyway): they are forgotten, most without scoring them in full (beneath_review)."""
    out = []
    for c in ingested.candidates:
        if not c.linked and beneath_review(demo, c.demo, params):
            continue
        outcome, kind, posterior, weight = pair_decision(demo, c.demo, params)
        if outcome != "non-match" or c.linked:
            out.append(PairDecision(demo.key, c.key, c.version, outcome, kind, posterior, weight))
    return out


def link_batch(store: GraphStore, demos: Sequence[Demographics], params: Parameters,
               forced: Sequence[tuple[str, str]] = (), forbidden: Sequence[tuple[str, str]] = (),
               ingested: dict[str, Ingested] | None = None,
               before_apply: Callable[[], None] | None = None, token: str = "",
               own_tokens: frozenset[str] = frozenset(), kept_elsewhere: Sequence[Ingested] = ()) -> BatchOutcome:
    """Ingest (unless `ingested` is given: these demos' ingest, started earlier), decide and apply
    one batch (at most one Demographics per key: the newest). `before_apply` runs between the
    two. `token` (`run_token`) names the batch in what the index keeps of its moves until they are
    published; `own_tokens`: batches this worker has published lately (what they kept is not a
    replay's); `kept_elsewhere`: moves kept on records the batch joins or parts without ingesting
    them."""
    if ingested is None:
        ingested = store.ingest(demos) if demos else {}
    outcome = BatchOutcome(skipped_blocks=sum(i.skipped_blocks for i in ingested.values()),
                           candidates={k: len(i.candidates) for k, i in ingested.items()})
    for d in demos:
        outcome.decisions += decide(d, ingested[d.key], params)
    # Only links, and decisions that take away an edge the pair had, are written (a review of a
    # pair with no edge is queued, not written): the write costs what links cost, not candidates.
    linked = {(d.key, c.key) for d in demos for c in ingested[d.key].candidates if c.linked}
    writes = [d for d in outcome.decisions if d.kind or (d.a, d.b) in linked]
    if before_apply is not None:
        before_apply()
    outcome.take(store.apply({k: i.version for k, i in ingested.items()}, writes, forced, forbidden, token))
    # A run that stopped after applying these records' moves and before publishing them: the replay
    # moves nobody (the links are there), so the moves it would have published come from the index.
    # Only a run of the same kind replays it: a relink ingests records a live worker's batch may
    # be publishing at this moment, and taking those moves over would publish them twice.
    relabelled = {r.person for r in outcome.relabels}
    for i in [*ingested.values(), *kept_elsewhere]:
        for kept in i.kept:
            if not token or kept.token in own_tokens or run_kind(kept.token) != run_kind(token):
                continue
            outcome.taken_over.append((i.node, kept.token))
            outcome.relabels += [r for r in kept.relabels if r.person not in relabelled]
            relabelled |= {r.person for r in kept.relabels}
            outcome.emptied |= kept.emptied
    return outcome


def upsert(store: GraphStore, d: Demographics, params: Parameters) -> BatchOutcome:
    return link_batch(store, [d], params)


def force_link(store: GraphStore, a: str, b: str) -> BatchOutcome:
    """A40 merge or accepted review: a and b are the same person."""
    out = BatchOutcome()
    out.take(store.apply({}, [], forced=[(a, b)]))
    return out


def forbid_link(store: GraphStore, a: str, b: str) -> BatchOutcome:
    """Rejected review or unmerge: a and b are different people, whatever the scores say."""
    out = BatchOutcome()
    out.take(store.apply({}, [], forbidden=[(a, b)]))
    return out


@dataclass
class _Node:
    version: int = 0
    demo: Demographics | None = None
    blocks: frozenset[str] = frozenset()
    edges: dict[str, tuple[str, int, int]] = field(default_factory=dict)   # neighbour -> (kind, own version then, weight)
    forbidden: set[str] = field(default_factory=set)


class MemoryGraphStore:
    """The reference GraphStore, in dicts: for pure tests and the batch linkage baseline.

    identity_store.RedisGraphStore implements exactly these rules in Lua; change both together.
    """

    def __init__(self) -> None:
        self._nodes: dict[str, _Node] = {}
        self._blocks: dict[str, set[str]] = {}
        self._person: dict[str, str] = {}
        self._members: dict[str, set[str]] = {}

    def _node(self, key: str) -> _Node:
        return self._nodes.setdefault(key, _Node())

    def ingest(self, demos: Sequence[Demographics]) -> dict[str, Ingested]:
        out = {}
        for d in demos:
            node = self._node(d.key)
            new_blocks = frozenset(blocking.keys(d))
            if node.demo != d or node.version == 0:
                node.version += 1
                node.demo = d
            for bk in node.blocks - new_blocks:
                self._blocks[bk].discard(d.key)
            for bk in new_blocks:
                self._blocks.setdefault(bk, set()).add(d.key)
            node.blocks = new_blocks
            seen: set[str] = set()
            skipped = 0
            for bk in sorted(new_blocks):
                members = self._blocks[bk]
                if len(members) > BLOCK_CAP:
                    skipped += 1
                    continue
                seen |= members
            seen.discard(d.key)
            cands = tuple(Candidate(c, self._nodes[c].demo, self._nodes[c].version,  # type: ignore[arg-type]
                                    c in node.edges)
                          for c in sorted(seen - node.forbidden))
            out[d.key] = Ingested(node.version, cands, skipped)
        return out

    def start_ingest(self, demos: Sequence[Demographics]) -> Callable[[], dict[str, Ingested]]:
        done = self.ingest(demos)
        return lambda: done

    def _set_edge(self, a: str, b: str, kind: str, va: int, vb: int, weight: int = 0) -> None:
        self._node(a).edges[b] = (kind, va, weight)
        self._node(b).edges[a] = (kind, vb, weight)

    def _drop_edge(self, a: str, b: str) -> None:
        self._node(a).edges.pop(b, None)
        self._node(b).edges.pop(a, None)

    def apply(self, versions: dict[str, int], decisions: Sequence[PairDecision],
              forced: Sequence[tuple[str, str]] = (), forbidden: Sequence[tuple[str, str]] = (),
              token: str = "") -> Applied:
        # A memory store never stops between applying and publishing: it keeps no pending moves.
        seeds: set[str] = set()
        for a, b in forbidden:
            self._node(a).forbidden.add(b)
            self._node(b).forbidden.add(a)
            self._drop_edge(a, b)
            seeds |= {a, b}
        for a, b in forced:
            if b not in self._node(a).forbidden:
                self._set_edge(a, b, FORCED, 0, 0)
            seeds |= {a, b}
        by_key: dict[str, list[PairDecision]] = {}
        for d in decisions:
            by_key.setdefault(d.a, []).append(d)
        for key in sorted(versions):
            node = self._node(key)
            if node.version != versions[key]:
                continue    # stale: whoever changed it re-decides
            seeds.add(key)
            for n, (kind, own_version, _) in list(node.edges.items()):
                if kind != FORCED and own_version < node.version:
                    self._drop_edge(key, n)
                    seeds.add(n)
            for d in by_key.get(key, []):
                other = self._nodes.get(d.b)
                if other is None or other.version != d.version_b or d.b in node.forbidden:
                    continue
                current = node.edges.get(d.b)
                if current and current[0] == FORCED:
                    continue
                if d.kind:
                    self._set_edge(key, d.b, d.kind, node.version, other.version, d.weight)
                    seeds.add(d.b)
                elif current:
                    self._drop_edge(key, d.b)
                    seeds.add(d.b)
        return self._relabel(seeds)

    def _component(self, start: str) -> set[str]:
        seen, todo = {start}, [start]
        while todo:
            for n in self._node(todo.pop()).edges:
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return seen

    def _relabel(self, seeds: set[str]) -> Applied:
        out, done, olds = Applied(), set(), set()
        for seed in sorted(seeds):
            if seed in done:
                continue
            comp = self._component(seed)
            done |= comp
            edges = [Edge(a, b, kind, weight) for a in comp for b, (kind, _, weight) in self._nodes[a].edges.items()
                     if a < b]
            people, refused = cluster_people({k: self._node(k).demo for k in comp}, edges)
            out.refused += refused
            for cluster in people:
                person = person_id_for(cluster)
                moved = {}
                for k in cluster:
                    old = self._person.get(k)
                    if old != person:
                        moved[k] = old
                        if old:
                            self._members[old].discard(k)
                            olds.add(old)
                        self._person[k] = person
                        self._members.setdefault(person, set()).add(k)
                if moved:
                    out.relabels.append(Relabel(person, frozenset(cluster), moved))
        out.emptied = {p for p in olds if not self._members.get(p)}
        return out

    def person_of(self, key: str) -> str | None:
        return self._person.get(key)

    def persons(self) -> dict[str, str]:
        return dict(self._person)
