"""`carebus delivery`: the subscriber-facing HTTP API, push dispatchers, audit and monitoring.

Run one instance (dispatchers are per subscription inside it; a second instance would deliver
twice). Every route needs a bearer token; what it may do follows the client's roles and scope.
"""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from carebus.api_auth import Client, authenticator, store_for
from redis.exceptions import RedisError

from carebus.config import Settings
from carebus.redis_connection import async_client, sync_client
from carebus.durable_producer import DurableProducer
from carebus.log_privacy import configure_logging
from consumers import access_audit, audit_trail, dead_letter_replay, fhir_read_api
from consumers.bus_monitor import BusMonitor
from consumers.dashboard_sessions import CODE_SECONDS, COOKIE, SESSION_SECONDS, DashboardSessions
from consumers.monitor_history import MonitorHistory, sample, series
from consumers.change_reader import open_subscription_consumer, read_range, time_ms as _ms
from consumers.notification_format import webhook_body
from consumers.push_delivery import Dispatcher, RetryPolicy
from streams import demographic_search, record_store
from streams.fellegi_sunter import Parameters
from streams.identity_store import RedisGraphStore, ReviewQueue
from consumers.subscription_scope import CLINICAL_SECTIONS, ClientScope, Subscription, visible_change
from consumers.subscription_store import SubscriptionStore
from consumers.webhook_address_guard import WebhookAddressRefused, webhook_policy
from schemas import codec, registry
from schemas.topics import DLQ_DELIVERY, LINK_REVIEW, PATIENT_CHANGES
from schemas.source_key import source_key

log = logging.getLogger("carebus.delivery_service")
DASHBOARD = Path(__file__).with_name("dashboard.html")
# uPlot (MIT, https://github.com/leeoniya/uPlot), vendored: the dashboard's charts.
DASHBOARD_STATIC = {name: (Path(__file__).parent / "dashboard_static" / name, kind) for name, kind in (
    ("uPlot.iife.min.js", "text/javascript"), ("uPlot.min.css", "text/css"),
    ("dashboard.js", "text/javascript"), ("dashboard.css", "text/css"))}
# Only the page's own files; no inline script or style, nothing from elsewhere, never framed.
DASHBOARD_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
    "Cache-Control": "no-store"}
CHANNELS = ("webhook", "fhir-rest-hook", "sse")
CHANGE_TYPES = ("created", "updated", "merged", "unmerged")


class DashboardSignIn(BaseModel):
    code: str = ""
    token: str = ""


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


class TimeRange(BaseModel):
    from_ms: int = Field(alias="from")
    to_ms: int = Field(alias="to")


def scope_of(client: Client) -> ClientScope:
    return ClientScope(client.client_id, client.ods_codes, client.withheld_sections)


class DeliveryService:
    def __init__(self, settings: Settings, retry: RetryPolicy | None = None) -> None:
        self.settings = settings
        self.credentials = store_for(str(settings.credentials_file))
        self.redis = async_client(settings)
        self.redis_sync = sync_client(settings)
        self.store = SubscriptionStore(self.redis, settings.secrets_key)
        self.records = record_store.AsyncRecordReader(self.redis)
        self.producer = DurableProducer(settings)
        self.http = httpx.AsyncClient(timeout=10)
        self.retry = retry or RetryPolicy()
        self.dispatchers: dict[str, tuple[Dispatcher, asyncio.Task]] = {}
        self.monitor = BusMonitor(settings)
        self.ready = False
        self._graph: RedisGraphStore | None = None
        self._parameters: Parameters | None = None
        self.history = MonitorHistory(self.redis, settings.monitor_sample_seconds)
        self._sampler: asyncio.Task | None = None

    def linkage_parameters(self) -> Parameters:
        if self._parameters is None:
            self._parameters = Parameters.load(self.settings.linkage_parameters_in_use)
        return self._parameters

    def graph(self) -> RedisGraphStore:
        """The identity index's read-only views (made on first use: the service runs without it)."""
        if self._graph is None:
            self._graph = RedisGraphStore(self.redis_sync)
        return self._graph

    def _client_scope(self, client_id: str) -> ClientScope:
        client = self.credentials.client(client_id)
        # A client removed from the credentials keeps its subscription but sees nothing.
        return scope_of(client) if client else ClientScope(client_id, frozenset())

    def start_dispatcher(self, sub: Subscription, secret: str, created: int) -> None:
        if sub.channel == "sse" or sub.subscription_id in self.dispatchers:
            return
        d = Dispatcher(self.settings, self.store, self.producer, self.http, sub, secret, created,
                       self._client_scope(sub.client_id), self.retry)
        self.dispatchers[sub.subscription_id] = (d, asyncio.create_task(d.run()))

    async def stop_dispatcher(self, subscription_id: str) -> None:
        found = self.dispatchers.pop(subscription_id, None)
        if found:
            found[0].stop()
            await found[1]
            await found[0].close()

    async def start(self) -> None:
        for sub, secret, created in await self.store.all():
            self.start_dispatcher(sub, secret, created)
        self._sampler = asyncio.create_task(self._sample_history())
        self.ready = True

    async def _sample_history(self) -> None:
        """The dashboard's last hour: one monitor sample every CAREBUS_MONITOR_SAMPLE_SECONDS."""
        while True:
            try:
                snapshot = await asyncio.to_thread(self.monitor.snapshot, self.redis_sync)
                await self.history.append(sample(snapshot))
            except Exception as exc:  # noqa: BLE001 - a missed sample only leaves a gap in a chart
                log.warning("monitor sample skipped: %s", type(exc).__name__)
            await asyncio.sleep(self.settings.monitor_sample_seconds)

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        for sid in list(self.dispatchers):
            await self.stop_dispatcher(sid)
        await self.http.aclose()
        self.producer.close()
        await self.redis.aclose()

    async def owned(self, subscription_id: str, client: Client) -> tuple[Subscription, str, int]:
        found = await self.store.get(subscription_id)
        if found is None or found[0].client_id != client.client_id:
            raise HTTPException(404, "no such subscription for this client")
        return found


