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
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from foundation.api_auth import store_for
from foundation.config import Settings, mllp_tls_wanted
from foundation.durable_producer import DurableProducer
from foundation.log_privacy import configure_logging
from producers.bulk_extract_workers import ExtractWorkers
from producers.fhir_endpoint import fhir_router
from producers.file_drop import FileDrop, file_drops
from producers.ingest_pipeline import IngestPipeline
from producers import mllp_senders
from producers.mllp_listener import MllpListener
from producers.published_markers import markers_client
from schemas.source_systems import MLLP, speaking

log = logging.getLogger("carebus.connectors")


def build_app(pipeline: IngestPipeline, settings: Settings, ready: dict[str, bool],
              drops: list[FileDrop] | None = None) -> FastAPI:
    app = FastAPI(title="carebus connectors", docs_url=None, redoc_url=None)
    app.include_router(fhir_router(pipeline, store_for(str(settings.credentials_file))))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "up"}

    @app.get("/ready")
    async def readiness() -> JSONResponse:
        parts = {**ready, **{f"drop:{d.profile.connector}": d.healthy for d in drops or []}}
        problems = {f"drop:{d.profile.connector}": d.last_error for d in drops or [] if d.last_error}
        ok = all(parts.values())
        return JSONResponse({"ready": ok, "parts": parts, "problems": problems}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def mllp_security(settings: Settings) -> dict[str, Any]:
    """The MLLP listeners' TLS context and senders, or nothing for plain MLLP (development only).
    Raises ConfigError or SendersFileError, before anything has started."""
    if not mllp_tls_wanted(settings):
        return {}
    return {"tls": mllp_senders.server_tls_context(settings.mllp_tls_certificate, settings.mllp_tls_key,
                                                   settings.mllp_tls_client_ca),
            "senders": mllp_senders.load_senders(settings.mllp_senders_file)}


async def serve(settings: Settings) -> None:
    configure_logging()
    security = mllp_security(settings)
    producer = DurableProducer(settings)
    # Redis is asked only by the published markers, which send every sender's questions and marks
    # of a turn of the event loop in one call, one call at a time: one connection, held, is all
    # they use. A pool cost some 55 us of CPU per call more (taking and returning a connection
    # under its lock: 171-190 against 225-252 us per call, alternated); with 16 MLLP senders the
    # markers made 0.3 calls per message (2,625 for some 8,500 messages): about 16 us per message,
    # under 2% of the connector's CPU. A Redis outage costs a duplicate check, never an answer
    # and no wait (published_markers.markers_client).
    redis_client = markers_client(settings)
    pipeline = IngestPipeline(producer, redis_client)
    ready = {"mllp": False, "http": False}
    limits = {"idle_timeout": settings.mllp_idle_timeout, "message_timeout": settings.mllp_message_timeout,
              "max_connections": settings.mllp_max_connections, **security}
    listeners = [MllpListener(p, p.default_ods, pipeline, settings.bind_host, settings.mllp_port + (p.mllp_port_offset or 0),
                              **limits) for p in speaking(MLLP)]
    for listener in listeners:
        await listener.start()
    ready["mllp"] = True
    extract_workers = ExtractWorkers(settings.bulk_workers or None)
    extract_workers.warm_up()
    drops = file_drops(settings.drop_dir, pipeline, extract_workers)
    tasks = [asyncio.create_task(d.run(settings.file_drop_poll_ms / 1000)) for d in drops]

    async def supervise() -> None:
        # A drop loop outlives its errors; should one end anyway it is restarted and reported.
        while True:
            await asyncio.sleep(2)
            for i, (d, t) in enumerate(zip(drops, list(tasks))):
                if t.done():
                    d.healthy, d.last_error = False, "restarted after the task ended"
                    log.error("%s drop task ended (%s); restarting", d.profile.connector,
                              type(t.exception()).__name__ if not t.cancelled() and t.exception() else "no error")
                    tasks[i] = asyncio.create_task(d.run(settings.file_drop_poll_ms / 1000))

    supervisor = asyncio.create_task(supervise())
    config = uvicorn.Config(build_app(pipeline, settings, ready, drops), host=settings.bind_host, port=settings.http_port,
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
    log.info("connectors ready: MLLP %s, HTTP %d",
             ", ".join(f"{listener.port} ({listener.profile.connector})" for listener in listeners), settings.http_port)
    await stop.wait()
    server.should_exit = True
    for listener in listeners:
        await listener.stop()
    supervisor.cancel()
    for t in tasks:
        t.cancel()
    await http
    extract_workers.close()
    producer.close()
    try:      # the last published markers (a lost one costs only a duplicate publish if resent)
        await asyncio.wait_for(pipeline.markers.drain(), 5)
    except asyncio.TimeoutError:
        pass
    await redis_client.aclose()
