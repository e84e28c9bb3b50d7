"""FHIR R4 REST endpoint for the connectors that speak FHIR (EMIS Web via GP Connect shapes, Cerner).

POST /fhir/{connector}                 a Bundle (transaction, batch, collection or message)
POST /fhir/{connector}/{resourceType}  a single resource about a patient identified in `subject`

Success answers only after Kafka has the events (acks=all): a transaction-response Bundle for a
Bundle, 201 for a resource. Invalid input answers 400/422 with an OperationOutcome naming what
is wrong and is parked on the dead-letter topic; an unavailable store answers 503 so the sender
retries. Every call needs a bearer token with the role `sender:<connector>`.
"""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from carebus.api_auth import Client, CredentialStore, authenticator
from producers import fhir_mapper
from producers.ingest_pipeline import IngestPipeline, StoreUnavailable, now_ms
from producers.source_systems import BY_CONNECTOR, SourceSystemProfile

FHIR_JSON = "application/fhir+json"
MAX_BODY = 16 * 1024 * 1024


def _outcome(status: int, issues: list[fhir_mapper.Issue]) -> JSONResponse:
    return JSONResponse(fhir_mapper.operation_outcome(issues), status_code=status, media_type=FHIR_JSON)


def _problem(status: int, code: str, text: str) -> JSONResponse:
    return _outcome(status, [fhir_mapper.Issue("error", code, text)])


def fhir_router(pipeline: IngestPipeline, credentials: CredentialStore) -> APIRouter:
    router = APIRouter()
    caller = authenticator(credentials)

    def _authorise(connector: str, client: Client, ods_header: str | None):
        profile = BY_CONNECTOR.get(connector)
        if profile is None or connector not in ("emis", "cerner", "rio", "vision"):
            return None, None, _problem(404, "not-found", f"no connector named {connector!r}")
        if not client.has(f"sender:{connector}"):
            return None, None, _problem(403, "forbidden", f"client may not send as {connector}")
        ods = (ods_header or client.default_ods).upper()
        if not ods or not client.may_see_ods(ods):
            return None, None, _problem(403, "forbidden", "client may not send for that organisation (X-Ods-Code)")
        return profile, ods, None

    async def _ingest(request: Request, profile: SourceSystemProfile, ods: str, single: bool) -> JSONResponse:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return _problem(413, "too-costly", "body exceeds 16 MiB; use the bulk file drop")
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
        try:
            result = await pipeline.publish(raw, profile, ods, "fhir-rest", FHIR_JSON, events, received)
        except StoreUnavailable as exc:
            return _problem(503, "transient", str(exc))
        if single:
            return JSONResponse({"resourceType": "OperationOutcome", "issue": [
                {"severity": "information", "code": "informational", "diagnostics": f"stored as event {result.event_ids[0]}"}]},
                status_code=201, media_type=FHIR_JSON)
        return JSONResponse({"resourceType": "Bundle", "type": "transaction-response", "entry": [
            {"response": {"status": "201 Created", "location": f"urn:carebus:event:{eid}"}} for eid in result.event_ids]},
            status_code=200, media_type=FHIR_JSON)

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
