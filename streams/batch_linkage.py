"""Batch linkage of a whole set of events at once, with the same rules as the streaming worker.

It is the baseline the streaming linker is measured and tested against: same events in, the
same people out, whatever order and however many workers the stream used. Pure: no I/O.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from schemas.source_key import source_key
from schemas.topics import source_event_key
from streams import identity_graph, record_builder
from streams.fellegi_sunter import Parameters
from streams.record_comparison import from_patient


def link_events(events: Iterable[dict[str, Any]], params: Parameters) -> identity_graph.MemoryGraphStore:
    states: dict[str, dict[str, Any]] = {}
    merges: list[tuple[str, str]] = []
    for event in events:
        key = source_event_key(event)
        state = states.get(key) or record_builder.new_source_state(key, event)
        states[key], _ = record_builder.apply_event(state, event)
        for old in event.get("merged_from") or []:
            merges.append((key, source_key(event['envelope']['source_system'], old['system'], old['value'])))
    store = identity_graph.MemoryGraphStore()
    demos = [from_patient(key, record_builder.patient_view(states[key])) for key in sorted(states)]
    identity_graph.link_batch(store, demos, params, forced=merges)
    return store
