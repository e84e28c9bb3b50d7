"""Blocking keys: a record is compared only with records sharing at least one key. Pure.

Several independent keys, so that any single fault (typo in the birth date, a nickname, a
swapped name, a move) still leaves one key in common with the true match, while each key
stays selective enough that a record meets tens of candidates, not the population.
"""
from __future__ import annotations

import jellyfish

from streams.nicknames import canonical_given
from streams.record_comparison import Demographics


def keys(d: Demographics) -> set[str]:
    out: set[str] = set()
    if d.nhs:
        out.add(f"nhs:{d.nhs}")
    fam = jellyfish.soundex(d.family_parts[0]) if d.family_parts else ""
    giv = jellyfish.soundex(canonical_given(d.given)) if d.given else ""
    if d.birth_date is not None:
        dob = d.birth_date.isoformat()
        if fam:
            out.add(f"fam-year:{fam}:{d.birth_date.year}")
            out.add(f"fam-mmdd:{fam}:{d.birth_date:%m%d}")       # survives a year typo
        if giv:
            out.add(f"giv-dob:{giv}:{dob}")                       # survives a surname change
            out.add(f"giv-year:{giv}:{d.birth_date.year}")        # for given/family swapped
        if d.postcode:
            out.add(f"dob-district:{dob}:{d.postcode[:-3]}")
    if fam and d.postcode:
        out.add(f"fam-postcode:{fam}:{d.postcode}")              # survives a birth-date typo
    # Given/family swapped: index the family name as if it were a given name too.
    if d.family_parts and d.birth_date is not None:
        out.add(f"giv-year:{jellyfish.soundex(canonical_given(d.family_parts[0]))}:{d.birth_date.year}")
    return out
