"""Session fixtures: one real Kafka (KRaft) broker and one real Redis for the whole test run.

They run on their own ports and data directory so a developer's `carebus up` bus is untouched.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

TEST_PORTS = {
    "CAREBUS_KAFKA_PORT": "29092",
    "CAREBUS_KAFKA_CONTROLLER_PORT": "29093",
    "CAREBUS_REDIS_PORT": "26379",
    "CAREBUS_MLLP_PORT": "22575",
    "CAREBUS_HTTP_PORT": "28080",
}


@pytest.fixture(scope="session")
def bus_settings():
    """Settings pointing at the test bus; the servers start here and stop at session end."""
    from carebus import local_bus
    from carebus.config import load_settings

    data_dir = Path(tempfile.mkdtemp(prefix="carebus-test-"))
    saved = {k: os.environ.get(k) for k in [*TEST_PORTS, "CAREBUS_DATA_DIR", "KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"]}
    os.environ.update(TEST_PORTS)
    os.environ["CAREBUS_DATA_DIR"] = str(data_dir)
    os.environ.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    os.environ.pop("REDIS_URL", None)
    settings = load_settings()
    # A previous run killed without teardown may have left servers behind on our ports.
    local_bus.up(settings)
    yield settings
    local_bus.down(settings)
    shutil.rmtree(data_dir, ignore_errors=True)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def redis_client(bus_settings):
    import redis

    client = redis.Redis.from_url(bus_settings.redis)
    yield client
    client.close()
