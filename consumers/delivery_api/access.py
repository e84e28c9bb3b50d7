"""What every route of the delivery service shares: who the caller is, what role it needs, the
access-audit record made before any data leaves, and what part of a record a client may read."""
from __future__ import annotations

from typing import Any, TYPE_CHECKING

from fastapi import HTTPException

from consumers import access_audit
from consumers.subscription_scope import ClientScope, Subscription, visible_change
from foundation.api_auth import Client, authenticator
from schemas import registry
from schemas.source_key import source_key


if TYPE_CHECKING:
    from consumers.delivery_service import DeliveryService


def scope_of(client: Client) -> ClientScope:
    return ClientScope(client.client_id, client.ods_codes, client.withheld_sections)


class Access:
    def __init__(self, service: DeliveryService) -> None:
        self.service = service
        self.caller = authenticator(service.credentials)

    @staticmethod
    def require(client: Client, role: str) -> None:
        if not client.has(role):
            raise HTTPException(403, f"this client lacks the {role} role")

    async def audited(self, client: Client, action: str, persons: list[str], why: str | None,
                      query: dict[str, str], outcome: str = "shown") -> None:
        """The read is on carebus.access-audit.v1 before anything is returned (else 503, no data)."""
        try:
            await access_audit.record_access(self.service.producer, access_audit.access_event(
                client, action, persons, why, query, outcome))
        except Exception as exc:  # noqa: BLE001 - no audit record, no data
            raise HTTPException(503, "the access could not be recorded; retry shortly") from exc

    @staticmethod
    def readable(client: Client, rec: dict[str, Any]) -> dict[str, Any] | None:
        """The record as this client may see it (auditors: whole), None when outside its scope."""
        if client.has("auditor"):
            return rec
        everything = Subscription("direct-read", client.client_id, "sse", "")
        visible = visible_change({"event_id": "", "person_id": rec["person_id"], "version": rec["version"],
                                  "change_type": "updated", "changed_sections": [], "changed_at": rec["updated_at"],
                                  "record": rec}, everything, scope_of(client))
        return None if visible is None else visible["record"]

    def find_persons(self, nhs_number: str, identifier: str, person_id: str) -> dict[str, list[str]]:
        """Persons by NHS number, by a local identifier (<system>|<value>) or by id: person -> its source keys."""
        graph = self.service.graph()
        if nhs_number:
            keys = graph.keys_with_nhs_number(nhs_number.replace(" ", ""))
        elif identifier:
            system, _, value = identifier.rpartition("|")
            keys = [source_key(code, system, value) for code in registry.source_systems()] if system and value else []
        else:
            members = graph.members(person_id)
            return {person_id: members} if members else {}
        found: dict[str, list[str]] = {}
        for key, person in graph.persons_of(keys).items():
            found.setdefault(person, []).append(key)
        return {p: sorted(k) for p, k in sorted(found.items())}
