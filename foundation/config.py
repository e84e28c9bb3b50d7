"""Every setting carebus reads, in one place.

Each field names the environment variable that overrides it and its default. The defaults
describe the embedded local bus that `carebus up` starts (its own ports, so it never collides
with a Kafka or Redis a developer already runs); point KAFKA_BOOTSTRAP_SERVERS and REDIS_URL at
your own cluster and the same code runs there.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from schemas.errors import SetupError

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_LINKAGE_PARAMETERS = REPO_ROOT / "streams" / "linkage_parameters.json"


class ConfigError(SetupError, ValueError):
    """A setting is missing or malformed; the message names the variable and what is wrong."""


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _env_int(name: str, default: int, minimum: int = 0, maximum: int = 65535 * 1000) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name}={value} is outside {minimum}..{maximum}")
    return value


# The development secrets: published in this repository, so never good enough for real data.
DEV_CREDENTIALS_FILE = REPO_ROOT / "deploy" / "dev-credentials.json"
DEV_LOG_PSEUDONYM_KEY = "carebus-dev-log-key"
DEV_SECRETS_KEY = "carebus-dev-secrets-key"
DEV_TOKENS = ("dev-subscriber2-token", "dev-subscriber-token", "dev-auditor-token", "dev-emis-token",
              "dev-cerner-token", "dev-rio-token", "dev-vision-token", "dev-tpp-token")


@dataclass(frozen=True)
class Settings:
    # Where the bus is. Empty KAFKA_BOOTSTRAP_SERVERS means "the embedded broker on KAFKA_PORT".
    kafka_bootstrap_servers: str = ""
    redis_url: str = ""
    # The embedded local servers `carebus up` starts.
    data_dir: Path = REPO_ROOT / ".carebus"
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    kafka_brokers: int = 1
    kafka_heap: str = "512m"
    # How the embedded broker's JVM compiles: "full" is the JVM's default (C1, then C2), "quick"
    # stops at its first compiler (C1). On a 2-core machine C2's compiling took two to four times
    # the broker's CPU per event for the first minute or two of traffic, while C1 settled within
    # 15 seconds, but 20-35% above a fully compiled broker: quick for short-lived buses (the tests).
    kafka_jit: str = "full"
    # Which Avro codec writes and reads messages (schemas/codec.py): "cavro" (2-2.7 times faster)
    # or "fastavro" (the reference); both give the same bytes.
    avro_engine: str = "cavro"
    redis_port: int = 16379
    kafka_libs_dir: Path = REPO_ROOT / "deploy" / "kafka" / "target" / "libs"
    # Topic defaults; replication follows the cluster size unless set.
    topic_partitions: int = 6
    topic_replication: int = 0  # 0 = min(3, brokers)
    # Service ports.
    mllp_port: int = 2575
    http_port: int = 8080
    delivery_port: int = 8090
    # The address the MLLP listeners and HTTP APIs listen on: this machine only, unless told
    # otherwise (0.0.0.0 inside a container, or the interface the hospital network reaches).
    bind_host: str = "127.0.0.1"
    # MLLP limits: an idle connection closes after this many seconds (senders reconnect), a
    # message must arrive whole within message_timeout of its first byte, and past
    # max_connections a new sender is answered AE and closed.
    mllp_idle_timeout: int = 600
    mllp_message_timeout: int = 30
    mllp_max_connections: int = 200
    # MLLP over mutual TLS (producers/mllp_senders.py): the connector's certificate and key, the CA
    # that signs senders' certificates, and the senders file (what each certificate may send for).
    # All four, or none (then plain MLLP, refused outside CAREBUS_ALLOW_DEV_SECRETS=1).
    mllp_tls_certificate: str = ""
    mllp_tls_key: str = ""
    mllp_tls_client_ca: str = ""
    mllp_senders_file: str = ""
    delivery_backoff_base: str = "0.5"   # seconds; retry n waits up to base * 2**n (full jitter)
    # How often the delivery service samples the monitor for the dashboard's last-hour charts.
    monitor_sample_seconds: int = 10
    # Where bulk extracts are dropped for the file connectors.
    drop_dir: Path = REPO_ROOT / ".carebus" / "drop"
    # How often each drop folder is looked at for new files (Mirth's File Reader polling frequency).
    file_drop_poll_ms: int = 1000
    # Processes that parse and encode a large Vision extract (0: one per CPU core, at least 2).
    bulk_workers: int = 0
    # HMAC key used to pseudonymise identifiers in logs (never log an NHS number in clear).
    log_pseudonym_key: str = field(default=DEV_LOG_PSEUDONYM_KEY, repr=False)
    # Seals webhook signing secrets at rest in Redis (consumers/sealed_secrets.py).
    secrets_key: str = field(default=DEV_SECRETS_KEY, repr=False)
    # Hosts or networks (comma-separated, e.g. "epr.trust.local,10.20.0.0/16") webhooks may reach
    # although they are private or loopback (consumers/webhook_address_guard.py).
    webhook_allow_hosts: str = ""
    # Subscriptions one client may hold: each push subscription is a Kafka consumer and a task.
    max_subscriptions_per_client: int = 100
    credentials_file: Path = DEV_CREDENTIALS_FILE
    # Kafka client security, passed to every consumer, producer and admin client as librdkafka
    # settings (security.protocol SASL_SSL / SSL, SCRAM or PLAIN credentials, TLS files).
    kafka_security_protocol: str = ""
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    kafka_ssl_ca_location: str = ""
    kafka_ssl_certificate_location: str = ""
    kafka_ssl_key_location: str = ""
    # "1": the embedded broker listens with SASL_SSL (SCRAM-SHA-512 over TLS, foundation/kafka_tls.py)
    # and every client of it uses that; ignored when KAFKA_BOOTSTRAP_SERVERS names your own cluster.
    kafka_secure: str = "0"
    # "1" only for `carebus demo`, the tests and the benchmarks: the services then accept the
    # development credentials file and log key above. Anywhere else they refuse to start with them.
    allow_dev_secrets: str = "0"
    linkage_parameters: Path = SHIPPED_LINKAGE_PARAMETERS
    # Link workers take up to this many events per batch, waiting at most this long for them:
    # larger batches amortise round trips, the wait bounds the latency added at low traffic.
    link_batch_size: int = 500
    link_batch_wait_ms: int = 20
    # How long the broker may hold a link worker's fetch for 64 KB of events. Every fetch costs the
    # broker CPU even when it returns nothing: at 20 ms two idle workers took 12-30% of a core.
    link_fetch_wait_ms: int = 20
    # A link worker's /health, /ready, /metrics on 127.0.0.1 (0: off; give each worker its own).
    link_worker_status_port: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def embedded_broker_ports(self) -> list[int]:
        """Node i of the embedded cluster listens on KAFKA_PORT + 2i (its controller on the next port)."""
        return [self.kafka_port + 2 * i for i in range(self.kafka_brokers)]

    @property
    def bootstrap(self) -> str:
        # Every broker, not the first: a client started while node 1 is down must still find the cluster.
        return self.kafka_bootstrap_servers or ",".join(f"127.0.0.1:{p}" for p in self.embedded_broker_ports)

    def kafka_client(self, extra: dict[str, object] | None = None) -> dict[str, object]:
        """librdkafka settings for any client of the bus: the brokers, the security settings
        given, then the caller's own."""
        conf: dict[str, object] = {"bootstrap.servers": self.bootstrap}
        for key, value in (("security.protocol", self.kafka_security_protocol),
                           ("sasl.mechanism", self.kafka_sasl_mechanism), ("sasl.username", self.kafka_sasl_username),
                           ("sasl.password", self.kafka_sasl_password), ("ssl.ca.location", self.kafka_ssl_ca_location),
                           ("ssl.certificate.location", self.kafka_ssl_certificate_location),
                           ("ssl.key.location", self.kafka_ssl_key_location)):
            if value:
                conf[key] = value
        if self.embedded_kafka_secure and not self.kafka_security_protocol:
            from foundation import kafka_tls

            conf.update(kafka_tls.ensure(self.data_dir).client_settings())
        return {**conf, **(extra or {})}

    @property
    def embedded_kafka_secure(self) -> bool:
        return self.kafka_secure == "1" and self.uses_embedded_kafka

    @property
    def fitted_linkage_parameters(self) -> Path:
        """Where `carebus estimate-linkage` writes (never over the shipped file)."""
        return self.data_dir / "linkage_parameters.json"

    @property
    def linkage_parameters_in_use(self) -> Path:
        """CAREBUS_LINKAGE_PARAMETERS if set; else fitted parameters if there are any; else the shipped ones."""
        if self.linkage_parameters == SHIPPED_LINKAGE_PARAMETERS and self.fitted_linkage_parameters.exists():
            return self.fitted_linkage_parameters
        return self.linkage_parameters

    @property
    def redis(self) -> str:
        return self.redis_url or f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def replication(self) -> int:
        return self.topic_replication or min(3, self.kafka_brokers)

    @property
    def uses_embedded_kafka(self) -> bool:
        return not self.kafka_bootstrap_servers

    @property
    def uses_embedded_redis(self) -> bool:
        return not self.redis_url


