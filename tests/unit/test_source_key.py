"""Source keys are unambiguous: any three parts, whatever characters they hold, give a key that
reads back as exactly those parts, and different parts never give the same key."""
from __future__ import annotations

from hypothesis import given, strategies as st

from schemas.source_key import SourceKey, of_event, source_key

part = st.text(alphabet=st.sampled_from("ab|%7C25:/ "), max_size=8)


@given(part, part, part)
def test_a_key_reads_back_as_its_parts(system, id_system, local_id):
    key = source_key(system, id_system, local_id)
    assert SourceKey.parse(key) == SourceKey(system, id_system, local_id)
    assert key.count("|") == 2


@given(part, part, part, part, part, part)
def test_different_parts_never_share_a_key(a1, a2, a3, b1, b2, b3):
    if (a1, a2, a3) != (b1, b2, b3):
        assert source_key(a1, a2, a3) != source_key(b1, b2, b3)


def test_ordinary_keys_read_exactly_as_before():
    assert source_key("CERNER_MILLENNIUM", "urn:carebus:id:cerner:mrn:RAL", "MRN1") == \
        "CERNER_MILLENNIUM|urn:carebus:id:cerner:mrn:RAL|MRN1"
    event = {"envelope": {"source_system": "EMIS_WEB"},
             "patient": {"local_identifier": {"system": "https://x.example/a|b", "value": "c"}}}
    assert of_event(event) == "EMIS_WEB|https://x.example/a%7Cb|c" != source_key("EMIS_WEB", "https://x.example/a", "b|c")
