"""A person's current shared record, as the calling client may see it (audited)."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException

from consumers.delivery_api.access import Access
from foundation.api_auth import Client


def router(access: Access) -> APIRouter:
    r = APIRouter()
    service = access.service

    @r.get("/records/{person_id}")
    async def record(person_id: str, why: str | None = None, client: Client = Depends(access.caller)) -> dict[str, Any]:
        if not client.has("auditor"):
            access.require(client, "subscriber")
        rec = await service.records.record(person_id)
        visible = access.readable(client, rec) if rec is not None else None
        if visible is None:
            # The same answer for "unknown" and "outside your scope": a 403 would tell a client
            # that a person id it guessed or was given exists.
            raise HTTPException(404, "no such person in this client's scope")
        await access.audited(client, "record", [person_id], why, {})
        return visible

    return r
