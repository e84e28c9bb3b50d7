import random

from hypothesis import given, strategies as st

from producers import nhs_number


def test_known_numbers():
    assert nhs_number.is_valid("943 476 5919")
    assert not nhs_number.is_valid("9434765918")
    assert not nhs_number.is_valid("94347659")
    assert not nhs_number.is_valid(None)


@given(st.integers(0, 2**32))
def test_generated_numbers_are_valid_and_one_digit_change_is_caught(seed):
    rng = random.Random(seed)
    number = nhs_number.generate(rng)
    assert nhs_number.is_valid(number)
    i = rng.randrange(10)
    changed = number[:i] + str((int(number[i]) + rng.randrange(1, 10)) % 10) + number[i + 1:]
    # Modulus 11 detects every single-digit substitution.
    assert not nhs_number.is_valid(changed)


@given(st.text(max_size=14))
def test_never_raises(text):
    assert nhs_number.is_valid(text) in (True, False)
