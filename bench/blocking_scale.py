"""Candidates per record as the index grows: the shipped blocking keys next to the design they
replaced (one key on surname sound + birth year), on the same synthetic London, in one run.

    python -m bench.blocking_scale --sizes 10000 100000 1000000

Pure: no bus. For a sample of records it counts the distinct records sharing at least one block
with it (blocks over identity_graph.BLOCK_CAP are skipped, as the link stage skips them), and
which keys contribute most. The stream's own histogram (bench.pipeline_throughput) agrees with
it within the buckets it keeps. The baseline is uncapped, as the first design was.
"""
from __future__ import annotations

import argparse
import random
import time
from collections import defaultdict

import jellyfish
from rich.console import Console
from rich.table import Table

from bench.measurement import percentile
from simulator import population as pop
from streams import blocking
from streams.identity_graph import BLOCK_CAP
from streams.record_comparison import Demographics, from_patient


def baseline_keys(d: Demographics) -> set[str]:
    """The blocking of the first design: surname sound + birth year."""
    if not d.family_parts or d.birth_date is None:
        return set()
    return {f"sy:{jellyfish.soundex(d.family_parts[0])}:{d.birth_date.year}"}


def population(n: int) -> list[Demographics]:
    return [from_patient(pop.source_key(r), pop.patient_dict(r)) for r in pop.source_records(n)]


def candidates(demos: list[Demographics], keys_of, sample: list[int], cap: float
               ) -> tuple[list[int], dict[str, list[int]]]:
    blocks: dict[str, list[int]] = defaultdict(list)
    keys = [keys_of(d) for d in demos]
    for i, ks in enumerate(keys):
        for k in ks:
            blocks[k].append(i)
    counts, by_kind = [], defaultdict(list)
    for i in sample:
        near: set[int] = set()
        for k in keys[i]:
            members = blocks[k]
            if len(members) <= cap:
                near.update(members)
                by_kind[k.split(":", 1)[0]].append(len(members) - 1)
        counts.append(len(near - {i}))
    return counts, by_kind


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--sample", type=int, default=3000)
    args = parser.parse_args()
    console = Console(width=150)
    table = Table(title="candidates per record (synthetic London, same records for both)")
    for col in ("records", "blocking", "mean", "p50", "p99", "max", "largest contributors (mean per key)", "seconds"):
        table.add_column(col)
    for n in args.sizes:
        demos = population(n)
        sample = random.Random(1).sample(range(n), min(args.sample, n))
        for name, keys_of, cap in (("shipped keys (blocks over the cap skipped)", blocking.keys, BLOCK_CAP),
                                   ("baseline: surname sound + birth year, no cap", baseline_keys, float("inf"))):
            started = time.perf_counter()
            counts, by_kind = candidates(demos, keys_of, sample, cap)
            top = sorted(((sum(v) / len(v), k) for k, v in by_kind.items()), reverse=True)[:3]
            table.add_row(f"{n:,}", name, f"{sum(counts) / len(counts):.1f}", f"{percentile(counts, .5):.0f}",
                          f"{percentile(counts, .99):.0f}", str(max(counts)),
                          ", ".join(f"{k} {m:.1f}" for m, k in top), f"{time.perf_counter() - started:.1f}")
        console.print(f"{n:,} records done")
    console.print(table)


if __name__ == "__main__":
    main()
