"""`carebus connectors`: every vendor connector in one process.

  Cerner Millennium  HL7 v2 MLLP on CAREBUS_MLLP_PORT, FHIR REST on /fhir/cerner
  RiO                HL7 v2 MLLP on CAREBUS_MLLP_PORT + 1
  EMIS Web           FHIR REST on /fhir/emis, bulk .json drop in <drop>/emis/incoming
  INPS Vision        bulk .csv extract drop in <drop>/vision/incoming
plus /health, /ready and Prometheus /metrics on CAREBUS_HTTP_PORT.
"""
from __future__ import annotations

import asyncio
import logging
import signal

import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from carebus.api_auth import store_for
from carebus.config import Settings
from carebus.durable_producer import DurableProducer
from carebus.log_privacy import configure_logging
from producers.fhir_endpoint import fhir_router
from producers.file_drop import emis_and_vision
from producers.ingest_pipeline import IngestPipeline
from producers.mllp_listener import MllpListener
from producers.source_systems import CERNER, RIO

log = logging.getLogger("carebus.connectors")


def build_app(pipeline: IngestPipeline, settings: Settings, ready: dict[str, bool]) -> FastAPI:
    app = FastAPI(title="carebus connectors", docs_url=None, redoc_url=None)
    app.include_router(fhir_router(pipeline, store_for(str(settings.credentials_file))))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "up"}

    @app.get("/ready")
    async def readiness() -> JSONResponse:
        ok = all(ready.values())
        return JSONResponse({"ready": ok, "parts": ready}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


async def serve(settings: Settings) -> None:
    configure_logging()
    producer = DurableProducer(settings)
    redis_client = aioredis.Redis.from_url(settings.redis)
    pipeline = IngestPipeline(producer, redis_client)
    ready = {"mllp": False, "http": False}
    listeners = [MllpListener(CERNER, "RAL", pipeline, "0.0.0.0", settings.mllp_port),
                 MllpListener(RIO, "RAT", pipeline, "0.0.0.0", settings.mllp_port + 1)]
    for listener in listeners:
        await listener.start()
    ready["mllp"] = True
    drops = emis_and_vision(settings.drop_dir, pipeline)
    tasks = [asyncio.create_task(d.run()) for d in drops]
    config = uvicorn.Config(build_app(pipeline, settings, ready), host="0.0.0.0", port=settings.http_port,
                            log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    http = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    ready["http"] = True
    log.info("connectors ready: MLLP %d (cerner) %d (rio), HTTP %d", settings.mllp_port, settings.mllp_port + 1,
             settings.http_port)
    await stop.wait()
    server.should_exit = True
    for listener in listeners:
        await listener.stop()
    for t in tasks:
        t.cancel()
    await http
    producer.close()
    await redis_client.aclose()
