"""A Vision extract parsed and encoded in worker processes gives exactly what the connector's own
parse and encode give: the same events, byte for byte, the same rejected rows with their line
numbers, whatever shard each patient fell into, with a patient's rows scattered over the file."""
from __future__ import annotations

import asyncio
import gc
import csv
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producers import vision_extract
from producers.bulk_extract_workers import ExtractWorkers
from producers.ingest_pipeline import raw_reference
from schemas.source_systems import VISION
from schemas import codec
from schemas.topics import source_event_key
from simulator import population as pop
from simulator.traffic import MessageFactory, vision_csv


@pytest.fixture(scope="module")
def workers():
    pool = ExtractWorkers(3)
    yield pool
    pool.close()


def scattered_extract(seed: int) -> bytes:
    population = pop.build(120, seed=seed)
    recs = [r for r in population.records if r.system == "INPS_VISION"] or population.records[:20]
    factory = MessageFactory(random.Random(seed))
    rows = [row for r in recs for row in factory.vision_rows(r)]
    rows += [{"record_type": "PROBLEM", "patient_id": recs[0].local_id, "practice_ods": recs[0].ods},   # no code
             {"record_type": "SPACESHIP", "patient_id": "X", "practice_ods": "E87001"}]
    random.Random(seed).shuffle(rows)       # a patient's rows anywhere in the file
    return vision_csv(rows)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_workers_give_the_connectors_own_events_and_errors(workers, seed):
    raw = scattered_extract(seed)
    ref = raw_reference(raw, VISION)
    single = vision_extract.parse_extract(raw, "f.csv", 1234)
    for event in single.events:
        event["envelope"]["raw_message"] = ref
    expected = {event["envelope"]["event_id"]: (source_event_key(event), codec.encode("SourcePatientEvent", event))
                for event in single.events}
    sharded = asyncio.run(workers.parse(raw, "f.csv", 1234, ref))
    assert {e.event_id: (e.key, e.value) for e in sharded.events} == expected
    assert len(sharded.events) == len(expected) > 10
    assert [(err.line, err.reason, err.row) for err in sharded.errors] == \
        [(err.line, err.reason, err.row) for err in single.errors]
    assert len(sharded.errors) == 2
    lines = raw.decode().splitlines()
    assert all(lines[err.line - 1].encode() == err.row for err in sharded.errors), "the file's own line numbers"


def test_an_unusable_header_is_a_line_one_error(workers):
    result = asyncio.run(workers.parse(b"a,b\n1,2\n", "f.csv", 0, {}))
    assert not result.events and result.errors[0].line == 1 and "header lacks columns" in result.errors[0].reason


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(list('ab ,"\'X1\t')), max_size=8), min_size=0, max_size=25),
       st.booleans())
def test_a_lines_shard_is_read_as_the_parser_reads_its_patient(cells, doubled_header):
    """The connector splits a line itself to choose its shard; a patient whose lines went to two
    shards would come out as two events. Whatever the line (quotes, commas inside quotes, an unclosed
    quote, too few or too many cells, a header naming a column twice), the (practice, patient id)
    it reads are those csv.DictReader gives _apply_row."""
    fieldnames = list(vision_extract.COLUMNS) + (["patient_id"] if doubled_header else [])
    line = ",".join(cells)
    row = next(csv.DictReader([line], fieldnames=fieldnames), None) or {}
    expected = ((row.get("practice_ods") or "").strip().upper(), (row.get("patient_id") or "").strip())
    assert vision_extract.patient_of_line(line, vision_extract.patient_columns(fieldnames)) == expected


def test_the_workers_run_the_garbage_collector_settled(workers):
    """Their full collections walked each shard's growing list of events: a quarter of a worker's
    CPU with Python's default thresholds (700, 10, 10)."""
    from foundation.garbage_collection import SETTLED_THRESHOLDS

    thresholds = {workers._executor().submit(gc.get_threshold).result() for _ in range(6)}
    assert thresholds == {SETTLED_THRESHOLDS}
    assert workers._executor().submit(gc.get_freeze_count).result() > 0
