"""A synthetic London population and the source records each system holds about it. Pure: no I/O.

Every person gets a test-range NHS number (9xx, never a real patient's), a home in a London
postcode district, a GP practice (EMIS Web or INPS Vision in the proportions London has), and
maybe hospital (Cerner Millennium) and mental-health/community (RiO) episodes. Each system's
copy of a person is a *source record* with its own local id, to which data-quality faults are
applied at configurable rates. `truth` says which source records are the same person.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from datetime import date, timedelta

from producers import nhs_number
from schemas.source_key import source_key as key_of
from schemas.source_systems import BY_CODE

GIVEN_MALE = ["James", "Mohammed", "Oliver", "William", "Daniel", "Thomas", "Joseph", "Samuel", "Adam", "Michael",
              "Robert", "Richard", "Anthony", "Christopher", "Edward", "Kwame", "Arjun", "Ibrahim", "Luca", "Jakub"]
GIVEN_FEMALE = ["Olivia", "Amelia", "Isla", "Fatima", "Sophia", "Margaret", "Elizabeth", "Catherine", "Jennifer",
                "Susan", "Rebecca", "Priya", "Aisha", "Zofia", "Grace", "Abena", "Victoria", "Patricia", "Deborah", "Chloe"]
FAMILY = ["Smith", "Jones", "Williams", "Brown", "Taylor", "Khan", "Patel", "Ahmed", "Begum", "Davies", "Wilson",
          "Evans", "Thomas", "Johnson", "Roberts", "Walker", "Wright", "Robinson", "Thompson", "White", "Hughes",
          "Edwards", "Green", "Hall", "Wood", "Harris", "Lewis", "Martin", "Jackson", "Clarke", "Okafor", "Mensah",
          "Nowak", "Kowalski", "Rossi", "Singh", "Hussain", "Ali", "Osei", "Murphy", "O'Brien", "Campbell"]
NICKNAMES = {"William": "Bill", "Robert": "Bob", "Richard": "Dick", "Anthony": "Tony", "Christopher": "Chris",
             "Edward": "Ted", "Michael": "Mike", "Thomas": "Tom", "Daniel": "Dan", "Joseph": "Joe", "Samuel": "Sam",
             "James": "Jim", "Margaret": "Peggy", "Elizabeth": "Liz", "Catherine": "Kate", "Jennifer": "Jenny",
             "Susan": "Sue", "Rebecca": "Becky", "Victoria": "Vicky", "Patricia": "Pat", "Deborah": "Debbie"}
DISTRICTS = ["NW1", "NW3", "NW5", "N1", "N7", "N19", "E1", "E2", "E8", "E14", "E15", "SE1", "SE5", "SE15", "SW2",
             "SW9", "SW11", "W2", "W9", "W10", "WC1", "EC1", "N15", "N17", "E17", "SE18", "SW17", "W12", "HA0", "UB1"]
STREETS = ["High Street", "Church Road", "Station Road", "Victoria Road", "Green Lane", "Park Road", "Mill Lane",
           "Kingsland Road", "Holloway Road", "Old Kent Road", "Brixton Hill", "Harrow Road", "Mile End Road"]
CERNER_TRUSTS = ["RAL", "RRV", "R1H", "RJ1"]     # Royal Free, UCLH, Barts, Guy's and St Thomas'
RIO_TRUSTS = ["RAT", "RRP", "TAF"]               # NELFT, Barnet Enfield & Haringey, Camden & Islington


@dataclass(frozen=True)
class FaultRates:
    missing_nhs: float = 0.05
    mistyped_nhs: float = 0.02
    nickname: float = 0.05
    swapped_names: float = 0.02
    double_barrelled: float = 0.02
    moved_address: float = 0.08
    birth_date_typo: float = 0.02


@dataclass(frozen=True)
class Person:
    person_id: str
    nhs_number: str
    given: str
    family: str
    birth_date: date
    sex: str            # M / F
    house: int
    street: str
    postcode: str
    practice_ods: str
    gp_system: str      # EMIS_WEB | INPS_VISION


@dataclass(frozen=True)
class SourceRecord:
    system: str         # EMIS_WEB | INPS_VISION | CERNER_MILLENNIUM | RIO
    ods: str
    local_id: str
    person_id: str
    nhs_number: str | None
    given: str
    family: str
    birth_date: date
    sex: str
    house: int
    street: str
    postcode: str
    practice_ods: str
    faults: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class Population:
    people: list[Person]
    records: list[SourceRecord]

    def truth(self) -> list[dict[str, str]]:
        return [{"system": r.system, "ods": r.ods, "local_id": r.local_id, "person_id": r.person_id}
                for r in self.records]


def _practices(rng: random.Random, count: int) -> list[tuple[str, str]]:
    # London: ~1,100 EMIS Web and ~300 Vision practices (about 10% run other systems, not connected yet).
    out = []
    for i in range(count):
        system = "EMIS_WEB" if rng.random() < 1100 / 1400 else "INPS_VISION"
        out.append((f"F{84000 + i:05d}" if system == "EMIS_WEB" else f"E{87000 + i:05d}", system))
    return out


def make_person(rng: random.Random, index: int, practices: list[tuple[str, str]]) -> Person:
    sex = rng.choice("MF")
    given = rng.choice(GIVEN_MALE if sex == "M" else GIVEN_FEMALE)
    born = date(1930, 1, 1) + timedelta(days=rng.randrange(0, 365 * 93))
    district = rng.choice(DISTRICTS)
    ods, system = rng.choice(practices)
    return Person(f"P{index:08d}", nhs_number.generate(rng), given, rng.choice(FAMILY), born, sex,
                  rng.randrange(1, 300), rng.choice(STREETS),
                  f"{district} {rng.randrange(1, 10)}{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}",
                  ods, system)


def _mistype(rng: random.Random, number: str) -> str:
    digits = list(number)
    i = rng.randrange(10)
    digits[i] = str((int(digits[i]) + rng.randrange(1, 10)) % 10)
    return "".join(digits)


def apply_faults(rng: random.Random, rec: SourceRecord, rates: FaultRates) -> SourceRecord:
    faults = []
    if rng.random() < rates.missing_nhs:
        rec, faults = replace(rec, nhs_number=None), faults + ["missing_nhs"]
    elif rng.random() < rates.mistyped_nhs:
        rec, faults = replace(rec, nhs_number=_mistype(rng, rec.nhs_number or "")), faults + ["mistyped_nhs"]
    if rng.random() < rates.nickname and rec.given in NICKNAMES:
        rec, faults = replace(rec, given=NICKNAMES[rec.given]), faults + ["nickname"]
    if rng.random() < rates.swapped_names:
        rec, faults = replace(rec, given=rec.family, family=rec.given), faults + ["swapped_names"]
    if rng.random() < rates.double_barrelled:
        rec, faults = replace(rec, family=f"{rec.family}-{rng.choice(FAMILY)}"), faults + ["double_barrelled"]
    if rng.random() < rates.moved_address:
        rec = replace(rec, house=rng.randrange(1, 300), street=rng.choice(STREETS),
                      postcode=f"{rng.choice(DISTRICTS)} {rng.randrange(1, 10)}AB")
        faults.append("moved_address")
    if rng.random() < rates.birth_date_typo:
        b = rec.birth_date
        if b.day <= 12 and b.day != b.month:
            typo = b.replace(month=b.day, day=b.month)       # day/month transposed
        else:
            typo = b + timedelta(days=rng.choice([-1, 1, 10, -10]))
        rec, faults = replace(rec, birth_date=typo), faults + ["birth_date_typo"]
    return replace(rec, faults=tuple(faults))


def build(people: int, seed: int = 7, rates: FaultRates = FaultRates(), practices: int = 200,
          hospital_rate: float = 0.35, mental_health_rate: float = 0.12) -> Population:
    rng = random.Random(seed)
    practice_list = _practices(rng, practices)
    persons = [make_person(rng, i, practice_list) for i in range(people)]
    records: list[SourceRecord] = []
    for p in persons:
        base = dict(person_id=p.person_id, nhs_number=p.nhs_number, given=p.given, family=p.family,
                    birth_date=p.birth_date, sex=p.sex, house=p.house, street=p.street, postcode=p.postcode,
                    practice_ods=p.practice_ods)
        gp_local = f"{'EM' if p.gp_system == 'EMIS_WEB' else 'VS'}{rng.randrange(10**9):09d}"
        # The GP record is the best-kept copy; faults are rarer there than in secondary care.
        records.append(SourceRecord(system=p.gp_system, ods=p.practice_ods, local_id=gp_local, **base))
        if rng.random() < hospital_rate:
            rec = SourceRecord(system="CERNER_MILLENNIUM", ods=rng.choice(CERNER_TRUSTS),
                               local_id=f"MRN{rng.randrange(10**8):08d}", **base)
            records.append(apply_faults(rng, rec, rates))
        if rng.random() < mental_health_rate:
            rec = SourceRecord(system="RIO", ods=rng.choice(RIO_TRUSTS), local_id=f"RIO{rng.randrange(10**7):07d}", **base)
            records.append(apply_faults(rng, rec, rates))
    return Population(persons, records)


def source_key(rec: SourceRecord) -> str:
    """The key the connectors give this record on carebus.source-events.v1."""
    return key_of(rec.system, BY_CODE[rec.system].identifier_system(rec.ods), rec.local_id)


def patient_dict(rec: SourceRecord) -> dict:
    """The canonical PatientIdentity the connectors would produce for this record."""
    from producers import nhs_number as nhs

    status = "ABSENT"
    if rec.nhs_number:
        status = "PRESENT_UNVERIFIED" if nhs.is_valid(rec.nhs_number) else "INVALID_CHECKSUM"
    return {"local_identifier": {"system": BY_CODE[rec.system].identifier_system(rec.ods), "value": rec.local_id},
            "other_identifiers": [], "nhs_number": rec.nhs_number, "nhs_number_status": status,
            "names": [{"use": "official", "family": rec.family, "given": [rec.given], "prefix": None}],
            "birth_date": (rec.birth_date - date(1970, 1, 1)).days, "sex": "MALE" if rec.sex == "M" else "FEMALE",
            "addresses": [{"use": "home", "lines": [f"{rec.house} {rec.street}"], "city": "London", "postcode": rec.postcode}],
            "telecom": [], "registered_practice_ods": rec.practice_ods, "deceased_at": None, "sharing_objection": False}


def source_records(n: int, practices: int = 2000) -> list[SourceRecord]:
    """At least `n` source records (the first `n` returned) from successive populations, for
    benchmarks larger than one population: seeds 1, 2, ..., local ids kept unique across them."""
    records: list[SourceRecord] = []
    seed = 1
    while len(records) < n:
        records += build(max(1000, (n - len(records)) // 2), seed=seed, practices=practices).records
        seed += 1
        records = list({source_key(x): x for x in records}.values())
    return records[:n]

