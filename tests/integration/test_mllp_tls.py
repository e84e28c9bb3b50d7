"""MLLP over mutual TLS, through a real TLS client: only a registered certificate may send, and
only for its own system and organisations; everything else is refused, parked, and never stored."""
from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from dataclasses import replace

import pytest

from foundation.config import ConfigError, load_settings, mllp_tls_wanted
from producers import mllp_senders
from schemas.source_systems import CERNER, RIO
from schemas.topics import RAW
from simulator.traffic import MllpClient, ack_code
from tests.conftest import ServiceProcess
from tests.kafka_reading import read_all
from tests.builders import adt
from tests.builders import own_identity
from tests.bus_clients import parked_with, segment
from tests.tls_certificates import CertificateAuthority

TLS_MLLP_PORT, TLS_HTTP_PORT = 22775, 28280


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    senders_ca, other_ca = CertificateAuthority(folder, "senders-ca"), CertificateAuthority(folder, "other-ca")
    server = senders_ca.issue("localhost", server=True)
    senders = folder / "senders.json"
    senders.write_text(json.dumps({"senders": [
        {"certificate_cn": "cerner.ral.test", "system": "CERNER_MILLENNIUM", "ods_codes": ["RAL"],
         "sending_applications": ["CERNER"]}]}))
    return {"folder": folder, "ca": senders_ca, "server": server, "senders": senders,
            "cerner": senders_ca.issue("cerner.ral.test"), "stranger": senders_ca.issue("stranger.test"),
            "forged": other_ca.issue("cerner.ral.test")}


@pytest.fixture(scope="module")
def tls_connectors(bus_settings, service_env, pki, tmp_path_factory):
    env = {**service_env, "CAREBUS_MLLP_PORT": str(TLS_MLLP_PORT), "CAREBUS_HTTP_PORT": str(TLS_HTTP_PORT),
           "CAREBUS_DROP_DIR": str(tmp_path_factory.mktemp("tls-drop")),
           "CAREBUS_MLLP_TLS_CERTIFICATE": str(pki["server"].certificate),
           "CAREBUS_MLLP_TLS_KEY": str(pki["server"].key),
           "CAREBUS_MLLP_TLS_CLIENT_CA": str(pki["ca"].issued.certificate),
           "CAREBUS_MLLP_SENDERS_FILE": str(pki["senders"])}
    service = ServiceProcess(["connectors"], env, f"http://127.0.0.1:{TLS_HTTP_PORT}/ready",
                             bus_settings.data_dir / "tls-connectors.log").start()
    yield service
    service.stop()


def client_context(pki, who: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"].issued.certificate))
    if who is not None:
        context.load_cert_chain(str(pki[who].certificate), str(pki[who].key))
    return context


def send(port: int, tls: ssl.SSLContext | None, message: bytes) -> bytes:
    async def go() -> bytes:
        client = MllpClient("localhost", port, tls)
        try:
            return await client.send(message, timeout=20)
        finally:
            await client.close()
    return asyncio.run(go())


def from_facility(message: bytes, facility: str) -> bytes:
    return message.replace(b"|CERNER|RAL|", f"|CERNER|{facility}|".encode(), 1)


def test_a_registered_sender_for_its_own_organisation_is_accepted(bus_settings, tls_connectors, pki, unique):
    ack = send(TLS_MLLP_PORT, client_context(pki, "cerner"), adt(f"T{unique}", f"T{unique}", **own_identity(unique)))
    assert ack_code(ack) == "AA", ack
    assert read_all(bus_settings, RAW.name, expect=1, timeout=30, predicate=lambda m: f"T{unique}".encode() in m.value())


@pytest.mark.parametrize("case", ["another organisation", "another system's port", "unregistered certificate"])
def test_a_sender_beyond_its_registration_is_refused_parked_and_not_stored(bus_settings, tls_connectors, pki,
                                                                          unique, case):
    message = adt(f"X{unique}", f"X{unique}", **own_identity(unique))
    port, who = TLS_MLLP_PORT, "cerner"
    if case == "another organisation":
        message = from_facility(message, "RF4")
    elif case == "another system's port":
        port = TLS_MLLP_PORT + 1          # the RiO listener
    else:
        who = "stranger"
    ack = send(port, client_context(pki, who), message)
    assert ack_code(ack) == "AR", ack
    assert segment(ack, b"ERR") and b"SENDER_NOT_AUTHORISED" in ack
    [dead] = parked_with(bus_settings, f"X{unique}")
    assert dead["error_code"] == "SENDER_NOT_AUTHORISED"
    assert not read_all(bus_settings, RAW.name, timeout=5, predicate=lambda m: f"X{unique}".encode() in m.value())


@pytest.mark.parametrize("who", [None, "forged"])
def test_without_a_certificate_from_the_senders_ca_there_is_no_connection(tls_connectors, pki, unique, who):
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        send(TLS_MLLP_PORT, client_context(pki, who), adt(f"N{unique}", f"N{unique}", **own_identity(unique)))


def test_plain_mllp_to_a_tls_port_gets_no_ack(tls_connectors, unique):
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError)):
        send(TLS_MLLP_PORT, None, adt(f"P{unique}", f"P{unique}", **own_identity(unique)))


