"""Runs of the linker in memory for the tests: one at a time, or as interleaved workers dealing
batches in a random order (the order-independence properties)."""
from __future__ import annotations

import random
import zlib

from streams.identity_graph import MemoryGraphStore, decide, upsert
from tests.builders import PARAMS, demo


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


def _batches(demos, rnd, workers):
    """Deal records to workers in random batches, as partitions would."""
    queues = [[] for _ in range(workers)]
    for d in demos:
        queues[zlib.crc32(d.key.encode()) % workers].append(d)
    out = []
    for q in queues:
        rnd.shuffle(q)
        batches, i = [], 0
        while i < len(q):
            n = rnd.randint(1, 40)
            batches.append(q[i:i + n])
            i += n
        out.append(batches)
    return out


def run_interleaved(store, records, rnd: random.Random, workers: int) -> None:
    run_interleaved_demographics(store, [demo(r) for r in records], rnd, workers)


def run_interleaved_demographics(store, demos, rnd: random.Random, workers: int) -> None:
    """Each worker alternates ingest -> (decide) -> apply; the scheduler picks who moves next."""
    queues = _batches(demos, rnd, workers)
    pending: list = [None] * workers
    while any(queues) or any(p is not None for p in pending):
        w = rnd.choice([i for i in range(workers) if queues[i] or pending[i] is not None])
        if pending[w] is None:
            batch = queues[w].pop(0)
            pending[w] = (batch, store.ingest(batch))
        else:
            batch, ingested = pending[w]
            decisions = [x for d in batch for x in decide(d, ingested[d.key], PARAMS)]
            store.apply({k: i.version for k, i in ingested.items()}, decisions)
            pending[w] = None