# Variable name -> (field, parser). Documented in README "Configuration".
ENVIRONMENT = {
    "KAFKA_BOOTSTRAP_SERVERS": "kafka_bootstrap_servers",
    "REDIS_URL": "redis_url",
    "CAREBUS_DATA_DIR": "data_dir",
    "CAREBUS_KAFKA_PORT": "kafka_port",
    "CAREBUS_KAFKA_CONTROLLER_PORT": "kafka_controller_port",
    "CAREBUS_KAFKA_BROKERS": "kafka_brokers",
    "CAREBUS_KAFKA_HEAP": "kafka_heap",
    "CAREBUS_KAFKA_JIT": "kafka_jit",
    "CAREBUS_AVRO_ENGINE": "avro_engine",
    "CAREBUS_REDIS_PORT": "redis_port",
    "CAREBUS_KAFKA_LIBS": "kafka_libs_dir",
    "CAREBUS_TOPIC_PARTITIONS": "topic_partitions",
    "CAREBUS_TOPIC_REPLICATION": "topic_replication",
    "CAREBUS_MLLP_PORT": "mllp_port",
    "CAREBUS_HTTP_PORT": "http_port",
    "CAREBUS_DELIVERY_PORT": "delivery_port",
    "CAREBUS_DELIVERY_BACKOFF_BASE": "delivery_backoff_base",
    "CAREBUS_MONITOR_SAMPLE_SECONDS": "monitor_sample_seconds",
    "CAREBUS_BIND_HOST": "bind_host",
    "CAREBUS_MLLP_IDLE_TIMEOUT": "mllp_idle_timeout",
    "CAREBUS_MLLP_MESSAGE_TIMEOUT": "mllp_message_timeout",
    "CAREBUS_MLLP_MAX_CONNECTIONS": "mllp_max_connections",
    "CAREBUS_MLLP_TLS_CERTIFICATE": "mllp_tls_certificate",
    "CAREBUS_MLLP_TLS_KEY": "mllp_tls_key",
    "CAREBUS_MLLP_TLS_CLIENT_CA": "mllp_tls_client_ca",
    "CAREBUS_MLLP_SENDERS_FILE": "mllp_senders_file",
    "CAREBUS_DROP_DIR": "drop_dir",
    "CAREBUS_FILE_DROP_POLL_MS": "file_drop_poll_ms",
    "CAREBUS_BULK_WORKERS": "bulk_workers",
    "CAREBUS_LOG_PSEUDONYM_KEY": "log_pseudonym_key",
    "CAREBUS_SECRETS_KEY": "secrets_key",
    "CAREBUS_WEBHOOK_ALLOW_HOSTS": "webhook_allow_hosts",
    "CAREBUS_MAX_SUBSCRIPTIONS_PER_CLIENT": "max_subscriptions_per_client",
    "CAREBUS_ALLOW_DEV_SECRETS": "allow_dev_secrets",
    "CAREBUS_KAFKA_SECURE": "kafka_secure",
    "KAFKA_SECURITY_PROTOCOL": "kafka_security_protocol",
    "KAFKA_SASL_MECHANISM": "kafka_sasl_mechanism",
    "KAFKA_SASL_USERNAME": "kafka_sasl_username",
    "KAFKA_SASL_PASSWORD": "kafka_sasl_password",
    "KAFKA_SSL_CA_LOCATION": "kafka_ssl_ca_location",
    "KAFKA_SSL_CERTIFICATE_LOCATION": "kafka_ssl_certificate_location",
    "KAFKA_SSL_KEY_LOCATION": "kafka_ssl_key_location",
    "CAREBUS_CREDENTIALS_FILE": "credentials_file",
    "CAREBUS_LINKAGE_PARAMETERS": "linkage_parameters",
    "CAREBUS_LINK_BATCH_SIZE": "link_batch_size",
    "CAREBUS_LINK_BATCH_WAIT_MS": "link_batch_wait_ms",
    "CAREBUS_LINK_FETCH_WAIT_MS": "link_fetch_wait_ms",
    "CAREBUS_LINK_WORKER_STATUS_PORT": "link_worker_status_port",
}

