"""The review queue: what waits for a person, and their decisions (published for the link workers)."""
from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, HTTPException

from consumers.delivery_api.access import Access
from foundation.api_auth import Client
from foundation.clock import now_ms
from schemas import codec, messages
from schemas.topics import LINK_REVIEW, review_decision_key
from streams.identity_store import ReviewQueue


def router(access: Access) -> APIRouter:
    r = APIRouter()
    service = access.service

    @r.get("/reviews")
    async def reviews(client: Client = Depends(access.caller)) -> list[dict[str, Any]]:
        access.require(client, "reviewer")
        return await ReviewQueue(service.redis).waiting()

    @r.post("/reviews/{review_id}/{decision}", status_code=202)
    async def decide(review_id: str, decision: str, client: Client = Depends(access.caller)) -> dict[str, str]:
        access.require(client, "reviewer")
        if decision not in ("accept", "reject"):
            raise HTTPException(400, "decision is accept or reject")
        review = await ReviewQueue(service.redis).review(review_id)
        if review is None:
            raise HTTPException(404, "no such review")
        event = messages.identity_event(
            str(uuid.uuid4()), "REVIEW_ACCEPTED" if decision == "accept" else "REVIEW_REJECTED",
            review.get("person_a") or "", recorded_at=now_ms(), caused_by=review_id,
            other_person_id=review.get("person_b"), score=review.get("score"), method="review",
            reasons=[f"decided by {client.client_id}"])
        await service.producer.send(LINK_REVIEW.name, codec.encode("IdentityEvent", event),
                                    key=review_decision_key(review), headers=codec.headers("IdentityEvent"))
        return {"status": "queued", "event_id": event["event_id"]}

    return r
