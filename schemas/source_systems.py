"""The clinical systems carebus connects: everything about each one, in one table.

Connectors, record survivorship, the FHIR endpoint, the file drops, the dead-letter replay and the
simulator all read this table, so adding a system is one profile here (its code must also be a
symbol of the SourceSystem enum, schemas/avro/carebus.SourceSystem.avsc) plus a mapper if its
format is new. TPP SystmOne (the "others" among London's practices) is such an entry: it sends
FHIR Bundles as EMIS does, so the FHIR endpoint at /fhir/tpp serves it with the same mapper.
"""
from __future__ import annotations

from dataclasses import dataclass

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"

GP, ACUTE, MENTAL_HEALTH = "gp", "acute", "mental-health"
MLLP, FHIR, FILE = "mllp", "fhir", "file"


@dataclass(frozen=True)
class SourceSystemProfile:
    code: str                    # SourceSystem enum symbol
    connector: str               # short name used in URLs, folders, credentials and dead-letter stages
    local_id_label: str          # what the system calls its patient identifier
    kind: str                    # GP, ACUTE or MENTAL_HEALTH
    # Whose word wins for names, birth date, sex and the NHS number when sources disagree (lower
    # wins; then the most recent): GP systems hold the registered demographics.
    survivorship_rank: int
    transports: tuple[str, ...]  # MLLP, FHIR, FILE
    default_ods: str             # the organisation a connector assumes when a message names none
    mllp_port_offset: int | None = None   # its MLLP listener: CAREBUS_MLLP_PORT + offset
    file_suffix: str | None = None        # what its bulk drop folder picks up

    def identifier_system(self, ods_code: str) -> str:
        """Local ids are only unique within one organisation's instance of a system."""
        return f"urn:carebus:id:{self.connector}:{self.local_id_label}:{ods_code.upper()}"

    @property
    def is_gp(self) -> bool:
        return self.kind == GP


EMIS = SourceSystemProfile("EMIS_WEB", "emis", "emis-guid", GP, 0, (FHIR, FILE), "F84001", file_suffix=".json")
VISION = SourceSystemProfile("INPS_VISION", "vision", "vision-id", GP, 0, (FILE, FHIR), "F84700", file_suffix=".csv")
TPP = SourceSystemProfile("TPP_SYSTMONE", "tpp", "systmone-id", GP, 0, (FHIR,), "Y00001")
CERNER = SourceSystemProfile("CERNER_MILLENNIUM", "cerner", "mrn", ACUTE, 2, (MLLP, FHIR), "RAL", mllp_port_offset=0)
RIO = SourceSystemProfile("RIO", "rio", "rio-id", MENTAL_HEALTH, 3, (MLLP, FHIR), "RAT", mllp_port_offset=1)

PROFILES = (EMIS, VISION, TPP, CERNER, RIO)
BY_CONNECTOR = {p.connector: p for p in PROFILES}
BY_CODE = {p.code: p for p in PROFILES}
# Facts from no profiled system: OTHER (a system without a profile) ranks after GP systems,
# CAREBUS (the bus's own facts) last.
UNPROFILED_RANK = {"OTHER": 1, "CAREBUS": 4}


def survivorship_rank(code: str) -> int:
    profile = BY_CODE.get(code)
    return profile.survivorship_rank if profile else UNPROFILED_RANK.get(code, 5)


def speaking(transport: str) -> tuple[SourceSystemProfile, ...]:
    """The systems that send over this transport (MLLP, FHIR, FILE)."""
    return tuple(p for p in PROFILES if transport in p.transports)
