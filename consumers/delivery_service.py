"""`carebus delivery`: the subscriber-facing HTTP API, push dispatchers, audit and monitoring.

Run one instance (dispatchers are per subscription inside it; a second instance would deliver
twice). Every route needs a bearer token; what it may do follows the client's roles and scope.
"""
from __future__ import annotations

import asyncio
import logging
import signal

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from consumers.bus_monitor import BusMonitor
from consumers.channels import CHANNELS
from consumers.delivery_api import audit, fhir, monitoring, records, reviews, subscriptions
from consumers.delivery_api.access import Access, scope_of
from consumers.monitor_history import MonitorHistory, sample
from consumers.push_delivery import Dispatcher, RetryPolicy
from consumers.subscription_scope import ClientScope, Subscription
from consumers.subscription_store import SubscriptionStore
from foundation.api_auth import Client, store_for
from foundation.config import Settings
from foundation.durable_producer import DurableProducer
from foundation.log_privacy import configure_logging
from foundation.redis_connection import async_client, sync_client
from streams import record_store
from streams.fellegi_sunter import Parameters
from streams.identity_store import RedisGraphStore

log = logging.getLogger("carebus.delivery_service")
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
        if not CHANNELS[sub.channel].pushes or sub.subscription_id in self.dispatchers:
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

    @app.exception_handler(RedisError)
    async def store_unavailable(_request: Request, exc: RedisError) -> JSONResponse:
        # Redis away longer than the client's retries: "not now", never a bare 500.
        return JSONResponse({"detail": f"store unavailable ({type(exc).__name__}); retry shortly"}, status_code=503,
                            headers={"Retry-After": "5"})

    access = Access(service)
    for part in (monitoring, subscriptions, records, reviews, audit, fhir):
        app.include_router(part.router(access))
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
