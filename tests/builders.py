"""Builders of test data: HL7 messages, demographics, populations and source states. Pure: no I/O.

Each test patient gets its own name, birth date, address and NHS number from its local id, so
patients of different tests never look alike to the linker."""
from __future__ import annotations

import hashlib
import random
from datetime import date

from producers import hl7v2_mapper
from schemas.source_systems import CERNER
from simulator import population as pop
from streams import record_builder
from streams.fellegi_sunter import Parameters
from streams.record_comparison import Demographics, from_patient


def given_and_born(local_id: str) -> tuple[str, str]:
    """The given name and birth date (YYYYMMDD) `adt` gives this local id: each test patient gets
    its own, so patients of different tests never look alike to the probabilistic linker."""
    digest = hashlib.sha256(local_id.encode()).digest()
    given = ["JOHN", "AMIR", "KOFI", "LENA", "MARTA", "OWEN", "PRIYA", "SEAN"][digest[0] % 8]
    return given, f"{1930 + digest[1] % 80}{1 + digest[2] % 12:02d}{1 + digest[3] % 28:02d}"


def home_of(local_id: str) -> str:
    """The address (HL7 XAD) `adt` gives this local id. One shared address made every test patient
    a neighbour of every other: a record without an NHS number, sharing a given name and the
    address, chained 29 test patients into one person (the linker's weakness is issue 9's)."""
    digest = hashlib.sha256(f"home|{local_id}".encode()).digest()
    postcode = f"E{1 + digest[0] % 20} {digest[1] % 10}{chr(65 + digest[2] % 26)}{chr(65 + digest[3] % 26)}"
    return f"{1 + digest[4] % 200} HIGH ST^^LONDON^^{postcode}"


def adt(local_id: str, control: str, nhs: str = "9434765919", trigger: str = "A01", extra: str = "",
        dob: str | None = None, family: str = "SMITH") -> bytes:
    given, born = given_and_born(local_id)
    dob = dob or born
    return (f"MSH|^~\\&|CERNER|RAL|CAREBUS|LONDON|20261124101500||ADT^{trigger}^ADT_A01|{control}|P|2.4\r"
            f"EVN|{trigger}|20261124101000\r"
            f"PID|1||{local_id}^^^RAL^MR~{nhs}^^^NHS^NH||{family}^{given}||{dob}|M|||{home_of(local_id)}\r"
            f"PV1|1|I|WARD1^BED2||||||||||||||||V{control}\r{extra}").encode()


def cerner_key(local_id: str) -> str:
    return f"CERNER_MILLENNIUM|urn:carebus:id:cerner:mrn:RAL|{local_id}"


def unique_nhs(unique: str) -> str:
    from producers import nhs_number
    import random
    return nhs_number.generate(random.Random(unique))


def own_identity(seed: str) -> dict[str, str]:
    """A patient's own NHS number and surname for `adt`: its defaults would make every patient
    one person, or a crowd of Smiths at one address whom the linker may join to an earlier test's
    patient (whose record versions then continue), and skew the linkage parameters later tests
    estimate from the topic."""
    import hashlib

    letters = "".join(chr(ord("A") + b % 26) for b in hashlib.sha256(seed.encode()).digest()[:7])
    return {"nhs": unique_nhs(seed), "family": letters}


PARAMS = Parameters.load()


POPULATION = pop.build(400, seed=21, hospital_rate=0.6, mental_health_rate=0.3,
                       rates=pop.FaultRates(0.15, 0.05, 0.15, 0.05, 0.05, 0.2, 0.05))


def demo(rec) -> Demographics:
    return from_patient(pop.source_key(rec), pop.patient_dict(rec))


def person(key: str, given: str = "AMARA", family: str = "OKONKWO-BELL", dob: date | None = date(1961, 4, 17),
           sex: str | None = "FEMALE", postcode: str | None = "N78AA", nhs: str | None = None) -> Demographics:
    return Demographics(key, nhs, given, family, dob, sex, postcode)


def tangled_population(seed: int, n: int = 30) -> list[Demographics]:
    """Records drawn from a few values each, so that chains, relatives, mistyped NHS numbers and
    missing fields meet in the same blocks: where the coherence rule has to choose."""
    rnd = random.Random(seed)
    givens = ["MARTA", "MARTHA", "ZARA", "GRACE", ""]
    families = ["SMITH", "SMYTHE", "OKAFOR", ""]
    dobs = [date(1980, 1, 1), date(1980, 1, 10), date(1955, 6, 7), date(1979, 12, 31), None]
    numbers = [None, None, None, "9434765919", "9434765870", "4010232137"]
    postcodes = ["NW12AB", "NW12AD", None]
    return [Demographics(f"k{i:03d}", rnd.choice(numbers), rnd.choice(givens), rnd.choice(families),
                         rnd.choice(dobs), rnd.choice(["FEMALE", None]), rnd.choice(postcodes)) for i in range(n)]


ALLERGY = "AL1|1|DA|91936005^Penicillin^SCT|SV|Rash\r"


def state_of(*messages: bytes) -> dict:
    events = [hl7v2_mapper.map_message(m, CERNER, "RAL", 1000 + i).event for i, m in enumerate(messages)]
    state = record_builder.new_source_state("CERNER_MILLENNIUM|urn:x|R1", events[0])
    for e in events:
        state, _ = record_builder.apply_event(state, e)
    return state
