"""How source states are stored (pure): compact, readable back exactly, old values still readable."""
from __future__ import annotations

import hashlib
import zlib

import orjson
from hypothesis import given, strategies as st

from streams import record_store

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)


@given(st.dictionaries(st.text(max_size=12), json_values, max_size=8))
def test_a_state_reads_back_exactly(state):
    assert record_store.unpack(record_store.pack(state)) == state


def test_the_dictionary_is_the_one_states_were_written_with():
    assert hashlib.sha256(record_store.STATE_DICTIONARY).hexdigest() == record_store.STATE_DICTIONARY_SHA256


def test_states_written_with_the_zlib_dictionary_are_still_read():
    """What link workers wrote until they packed with zstd: 0x01, then zlib with the dictionary."""
    state = {"key": "EMIS_WEB|urn:x|2", "fields": {"sex": {"value": "FEMALE"}}, "items": [1, 2, 3]}
    compressor = zlib.compressobj(1, zlib.DEFLATED, 13, 4, zdict=record_store.STATE_DICTIONARY)
    old = b"\x01" + compressor.compress(orjson.dumps(state)) + compressor.flush()
    assert record_store.unpack(old) == state
    assert record_store.pack(state)[:1] == b"\x02" and record_store.pack(state) != old


def test_states_are_packed_and_read_in_many_threads_at_once():
    """pack and unpack may be called from any thread; a zstd context shared between threads corrupts."""
    from concurrent.futures import ThreadPoolExecutor

    states = [{"key": f"k{i}", "n": list(range(i % 50)), "text": "x" * (i % 300)} for i in range(400)]

    def round_trip(state):
        return all(record_store.unpack(record_store.pack(state)) == state for _ in range(20))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(round_trip, states))


def test_states_written_before_the_dictionary_are_still_read():
    state = {"key": "CERNER_MILLENNIUM|urn:x|1", "fields": {"sex": {"value": "MALE"}}}
    assert record_store.unpack(zlib.compress(orjson.dumps(state), 1)) == state


def test_a_typical_state_is_several_times_smaller_than_its_json():
    typical = orjson.loads(record_store.STATE_DICTIONARY[:record_store.STATE_DICTIONARY.index(b'}{"key"') + 1])
    typical["key"] = typical["key"][:-3] + "999"
    assert len(record_store.pack(typical)) * 4 < len(orjson.dumps(typical))
