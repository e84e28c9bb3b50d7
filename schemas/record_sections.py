"""The clinical sections of a SharedRecord (schemas/avro), in the record's order:
the one list that record building, scopes, audit and FHIR mapping share."""
from __future__ import annotations

CLINICAL_SECTIONS = ("encounters", "problems", "medications", "allergies", "observations", "referrals", "documents")
