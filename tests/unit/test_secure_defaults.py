"""Secure by default: outside the demo, the tests and the benchmarks, the services refuse the
published development credentials and log key."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
from hypothesis import given, strategies as st

from foundation.config import DEV_CREDENTIALS_FILE, ConfigError, load_settings, require_own_secrets


def _without_dev_allowance() -> dict[str, str]:
    env = {**os.environ, "CAREBUS_ALLOW_DEV_SECRETS": "0"}
    for var in ("CAREBUS_CREDENTIALS_FILE", "CAREBUS_LOG_PSEUDONYM_KEY"):
        env.pop(var, None)
    return env


@pytest.mark.parametrize("service", [["connectors"], ["link-worker"], ["delivery"]])
def test_each_service_refuses_to_start_with_the_development_secrets(service):
    result = subprocess.run([sys.executable, "-m", "carebus.cli", *service], env=_without_dev_allowance(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "refusing to start" in result.stdout and "CAREBUS_CREDENTIALS_FILE" in result.stdout
    assert "CAREBUS_LOG_PSEUDONYM_KEY" in result.stdout and "CAREBUS_SECRETS_KEY" in result.stdout


def test_a_copy_of_the_development_file_is_refused_and_own_secrets_are_accepted(tmp_path):
    settings = replace(load_settings(), allow_dev_secrets="0", log_pseudonym_key="a key of this deployment",
                       secrets_key="a sealing key of this deployment")
    copy = tmp_path / "creds.json"
    shutil.copy(DEV_CREDENTIALS_FILE, copy)
    with pytest.raises(ConfigError, match="development tokens"):
        require_own_secrets(replace(settings, credentials_file=copy))
    own = tmp_path / "own.json"
    own.write_text(json.dumps([{"client_id": "epr", "token_sha256": hashlib.sha256(b"a long random token").hexdigest(),
                                "roles": ["subscriber"], "ods_codes": ["RAL"]}]))
    require_own_secrets(replace(settings, credentials_file=own))
    with pytest.raises(ConfigError, match="CAREBUS_LOG_PSEUDONYM_KEY"):
        require_own_secrets(replace(settings, credentials_file=own, log_pseudonym_key="carebus-dev-log-key"))
    with pytest.raises(ConfigError, match="CAREBUS_SECRETS_KEY"):
        require_own_secrets(replace(settings, credentials_file=own, secrets_key="carebus-dev-secrets-key"))
    with pytest.raises(ConfigError, match="cannot be read"):
        require_own_secrets(replace(settings, credentials_file=tmp_path / "missing.json"))


def test_kafka_client_security_settings_reach_every_client_and_the_password_is_never_printed(monkeypatch):
    from foundation.durable_producer import producer_config
    from streams.link_worker import consumer_config

    given = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
             "KAFKA_SASL_USERNAME": "carebus-linker", "KAFKA_SASL_PASSWORD": "s3cret-pw",
             "KAFKA_SSL_CA_LOCATION": "/etc/carebus/ca.pem"}
    for var, value in given.items():
        monkeypatch.setenv(var, value)
    settings = load_settings()
    want = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "carebus-linker",
            "sasl.password": "s3cret-pw", "ssl.ca.location": "/etc/carebus/ca.pem"}
    for conf in (settings.kafka_client(), producer_config(settings), consumer_config(settings, "w1")):
        assert want.items() <= conf.items()
    assert producer_config(settings)["acks"] == "all", "the caller's own settings are kept"
    assert "s3cret-pw" not in repr(settings) and "carebus-dev-log-key" not in repr(settings)


# ---- webhook secrets at rest ---------------------------------------------------------------------
@given(st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=40))
def test_a_sealed_secret_opens_only_with_its_key_and_its_own_subscription(secret, key):
    from consumers.sealed_secrets import SecretUnreadable, seal, unseal

    sealed = seal(secret, key, "sub-1")
    assert secret not in sealed[3:] or len(secret) < 4
    assert unseal(sealed, key, "sub-1") == secret
    with pytest.raises(SecretUnreadable):
        unseal(sealed, key + "x", "sub-1")
    with pytest.raises(SecretUnreadable):
        unseal(sealed, key, "sub-2")
    assert unseal(secret, key, "sub-1") == secret or secret.startswith("v1:")    # stored before sealing