_PORT_FIELDS = {"kafka_port", "kafka_controller_port", "redis_port", "mllp_port", "http_port", "delivery_port"}


AVRO_ENGINES = ("cavro", "fastavro")


class AvroEngineError(ConfigError):
    """CAREBUS_AVRO_ENGINE names no engine, or one this install lacks (schemas/codec.py)."""


def avro_engine(raw: str) -> str:
    """The Avro engine CAREBUS_AVRO_ENGINE names ('' for the default), checked. schemas/codec.py
    reads the variable itself, on first use: a bulk extract worker encodes and loads no other setting."""
    name = raw or Settings.avro_engine
    if name not in AVRO_ENGINES:
        raise AvroEngineError(f"CAREBUS_AVRO_ENGINE must be one of {', '.join(AVRO_ENGINES)}, not {name!r}")
    return name


def load_settings() -> Settings:
    """Read the environment; raise ConfigError naming the variable on a bad value."""
    defaults = Settings()
    values: dict[str, object] = {}
    for var, name in ENVIRONMENT.items():
        default = getattr(defaults, name)
        if isinstance(default, bool):
            continue
        if isinstance(default, int):
            if name in _PORT_FIELDS:
                values[name] = _env_int(var, default, 1, 65535)
            elif name == "link_worker_status_port":
                values[name] = _env_int(var, default, 0, 65535)
            elif name == "kafka_brokers":
                values[name] = _env_int(var, default, 1, 9)
            else:
                values[name] = _env_int(var, default, 0, 10_000)
        elif isinstance(default, Path):
            values[name] = Path(_env(var, str(default))).expanduser()
        else:
            values[name] = _env(var, default)
    bootstrap = str(values["kafka_bootstrap_servers"])
    for hostport in filter(None, bootstrap.split(",")):
        host, _, port = hostport.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"KAFKA_BOOTSTRAP_SERVERS entry {hostport!r} is not host:port")
    redis_url = str(values["redis_url"])
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"REDIS_URL={redis_url!r} must start with redis://, rediss:// or unix://")
    try:
        if float(str(values["delivery_backoff_base"])) <= 0:
            raise ValueError
    except ValueError:
        raise ConfigError("CAREBUS_DELIVERY_BACKOFF_BASE must be a positive number of seconds") from None
    if not values["link_batch_size"]:
        raise ConfigError("CAREBUS_LINK_BATCH_SIZE must be at least 1")
    for variable, name in (("CAREBUS_ALLOW_DEV_SECRETS", "allow_dev_secrets"), ("CAREBUS_KAFKA_SECURE", "kafka_secure")):
        if str(values[name]) not in ("0", "1"):
            raise ConfigError(f"{variable} must be 0 or 1")
    if values["kafka_jit"] not in ("quick", "full"):
        raise ConfigError("CAREBUS_KAFKA_JIT must be quick or full")
    values["avro_engine"] = avro_engine(str(values["avro_engine"]))
    if not values["monitor_sample_seconds"]:
        raise ConfigError("CAREBUS_MONITOR_SAMPLE_SECONDS must be at least 1")
    if values["kafka_port"] == values["kafka_controller_port"]:
        raise ConfigError("CAREBUS_KAFKA_PORT and CAREBUS_KAFKA_CONTROLLER_PORT must differ")
    return Settings(**values)  # type: ignore[arg-type]


