"""Health, readiness, metrics, the monitor and the dashboard with its sign-in."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Header, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from consumers import dead_letter_replay
from consumers.dashboard_sessions import CODE_SECONDS, COOKIE, DashboardSessions, SESSION_SECONDS
from consumers.delivery_api.access import Access
from consumers.monitor_history import series
from foundation.api_auth import Client
from foundation.clock import now_ms


HERE = Path(__file__).parent.parent      # consumers/
DASHBOARD = HERE / "dashboard.html"
# uPlot (MIT, https://github.com/leeoniya/uPlot), vendored: the dashboard's charts.
DASHBOARD_STATIC = {name: (HERE / "dashboard_static" / name, kind) for name, kind in (
    ("uPlot.iife.min.js", "text/javascript"), ("uPlot.min.css", "text/css"),
    ("dashboard.js", "text/javascript"), ("dashboard.css", "text/css"))}
# Only the page's own files; no inline script or style, nothing from elsewhere, never framed.
DASHBOARD_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
    "Cache-Control": "no-store"}


class DashboardSignIn(BaseModel):
    code: str = ""
    token: str = ""


def router(access: Access) -> APIRouter:
    r = APIRouter()
    service = access.service

    @r.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "up"}

    @r.get("/ready")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 503)

    @r.get("/metrics")
    async def metrics(client: Client = Depends(access.caller)) -> Response:
        # Labelled with subscription ids: an operator's token (Prometheus sends it as its
        # scrape job's bearer token), like /monitor.
        access.require(client, "operator")
        await asyncio.to_thread(service.monitor.snapshot, service.redis_sync)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

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

    @r.get("/monitor")
    async def monitor(client: Client = Depends(dashboard_caller)) -> dict[str, Any]:
        access.require(client, "operator")
        return await asyncio.to_thread(service.monitor.snapshot, service.redis_sync)

    @r.get("/monitor/history")
    async def monitor_history(client: Client = Depends(dashboard_caller)) -> dict[str, Any]:
        """The last hour as per-interval series (consumers/monitor_history.py), for the charts."""
        access.require(client, "operator")
        return series(await service.history.samples())

    @r.get("/monitor/dead-letters")
    async def monitor_dead_letters(which: str = Query("streams", description="connectors | streams | delivery"),
                                   hours: float = Query(24, gt=0, le=24 * 30),
                                   client: Client = Depends(dashboard_caller)) -> list[dict[str, Any]]:
        """The newest parked messages (at most 200): where, when, why; never their content."""
        access.require(client, "operator")
        if which not in dead_letter_replay.TOPICS:
            raise HTTPException(400, f"which must be one of {', '.join(dead_letter_replay.TOPICS)}")
        now = now_ms()
        dead = await asyncio.to_thread(dead_letter_replay.read, service.settings, which, now - int(hours * 3_600_000),
                                       now)
        return [dead_letter_replay.summary(d) for d in sorted(dead, key=lambda d: -d["failed_at"])[:200]]

    @r.get("/dashboard")
    async def dashboard() -> HTMLResponse:
        # The page holds no data and no inline script: it calls /monitor with its session cookie,
        # and the policy below lets nothing else run or load.
        return HTMLResponse(DASHBOARD.read_text(), headers=DASHBOARD_HEADERS)

    @r.post("/dashboard/sign-in-codes")
    async def dashboard_sign_in_code(client: Client = Depends(access.caller)) -> dict[str, Any]:
        """A one-time code (two minutes) that opens a dashboard session: open /dashboard#code=…"""
        access.require(client, "operator")
        code = await sessions.issue_code(client.client_id)
        return {"code": code, "expires_in": CODE_SECONDS, "open": f"/dashboard#code={code}"}

    @r.post("/dashboard/session")
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
        access.require(client, "operator")
        resp = JSONResponse({"client_id": client.client_id})
        resp.set_cookie(COOKIE, await sessions.open_session(client.client_id), max_age=SESSION_SECONDS, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https", path="/")
        return resp

    @r.post("/dashboard/sign-out")
    async def dashboard_sign_out(request: Request) -> JSONResponse:
        session = request.cookies.get(COOKIE)
        if session:
            await sessions.close_session(session)
        resp = JSONResponse({"signed_out": True})
        resp.delete_cookie(COOKIE, path="/")
        return resp

    @r.get("/dashboard/static/{name}")
    async def dashboard_static(name: str) -> Response:
        # The charting library ships inside the package: no CDN, nothing fetched from outside.
        if name not in DASHBOARD_STATIC:
            raise HTTPException(404, "no such file")
        return Response(DASHBOARD_STATIC[name][0].read_bytes(), media_type=DASHBOARD_STATIC[name][1])

    return r
