"""Subscriptions: create, list, delete; the SSE stream; redelivery of a time range and of parked changes."""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from consumers.change_reader import open_subscription_consumer, read_range
from consumers.channels import CHANNELS, sse
from consumers.delivery_api.access import Access, scope_of
from consumers.push_delivery import Dispatcher
from consumers.repeated_changes import RepeatedChanges
from consumers.subscription_scope import CLINICAL_SECTIONS, visible_change
from consumers.webhook_address_guard import WebhookAddressRefused, webhook_policy
from foundation.api_auth import Client
from schemas import codec
from schemas.topics import DLQ_DELIVERY, PATIENT_CHANGES


CHANGE_TYPES = ("created", "updated", "merged", "unmerged")


class SubscriptionRequest(BaseModel):
    channel: str = Field(description="webhook | fhir-rest-hook | sse")
    endpoint: str = ""
    change_types: list[str] = []
    ods_codes: list[str] = []
    persons: list[str] = []
    sections: list[str] = []
    # 0 (the default): a failing subscriber's deliveries wait, retried with capped backoff, and
    # nothing is skipped. n: after n attempts a change is parked (and the patient's later changes
    # are held behind it until redelivery), so other patients' changes go on.
    max_attempts: int = Field(0, ge=0, le=50)
    # fhir-rest-hook only: more than 1 lets one notification (a history Bundle) carry up to this
    # many changes, in log order: fewer requests when a subscriber has much to catch up on.
    max_per_notification: int = Field(1, ge=1, le=100)


class TimeRange(BaseModel):
    from_ms: int = Field(alias="from")
    to_ms: int = Field(alias="to")