# ---- configuration -------------------------------------------------------------------------------
def test_plain_mllp_is_refused_outside_development_and_half_a_tls_configuration_always():
    settings = replace(load_settings(), allow_dev_secrets="0")
    with pytest.raises(ConfigError, match="anyone who reaches the port"):
        mllp_tls_wanted(settings)
    with pytest.raises(ConfigError, match="CAREBUS_MLLP_SENDERS_FILE"):
        mllp_tls_wanted(replace(settings, allow_dev_secrets="1", mllp_tls_certificate="c", mllp_tls_key="k",
                                mllp_tls_client_ca="ca"))
    assert mllp_tls_wanted(replace(settings, allow_dev_secrets="1")) is False


def test_the_connectors_refuse_to_start_with_an_unusable_senders_file(tmp_path, pki):
    bad = tmp_path / "senders.json"
    bad.write_text(json.dumps({"senders": [{"certificate_cn": "x", "system": "NOT_A_SYSTEM", "ods_codes": ["RAL"]}]}))
    env = {"CAREBUS_MLLP_TLS_CERTIFICATE": str(pki["server"].certificate), "CAREBUS_MLLP_TLS_KEY": str(pki["server"].key),
           "CAREBUS_MLLP_TLS_CLIENT_CA": str(pki["ca"].issued.certificate), "CAREBUS_MLLP_SENDERS_FILE": str(bad)}
    import os
    result = subprocess.run([sys.executable, "-m", "carebus.cli", "connectors"], capture_output=True, text=True,
                            timeout=60, env={**os.environ, **env})
    assert result.returncode == 2 and "NOT_A_SYSTEM" in result.stdout


# ---- the pure rules ------------------------------------------------------------------------------
SENDER = mllp_senders.SenderIdentity("cerner.ral.test", "CERNER_MILLENNIUM", frozenset({"RAL", "RAN"}),
                                     frozenset({"CERNER"}))


@pytest.mark.parametrize("head, profile, allowed", [
    (b"MSH|^~\\&|CERNER|RAL|CAREBUS|LONDON|20261124||ADT^A01|1|P|2.4", CERNER, True),
    (b"MSH|^~\\&|cerner^x|ran^y|CAREBUS|LONDON|20261124||ADT^A01|1|P|2.4", CERNER, True),
    (b"MSH|^~\\&|CERNER|RF4|CAREBUS|LONDON|20261124||ADT^A01|1|P|2.4", CERNER, False),
    (b"MSH|^~\\&|OTHERAPP|RAL|CAREBUS|LONDON|20261124||ADT^A01|1|P|2.4", CERNER, False),
    (b"MSH|^~\\&||RAL|CAREBUS|LONDON|20261124||ADT^A01|1|P|2.4", CERNER, False),
    (b"MSH|^~\\&|CERNER||CAREBUS|LONDON|20261124||ADT^A01|1|P|2.4", CERNER, False),
    (b"MSH#^~\\&#CERNER#RAL#CAREBUS", CERNER, True),          # another field separator
    (b"MSH|^~\\&|CERNER|RAL|CAREBUS|LONDON|20261124||ADT^A01|1|P|2.4", RIO, False),
    (b"PID|1||X", CERNER, False),
])
def test_a_sender_may_send_only_as_its_own_system_organisations_and_applications(head, profile, allowed):
    assert (mllp_senders.refusal(SENDER, profile, head + b"\rPID|1||X") is None) is allowed
    assert mllp_senders.refusal(None, profile, head) is not None
