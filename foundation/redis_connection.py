"""The one way carebus connects to Redis: reconnect and retry through a restart or failover.

A Redis restart leaves every pooled connection dead; without retries the first command on each
fails (the first API call after a restart answered 500). Commands are retried on connection
errors and timeouts with capped exponential backoff (about 6 s in all), connections idle for
`health_check_interval` seconds are checked before use, and callers see an error only when
Redis stays away, which they treat as "not now" (HTTP 503, HL7 AE, a link batch that waits).
"""
from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError

from foundation.config import Settings

RETRIED = [RedisConnectionError, RedisTimeoutError, ConnectionResetError]


def _options(**overrides: Any) -> dict[str, Any]:
    return {"health_check_interval": 5, "socket_connect_timeout": 5, "retry_on_error": RETRIED, **overrides}


def sync_client(settings: Settings, **overrides: Any) -> redis.Redis:
    from redis.retry import Retry

    return redis.Redis.from_url(settings.redis, retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), 6),
                                **_options(**overrides))


def async_client(settings: Settings, max_connections: int | None = None, retries: int = 6,
                 **overrides: Any) -> aioredis.Redis:
    """`max_connections`: a bounded pool where callers wait for a free connection (many senders
    share a few dozen connections instead of failing past a limit). `retries`: 0 for a caller
    that would rather go on without Redis than wait for it (the connectors' published markers)."""
    from redis.asyncio.retry import Retry

    options = {"retry": Retry(ExponentialBackoff(cap=2.0, base=0.1), retries), **_options(**overrides)}
    if max_connections is None:
        return aioredis.Redis.from_url(settings.redis, **options)
    pool = aioredis.BlockingConnectionPool.from_url(settings.redis, max_connections=max_connections, timeout=5,
                                                    **{k: v for k, v in options.items() if k != "retry"})
    return aioredis.Redis(connection_pool=pool, retry=options["retry"], retry_on_error=RETRIED)
