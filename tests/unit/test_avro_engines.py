"""The two Avro engines of schemas/codec.py write and read exactly the same thing.

cavro is the hot path, fastavro the reference: any record of any message type must give the same
bytes from both, and any bytes must decode to the same message in both, or a consumer on one
engine would read something else than a producer on the other wrote.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings as hsettings

from foundation.config import REPO_ROOT, ConfigError, load_settings
from schemas import codec, registry
from tests.avro_strategies import for_schema


@pytest.mark.parametrize("message_type", registry.MESSAGE_TYPES)
def test_both_engines_write_the_same_bytes_and_read_the_same_message(message_type):
    @hsettings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
    @given(for_schema(registry.current()[message_type].expanded))
    def same(record):
        written = codec.cavro_body(message_type, record)
        assert written == codec.fastavro_body(message_type, record)
        assert codec.cavro_read(message_type, written) == codec.fastavro_read(message_type, written)

    same()


def test_the_hot_path_is_cavro_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv("CAREBUS_AVRO_ENGINE", raising=False)
    assert codec.engine_setting() == "cavro"
    assert load_settings().avro_engine == "cavro"


def test_an_unknown_engine_is_a_clear_configuration_error(monkeypatch):
    monkeypatch.setenv("CAREBUS_AVRO_ENGINE", "avro-c")
    with pytest.raises(codec.EngineError, match="CAREBUS_AVRO_ENGINE"):
        codec.engine_setting()
    with pytest.raises(ConfigError, match="CAREBUS_AVRO_ENGINE"):
        load_settings()


def test_a_process_told_fastavro_writes_what_cavro_reads():
    """Each process keeps the engine it chose at first use: one on fastavro (the fallback an
    operator can switch to) and one on cavro share the topics."""
    change = {"person_id": "PER-1", "version": 3, "updated_at": 1_700_000_000_000, "sources": [],
              "demographics": {"local_identifier": {"system": "urn:carebus:person", "value": "PER-1"},
                               "other_identifiers": [], "nhs_number": "9434765919",
                               "nhs_number_status": "VERIFIED", "names": [], "birth_date": -5081,
                               "birth_date_as_sent": None, "sex": "FEMALE", "addresses": [], "telecom": [],
                               "registered_practice_ods": None, "deceased_at": None, "sharing_objection": False},
              "demographics_provenance": {}, "encounters": [], "problems": [], "medications": [], "allergies": [],
              "observations": [], "referrals": [], "documents": []}
    script = ("import sys; from schemas import codec; "
              f"assert codec.engine()[0] is codec.fastavro_body; sys.stdout.buffer.write(codec.encode('SharedRecord', {change!r}))")
    written = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True, cwd=REPO_ROOT,
                             env={**os.environ, "CAREBUS_AVRO_ENGINE": "fastavro"}).stdout
    assert codec.engine()[0] is codec.cavro_body          # this process: the default
    assert codec.decode(written, "SharedRecord") == change
    assert codec.encode("SharedRecord", change) == written


def test_a_bad_engine_stops_a_command_as_a_configuration_error():
    done = subprocess.run([sys.executable, "-m", "carebus.cli", "status"], capture_output=True, text=True,
                          cwd=REPO_ROOT, env={**os.environ, "CAREBUS_AVRO_ENGINE": "avro-c"})
    assert done.returncode == 2
    assert "configuration error" in done.stdout and "CAREBUS_AVRO_ENGINE" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("body", [codec.cavro_body, codec.fastavro_body])
def test_both_engines_refuse_a_record_that_breaks_its_schema(body):
    record = {"event_id": None, "type": "LINKED"}      # a required string missing
    with pytest.raises((ValueError, TypeError)):
        body("IdentityEvent", record)
