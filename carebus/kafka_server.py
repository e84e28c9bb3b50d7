"""The embedded Apache Kafka broker (KRaft), assembled from Maven Central jars.

`ensure_libs` runs Maven once to copy kafka_2.13 and its runtime jars into
deploy/kafka/target/libs (cached in ~/.m2, so reruns are offline and quick). Each node is a
combined broker+controller; one node formats with `--standalone`, a 3-node cluster uses a
static voter set so all three agree on the quorum from the first start.
"""
from __future__ import annotations

import base64
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from carebus import process_control
from foundation import kafka_tls
from foundation.config import REPO_ROOT, Settings
from schemas.topics import MAX_RECORD_BYTES
from schemas.errors import SetupError

POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"
LOG4J2_PROPERTIES = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


class KafkaSetupError(SetupError):
    """Something the broker needs is missing or in the way; the message says what and how to fix it."""


@dataclass(frozen=True)
class KafkaNode:
    node_id: int
    port: int
    controller_port: int
    directory: Path

    @property
    def pid_file(self) -> Path:
        return self.directory / "kafka.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    @property
    def properties_file(self) -> Path:
        return self.directory / "server.properties"

    @property
    def log_dir(self) -> Path:
        return self.directory / "data"

    @property
    def marker(self) -> str:
        # The properties path is unique to this node, so it identifies our java process.
        return str(self.properties_file)


def nodes(settings: Settings) -> list[KafkaNode]:
    return [
        KafkaNode(
            node_id=i + 1,
            port=port,
            controller_port=settings.kafka_controller_port + 2 * i,
            directory=settings.data_dir / f"kafka-{i + 1}",
        )
        for i, port in enumerate(settings.embedded_broker_ports)
    ]


def require_tools() -> None:
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        raise KafkaSetupError(
            f"{' and '.join(missing)} not found on PATH: the embedded Kafka broker needs Java 17+ "
            "and Maven (apt-get install openjdk-17-jre-headless maven), or set "
            "KAFKA_BOOTSTRAP_SERVERS to use your own cluster"
        )


