"""carebus's own errors, one family. Every part raises these (or a subclass of its own), so a
caller can tell carebus's refusals from a library's failure with one `except CarebusError`.

`error_code` is part of the contract: it is what a dead letter (DeadLetter.error_code), an HL7
ACK's ERR segment and a FHIR OperationOutcome carry back to the sender and to operators.
"""
from __future__ import annotations


class CarebusError(Exception):
    """Something carebus refused or could not do; `error_code` names it for machines."""

    error_code = "CAREBUS_ERROR"

    def __init__(self, reason: str = "", error_code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if error_code:
            self.error_code = error_code


class MappingError(CarebusError, ValueError):
    """Inbound data that cannot become a canonical event: the sender gets the reason back (HL7
    AE/AR with ERR, FHIR OperationOutcome) and the message is parked with `error_code`."""

    error_code = "MAPPING_FAILED"


class Unavailable(CarebusError, RuntimeError):
    """Kafka or Redis did not do what was asked in time: nothing is lost, the work is retried
    (and the sender is told to retry when it is waiting)."""

    error_code = "UNAVAILABLE"


class SetupError(CarebusError, RuntimeError):
    """A setting, a tool or a local server is missing or in the way; the message says how to fix it."""

    error_code = "SETUP"
