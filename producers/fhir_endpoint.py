"""FHIR R4 REST endpoint for the connectors that speak FHIR (EMIS Web via GP Connect shapes, Cerner).

POST /fhir/{connector}                 a Bundle (transaction, batch, collection or message)
POST /fhir/{connector}/{resourceType}  a single resource about a patient identified in `subject`

Success answers only after Kafka has the events (acks=all): a transaction-response Bundle for a
Bundle, 201 for a resource. Invalid input answers 400/422 with an OperationOutcome naming what
is wrong and is parked on the dead-letter topic; an unavailable store answers 503 so the sender
retries. Every call needs a bearer token with the role `sender:<connector>`.
"""
from __future__ import annotations

import json
import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from foundation.api_auth import Client, CredentialStore, authenticator
from foundation.clock import now_ms
from producers import fhir_mapper
from producers.ingest_pipeline import IngestPipeline, MessageTooLarge, StoreUnavailable
from schemas.source_systems import BY_CONNECTOR, FHIR, SourceSystemProfile
from schemas.topics import DEAD_LETTER_HEAD_BYTES, MAX_INBOUND_BYTES

FHIR_JSON = "application/fhir+json"
log = logging.getLogger("carebus.fhir")


async def read_body(request: Request) -> tuple[bytes, int]:
    """The body and its size; over MAX_INBOUND_BYTES only its head is kept (memory stays bounded)."""
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= MAX_INBOUND_BYTES:
            parts.append(chunk)
        elif sum(map(len, parts)) < DEAD_LETTER_HEAD_BYTES:
            parts = [b"".join([*parts, chunk])[:DEAD_LETTER_HEAD_BYTES]]
    return b"".join(parts), size


def transaction_response(raw: bytes, event_ids: list[str]) -> dict:
    """One response entry per request entry, in order (FHIR R4 transaction/batch-response)."""
    doc = json.loads(raw)
    kind = "batch-response" if doc.get("type") == "batch" else "transaction-response"
    return {"resourceType": "Bundle", "type": kind,
            "entry": [{"response": {"status": "201 Created"}} for _ in doc.get("entry", [])],
            # Where the data went: the canonical events stored for this Bundle.
            "meta": {"tag": [{"system": "urn:carebus:event", "code": eid} for eid in event_ids]}}


def _outcome(status: int, issues: list[fhir_mapper.Issue]) -> JSONResponse:
    return JSONResponse(fhir_mapper.operation_outcome(issues), status_code=status, media_type=FHIR_JSON)


def _problem(status: int, code: str, text: str) -> JSONResponse:
    return _outcome(status, [fhir_mapper.Issue("error", code, text)])


def fhir_router(pipeline: IngestPipeline, credentials: CredentialStore) -> APIRouter:
    router = APIRouter()
    caller = authenticator(credentials)

    def _authorise(connector: str, client: Client, ods_header: str | None):
        profile = BY_CONNECTOR.get(connector)
        if profile is None or FHIR not in profile.transports:
            return None, None, _problem(404, "not-found", f"no connector named {connector!r}")
        if not client.has(f"sender:{connector}"):
            return None, None, _problem(403, "forbidden", f"client may not send as {connector}")
        ods = (ods_header or client.default_ods).upper()
        if not ods or not client.may_see_ods(ods):
            return None, None, _problem(403, "forbidden", "client may not send for that organisation (X-Ods-Code)")
        return profile, ods, None

    async def _ingest(request: Request, profile: SourceSystemProfile, ods: str, single: bool) -> JSONResponse:
        raw, size = await read_body(request)
        if size > MAX_INBOUND_BYTES:
            try:
                await pipeline.refuse_oversized(raw, size, profile, "fhir-rest", FHIR_JSON)
            except MessageTooLarge as exc:
                return _problem(413, "too-costly", str(exc))
            except StoreUnavailable:
                return _problem(503, "transient", "temporarily unable to record the rejection; retry")
        received = now_ms()
        try:
            events = fhir_mapper.map_payload(raw, profile, ods, received)
        except fhir_mapper.FHIRMappingError as exc:
            try:
                await pipeline.reject(raw, profile, "fhir-rest", FHIR_JSON, str(exc)[:1000], exc.error_code)
            except StoreUnavailable:
                return _problem(503, "transient", "temporarily unable to record the rejection; retry")
            status = 422 if exc.error_code in ("FHIR_VALIDATION", "FHIR_NO_SUBJECT", "FHIR_NO_PATIENT_ID") else 400
            return _outcome(status, exc.issues)
        except Exception as exc:  # noqa: BLE001 - a mapper bug: parked for investigation, answered in FHIR
            log.exception("mapper failure on a %s body", profile.connector)
            try:
                await pipeline.reject(raw, profile, "fhir-rest", FHIR_JSON, f"internal mapping error: {type(exc).__name__}",
                                      "MAPPER_BUG")
            except StoreUnavailable:
                return _problem(503, "transient", "temporarily unable to record the rejection; retry")
            return _problem(500, "exception", "internal mapping error; the body was parked for investigation")
        outside = fhir_mapper.outside_sender_scope(events, profile, ods)
        if outside is not None:
            try:
                await pipeline.reject(raw, profile, "fhir-rest", FHIR_JSON, outside, "FHIR_OUT_OF_SCOPE")
            except StoreUnavailable:
                return _problem(503, "transient", "temporarily unable to record the rejection; retry")
            return _problem(403, "forbidden", outside)
        try:
            result = await pipeline.publish(raw, profile, ods, "fhir-rest", FHIR_JSON, events, received)
        except MessageTooLarge as exc:
            return _problem(413, "too-costly", str(exc))
        except StoreUnavailable as exc:
            return _problem(503, "transient", str(exc))
        if single:
            return JSONResponse({"resourceType": "OperationOutcome", "issue": [
                {"severity": "information", "code": "informational", "diagnostics": f"stored as event {result.event_ids[0]}"}]},
                status_code=201, media_type=FHIR_JSON)
        return JSONResponse(transaction_response(raw, result.event_ids), status_code=200, media_type=FHIR_JSON)

    @router.post("/fhir/{connector}")
    async def post_bundle(connector: str, request: Request, client: Client = Depends(caller)) -> JSONResponse:
        profile, ods, problem = _authorise(connector, client, request.headers.get("x-ods-code"))
        if problem is not None:
            return problem
        return await _ingest(request, profile, ods, single=False)

    @router.post("/fhir/{connector}/{resource_type}")
    async def post_resource(connector: str, resource_type: str, request: Request,
                            client: Client = Depends(caller)) -> JSONResponse:
        profile, ods, problem = _authorise(connector, client, request.headers.get("x-ods-code"))
        if problem is not None:
            return problem
        if resource_type not in fhir_mapper.SUPPORTED:
            return _problem(404, "not-supported", f"{resource_type} is not accepted")
        return await _ingest(request, profile, ods, single=True)

    return router
