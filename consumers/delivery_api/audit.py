"""Audit: find a person, their timeline of source events, and the record as it stood at any moment."""
from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import PlainTextResponse, Response

from consumers import audit_trail
from consumers.change_reader import time_ms as _ms
from consumers.delivery_api.access import Access
from consumers.notification_format import webhook_body
from consumers.subscription_scope import visible_change
from foundation.api_auth import Client


def router(access: Access) -> APIRouter:
    r = APIRouter()
    service = access.service

    @r.get("/audit/persons")
    async def audit_find(nhs_number: str = "", identifier: str = Query("", description="<identifier system>|<value>"),
                         person_id: str = "", why: str | None = None,
                         client: Client = Depends(access.caller)) -> list[dict[str, Any]]:
        """Who a person is in the index: by NHS number, by a local identifier, or by person id."""
        access.require(client, "auditor")
        if sum(bool(x) for x in (nhs_number, identifier, person_id)) != 1:
            raise HTTPException(400, "give exactly one of nhs_number, identifier (system|value), person_id")
        found = await asyncio.to_thread(access.find_persons, nhs_number, identifier, person_id)
        await access.audited(client, "find", list(found), why,
                      {"nhs_number": nhs_number, "identifier": identifier, "person_id": person_id},
                      "shown" if found else "not-found")
        return [{"person_id": p, "sources": keys} for p, keys in found.items()]

    @r.get("/audit/persons/{person_id}/timeline")
    async def audit_timeline(person_id: str, format: str = Query("json"), since: str = Query("0"),
                             why: str | None = None, client: Client = Depends(access.caller)) -> Response:
        access.require(client, "auditor")
        members = set(await asyncio.to_thread(service.graph().members, person_id))
        await access.audited(client, "timeline", [person_id], why, {"since": since, "format": format})
        entries = await asyncio.to_thread(audit_trail.timeline, service.settings, person_id, members, _ms(since))
        if format == "csv":
            return PlainTextResponse(audit_trail.to_csv(entries), media_type="text/csv")
        return Response(audit_trail.to_json(entries), media_type="application/json")

    @r.get("/audit/persons/{person_id}/as-of")
    async def audit_as_of(person_id: str, at: str, subscription_id: str | None = None, why: str | None = None,
                          client: Client = Depends(access.caller)) -> dict[str, Any]:
        access.require(client, "auditor")
        await access.audited(client, "as-of", [person_id], why, {"at": at, "subscription_id": subscription_id or ""})
        change = await asyncio.to_thread(audit_trail.record_as_of, service.settings, person_id, _ms(at))
        if change is None:
            raise HTTPException(404, "no record for this person at that time")
        if subscription_id:
            found = await service.store.get(subscription_id)
            if found is None:
                raise HTTPException(404, "no such subscription")
            sub = found[0]
            visible = visible_change(change, sub, service._client_scope(sub.client_id))
            if visible is None:
                raise HTTPException(404, "that subscriber was not sent this person")
            return json.loads(webhook_body(visible, subscription_id))
        return change

    return r
