"""A throwaway embedded Kafka and Redis for one benchmark run: own ports, own data folder."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from carebus import local_bus
from foundation.config import Settings, load_settings


@dataclass(frozen=True)
class PrivateBus:
    settings: Settings
    env: dict[str, str]     # the environment services started for this bus need
    data: Path
    logs: Path

    def stop(self) -> None:
        local_bus.down(self.settings)
        shutil.rmtree(self.data, ignore_errors=True)


def ports(block: int) -> dict[str, str]:
    """A benchmark's own ports, all in the thousand `block` (24: 24092 Kafka, 24093 its
    controller, 24379 Redis, 24575 MLLP, 24080 HTTP): beside the local bus's (19xxx, 16379), the
    tests' (29xxx, 26379) and the other benchmarks'."""
    return {"CAREBUS_KAFKA_PORT": f"{block}092", "CAREBUS_KAFKA_CONTROLLER_PORT": f"{block}093",
            "CAREBUS_REDIS_PORT": f"{block}379", "CAREBUS_MLLP_PORT": f"{block}575", "CAREBUS_HTTP_PORT": f"{block}080"}


def start(ports: dict[str, str], prefix: str) -> PrivateBus:
    """Point this process's settings at a fresh bus on `ports` and start it."""
    data = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update(ports)
    os.environ["CAREBUS_DATA_DIR"] = str(data)
    os.environ["CAREBUS_DROP_DIR"] = str(data / "drop")
    os.environ["CAREBUS_ALLOW_DEV_SECRETS"] = "1"      # a throw-away bus of synthetic patients
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"):
        os.environ.pop(var, None)
    settings = load_settings()
    logs = data / "logs"
    logs.mkdir(parents=True)
    local_bus.up(settings)
    return PrivateBus(settings, dict(os.environ), data, logs)