def require_own_secrets(settings: Settings) -> None:
    """A service handling patient data refuses the development credentials and log key, which
    are published with the code, unless CAREBUS_ALLOW_DEV_SECRETS=1 (demo, tests, benchmarks)."""
    if settings.allow_dev_secrets == "1":
        return
    problems = []
    try:
        text = Path(settings.credentials_file).read_text()
    except OSError:
        raise ConfigError(f"CAREBUS_CREDENTIALS_FILE {settings.credentials_file} cannot be read") from None
    # By content, not path: a copy of the development file elsewhere is just as public.
    if any(hashlib.sha256(token.encode()).hexdigest() in text for token in DEV_TOKENS):
        problems.append("CAREBUS_CREDENTIALS_FILE (it accepts development tokens, which are printed in the README)")
    if settings.log_pseudonym_key == DEV_LOG_PSEUDONYM_KEY:
        problems.append("CAREBUS_LOG_PSEUDONYM_KEY (the development key would make log pseudonyms reversible)")
    if settings.secrets_key == DEV_SECRETS_KEY:
        problems.append("CAREBUS_SECRETS_KEY (the development key would open the webhook secrets kept in Redis)")
    if problems:
        raise ConfigError("set your own " + " and ".join(problems) + "; or CAREBUS_ALLOW_DEV_SECRETS=1 for a "
                          "throw-away local run (carebus demo sets it)")


MLLP_TLS_VARIABLES = ("CAREBUS_MLLP_TLS_CERTIFICATE", "CAREBUS_MLLP_TLS_KEY", "CAREBUS_MLLP_TLS_CLIENT_CA",
                      "CAREBUS_MLLP_SENDERS_FILE")


def mllp_tls_wanted(settings: Settings) -> bool:
    """True if MLLP runs over mutual TLS; raises ConfigError for half a configuration, or for plain
    MLLP outside CAREBUS_ALLOW_DEV_SECRETS=1 (anyone reaching the port could write any record)."""
    values = (settings.mllp_tls_certificate, settings.mllp_tls_key, settings.mllp_tls_client_ca,
              settings.mllp_senders_file)
    if all(values):
        return True
    if any(values):
        missing = [name for name, value in zip(MLLP_TLS_VARIABLES, values) if not value]
        raise ConfigError("MLLP over TLS needs all of its settings; missing " + ", ".join(missing))
    if settings.allow_dev_secrets != "1":
        raise ConfigError("MLLP without TLS lets anyone who reaches the port write into any record: set "
                          + ", ".join(MLLP_TLS_VARIABLES) + "; or CAREBUS_ALLOW_DEV_SECRETS=1 for a "
                          "throw-away local run")
    return False
