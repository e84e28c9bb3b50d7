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


def test_states_written_before_the_dictionary_are_still_read():
    state = {"key": "CERNER_MILLENNIUM|urn:x|1", "fields": {"sex": {"value": "MALE"}}}
    assert record_store.unpack(zlib.compress(orjson.dumps(state), 1)) == state


def test_a_typical_state_is_several_times_smaller_than_its_json():
    typical = orjson.loads(record_store.STATE_DICTIONARY[:record_store.STATE_DICTIONARY.index(b'}{"key"') + 1])
    typical["key"] = typical["key"][:-3] + "999"
    assert len(record_store.pack(typical)) * 4 < len(orjson.dumps(typical))
