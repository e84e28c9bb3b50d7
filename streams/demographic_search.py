"""Finding people by name and birth date (the PDQm-style FHIR search). Pure: no I/O.

A reading system that has no NHS number asks "family SMITH, born 1970-01-02". The search looks
where the linker looks (the query's own blocking keys, so typos and nicknames are found the way
linking finds them), keeps the records on which every field asked for agrees at least as well
as "typo, nickname or sounds alike", and ranks them by the Fellegi-Sunter match probability
over the fields asked for: the same evidence the linker weighs.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from schemas.errors import CarebusError
from streams import blocking
from streams.fellegi_sunter import Parameters
from streams.record_comparison import BIRTH_DATE, FAMILY, GIVEN, POSTCODE, SEX, Demographics, compare

# What "agrees" means for each searched field.
AGREES = {"given": GIVEN.alike, "family": FAMILY.alike, "birth_date": BIRTH_DATE.typo, "postcode": POSTCODE.sector,
          "sex": SEX.same}

# Minimum criteria, as PDQm lets a supplier set them: a birth date and a name. Fewer would list
# half a borough, and a search is itself a disclosure.
MINIMUM_CRITERIA = "birthdate and at least one of family or given"
SEARCH_FIELDS = ("given", "family", "birth_date", "sex", "postcode")


class SearchCriteriaError(CarebusError, ValueError):
    """The query does not meet the minimum criteria or cannot be read."""


@dataclass(frozen=True)
class Query:
    family: str = ""
    given: str = ""
    birth_date: date | None = None
    sex: str | None = None       # MALE / FEMALE
    postcode: str | None = None

    def as_demographics(self) -> Demographics:
        return Demographics("query", None, self.given.upper().strip(), self.family.upper().strip(), self.birth_date,
                            self.sex, (self.postcode or "").replace(" ", "").upper() or None)


def parse_query(family: str = "", given: str = "", birthdate: str = "", gender: str = "",
                postcode: str = "") -> Query:
    """From FHIR search parameters (birthdate YYYY-MM-DD, gender male/female)."""
    try:
        born = date.fromisoformat(birthdate) if birthdate else None
    except ValueError:
        raise SearchCriteriaError("birthdate must be a full date, YYYY-MM-DD") from None
    sex = {"male": "MALE", "female": "FEMALE", "": None}.get(gender.lower())
    if gender and sex is None:
        raise SearchCriteriaError("gender must be male or female")
    query = Query(family.strip(), given.strip(), born, sex, postcode.strip() or None)
    if born is None or not (query.family or query.given):
        raise SearchCriteriaError(f"a demographic search needs {MINIMUM_CRITERIA}")
    return query


def blocks_for(query: Query) -> list[str]:
    """Where to look: the blocks a record with exactly these demographics would be in."""
    return sorted(blocking.keys(query.as_demographics()))


def rank(query: Query, candidates: Iterable[Demographics], params: Parameters) -> list[tuple[str, float]]:
    """(source key, match probability) of the records that agree with every field asked for,
    best first (then the closest spelling, then by key, so the order is stable)."""
    q = query.as_demographics()
    asked = [f for f in SEARCH_FIELDS if getattr(q, f)]
    found = []
    for c in candidates:
        vector = compare(q, c)
        # "Agrees": a typo, nickname or sound-alike for names, one mistyped digit for the birth
        # date, the same sector for a postcode, the same sex.
        if all(vector[f] is not None and vector[f] >= AGREES[f] for f in asked):
            # No name-frequency adjustment: every exact match agrees with the same query value, so
            # it would only lift rarer *misspellings* above the exact name asked for.
            # Levels break ties: fitted weights may pool "typo" with "exact" (they are as likely
            # among matches), but a searcher expects the exact spelling first.
            agreement = sum(vector[f] for f in asked)
            found.append((-params.posterior({f: vector[f] for f in asked}), -agreement, c.key))
    return [(key, -p) for p, _, key in sorted(found)]
