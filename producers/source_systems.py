"""The clinical systems carebus connects, and the identifier namespaces each one uses."""
from __future__ import annotations

from dataclasses import dataclass

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"


@dataclass(frozen=True)
class SourceSystemProfile:
    code: str            # SourceSystem enum symbol
    connector: str       # short name used in URLs, folders and dead-letter stages
    local_id_label: str  # what the system calls its patient identifier

    def identifier_system(self, ods_code: str) -> str:
        """Local ids are only unique within one organisation's instance of a system."""
        return f"urn:carebus:id:{self.connector}:{self.local_id_label}:{ods_code.upper()}"


CERNER = SourceSystemProfile("CERNER_MILLENNIUM", "cerner", "mrn")
RIO = SourceSystemProfile("RIO", "rio", "rio-id")
EMIS = SourceSystemProfile("EMIS_WEB", "emis", "emis-guid")
VISION = SourceSystemProfile("INPS_VISION", "vision", "vision-id")

BY_CONNECTOR = {p.connector: p for p in (CERNER, RIO, EMIS, VISION)}
BY_CODE = {p.code: p for p in (CERNER, RIO, EMIS, VISION)}
