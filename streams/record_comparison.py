"""How alike two source records' demographics are, field by field. Pure: no I/O.

Each field comparison yields a *level* (0 = disagree ... highest = exact); Fellegi-Sunter turns
levels into evidence with m/u probabilities. Levels are tolerant of the faults real feeds have:
nicknames and phonetic spellings, given/family swapped, double-barrelled surnames, day/month
transposed or one-digit birth-date typos, and people who moved within a postcode district.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache

import jellyfish
from rapidfuzz.distance import DamerauLevenshtein, JaroWinkler

from streams.nicknames import canonical_given

FIELDS = ("nhs", "given", "family", "birth_date", "sex", "postcode")
# The named levels of each comparison, lowest = strong disagreement. "Missing" is not a level:
# a comparison with a missing side contributes no evidence (level None).
LEVEL_NAMES = {
    "nhs": ("different", "same"),
    "given": ("different", "similar (Jaro-Winkler >= 0.80)", "typo, nickname or sounds alike", "exact"),
    "family": ("different", "similar (Jaro-Winkler >= 0.80)", "typo, sounds alike or part of a double-barrelled name",
               "exact"),
    "birth_date": ("different", "same year", "one digit, adjacent digits or day/month swapped, or one day off",
                   "exact"),
    "sex": ("different", "same"),
    "postcode": ("different", "same district", "same sector", "one character off", "exact"),
}
LEVELS = {f: len(names) for f, names in LEVEL_NAMES.items()}
# Levels at which a term-frequency adjustment applies: agreeing on a rare value says more.
EXACT = {f: len(names) - 1 for f, names in LEVEL_NAMES.items()}


@dataclass(frozen=True)
class Demographics:
    """The matching view of one source record (upper-cased, cleaned)."""
    key: str
    nhs: str | None          # only a checksum-valid NHS number
    given: str
    family: str
    birth_date: date | None
    sex: str | None          # MALE / FEMALE / None when unknown
    postcode: str | None     # no spaces
    # When there is no valid birth date: its digits as sent (YYYY, YYYYMM, or a YYYYMMDD that is
    # not a real day), compared for what they hold.
    birth_as_sent: str | None = None

    @property
    def family_parts(self) -> list[str]:
        return [p for p in self.family.replace("'", "").split("-") if p]


def from_patient(key: str, patient: dict) -> Demographics:
    names = patient.get("names") or []
    given = family = ""
    if names:
        n = names[0]
        given = ((n.get("given") or [""])[0] or "").upper().strip()
        family = (n.get("family") or "").upper().strip()
    birth = patient.get("birth_date")
    if isinstance(birth, int):
        birth = date(1970, 1, 1) + timedelta(days=birth)
    postcode = None
    for a in patient.get("addresses") or []:
        if a.get("postcode"):
            postcode = a["postcode"].replace(" ", "").upper()
            break
    nhs = patient.get("nhs_number") if patient.get("nhs_number_status") in ("VERIFIED", "PRESENT_UNVERIFIED") else None
    sex = patient.get("sex") if patient.get("sex") in ("MALE", "FEMALE") else None
    as_sent = None if birth is not None else patient.get("birth_date_as_sent") or None
    return Demographics(key, nhs, given, family, birth, sex, postcode, as_sent)


# Names and birth dates repeat across millions of comparisons: their derived forms are cached
# (a link worker compares each new record with tens of candidates, most sharing common names).
_metaphone = lru_cache(maxsize=100_000)(jellyfish.metaphone)


def _at_most_one_edit(a: str, b: str) -> bool:
    """One character changed, added, dropped, or two adjacent ones swapped (Damerau distance <= 1;
    rapidfuzz's with a cutoff is some ten times faster than jellyfish's, same answer)."""
    return DamerauLevenshtein.distance(a, b, score_cutoff=1) <= 1


@lru_cache(maxsize=100_000)
def date_digits(d: date) -> str:
    """YYYYMMDD (the date's digits, as typed)."""
    return f"{d.year:04d}{d.month:02d}{d.day:02d}"


def _name_level(a: str, b: str, given: bool) -> int | None:
    if not a or not b:
        return None
    if a == b:
        return 3
    if given and canonical_given(a) == canonical_given(b):
        return 2
    if (_metaphone(a) == _metaphone(b) or JaroWinkler.similarity(a, b) >= 0.92
            or _at_most_one_edit(a, b)):
        return 2
    if JaroWinkler.similarity(a, b) >= 0.80:
        return 1
    return 0


def _family_level(a: Demographics, b: Demographics) -> int | None:
    level = _name_level(a.family, b.family, given=False)
    if level is None or level >= 2:
        return level
    # Double-barrelled: one surname is a part of the other.
    if set(a.family_parts) & set(b.family_parts):
        return 2
    return level


def _birth_level(a: date | None, b: date | None) -> int | None:
    if a is None or b is None:
        return None
    if a == b:
        return 3
    if a.year == b.year and a.month == b.day and a.day == b.month:
        return 2  # day and month transposed
    if _at_most_one_edit(date_digits(a), date_digits(b)) or abs((a - b).days) == 1:
        return 2  # a single mistyped digit, or two adjacent digits swapped
    if a.year == b.year:
        return 1
    return 0


def birth_digits(d: Demographics) -> str:
    """YYYYMMDD of a valid birth date, else the digits as sent (4, 6 or 8), else ''."""
    return date_digits(d.birth_date) if d.birth_date is not None else d.birth_as_sent or ""


def _birth_digits_level(x: str, y: str) -> int | None:
    """Birth dates when one is not a valid date: its digits as typed, for what both hold."""
    if not x or not y:
        return None
    if len(x) == 8 and len(y) == 8:
        if x == y:
            return 3
        if _at_most_one_edit(x, y):
            return 2        # 19800231 against 19800221: a typo that made an impossible day
        return 1 if x[:4] == y[:4] else 0
    # A partial date (year, or year and month) contradicts or says nothing: agreeing as far as it
    # goes would need a level of its own, fitted, to count as evidence.
    if x[:4] != y[:4]:
        return 0
    if min(len(x), len(y)) >= 6 and x[4:6] != y[4:6]:
        return 1
    return None


def _postcode_level(a: str | None, b: str | None) -> int | None:
    # UK postcodes without spaces: district = outward code (all but the last 3 characters),
    # sector = district + the first character of the inward code.
    if not a or not b:
        return None
    if a == b:
        return 4
    if len(a) == len(b) and _at_most_one_edit(a, b):
        return 3  # one character mistyped or two swapped
    if a[:-2] == b[:-2]:
        return 2  # same sector: a few streets
    if a[:-3] == b[:-3]:
        return 1  # same district: moved nearby
    return 0


@lru_cache(maxsize=100_000)
def given_sound(given: str) -> str:
    """The sound of a given name, nicknames folded (BILL and WILLIAM sound alike), as blocking
    keys use it. Empty when there is no name."""
    return jellyfish.soundex(canonical_given(given)) if given else ""


def compare(a: Demographics, b: Demographics) -> dict[str, int | None]:
    """The comparison vector for a pair. Symmetric: compare(a, b) == compare(b, a)."""
    given = _name_level(a.given, b.given, given=True)
    family = _family_level(a, b)
    # Given and family swapped between systems: score the crossed names instead if better.
    if (given or 0) + (family or 0) <= 2 and a.given and a.family and b.given and b.family:
        cross_g = _name_level(a.given, b.family, given=False)
        cross_f = _name_level(a.family, b.given, given=False)
        if (cross_g or 0) + (cross_f or 0) > (given or 0) + (family or 0):
            # Capped below "exact" (a swap is itself a discrepancy) and ordered, so that
            # compare(a, b) == compare(b, a): swapping a and b swaps cross_g and cross_f.
            high, low = max(cross_g or 0, cross_f or 0), min(cross_g or 0, cross_f or 0)
            given, family = min(high, 2), min(low, 2)
    if a.nhs and b.nhs:
        nhs = 1 if a.nhs == b.nhs else 0
    else:
        nhs = None
    sex = None if a.sex is None or b.sex is None else int(a.sex == b.sex)
    if a.birth_date is not None and b.birth_date is not None or not (a.birth_as_sent or b.birth_as_sent):
        birth = _birth_level(a.birth_date, b.birth_date)
    else:
        birth = _birth_digits_level(birth_digits(a), birth_digits(b))
    return {"nhs": nhs, "given": given, "family": family, "birth_date": birth,
            "sex": sex, "postcode": _postcode_level(a.postcode, b.postcode)}


def contradicts(a: Demographics, b: Demographics) -> bool:
    """Same NHS number but names and birth date disagree: someone typed the wrong number."""
    v = compare(a, b)
    return (v["birth_date"] is not None and v["birth_date"] <= 1) and ((v["family"] or 0) + (v["given"] or 0) <= 2)