def ensure_libs(settings: Settings) -> Path:
    libs = settings.kafka_libs_dir
    if libs.is_dir() and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    require_tools()
    result = subprocess.run(
        ["mvn", "-q", "-B", "-f", str(POM), "package"], capture_output=True, text=True
    )
    if result.returncode != 0 or not any(libs.glob("kafka_2.13-*.jar")):
        raise KafkaSetupError(f"Maven could not assemble the Kafka broker jars:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    return libs


def new_cluster_id() -> str:
    """A base64 UUID as Kafka wants, never starting with '-': the storage tool's argument parser
    would read such an id as an option (about 1 start in 64 otherwise)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _properties(node: KafkaNode, all_nodes: list[KafkaNode], settings: Settings) -> str:
    replication = min(3, len(all_nodes))
    lines = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(node.log_dir),
        "num.partitions": str(settings.topic_partitions),
        "default.replication.factor": str(replication),
        "offsets.topic.replication.factor": str(replication),
        "transaction.state.log.replication.factor": str(replication),
        "transaction.state.log.min.isr": str(min(2, replication)),
        "share.coordinator.state.topic.replication.factor": str(replication),
        "share.coordinator.state.topic.min.isr": str(min(2, replication)),
        "min.insync.replicas": str(min(2, replication)),
        "group.initial.rebalance.delay.ms": "0",
        # Topics are created from the catalogue, never by a typo in a consumer.
        "auto.create.topics.enable": "false",
        "log.retention.hours": "-1",
        "log.segment.bytes": str(64 * 1024 * 1024),
        "unclean.leader.election.enable": "false",
        # Topics carry their own max.message.bytes (schemas.topics); replication must fetch them.
        "message.max.bytes": str(MAX_RECORD_BYTES),
        "replica.fetch.max.bytes": str(MAX_RECORD_BYTES),
    }
    if settings.embedded_kafka_secure:
        # Clients and brokers speak SASL_SSL; the KRaft controllers keep their own listener on
        # 127.0.0.1 (every node of the embedded cluster is on this machine).
        secure = kafka_tls.ensure(settings.data_dir).broker_properties(node.port)
        secure["listeners"] += f",CONTROLLER://127.0.0.1:{node.controller_port}"
        secure["listener.security.protocol.map"] += ",CONTROLLER:PLAINTEXT"
        lines.update(secure)
    if len(all_nodes) == 1:
        lines["controller.quorum.bootstrap.servers"] = f"127.0.0.1:{node.controller_port}"
    else:
        lines["controller.quorum.voters"] = ",".join(
            f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in all_nodes
        )
    return "\n".join(f"{k}={v}" for k, v in lines.items()) + "\n"


def _java_cmd(libs: Path, node: KafkaNode, settings: Settings, main: list[str]) -> list[str]:
    return [
        "java", f"-Xmx{settings.kafka_heap}", "-Xms128m",
        *(["-XX:TieredStopAtLevel=1"] if settings.kafka_jit == "quick" else []),
        f"-Dlog4j2.configurationFile={node.directory / 'log4j2.properties'}",
        "-Djava.awt.headless=true",
        "-cp", f"{libs}/*", *main,
    ]


def _check_port_free(port: int, what: str, variable: str) -> None:
    if process_control.port_open(port):
        raise KafkaSetupError(
            f"port {port} ({what}) is already in use by a process carebus did not start; "
            f"stop it or choose another port with {variable}"
        )


def up(settings: Settings, timeout: float = 90.0) -> list[KafkaNode]:
    """Start every node not already running; format new data directories first. Idempotent."""
    require_tools()
    libs = ensure_libs(settings)
    all_nodes = nodes(settings)
    cluster_id_file = settings.data_dir / "kafka-cluster-id"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not cluster_id_file.exists() or cluster_id_file.read_text().startswith("-"):
        cluster_id_file.write_text(new_cluster_id())
    cluster_id = cluster_id_file.read_text().strip()
    started = []
    for node in all_nodes:
        if process_control.running_pid(node.pid_file, node.marker):
            continue
        _check_port_free(node.port, f"Kafka broker {node.node_id}", "CAREBUS_KAFKA_PORT")
        _check_port_free(node.controller_port, f"Kafka controller {node.node_id}", "CAREBUS_KAFKA_CONTROLLER_PORT")
        node.directory.mkdir(parents=True, exist_ok=True)
        node.properties_file.write_text(_properties(node, all_nodes, settings))
        node.properties_file.chmod(0o600)      # with SASL_SSL it holds the broker's SCRAM password
        (node.directory / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        mode_file = node.directory / "security"
        mode = "sasl_ssl" if settings.embedded_kafka_secure else "plaintext"
        if (node.log_dir / "meta.properties").exists():
            was = mode_file.read_text().strip() if mode_file.exists() else "plaintext"
            if was != mode:
                # SCRAM users live in the cluster's metadata, written when the storage is formatted.
                raise KafkaSetupError(
                    f"the embedded Kafka in {settings.data_dir} was created {was}, and CAREBUS_KAFKA_SECURE asks "
                    f"for {mode}: use another CAREBUS_DATA_DIR, or `carebus down` and remove "
                    f"{settings.data_dir}/kafka-* to start again (its topics are lost)")
        else:
            fmt = ["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(node.properties_file)]
            if len(all_nodes) == 1:
                fmt.append("--standalone")
            if settings.embedded_kafka_secure:
                fmt += ["--add-scram", kafka_tls.ensure(settings.data_dir).scram_argument()]
            result = subprocess.run(_java_cmd(libs, node, settings, fmt), capture_output=True, text=True)
            if result.returncode != 0:
                raise KafkaSetupError(f"formatting Kafka storage failed: {result.stdout}{result.stderr}")
            mode_file.write_text(mode)
        process_control.start(
            _java_cmd(libs, node, settings, ["kafka.Kafka", str(node.properties_file)]),
            node.pid_file, node.log_file,
        )
        started.append(node)
    wait_ready(settings, all_nodes, timeout)
    return started


def wait_ready(settings: Settings, all_nodes: list[KafkaNode], timeout: float) -> None:
    from confluent_kafka.admin import AdminClient

    deadline = time.monotonic() + timeout
    admin = None
    last_error = "listener not open yet"
    while time.monotonic() < deadline:
        for node in all_nodes:
            if not process_control.running_pid(node.pid_file, node.marker):
                tail = node.log_file.read_text(errors="replace")[-3000:] if node.log_file.exists() else ""
                raise KafkaSetupError(f"Kafka node {node.node_id} exited during start-up; last log lines:\n{tail}")
        if admin is None:
            # librdkafka logs every refused connection, so wait for the listeners first.
            if not all(process_control.port_open(n.port) for n in all_nodes):
                time.sleep(0.3)
                continue
            admin = AdminClient(settings.kafka_client({"bootstrap.servers": ",".join(f"127.0.0.1:{n.port}"
                                                                                      for n in all_nodes)}))
        try:
            md = admin.list_topics(timeout=2)
            if len(md.brokers) == len(all_nodes):
                return
            last_error = f"{len(md.brokers)} of {len(all_nodes)} brokers registered"
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_error = str(exc)
        time.sleep(0.5)
    raise KafkaSetupError(f"Kafka did not become ready within {timeout:.0f}s: {last_error}")


def down(settings: Settings, hard: bool = False) -> list[int]:
    stopped = []
    for node in nodes(settings):
        if process_control.stop(node.pid_file, node.marker, hard=hard):
            stopped.append(node.node_id)
    return stopped


def pids(settings: Settings) -> dict[int, int | None]:
    """Each broker's process id by node id (None: not running)."""
    return {n.node_id: process_control.running_pid(n.pid_file, n.marker) for n in nodes(settings)}


def status(settings: Settings) -> dict[int, bool]:
    return {node: pid is not None for node, pid in pids(settings).items()}
