"""Blocking keys: a record is compared only with records sharing at least one key. Pure.

Every key combines two or three fields, so a block holds a handful of records whatever the size
of the index (a key on one common value, such as surname sound + birth year, grows with the
population: 20 members at 50k people, hundreds in London). The set is chosen so that any single
fault still leaves the true match a key in common:

  fd   family sound + birth date        given name wrong, nickname, moved, no NHS number
  gd   given sound + birth date         surname changed (marriage), double-barrelled
  fgy  family + given + birth year      day or month mistyped, or only the year (or month) sent
  fgm  family + given + day and month   year mistyped
  dp   birth date + postcode            both names changed or swapped
  ns   both name sounds, sorted + date  given and family swapped
  nsp  name sounds, sorted + postcode   any birth-date fault, or no birth date at all (and swaps)
  nsd  name sounds, sorted + sector     no birth date and a postcode mistyped in its unit (last two)
  fp   family sound + postcode          given name and birth date both wrong (a household: small)
  gp   given sound + postcode           surname changed and birth date wrong
  nhs  a valid NHS number
Keys without the birth date use the postcode (or its sector), never names alone: a name alone
is shared by hundreds of Londoners, and a common pair of name sounds by dozens in one district
(bench.pipeline_throughput at 1,000,000 records: district gave candidates p99 75, sector 34).
"""
from __future__ import annotations

from functools import lru_cache

import jellyfish

from streams.record_comparison import Demographics, birth_digits, given_sound


@lru_cache(maxsize=100_000)
def _sound(name: str) -> str:
    return jellyfish.soundex(name) if name else ""


def nhs_number_key(nhs: str) -> str:
    """The block of a valid NHS number: also the index's way to find records by NHS number."""
    return f"nhs:{nhs}"


def keys(d: Demographics) -> set[str]:
    out: set[str] = set()
    if d.nhs:
        out.add(nhs_number_key(d.nhs))
    fam = _sound(d.family_parts[0]) if d.family_parts else ""
    giv = given_sound(d.given)
    # A birth date that is not a valid date blocks on its digits as sent: a whole one like any
    # date (a typo in a day has a valid twin one edit away), a partial one by its year.
    digits = birth_digits(d)
    dob = digits if len(digits) == 8 else ""
    if fam and giv and digits:
        out.add(f"fgy:{fam}:{giv}:{digits[:4]}")
    if dob:
        if fam:
            out.add(f"fd:{fam}:{dob}")
        if giv:
            out.add(f"gd:{giv}:{dob}")
        if fam and giv:
            out.add(f"fgm:{fam}:{giv}:{dob[4:]}")
        if d.postcode:
            out.add(f"dp:{dob}:{d.postcode}")
    if d.given and d.family_parts:
        low, high = sorted((_sound(d.given), fam))
        if dob:
            out.add(f"ns:{low}:{high}:{dob}")
        if d.postcode:
            out.add(f"nsp:{low}:{high}:{d.postcode}")
            out.add(f"nsd:{low}:{high}:{d.postcode[:-2]}")    # the sector: "NW12AB" -> "NW12"
    if d.postcode:      # each needs one name only: the other may be the missing field
        if fam:
            out.add(f"fp:{fam}:{d.postcode}")
        if giv:
            out.add(f"gp:{giv}:{d.postcode}")
    return out