def build_app(service: DeliveryService) -> FastAPI:
    # No /openapi.json, /docs or /redoc: the schema of every route is in the README, and an open
    # one described this service to anyone who could reach it.
    app = FastAPI(title="carebus delivery", docs_url=None, redoc_url=None, openapi_url=None)
    caller = authenticator(service.credentials)

    @app.exception_handler(RedisError)
    async def store_unavailable(_request: Request, exc: RedisError) -> JSONResponse:
        # Redis away longer than the client's retries: "not now", never a bare 500.
        return JSONResponse({"detail": f"store unavailable ({type(exc).__name__}); retry shortly"}, status_code=503,
                            headers={"Retry-After": "5"})

    def require(client: Client, role: str) -> None:
        if not client.has(role):
            raise HTTPException(403, f"this client lacks the {role} role")

    async def audited(client: Client, action: str, persons: list[str], why: str | None,
                      query: dict[str, str], outcome: str = "shown") -> None:
        """The read is on carebus.access-audit.v1 before anything is returned (else 503, no data)."""
        try:
            await access_audit.record_access(service.producer, access_audit.access_event(
                client, action, persons, why, query, outcome))
        except Exception as exc:  # noqa: BLE001 - no audit record, no data
            raise HTTPException(503, "the access could not be recorded; retry shortly") from exc

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "up"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 503)

    @app.get("/metrics")
    async def metrics(client: Client = Depends(caller)) -> Response:
        # Labelled with subscription ids: an operator's token (Prometheus sends it as its
        # scrape job's bearer token), like /monitor.
        require(client, "operator")
        await asyncio.to_thread(service.monitor.snapshot, service.redis_sync)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # ---- subscriptions ---------------------------------------------------------------------
    @app.post("/subscriptions", status_code=201)
    async def create_subscription(req: SubscriptionRequest, client: Client = Depends(caller)) -> dict[str, Any]:
        require(client, "subscriber")
        if req.channel not in CHANNELS:
            raise HTTPException(400, f"channel must be one of {', '.join(CHANNELS)}")
        if req.channel != "sse":
            try:
                await webhook_policy(service.settings).check(req.endpoint)
            except WebhookAddressRefused as exc:
                raise HTTPException(400, f"endpoint refused: {exc}") from None
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
            set(req.sections), req.max_attempts)
        service.start_dispatcher(sub, secret, created)
        return {"id": sub.subscription_id, "secret": secret, "channel": sub.channel, "created_at": created}

    @app.get("/subscriptions")
    async def list_subscriptions(client: Client = Depends(caller)) -> list[dict[str, Any]]:
        require(client, "subscriber")
        out = []
        for sub, _, created in await service.store.all():
            if sub.client_id == client.client_id:
                out.append({"id": sub.subscription_id, "channel": sub.channel, "endpoint": sub.endpoint,
                            "created_at": created, "stats": await service.store.stats(sub.subscription_id)})
        return out

    @app.delete("/subscriptions/{subscription_id}", status_code=204)
    async def delete_subscription(subscription_id: str, client: Client = Depends(caller)) -> Response:
        await service.owned(subscription_id, client)
        await service.stop_dispatcher(subscription_id)
        await service.store.delete(subscription_id)
        return Response(status_code=204)

    @app.get("/subscriptions/{subscription_id}/stream")
    async def stream(subscription_id: str, request: Request, client: Client = Depends(caller)) -> StreamingResponse:
        sub, _, created = await service.owned(subscription_id, client)
        if sub.channel != "sse":
            raise HTTPException(400, "this subscription pushes; only sse subscriptions stream")
        scope = scope_of(client)

        async def events():
            thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sse-{subscription_id[:8]}")
            loop = asyncio.get_running_loop()
            consumer = await loop.run_in_executor(thread, partial(
                open_subscription_consumer, service.settings, f"carebus-sse-{subscription_id}", created))
            try:
                yield ": connected\n\n"
                while not await request.is_disconnected():
                    msg = await loop.run_in_executor(thread, consumer.poll, 0.5)
                    if msg is None or msg.error():
                        continue
                    change = visible_change(codec.decode(msg.value(), "RecordChange"), sub, scope)
                    if change is not None:
                        yield f"id: {change['event_id']}\nevent: record-change\ndata: {webhook_body(change, subscription_id).decode()}\n\n"
                    await loop.run_in_executor(thread, partial(consumer.commit, message=msg, asynchronous=False))
            finally:
                await loop.run_in_executor(thread, consumer.close)
                thread.shutdown(wait=False)

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/subscriptions/{subscription_id}/redeliver")
    async def redeliver(subscription_id: str, body: TimeRange, client: Client = Depends(caller)) -> dict[str, Any]:
        """Send again every change in [from, to] (ms); receivers de-duplicate by Idempotency-Key."""
        sub, secret, created = await service.owned(subscription_id, client)
        if sub.channel == "sse":
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

    @app.post("/subscriptions/{subscription_id}/dead-letters/redeliver")
    async def redeliver_parked(subscription_id: str, client: Client = Depends(caller)) -> dict[str, Any]:
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

    def readable(client: Client, rec: dict[str, Any]) -> dict[str, Any] | None:
        """The record as this client may see it (auditors: whole), None when outside its scope."""
        if client.has("auditor"):
            return rec
        everything = Subscription("direct-read", client.client_id, "sse", "")
        visible = visible_change({"event_id": "", "person_id": rec["person_id"], "version": rec["version"],
                                  "change_type": "updated", "changed_sections": [], "changed_at": rec["updated_at"],
                                  "record": rec}, everything, scope_of(client))
        return None if visible is None else visible["record"]

    # ---- records, reviews, audit --------------------------------------------------------------
    @app.get("/records/{person_id}")
    async def record(person_id: str, why: str | None = None, client: Client = Depends(caller)) -> dict[str, Any]:
        if not client.has("auditor"):
            require(client, "subscriber")
        rec = await service.records.record(person_id)
        visible = readable(client, rec) if rec is not None else None
        if visible is None:
            # The same answer for "unknown" and "outside your scope": a 403 would tell a client
            # that a person id it guessed or was given exists.
            raise HTTPException(404, "no such person in this client's scope")
        await audited(client, "record", [person_id], why, {})
        return visible

    @app.get("/reviews")
    async def reviews(client: Client = Depends(caller)) -> list[dict[str, Any]]:
        require(client, "reviewer")
        return await ReviewQueue(service.redis).waiting()

    @app.post("/reviews/{review_id}/{decision}", status_code=202)
    async def decide(review_id: str, decision: str, client: Client = Depends(caller)) -> dict[str, str]:
        require(client, "reviewer")
        if decision not in ("accept", "reject"):
            raise HTTPException(400, "decision is accept or reject")
        review = await ReviewQueue(service.redis).review(review_id)
        if review is None:
            raise HTTPException(404, "no such review")
        event = {"event_id": str(uuid.uuid4()), "recorded_at": int(time.time() * 1000), "caused_by": review_id,
                 "type": "REVIEW_ACCEPTED" if decision == "accept" else "REVIEW_REJECTED",
                 "person_id": review.get("person_a") or "", "other_person_id": review.get("person_b"), "sources": [],
                 "score": review.get("score"), "method": "review", "reasons": [f"decided by {client.client_id}"]}
        await service.producer.send(LINK_REVIEW.name, codec.encode("IdentityEvent", event), key=review_id,
                                    headers=codec.headers("IdentityEvent"))
        return {"status": "queued", "event_id": event["event_id"]}

    def find_persons(nhs_number: str, identifier: str, person_id: str) -> dict[str, list[str]]:
        graph = service.graph()
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

    @app.get("/audit/persons")
    async def audit_find(nhs_number: str = "", identifier: str = Query("", description="<identifier system>|<value>"),
                         person_id: str = "", why: str | None = None,
                         client: Client = Depends(caller)) -> list[dict[str, Any]]:
        """Who a person is in the index: by NHS number, by a local identifier, or by person id."""
        require(client, "auditor")
        if sum(bool(x) for x in (nhs_number, identifier, person_id)) != 1:
            raise HTTPException(400, "give exactly one of nhs_number, identifier (system|value), person_id")
        found = await asyncio.to_thread(find_persons, nhs_number, identifier, person_id)
        await audited(client, "find", list(found), why,
                      {"nhs_number": nhs_number, "identifier": identifier, "person_id": person_id},
                      "shown" if found else "not-found")
        return [{"person_id": p, "sources": keys} for p, keys in found.items()]

    @app.get("/audit/persons/{person_id}/timeline")
    async def audit_timeline(person_id: str, format: str = Query("json"), since: str = Query("0"),
                             why: str | None = None, client: Client = Depends(caller)) -> Response:
        require(client, "auditor")
        members = set(await asyncio.to_thread(service.graph().members, person_id))
        await audited(client, "timeline", [person_id], why, {"since": since, "format": format})
        entries = await asyncio.to_thread(audit_trail.timeline, service.settings, person_id, members, _ms(since))
        if format == "csv":
            return PlainTextResponse(audit_trail.to_csv(entries), media_type="text/csv")
        return Response(audit_trail.to_json(entries), media_type="application/json")

    @app.get("/audit/persons/{person_id}/as-of")
    async def audit_as_of(person_id: str, at: str, subscription_id: str | None = None, why: str | None = None,
                          client: Client = Depends(caller)) -> dict[str, Any]:
        require(client, "auditor")
        await audited(client, "as-of", [person_id], why, {"at": at, "subscription_id": subscription_id or ""})
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

    # ---- FHIR R4 read API (consumers/fhir_read_api.py) ----------------------------------------
    def fhir(body: dict[str, Any], status: int = 200) -> JSONResponse:
        return JSONResponse(body, status_code=status, media_type=fhir_read_api.FHIR_JSON)

    def fhir_base(request: Request) -> str:
        return str(request.base_url).rstrip("/") + "/fhir"

    def fhir_reader(client: Client) -> None:
        if not (client.has("auditor") or client.has("subscriber")):
            raise HTTPException(403, "this client lacks the subscriber or auditor role")

    async def fhir_patient_record(client: Client, person_id: str) -> dict[str, Any] | None:
        """The record as this client may read it through FHIR, None if absent or out of scope."""
        fhir_reader(client)
        rec = await service.records.record(person_id)
        return readable(client, rec) if rec is not None else None

    def fhir_not_found(person_id: str) -> JSONResponse:
        # Absent and out of scope look alike: an id reveals nothing.
        return fhir(fhir_read_api.operation_outcome("not-found", f"no Patient/{person_id} for this client"), 404)

    @app.get("/fhir/metadata")
    async def fhir_metadata(request: Request) -> JSONResponse:
        return fhir(fhir_read_api.capability_statement(fhir_base(request), "1"))

    def find_by_identifier(identifier: str) -> dict[str, list[str]]:
        system, _, value = identifier.rpartition("|")
        if system == fhir_read_api.NHS_NUMBER_SYSTEM:
            return find_persons(value, "", "")
        return find_persons("", identifier, "")

    def find_by_demographics(query: demographic_search.Query) -> dict[str, float]:
        """Person -> the best match score of its records (PDQm), at most 20 persons."""
        graph = service.graph()
        ranked = demographic_search.rank(query, graph.demographics_in_blocks(demographic_search.blocks_for(query)),
                                         service.linkage_parameters())
        persons = graph.persons_of([k for k, _ in ranked])
        best: dict[str, float] = {}
        for key, score in ranked:
            if key in persons and persons[key] not in best:
                best[persons[key]] = score
        return dict(list(best.items())[:20])

    async def visible_records(client: Client, persons: Any) -> list[dict[str, Any]]:
        records = [r for r in [await service.records.record(p) for p in persons] if r is not None]
        return [v for v in (readable(client, r) for r in records) if v is not None]

    async def by_identifier(client: Client, identifier: str, action: str, why: str | None
                            ) -> list[dict[str, Any]] | JSONResponse:
        """The records this client may read of the person(s) with this identifier, audited; a 400
        OperationOutcome when the identifier is not <system>|<value>."""
        system, _, value = identifier.rpartition("|")
        if not system or not value:
            return fhir(fhir_read_api.operation_outcome(
                "required", "an identifier is <system>|<value> (NHS number or a local identifier)"), 400)
        visible = await visible_records(client, await asyncio.to_thread(find_by_identifier, identifier))
        await audited(client, action, [r["person_id"] for r in visible], why, {"identifier": identifier},
                      "shown" if visible else "not-found")
        return visible

    @app.get("/fhir/Patient")
    async def fhir_search(request: Request, identifier: str = "", family: str = "", given: str = "",
                          birthdate: str = "", gender: str = "",
                          postcode: str = Query("", alias="address-postalcode"), why: str | None = None,
                          client: Client = Depends(caller)) -> JSONResponse:
        fhir_reader(client)
        if identifier:
            visible = await by_identifier(client, identifier, "fhir-search", why)
            if isinstance(visible, JSONResponse):
                return visible
            return fhir(fhir_read_api.searchset(visible, fhir_base(request)))
        try:
            query = demographic_search.parse_query(family, given, birthdate, gender, postcode)
        except demographic_search.SearchCriteriaError as exc:
            return fhir(fhir_read_api.operation_outcome(
                "required", f"search by identifier=<system>|<value>, or by demographics: {exc}"), 400)
        scores = await asyncio.to_thread(find_by_demographics, query)
        visible = await visible_records(client, scores)
        # The criteria are identifying: the audit keeps that a search was made and what it found.
        await audited(client, "fhir-search", [r["person_id"] for r in visible], why,
                      {"demographic_search": "family,given,birthdate,gender,postcode"},
                      "shown" if visible else "not-found")
        return fhir(fhir_read_api.searchset(visible, fhir_base(request), scores))

    @app.get("/fhir/Patient/$ihe-pix")
    async def fhir_pix(request: Request, source_identifier: str = Query("", alias="sourceIdentifier"),
                       why: str | None = None, client: Client = Depends(caller)) -> JSONResponse:
        """PIXm: every identifier this caller may see of the person one identifier belongs to."""
        fhir_reader(client)
        visible = await by_identifier(client, source_identifier, "fhir-pix", why)
        if isinstance(visible, JSONResponse):
            return visible
        if not visible:
            return fhir(fhir_read_api.operation_outcome("not-found", "no person with that identifier for this client"),
                        404)
        return fhir(fhir_read_api.pix_parameters(visible[0], fhir_base(request)))

    @app.get("/fhir/Patient/{person_id}/$everything")
    async def fhir_everything(request: Request, person_id: str, why: str | None = None,
                              client: Client = Depends(caller)) -> JSONResponse:
        visible = await fhir_patient_record(client, person_id)
        if visible is None:
            return fhir_not_found(person_id)
        await audited(client, "fhir-everything", [person_id], why, {})
        return fhir(fhir_read_api.everything(visible, fhir_base(request)))

    @app.get("/fhir/Patient/{person_id}")
    async def fhir_read(person_id: str, why: str | None = None, client: Client = Depends(caller)) -> JSONResponse:
        visible = await fhir_patient_record(client, person_id)
        if visible is None:
            survivor = await asyncio.to_thread(service.graph().survivor_of, person_id)
            if survivor and await fhir_patient_record(client, survivor) is not None:
                await audited(client, "fhir-read", [person_id, survivor], why, {"merged_into": survivor})
                return fhir(fhir_read_api.replaced_patient(person_id, survivor))
            return fhir_not_found(person_id)
        await audited(client, "fhir-read", [person_id], why, {})
        return fhir(fhir_read_api.fhir_patient(visible))

    # ---- monitoring -------------------------------------------------------------------------
    sessions = DashboardSessions(service.redis)

    async def dashboard_caller(request: Request, authorization: str | None = Header(default=None)) -> Client:
        # API clients send their bearer token; the dashboard page its session cookie.
        if authorization:
            return service.credentials.authenticate(authorization)
        session = request.cookies.get(COOKIE)
        client_id = await sessions.client_of(session) if session else None
        client = service.credentials.client(client_id) if client_id else None
        if client is None:
            raise HTTPException(401, "sign in to the dashboard", headers={"WWW-Authenticate": "Bearer"})
        return client

    @app.get("/monitor")
    async def monitor(client: Client = Depends(dashboard_caller)) -> dict[str, Any]:
        require(client, "operator")
        return await asyncio.to_thread(service.monitor.snapshot, service.redis_sync)

    @app.get("/monitor/history")
    async def monitor_history(client: Client = Depends(dashboard_caller)) -> dict[str, Any]:
        """The last hour as per-interval series (consumers/monitor_history.py), for the charts."""
        require(client, "operator")
        return series(await service.history.samples())

    @app.get("/monitor/dead-letters")
    async def monitor_dead_letters(which: str = Query("streams", description="connectors | streams | delivery"),
                                   hours: float = Query(24, gt=0, le=24 * 30),
                                   client: Client = Depends(dashboard_caller)) -> list[dict[str, Any]]:
        """The newest parked messages (at most 200): where, when, why; never their content."""
        require(client, "operator")
        if which not in dead_letter_replay.TOPICS:
            raise HTTPException(400, f"which must be one of {', '.join(dead_letter_replay.TOPICS)}")
        now = int(time.time() * 1000)
        dead = await asyncio.to_thread(dead_letter_replay.read, service.settings, which, now - int(hours * 3_600_000),
                                       now)
        return [dead_letter_replay.summary(d) for d in sorted(dead, key=lambda d: -d["failed_at"])[:200]]

    @app.get("/dashboard")
    async def dashboard() -> HTMLResponse:
        # The page holds no data and no inline script: it calls /monitor with its session cookie,
        # and the policy below lets nothing else run or load.
        return HTMLResponse(DASHBOARD.read_text(), headers=DASHBOARD_HEADERS)

    @app.post("/dashboard/sign-in-codes")
    async def dashboard_sign_in_code(client: Client = Depends(caller)) -> dict[str, Any]:
        """A one-time code (two minutes) that opens a dashboard session: open /dashboard#code=…"""
        require(client, "operator")
        code = await sessions.issue_code(client.client_id)
        return {"code": code, "expires_in": CODE_SECONDS, "open": f"/dashboard#code={code}"}

    @app.post("/dashboard/session")
    async def dashboard_session(body: DashboardSignIn, request: Request) -> JSONResponse:
        """Sign in with a one-time code or a token typed into the page; answers with the session cookie."""
        client = None
        if body.code:
            client_id = await sessions.redeem_code(body.code)
            client = service.credentials.client(client_id) if client_id else None
        elif body.token:
            client = service.credentials.authenticate(f"Bearer {body.token}")
        if client is None:
            raise HTTPException(401, "unknown, used or expired sign-in code")
        require(client, "operator")
        resp = JSONResponse({"client_id": client.client_id})
        resp.set_cookie(COOKIE, await sessions.open_session(client.client_id), max_age=SESSION_SECONDS, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https", path="/")
        return resp

    @app.post("/dashboard/sign-out")
    async def dashboard_sign_out(request: Request) -> JSONResponse:
        session = request.cookies.get(COOKIE)
        if session:
            await sessions.close_session(session)
        resp = JSONResponse({"signed_out": True})
        resp.delete_cookie(COOKIE, path="/")
        return resp

    @app.get("/dashboard/static/{name}")
    async def dashboard_static(name: str) -> Response:
        # The charting library ships inside the package: no CDN, nothing fetched from outside.
        if name not in DASHBOARD_STATIC:
            raise HTTPException(404, "no such file")
        return Response(DASHBOARD_STATIC[name][0].read_bytes(), media_type=DASHBOARD_STATIC[name][1])

    return app


async def serve(settings: Settings, port: int | None = None) -> None:
    configure_logging()
    service = DeliveryService(settings, RetryPolicy(float(settings.delivery_backoff_base)))
    app = build_app(service)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.bind_host, port=port or settings.delivery_port,
                                           log_level="warning", access_log=False))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    http = asyncio.create_task(server.serve())
    await service.start()
    await stop.wait()
    server.should_exit = True
    await http
    await service.close()
