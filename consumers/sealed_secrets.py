"""Webhook signing secrets sealed at rest: AES-256-GCM under CAREBUS_SECRETS_KEY.

Redis holds each subscription's signing secret so the delivery service can sign what it pushes;
anyone who could read Redis (a backup, a replica, a stolen RDB file) could otherwise forge carebus
notifications to every subscriber. Sealed, the stored value is useless without the key, which
lives outside Redis. The subscription id is the associated data, so a sealed secret copied onto
another subscription does not open. A value stored before sealing existed (no "v1:" prefix) is
read as it is, and sealed when it is next written.
"""
from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from schemas.errors import CarebusError

PREFIX = "v1:"


class SecretUnreadable(CarebusError, ValueError):
    """A sealed secret that this key cannot open (another key, or altered)."""


def _aead(key: str) -> AESGCM:
    # The configured key is a passphrase or random string of any length; SHA-256 makes it 32 bytes.
    return AESGCM(hashlib.sha256(key.encode()).digest())


def seal(secret: str, key: str, subscription_id: str) -> str:
    nonce = os.urandom(12)
    sealed = _aead(key).encrypt(nonce, secret.encode(), subscription_id.encode())
    return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()


def unseal(stored: str, key: str, subscription_id: str) -> str:
    if not stored.startswith(PREFIX):
        return stored
    blob = base64.urlsafe_b64decode(stored[len(PREFIX):])
    try:
        return _aead(key).decrypt(blob[:12], blob[12:], subscription_id.encode()).decode()
    except InvalidTag:
        raise SecretUnreadable("a webhook secret does not open with CAREBUS_SECRETS_KEY") from None
