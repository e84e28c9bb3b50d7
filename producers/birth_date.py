"""Birth dates as senders write them: valid ones become Avro dates, the rest are kept and flagged.

A wrong or partial birth date is the sender's data as it is, like a mistyped NHS number: the
patient is still accepted (and linked on its other fields), the value is left out of matching,
and the event carries a data-quality flag; the original message keeps the value as sent. Pure.
"""
from __future__ import annotations

import re
from datetime import date

BIRTH_DATE_INVALID = "BIRTH_DATE_INVALID"     # not a date at all, or not a real one (31 February)
BIRTH_DATE_PARTIAL = "BIRTH_DATE_PARTIAL"     # year only, or year and month
_EPOCH = date(1970, 1, 1)


def to_days(year: int, month: int, day: int) -> int | None:
    try:
        d = date(year, month, day)
    except ValueError:
        return None
    return (d - _EPOCH).days


def parse(value: str | None, pattern: str) -> tuple[int | None, list[str]]:
    """(days since 1970-01-01 or None, flags). `pattern` is "hl7" (YYYYMMDD...) or "iso" (YYYY-MM-DD)."""
    value = (value or "").strip()
    if not value:
        return None, []
    if pattern == "hl7":
        digits = value.split("+")[0].split("-")[0].split(".")[0]
        if not digits.isdigit():
            return None, [BIRTH_DATE_INVALID]
        if len(digits) in (4, 6):
            return None, [BIRTH_DATE_PARTIAL]
        if len(digits) < 8:
            return None, [BIRTH_DATE_INVALID]
        days = to_days(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    else:
        match = re.fullmatch(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?", value)
        if match is None:
            return None, [BIRTH_DATE_INVALID]
        if match.group(3) is None:
            return None, [BIRTH_DATE_PARTIAL]
        days = to_days(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    return (days, []) if days is not None else (None, [BIRTH_DATE_INVALID])


def digits_as_sent(value: str | None, pattern: str) -> str | None:
    """The digits of a birth date that is not a whole valid date (YYYY, YYYYMM, or a YYYYMMDD
    that is not a real day), for matching; None for a valid date or no readable digits."""
    _, flags = parse(value, pattern)
    if not flags:
        return None
    text = (value or "").strip()
    if pattern == "hl7":
        digits = text.split("+")[0].split("-")[0].split(".")[0]
        digits = digits[:8] if len(digits) > 8 else digits      # a time after the day
    else:
        digits = text.replace("-", "")
    return digits if digits.isdigit() and len(digits) in (4, 6, 8) else None
