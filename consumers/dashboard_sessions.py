"""Dashboard sign-in without a token in any URL: one-time codes and an HttpOnly session cookie.

The dashboard used to read the operator's bearer token from the address (#token=…), where any
script that ran in the page, browser history and screen shares could read it. Now an operator
either types the token into the page once (it is exchanged for a session and forgotten), or an
API client with the token asks for a one-time code (valid CODE_SECONDS, usable once) and opens
/dashboard#code=…; the page exchanges the code and removes it from the address. The session is an
HttpOnly, SameSite=Strict cookie that scripts cannot read; Redis keeps only its SHA-256.
"""
from __future__ import annotations

import hashlib
import secrets

import redis.asyncio as aioredis

CODE_SECONDS = 120
SESSION_SECONDS = 8 * 3600
COOKIE = "carebus_dashboard"
P = "carebus:dashboard:"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class DashboardSessions:
    def __init__(self, client: aioredis.Redis) -> None:
        self.r = client

    async def _issue(self, kind: str, client_id: str, seconds: int, entropy_bytes: int) -> str:
        value = secrets.token_urlsafe(entropy_bytes)
        await self.r.set(f"{P}{kind}:{_digest(value)}", client_id, ex=seconds)
        return value

    async def issue_code(self, client_id: str) -> str:
        return await self._issue("code", client_id, CODE_SECONDS, 24)

    async def redeem_code(self, code: str) -> str | None:
        """The client id the code was issued to, once; None if unknown, used or expired."""
        found = await self.r.getdel(f"{P}code:{_digest(code)}")
        return found.decode() if found else None

    async def open_session(self, client_id: str) -> str:
        return await self._issue("session", client_id, SESSION_SECONDS, 32)

    async def client_of(self, session: str) -> str | None:
        found = await self.r.get(f"{P}session:{_digest(session)}")
        return found.decode() if found else None

    async def close_session(self, session: str) -> None:
        await self.r.delete(f"{P}session:{_digest(session)}")
