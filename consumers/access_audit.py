"""The record of who read whose data (carebus.access-audit.v1). Pure builder, thin publisher.

Every audit and record read is recorded before the data is returned: if the record cannot be
written, the caller gets 503 and no data, as an information-governance audit trail requires.
Identifiers the caller searched by are stored as keyed pseudonyms, never in clear.
"""
from __future__ import annotations

import uuid
from typing import Any

from foundation.api_auth import Client
from foundation.durable_producer import DurableProducer
from foundation.log_privacy import pseudonym
from foundation.clock import now_ms
from schemas import codec
from schemas.topics import ACCESS_AUDIT

NOT_GIVEN = "not given"


def access_event(client: Client, action: str, person_ids: list[str], purpose: str | None,
                 query: dict[str, str], outcome: str) -> dict[str, Any]:
    """`query` values that identify a patient (nhs_number, identifier) are pseudonymised here."""
    safe = {k: (pseudonym(v) if k in ("nhs_number", "identifier") else v) for k, v in query.items() if v}
    return {"access_id": str(uuid.uuid4()), "at": now_ms(), "client_id": client.client_id,
            "roles": sorted(client.roles), "action": action, "person_ids": sorted(person_ids),
            "purpose": (purpose or "").strip()[:500] or NOT_GIVEN, "query": safe, "outcome": outcome}


async def record_access(producer: DurableProducer, event: dict[str, Any]) -> None:
    """Durable (acks=all) before the caller sees anything; raises if Kafka does not confirm."""
    await producer.send(ACCESS_AUDIT.name, codec.encode("AccessEvent", event), key=event["client_id"],
                        headers=codec.headers("AccessEvent"))
