"""docker-compose.yml must describe the same topology the embedded bus runs."""
from __future__ import annotations

from pathlib import Path

import yaml
from typer.main import get_command

from carebus.cli import app
from foundation.config import ENVIRONMENT, REPO_ROOT
from carebus.kafka_server import LOG4J2_PROPERTIES  # noqa: F401 - the embedded twin of the kafka service

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_kafka_is_a_single_kraft_node_with_the_embedded_settings():
    env = SERVICES["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == 0
    assert env["KAFKA_LOG_RETENTION_HOURS"] == -1
    assert "zookeeper" not in str(COMPOSE).lower()
    from schemas.topics import MAX_RECORD_BYTES

    assert env["KAFKA_MESSAGE_MAX_BYTES"] == env["KAFKA_REPLICA_FETCH_MAX_BYTES"] == MAX_RECORD_BYTES


def test_redis_keeps_an_append_only_file_and_the_embedded_memory_settings():
    from carebus.redis_server import MEMORY_SETTINGS, PERSISTENCE_SETTINGS

    command = SERVICES["redis"]["command"]
    assert PERSISTENCE_SETTINGS["appendonly"] == "yes" and PERSISTENCE_SETTINGS["save"] == ""
    for name, value in {**PERSISTENCE_SETTINGS, **MEMORY_SETTINGS}.items():
        assert command[command.index(f"--{name}") + 1] == value


def test_schema_registry_enforces_full_transitive_like_the_tests():
    env = SERVICES["schema-registry"]["environment"]
    assert env["SCHEMA_REGISTRY_SCHEMA_COMPATIBILITY_LEVEL"] == "full_transitive"


def test_carebus_services_use_only_documented_settings_and_real_commands():
    commands = set(get_command(app).commands)
    carebus_services = [s for s in SERVICES.values() if s.get("build")]
    assert carebus_services
    for service in carebus_services:
        assert service["command"][0] == "carebus"
        assert service["command"][1] in commands, service["command"]
        env = service["environment"]
        for variable in env:
            assert variable in ENVIRONMENT, variable
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert {"connectors", "link-worker", "delivery"} <= set(SERVICES)


def test_dockerfile_copies_every_package():
    import tomllib

    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    found = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for package in [*(p.rstrip("*") for p in found["include"]), "deploy"]:
        assert f"COPY {package} {package}" in dockerfile
        assert Path(REPO_ROOT / package).is_dir()


def test_kafka_redis_and_the_registry_are_published_on_this_host_only():
    for name in ("kafka", "redis", "schema-registry"):
        for mapping in SERVICES[name].get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), (name, mapping)
    for name in ("connectors", "delivery"):
        # In the container a service listens on every interface so that its published port works.
        assert SERVICES[name]["environment"]["CAREBUS_BIND_HOST"] == "0.0.0.0"
