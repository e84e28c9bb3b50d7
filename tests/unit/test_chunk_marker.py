"""A chunk of events is marked published by one marker: the same for the same events in the same
order (a resent file makes the same chunks), different for any other chunk."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from producers.published_markers import chunk_marker

ids = st.lists(st.uuids().map(str), min_size=2, max_size=40, unique=True)


@given(st.uuids().map(str))
def test_one_event_is_marked_by_its_own_id(event_id):
    assert chunk_marker([event_id]) == event_id


@given(ids)
def test_the_same_chunk_gives_the_same_marker_and_any_other_chunk_another(chunk):
    assert chunk_marker(list(chunk)) == chunk_marker(list(chunk))
    assert chunk_marker(chunk[:-1]) != chunk_marker(chunk)
    assert chunk_marker(chunk[::-1]) != chunk_marker(chunk)
    assert chunk_marker(chunk).startswith("chunk:") and chunk_marker(chunk) not in chunk
