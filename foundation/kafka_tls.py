"""SASL_SSL for the embedded Kafka broker (CAREBUS_KAFKA_SECURE=1): the material and the settings.

The broker gets a certificate authority of its own and a certificate for 127.0.0.1 and
localhost; carebus's clients get one SCRAM-SHA-512 user whose password is generated once. All of
it lives in `<data dir>/kafka-tls/` (the folder 0700, the files 0600), so the broker and every
carebus process on the machine agree without anyone typing a secret. A cluster you run yourself
brings its own: set KAFKA_SECURITY_PROTOCOL and the KAFKA_SASL_* / KAFKA_SSL_* variables instead.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

USERNAME = "carebus"
MECHANISM = "SCRAM-SHA-512"
FOLDER = "kafka-tls"
VALID_DAYS = 825


@dataclass(frozen=True)
class EmbeddedKafkaSecurity:
    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def keystore(self) -> Path:
        """The broker's private key (PKCS#8) and certificate chain: Kafka's PEM keystore file."""
        return self.folder / "broker-keystore.pem"

    @property
    def password(self) -> str:
        return (self.folder / "client-password").read_text().strip()

    def client_settings(self) -> dict[str, object]:
        return {"security.protocol": "SASL_SSL", "sasl.mechanism": MECHANISM, "sasl.username": USERNAME,
                "sasl.password": self.password, "ssl.ca.location": str(self.ca)}

    def scram_argument(self) -> str:
        """The credential `kafka-storage format --add-scram` writes into a new cluster's metadata."""
        return f"{MECHANISM}=[name={USERNAME},password={self.password}]"

    def broker_properties(self, port: int) -> dict[str, str]:
        jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{USERNAME}" '
                f'password="{self.password}";')
        return {
            "listeners": f"SASL_SSL://127.0.0.1:{port}",
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL",
            "inter.broker.listener.name": "SASL_SSL",
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca),
            "ssl.endpoint.identification.algorithm": "https",
        }


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _create(folder: Path) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=VALID_DAYS)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (x509.CertificateBuilder().subject_name(_name("carebus embedded Kafka CA")).issuer_name(_name("carebus embedded Kafka CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    names = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end).add_extension(names, critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    files = {
        "ca.pem": ca.public_bytes(pem),
        "broker-keystore.pem": key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + cert.public_bytes(pem) + ca.public_bytes(pem),
        "client-password": secrets.token_urlsafe(32).encode(),
    }
    for name, content in files.items():
        path = folder / name
        path.write_bytes(content)
        path.chmod(0o600)


def ensure(data_dir: Path) -> EmbeddedKafkaSecurity:
    """The material, created on first use. Made in a private temporary folder and renamed into
    place, so processes starting together all end up with the same one."""
    folder = data_dir / FOLDER
    if not (folder / "client-password").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".kafka-tls-", dir=data_dir))
        try:
            _create(staging)
            os.rename(staging, folder)
        except OSError:
            if not (folder / "client-password").exists():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return EmbeddedKafkaSecurity(folder)
