"""Who is calling: bearer tokens mapped to a client, its roles and its organisations.

The credentials file (CAREBUS_CREDENTIALS_FILE) holds only SHA-256 hashes of tokens. Roles:
`sender:<connector>` may post to that connector; `subscriber` may manage its own subscriptions;
`auditor` may replay any patient's history; `reviewer` may decide identity reviews; `operator`
may read monitoring. `ods_codes` limits which organisations' data a client may send or see
("*" means all). deploy/dev-credentials.json is for the local demo and tests only.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from fastapi import Header, HTTPException


@dataclass(frozen=True)
class Client:
    client_id: str
    roles: frozenset[str]
    ods_codes: frozenset[str]
    default_ods: str = ""
    withheld_sections: frozenset[str] = field(default_factory=frozenset)

    def has(self, role: str) -> bool:
        return role in self.roles

    def may_see_ods(self, ods: str) -> bool:
        return "*" in self.ods_codes or ods.upper() in self.ods_codes


class CredentialStore:
    def __init__(self, clients: dict[str, Client]) -> None:
        self._by_hash = clients

    @classmethod
    def from_file(cls, path: Path) -> "CredentialStore":
        entries = json.loads(path.read_text())
        clients = {}
        for e in entries:
            clients[e["token_sha256"]] = Client(
                e["client_id"], frozenset(e.get("roles", [])), frozenset(x.upper() for x in e.get("ods_codes", [])),
                e.get("default_ods", ""), frozenset(e.get("withheld_sections", [])))
        return cls(clients)

    def client(self, client_id: str) -> Client | None:
        return next((c for c in self._by_hash.values() if c.client_id == client_id), None)

    def authenticate(self, authorization: str | None) -> Client:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        digest = hashlib.sha256(authorization[7:].strip().encode()).hexdigest()
        for known, client in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return client
        raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})


@lru_cache(maxsize=4)
def store_for(path: str) -> CredentialStore:
    return CredentialStore.from_file(Path(path))


def authenticator(store: CredentialStore):
    """A FastAPI dependency that resolves the calling client or answers 401."""
    def dependency(authorization: str | None = Header(default=None)) -> Client:
        return store.authenticate(authorization)
    return dependency
