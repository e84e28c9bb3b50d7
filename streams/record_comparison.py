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
from typing import NamedTuple

import jellyfish
from rapidfuzz.distance import DamerauLevenshtein, JaroWinkler

from streams.nicknames import canonical_given

@dataclass(frozen=True)
class Comparison:
    """One field's comparison and its named levels, lowest (strong disagreement) first, as Splink
    names them. Each level is an attribute by its short name (`BIRTH_DATE.typo` is 2), so rules
    say which level they mean. "Missing" is not a level: a comparison with a missing side gives
    no evidence (level None)."""
    field: str
    levels: tuple[tuple[str, str], ...]      # (short name, description)

    def __post_init__(self) -> None:
        # Plain attributes, not a lookup: rules and the comparisons read them per candidate pair.
        for i, (short, _) in enumerate(self.levels):
            object.__setattr__(self, short, i)

    def __getattr__(self, name: str) -> int:      # only for names that are not levels
        raise AttributeError(f"{self.field} has no level {name!r}")

    @property
    def descriptions(self) -> tuple[str, ...]:
        return tuple(d for _, d in self.levels)

    @property
    def exact(self) -> int:
        """The top level: agreeing exactly (where a term-frequency adjustment applies)."""
        return len(self.levels) - 1


NHS = Comparison("nhs", (("different", "different"), ("same", "same")))
GIVEN = Comparison("given", (("different", "different"), ("similar", "similar (Jaro-Winkler >= 0.80)"),
                             ("alike", "typo, nickname or sounds alike"), ("same", "exact")))
FAMILY = Comparison("family", (("different", "different"), ("similar", "similar (Jaro-Winkler >= 0.80)"),
                               ("alike", "typo, sounds alike or part of a double-barrelled name"), ("same", "exact")))
BIRTH_DATE = Comparison("birth_date", (
    ("different", "different"), ("same_year", "same year"),
    ("typo", "one digit, adjacent digits or day/month swapped, or one day off"), ("same", "exact")))
SEX = Comparison("sex", (("different", "different"), ("same", "same")))
POSTCODE = Comparison("postcode", (("different", "different"), ("district", "same district"),
                                   ("sector", "same sector"), ("typo", "one character off"), ("same", "exact")))
COMPARISONS = (NHS, GIVEN, FAMILY, BIRTH_DATE, SEX, POSTCODE)

FIELDS = tuple(c.field for c in COMPARISONS)
LEVEL_NAMES = {c.field: c.descriptions for c in COMPARISONS}
LEVELS = {c.field: len(c.levels) for c in COMPARISONS}
# Levels at which a term-frequency adjustment applies: agreeing on a rare value says more.
EXACT = {c.field: c.exact for c in COMPARISONS}


class Demographics(NamedTuple):
    """The matching view of one source record (upper-cased, cleaned).

    A NamedTuple, like identity_graph's Candidate and PairDecision: a link worker builds one per
    candidate it reads, tens per event, and as frozen dataclasses (three times slower to
    construct) the three took a tenth of its CPU on a million-record index."""
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


# Given and family names share their level numbers (a swap compares one with the other).
_NAME = GIVEN


def _name_level(a: str, b: str, given: bool) -> int | None:
    if not a or not b:
        return None
    if a == b:
        return _NAME.same
    if given and canonical_given(a) == canonical_given(b):
        return _NAME.alike
    if (_metaphone(a) == _metaphone(b) or JaroWinkler.similarity(a, b) >= 0.92
            or _at_most_one_edit(a, b)):
        return _NAME.alike
    if JaroWinkler.similarity(a, b) >= 0.80:
        return _NAME.similar
    return _NAME.different


def _family_level(a: Demographics, b: Demographics) -> int | None:
    level = _name_level(a.family, b.family, given=False)
    if level is None or level >= FAMILY.alike:
        return level
    # Double-barrelled: one surname is a part of the other.
    if set(a.family_parts) & set(b.family_parts):
        return FAMILY.alike
    return level


