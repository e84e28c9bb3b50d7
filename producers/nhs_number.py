"""NHS number validation (Modulus 11), as the NHS Data Dictionary defines it."""
from __future__ import annotations

import random

WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)


def normalise(raw: str | None) -> str | None:
    """Strip spaces and dashes people type; None for empty."""
    if raw is None:
        return None
    digits = raw.replace(" ", "").replace("-", "").strip()
    return digits or None


def check_digit(first_nine: str) -> int | None:
    """The check digit for nine digits, or None where no valid number exists (remainder gives 10)."""
    total = sum(int(d) * w for d, w in zip(first_nine, WEIGHTS))
    check = 11 - (total % 11)
    if check == 11:
        return 0
    if check == 10:
        return None
    return check


def is_valid(raw: str | None) -> bool:
    number = normalise(raw)
    if number is None or len(number) != 10 or not number.isdigit():
        return False
    return check_digit(number[:9]) == int(number[9])


def generate(rng: random.Random) -> str:
    """A valid NHS number in the 9xx synthetic/test range (never a real patient's)."""
    while True:
        first = "9" + "".join(str(rng.randrange(10)) for _ in range(8))
        check = check_digit(first)
        if check is not None:
            return first + str(check)


def formatted(number: str) -> str:
    return f"{number[:3]} {number[3:6]} {number[6:]}"
