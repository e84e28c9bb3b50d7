"""The log filter: anything shaped like an NHS number is masked, a pseudonym is never mangled."""
from __future__ import annotations

import logging
import random

from hypothesis import given, strategies as st

from foundation.log_privacy import RedactNhsNumbers, pseudonym
from producers import nhs_number


def filtered(message: str) -> str:
    record = logging.LogRecord("carebus.test", logging.INFO, "", 0, message, (), None)
    RedactNhsNumbers().filter(record)
    return record.getMessage()


@given(st.integers(0, 2**32), st.sampled_from(["{}", "nhs {} here", "{},x", "A{}", "({})"]),
       st.sampled_from(["", " ", "-"]))
def test_an_nhs_number_in_any_spelling_is_masked(seed, template, sep):
    number = nhs_number.generate(random.Random(seed))
    spelled = sep.join((number[:3], number[3:6], number[6:]))
    out = filtered(template.format(spelled))
    assert number not in out.replace(" ", "").replace("-", "") and "[redacted]" in out


@given(st.text(min_size=1, max_size=30))
def test_a_pseudonym_passes_whole_even_when_its_hex_holds_ten_digits(identifier):
    token = pseudonym(identifier, key="k")
    assert token in filtered(f"accepted for {token}")
    assert filtered("accepted for p:2d1234567890") == "accepted for p:2d1234567890"