def _birth_level(a: date | None, b: date | None) -> int | None:
    if a is None or b is None:
        return None
    if a == b:
        return BIRTH_DATE.same
    if abs(a.toordinal() - b.toordinal()) == 1:
        return BIRTH_DATE.typo  # one day off
    if a.month != b.month and a.day != b.day:
        # Most candidates are strangers whose month and day both differ (they share a name and a
        # postcode, or a name and a birth year), and the edit distance of the digits was a third
        # of screening them. Month and day each differ in a digit, so one edit can only be the swap
        # of the month's last digit with the day's first (or the whole day with the month); a
        # different year on top is a third digit.
        if a.year != b.year:
            return BIRTH_DATE.different
        swapped = (a.month == b.day and a.day == b.month) or (
            a.month // 10 == b.month // 10 and a.day % 10 == b.day % 10
            and a.month % 10 == b.day // 10 and a.day // 10 == b.month % 10)
        return BIRTH_DATE.typo if swapped else BIRTH_DATE.same_year
    if _at_most_one_edit(date_digits(a), date_digits(b)):
        return BIRTH_DATE.typo  # a single mistyped digit, or two adjacent digits swapped
    if a.year == b.year:
        return BIRTH_DATE.same_year
    return BIRTH_DATE.different


def birth_digits(d: Demographics) -> str:
    """YYYYMMDD of a valid birth date, else the digits as sent (4, 6 or 8), else ''."""
    return date_digits(d.birth_date) if d.birth_date is not None else d.birth_as_sent or ""


def _birth_digits_level(x: str, y: str) -> int | None:
    """Birth dates when one is not a valid date: its digits as typed, for what both hold."""
    if not x or not y:
        return None
    if len(x) == 8 and len(y) == 8:
        if x == y:
            return BIRTH_DATE.same
        if _at_most_one_edit(x, y):
            return BIRTH_DATE.typo        # 19800231 against 19800221: a typo that made an impossible day
        return BIRTH_DATE.same_year if x[:4] == y[:4] else BIRTH_DATE.different
    # A partial date (year, or year and month) contradicts or says nothing: agreeing as far as it
    # goes would need a level of its own, fitted, to count as evidence.
    if x[:4] != y[:4]:
        return BIRTH_DATE.different
    if min(len(x), len(y)) >= 6 and x[4:6] != y[4:6]:
        return BIRTH_DATE.same_year
    return None


def postcode_level(a: str | None, b: str | None) -> int | None:
    # UK postcodes without spaces: district = outward code (all but the last 3 characters),
    # sector = district + the first character of the inward code.
    if not a or not b:
        return None
    if a == b:
        return POSTCODE.same
    if len(a) == len(b):
        if a[:-3] != b[:-3] and a[-3:] != b[-3:]:
            # Most candidates live elsewhere: both parts differ, which one edit explains only as the
            # outward code's last character swapped with the inward code's first.
            swapped = a[-4:-2] == b[-3:-5:-1] and a[:-4] == b[:-4] and a[-2:] == b[-2:]
            return POSTCODE.typo if swapped else POSTCODE.different
        if _at_most_one_edit(a, b):
            return POSTCODE.typo  # one character mistyped or two swapped
    if a[:-2] == b[:-2]:
        return POSTCODE.sector  # a few streets
    if a[:-3] == b[:-3]:
        return POSTCODE.district  # moved nearby
    return POSTCODE.different


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
    if (given or 0) + (family or 0) <= GIVEN.alike and a.given and a.family and b.given and b.family:
        cross_g = _name_level(a.given, b.family, given=False)
        cross_f = _name_level(a.family, b.given, given=False)
        if (cross_g or 0) + (cross_f or 0) > (given or 0) + (family or 0):
            # Capped below "exact" (a swap is itself a discrepancy) and ordered, so that
            # compare(a, b) == compare(b, a): swapping a and b swaps cross_g and cross_f.
            high, low = max(cross_g or 0, cross_f or 0), min(cross_g or 0, cross_f or 0)
            given, family = min(high, GIVEN.alike), min(low, FAMILY.alike)
    if a.nhs and b.nhs:
        nhs = NHS.same if a.nhs == b.nhs else NHS.different
    else:
        nhs = None
    return {"nhs": nhs, "given": given, "family": family, "birth_date": birth_date_level(a, b),
            "sex": sex_level(a, b), "postcode": postcode_level(a.postcode, b.postcode)}


def birth_date_level(a: Demographics, b: Demographics) -> int | None:
    if a.birth_date is not None and b.birth_date is not None or not (a.birth_as_sent or b.birth_as_sent):
        return _birth_level(a.birth_date, b.birth_date)
    return _birth_digits_level(birth_digits(a), birth_digits(b))


def sex_level(a: Demographics, b: Demographics) -> int | None:
    return None if a.sex is None or b.sex is None else (SEX.same if a.sex == b.sex else SEX.different)


def contradicts(a: Demographics, b: Demographics) -> bool:
    """Same NHS number but names and birth date disagree: someone typed the wrong number."""
    v = compare(a, b)
    # Names: at best one alike and the other different (levels add up to "alike" or less).
    return (v["birth_date"] is not None and v["birth_date"] <= BIRTH_DATE.same_year) and \
        ((v["family"] or 0) + (v["given"] or 0) <= GIVEN.alike)