def router(access: Access) -> APIRouter:
    r = APIRouter()
    service = access.service

    # ---- subscriptions ---------------------------------------------------------------------
    @r.post("/subscriptions", status_code=201)
    async def create_subscription(req: SubscriptionRequest, client: Client = Depends(access.caller)) -> dict[str, Any]:
        access.require(client, "subscriber")
        if req.channel not in CHANNELS:
            raise HTTPException(400, f"channel must be one of {', '.join(CHANNELS)}")
        if CHANNELS[req.channel].pushes:
            try:
                await webhook_policy(service.settings).check(req.endpoint)
            except WebhookAddressRefused as exc:
                raise HTTPException(400, f"endpoint refused: {exc}") from None
        if req.max_per_notification > 1 and req.channel != "fhir-rest-hook":
            raise HTTPException(400, "only fhir-rest-hook notifications carry several changes (max_per_notification)")
        bad_types = set(req.change_types) - set(CHANGE_TYPES)
        bad_sections = set(req.sections) - set(CLINICAL_SECTIONS) - {"demographics"}
        if bad_types or bad_sections:
            raise HTTPException(400, f"unknown change types or sections: {sorted(bad_types | bad_sections)}")
        outside = [o for o in req.ods_codes if not client.may_see_ods(o)]
        if outside:
            raise HTTPException(403, f"organisations outside this client's scope: {outside}")
        held = sum(1 for s, _, _ in await service.store.all() if s.client_id == client.client_id)
        if held >= service.settings.max_subscriptions_per_client:
            raise HTTPException(429, f"this client holds {held} subscriptions, its quota "
                                     f"(CAREBUS_MAX_SUBSCRIPTIONS_PER_CLIENT); delete one first")
        sub, secret, created = await service.store.create(
            client.client_id, req.channel, req.endpoint, set(req.change_types), set(req.ods_codes), set(req.persons),
            set(req.sections), req.max_attempts, req.max_per_notification)
        service.start_dispatcher(sub, secret, created)
        return {"id": sub.subscription_id, "secret": secret, "channel": sub.channel, "created_at": created}

    @r.get("/subscriptions")
    async def list_subscriptions(client: Client = Depends(access.caller)) -> list[dict[str, Any]]:
        access.require(client, "subscriber")
        out = []
        for sub, _, created in await service.store.all():
            if sub.client_id == client.client_id:
                out.append({"id": sub.subscription_id, "channel": sub.channel, "endpoint": sub.endpoint,
                            "created_at": created, "stats": await service.store.stats(sub.subscription_id)})
        return out

    @r.delete("/subscriptions/{subscription_id}", status_code=204)
    async def delete_subscription(subscription_id: str, client: Client = Depends(access.caller)) -> Response:
        await service.owned(subscription_id, client)
        await service.stop_dispatcher(subscription_id)
        await service.store.delete(subscription_id)
        return Response(status_code=204)

    @r.get("/subscriptions/{subscription_id}/stream")
    async def stream(subscription_id: str, request: Request,
                     client: Client = Depends(access.caller)) -> StreamingResponse:
        sub, _, created = await service.owned(subscription_id, client)
        if CHANNELS[sub.channel].pushes:
            raise HTTPException(400, "this subscription pushes; only sse subscriptions stream")
        scope = scope_of(client)

        async def events():
            thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sse-{subscription_id[:8]}")
            loop = asyncio.get_running_loop()
            consumer = await loop.run_in_executor(thread, partial(
                open_subscription_consumer, service.settings, f"carebus-sse-{subscription_id}", created))
            repeats = RepeatedChanges()
            try:
                yield ": connected\n\n"
                while not await request.is_disconnected():
                    msg = await loop.run_in_executor(thread, consumer.poll, 0.5)
                    if msg is None or msg.error():
                        continue
                    change = codec.decode(msg.value(), "RecordChange")
                    if repeats.is_repeat(change["person_id"], change["version"], change["changed_at"]):
                        visible = None     # a replayed batch's copy, or overtaken by a newer version
                    else:
                        visible = visible_change(change, sub, scope)
                    if visible is not None:
                        yield sse.event(visible, subscription_id)
                    await loop.run_in_executor(thread, partial(consumer.commit, message=msg, asynchronous=False))
            finally:
                await loop.run_in_executor(thread, consumer.close)
                thread.shutdown(wait=False)

        return StreamingResponse(events(), media_type="text/event-stream")

    @r.post("/subscriptions/{subscription_id}/redeliver")
    async def redeliver(subscription_id: str, body: TimeRange,
                        client: Client = Depends(access.caller)) -> dict[str, Any]:
        """Send again every change in [from, to] (ms); receivers de-duplicate by Idempotency-Key."""
        sub, secret, created = await service.owned(subscription_id, client)
        if not CHANNELS[sub.channel].pushes:
            raise HTTPException(400, "sse subscriptions replay by reconnecting")
        dispatcher = Dispatcher(service.settings, service.store, service.producer, service.http, sub, secret, created,
                                scope_of(client), service.retry)
        values = await asyncio.to_thread(lambda: [m.value() for m in read_range(service.settings, PATIENT_CHANGES.name,
                                                                                 body.from_ms, body.to_ms)])
        outcomes: dict[str, int] = {}
        for v in values:
            outcome = await dispatcher.handle(v)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        await dispatcher.close()
        return {"read": len(values), "outcomes": outcomes}

    @r.post("/subscriptions/{subscription_id}/dead-letters/redeliver")
    async def redeliver_parked(subscription_id: str, client: Client = Depends(access.caller)) -> dict[str, Any]:
        sub, secret, created = await service.owned(subscription_id, client)
        dispatcher = Dispatcher(service.settings, service.store, service.producer, service.http, sub, secret, created,
                                scope_of(client), service.retry)
        done_key = f"carebus:redelivered:{subscription_id}"
        outcomes: dict[str, int] = {}
        failing: set[str] = set()      # patients whose oldest parked change failed again: the rest wait
        total = 0
        # Passes until nothing new: changes parked by the live dispatcher meanwhile are taken too.
        while True:
            msgs = await asyncio.to_thread(lambda: list(read_range(service.settings, DLQ_DELIVERY.name, 0, 2**62,
                                                                   key=subscription_id)))
            total = len(msgs)
            progress = False
            for m in msgs:
                dead = codec.decode(m.value(), "DeadLetter")
                if await service.redis.sismember(done_key, dead["dead_letter_id"]):
                    continue
                person = codec.decode(dead["payload"], "RecordChange")["person_id"]
                if person in failing:
                    continue           # stays parked, in its place, behind the one that failed
                outcome = await dispatcher.handle(dead["payload"], redelivery=True)
                if outcome == "failed":
                    failing.add(person)
                    continue
                await service.redis.sadd(done_key, dead["dead_letter_id"])
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                progress = True
            if not progress:
                break
        # Every parked change left belongs to a failing patient: the others are held no longer.
        await service.store.release_all_but(subscription_id, failing)
        await dispatcher.close()
        return {"parked": total, "outcomes": outcomes, "still_parked_patients": len(failing)}

    return r
