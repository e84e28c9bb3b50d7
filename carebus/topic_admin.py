"""Creates the catalogued topics and verifies existing ones match the catalogue."""
from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from foundation.config import Settings
from schemas.topics import CATALOGUE, TopicSpec

# Settings that must match exactly; others (segment sizes) may be tuned by operators.
VERIFIED_CONFIGS = ("cleanup.policy", "retention.ms", "min.insync.replicas", "max.message.bytes")
# Drift that is safe to correct in place (a topic made before the size limit was raised).
CORRECTED_CONFIGS = ("max.message.bytes",)


@dataclass(frozen=True)
class TopicState:
    name: str
    created: bool
    partitions: int
    problems: tuple[str, ...]


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(settings.kafka_client())


def ensure_topics(settings: Settings, catalogue: tuple[TopicSpec, ...] = CATALOGUE) -> list[TopicState]:
    admin = admin_client(settings)
    existing = admin.list_topics(timeout=15).topics
    replication = settings.replication
    to_create = [
        NewTopic(t.name, t.partitions or settings.topic_partitions, replication, config=t.config(replication))
        for t in catalogue if t.name not in existing
    ]
    created = set()
    if to_create:
        for name, future in admin.create_topics(to_create, request_timeout=30).items():
            try:
                future.result()
                created.add(name)
            except KafkaException as exc:
                # Another process created it first: fine, it is verified below.
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
    _correct_drift(settings, catalogue, set(existing), admin)
    return verify_topics(settings, catalogue, created, admin)


def _correct_drift(settings: Settings, catalogue: tuple[TopicSpec, ...], existing: set[str], admin: AdminClient) -> None:
    specs = [t for t in catalogue if t.name in existing]
    actual = _configs(admin, [t.name for t in specs])
    fixes = []
    for spec in specs:
        wanted = spec.config(settings.replication)
        entries = [ConfigEntry(k, wanted[k], incremental_operation=AlterConfigOpType.SET) for k in CORRECTED_CONFIGS
                   if k not in actual[spec.name] or actual[spec.name][k].value != wanted[k]]
        if entries:
            fixes.append(ConfigResource(ConfigResource.Type.TOPIC, spec.name, incremental_configs=entries))
    for future in admin.incremental_alter_configs(fixes).values() if fixes else []:
        future.result()


def _configs(admin: AdminClient, topics: list[str], patience_seconds: float = 30.0) -> dict[str, dict]:
    """Each topic's current configuration (name -> ConfigEntry), one request for all. A topic just
    created may not have reached every broker yet (UNKNOWN_TOPIC_OR_PART from the one asked, seen
    on a three-broker cluster): asked again until it has."""
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in topics]
    deadline = time.monotonic() + patience_seconds
    while True:
        try:
            return {r.name: f.result() for r, f in admin.describe_configs(resources).items()} if resources else {}
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def verify_topics(settings: Settings, catalogue: tuple[TopicSpec, ...] = CATALOGUE,
                  created: set[str] | None = None, admin: AdminClient | None = None) -> list[TopicState]:
    admin = admin or admin_client(settings)
    metadata = admin.list_topics(timeout=15).topics
    configs = _configs(admin, [t.name for t in catalogue if t.name in metadata])
    states = []
    for spec in catalogue:
        problems = []
        if spec.name not in metadata:
            states.append(TopicState(spec.name, False, 0, ("missing",)))
            continue
        wanted = spec.config(settings.replication)
        actual = configs.get(spec.name, {})
        for key in VERIFIED_CONFIGS:
            have = actual[key].value if key in actual else None
            if have != wanted[key]:
                problems.append(f"{key}={have} (catalogue says {wanted[key]})")
        partitions = len(metadata[spec.name].partitions)
        other = spec.co_partitioned_with
        if other in metadata and len(metadata[other].partitions) != partitions:
            problems.append(f"{partitions} partitions, {other} has {len(metadata[other].partitions)} "
                            "(they must match: each partition p goes with the other's p)")
        states.append(TopicState(spec.name, spec.name in (created or set()), partitions, tuple(problems)))
    return states
