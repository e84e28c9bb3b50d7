"""The embedded Redis server: Debian's redis-server on its own port, append-only file on.

The shared record is served from Redis; AOF with fsync every second means a restart keeps it
(and it can always be rebuilt from the compacted snapshot topic in Kafka).
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import time

from carebus import process_control
from foundation.config import Settings
from schemas.errors import SetupError

log = logging.getLogger("carebus.redis_server")


class RedisSetupError(SetupError):
    """redis-server is missing or its port is taken; the message says how to fix it."""


def _paths(settings: Settings):
    directory = settings.data_dir / "redis"
    return directory, directory / "redis.pid", directory / "redis.log", directory / "redis.conf"


def _marker(settings: Settings) -> tuple[str, ...]:
    # redis-server rewrites its process title to "redis-server 127.0.0.1:PORT" moments after
    # start, so either the config path or the port identifies our process.
    return (f"127.0.0.1:{settings.redis_port}", str(_paths(settings)[3]))


def require_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisSetupError(
            "redis-server not found on PATH: install Debian's package (apt-get install redis-server) "
            "or set REDIS_URL to use your own Redis"
        )
    return binary


# Small hashes stay in Redis's compact listpack encoding. The default value limit (64 bytes) is
# shorter than a node's packed demographics or block list, so every node hash was a full hash
# table: these settings cut the index by about an eighth (bench.pipeline_throughput prints
# bytes per source record). docker-compose.yml passes the same settings.
MEMORY_SETTINGS = {"hash-max-listpack-value": "1024", "hash-max-listpack-entries": "512"}

# The append-only file, fsynced every second, is what a restart loads. No periodic RDB snapshots
# (save ""): they only copy what the AOF holds, and "save 60 1000", as it was, forked and wrote the
# whole dataset every minute under load. On a 1.6 GB index each dump took some 40 s and its child
# used 41-180 s of CPU during 77-360 s of linking, about half a core; at London's size one dump
# would still be running when the next was due. The AOF's own rewrite (an RDB preamble plus the
# commands since) keeps the file bounded. Back up the AOF directory, or run BGSAVE for a dump.
# docker-compose.yml passes the same settings.
PERSISTENCE_SETTINGS = {"appendonly": "yes", "appendfsync": "everysec", "save": ""}
EMPTY = '""'     # how redis.conf spells an empty value


def up(settings: Settings, timeout: float = 20.0) -> bool:
    directory, pid_file, log_file, conf = _paths(settings)
    if process_control.running_pid(pid_file, _marker(settings)):
        return False
    binary = require_binary()
    if process_control.port_open(settings.redis_port):
        raise RedisSetupError(
            f"port {settings.redis_port} (Redis) is already in use by a process carebus did not start; "
            "stop it or choose another port with CAREBUS_REDIS_PORT"
        )
    directory.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        "\n".join([
            f"port {settings.redis_port}",
            "bind 127.0.0.1",
            f"dir {directory}",
            "daemonize no",
            *(f"{name} {value or EMPTY}" for name, value in PERSISTENCE_SETTINGS.items()),
            "protected-mode yes",
            *(f"{name} {value}" for name, value in MEMORY_SETTINGS.items()),
        ]) + "\n"
    )
    process_control.start([binary, str(conf)], pid_file, log_file)
    deadline = time.monotonic() + timeout
    loading_said = False
    while time.monotonic() < deadline:
        result = subprocess.run(
            ["redis-cli", "-p", str(settings.redis_port), "ping"], capture_output=True, text=True
        ) if shutil.which("redis-cli") else None
        if (result is not None and result.stdout.strip() == "PONG") or (
            result is None and process_control.port_open(settings.redis_port)
        ):
            return True
        if not process_control.running_pid(pid_file, _marker(settings)):
            raise RedisSetupError(f"redis-server exited during start-up:\n{log_file.read_text()[-2000:]}")
        if result is not None and result.stdout.startswith("LOADING"):
            # Reading its append-only file back: a large index takes minutes (about 20 s per GB
            # here), and a server that is loading is starting, not failing. The timeout counts
            # from when it has loaded.
            if not loading_said:
                log.info("Redis is loading its data set (%s)", directory)
                loading_said = True
            deadline = time.monotonic() + timeout
        time.sleep(0.1)
    raise RedisSetupError(f"Redis did not answer PING within {timeout:.0f}s")


def down(settings: Settings, hard: bool = False) -> bool:
    _, pid_file, _, conf = _paths(settings)
    return process_control.stop(pid_file, _marker(settings), hard=hard)


def pid(settings: Settings) -> int | None:
    """The running redis-server's process id (None: not running)."""
    return process_control.running_pid(_paths(settings)[1], _marker(settings))


def status(settings: Settings) -> bool:
    return pid(settings) is not None
