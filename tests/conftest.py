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

# The test bus carries synthetic patients only: its services may use the published development
# credentials and log key (outside the demo, tests and benchmarks they refuse them).
os.environ["CAREBUS_ALLOW_DEV_SECRETS"] = "1"
# Every line the services can write, so the log-privacy tests read the per-message ones too.
os.environ["CAREBUS_LOG_LEVEL"] = "DEBUG"
# The tests' brokers live minutes and carry bursts: the JVM's first compiler settles within
# seconds, where its second spends the first minute or two compiling (README, CAREBUS_KAFKA_JIT).
os.environ.setdefault("CAREBUS_KAFKA_JIT", "quick")

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
    from foundation.config import load_settings

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
    # Keep the service logs of the last run for whoever has to debug a failure.
    logs = Path(tempfile.gettempdir()) / "carebus-last-test-logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    for log in data_dir.glob("*.log"):
        shutil.copy(log, logs / log.name)
    shutil.rmtree(data_dir, ignore_errors=True)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def redis_client(bus_settings):
    import redis

    client = redis.Redis.from_url(bus_settings.redis)
    yield client
    client.close()


class ServiceProcess:
    """A carebus service started as its own OS process, as an operator would run it."""

    def __init__(self, args: list[str], env: dict[str, str], ready_url: str | None, log_path: Path) -> None:
        self.args, self.env, self.ready_url, self.log_path = args, env, ready_url, log_path
        self.proc = None

    def start(self, timeout: float = 60.0) -> "ServiceProcess":
        import subprocess
        import sys
        import time

        import httpx

        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "carebus.cli", *self.args], env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args} exited: {self.log_path.read_text()[-3000:]}")
            if self.ready_url is None:
                return self
            try:
                if httpx.get(self.ready_url, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.args} not ready: {self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: a crash, not a clean shutdown."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except Exception:  # noqa: BLE001
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def service_env(bus_settings):
    drop = bus_settings.data_dir / "drop"
    env = {**os.environ, "CAREBUS_DROP_DIR": str(drop)}
    return env


@pytest.fixture(scope="session")
def connectors(bus_settings, service_env):
    """`carebus connectors` running against the test bus for the whole session."""
    service = ServiceProcess(["connectors"], service_env, f"http://127.0.0.1:{bus_settings.http_port}/ready",
                             bus_settings.data_dir / "connectors.log").start()
    yield service
    service.stop()


LINK_WORKER_STATUS_PORTS = (28070, 28071)


@pytest.fixture(scope="session")
def link_workers(bus_settings, service_env):
    """Two `carebus link-worker` processes sharing the source-events partitions."""
    workers = [ServiceProcess(["link-worker", "--worker-id", f"w{i}", "--status-port", str(LINK_WORKER_STATUS_PORTS[i])],
                              service_env, f"http://127.0.0.1:{LINK_WORKER_STATUS_PORTS[i]}/health",
                              bus_settings.data_dir / f"link-worker-{i}.log").start() for i in range(2)]
    yield workers
    for w in workers:
        w.stop()


@pytest.fixture(scope="session")
def delivery(bus_settings, service_env):
    """`carebus delivery` (subscriber API, push, audit, monitoring) against the test bus."""
    env = {**service_env, "CAREBUS_DELIVERY_PORT": "28090", "CAREBUS_DELIVERY_BACKOFF_BASE": "0.05",
           "CAREBUS_MONITOR_SAMPLE_SECONDS": "1"}
    service = ServiceProcess(["delivery"], env, "http://127.0.0.1:28090/ready", bus_settings.data_dir / "delivery.log").start()
    service.base = "http://127.0.0.1:28090"
    yield service
    service.stop()


@pytest.fixture(scope="session")
def receiver():
    from tests.webhook_receiver import Receiver

    r = Receiver()
    yield r
    r.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed integration test shows what the services logged (warnings and errors, then the
    last lines): a CI failure must explain itself, the data folder is gone afterwards."""
    outcome = yield
    report = outcome.get_result()
    settings = item.funcargs.get("bus_settings") if hasattr(item, "funcargs") else None
    if not report.failed or settings is None:
        return
    for log in sorted(Path(settings.data_dir).glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        notable = [ln for ln in lines if any(w in ln for w in ("WARNING", "ERROR", "Traceback", "Error:"))]
        report.sections.append((f"service log {log.name}",
                                "\n".join(["-- warnings and errors (last 40):", *notable[-40:],
                                           "-- last 25 lines:", *lines[-25:]])))
