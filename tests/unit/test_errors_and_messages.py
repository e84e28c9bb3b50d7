"""One error family, and message builders that give every field the Avro contract asks for. Pure."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from schemas import codec, messages
from schemas.errors import CarebusError, MappingError, SetupError, Unavailable


def _error_classes() -> list[type]:
    from carebus.audit_client import AuditError
    from carebus.kafka_server import KafkaSetupError
    from carebus.redis_server import RedisSetupError
    from consumers.sealed_secrets import SecretUnreadable
    from consumers.webhook_address_guard import WebhookAddressRefused
    from foundation.config import ConfigError
    from producers.fhir_mapper import FHIRMappingError
    from producers.hl7v2_mapper import HL7MappingError
    from producers.ingest_pipeline import MessageTooLarge, StoreUnavailable
    from producers.mllp_senders import SendersFileError
    from schemas.codec import UnknownSchemaError
    from streams.demographic_search import SearchCriteriaError
    from streams.identity_store import IndexLayoutError
    from streams.index_rebuild import WorkersStillRunning
    from streams.link_stage import StageUnavailable
    return [AuditError, KafkaSetupError, RedisSetupError, SecretUnreadable, WebhookAddressRefused, ConfigError,
            FHIRMappingError, HL7MappingError, MessageTooLarge, StoreUnavailable, SendersFileError,
            UnknownSchemaError, SearchCriteriaError, IndexLayoutError, WorkersStillRunning, StageUnavailable]


def test_every_error_carebus_raises_is_a_carebus_error():
    for cls in _error_classes():
        assert issubclass(cls, CarebusError), cls


def test_the_kinds_say_what_a_caller_should_do():
    from carebus.kafka_server import KafkaSetupError
    from foundation.config import ConfigError
    from producers.hl7v2_mapper import HL7MappingError
    from producers.ingest_pipeline import StoreUnavailable
    from streams.link_stage import StageUnavailable

    assert issubclass(HL7MappingError, MappingError)             # tell the sender, park the message
    assert issubclass(StoreUnavailable, Unavailable) and issubclass(StageUnavailable, Unavailable)   # retry
    assert issubclass(KafkaSetupError, SetupError) and issubclass(ConfigError, SetupError)          # fix and restart
    assert issubclass(ConfigError, ValueError)          # what it was before: callers catching ValueError still do


def test_a_mapping_error_carries_the_code_the_sender_gets_back():
    from producers import hl7v2_mapper
    from schemas.source_systems import CERNER

    with pytest.raises(CarebusError) as err:
        hl7v2_mapper.map_message(b"MSH|^~\\&|CERNER|RAL|CAREBUS|LONDON|20261124||ADT^A01|C1|P|2.4\r", CERNER, "RAL", 0)
    assert isinstance(err.value, MappingError) and err.value.error_code == "HL7_NO_PID"
    assert err.value.reason == "no PID segment"
    ack = hl7v2_mapper.build_ack(b"MSH|^~\\&|CERNER|RAL|CAREBUS|LONDON|20261124||ADT^A01|C1|P|2.4\r", "AE",
                                 err.value.reason, err.value.error_code)
    assert b"ERR|||HL7_NO_PID" in ack


@given(st.text(max_size=50), st.text(max_size=20), st.binary(max_size=200),
       st.one_of(st.none(), st.integers(0, 2**31)))
def test_a_built_dead_letter_is_a_valid_dead_letter(reason, code, payload, offset):
    dead = messages.dead_letter("test", "CAREBUS", reason, code, payload, "application/octet-stream", failed_at=5,
                                original_topic="t" if offset is not None else None, original_offset=offset)
    assert codec.decode(codec.encode("DeadLetter", dead), "DeadLetter") == dead


def test_built_source_and_identity_events_are_valid():
    event = messages.source_event(messages.envelope("e1", "RIO", "RAT", "r1", "ADT^A01", 1, 2, "c1"),
                                  {"local_identifier": {"system": "urn:x", "value": "1"}},
                                  data_quality_flags=["NO_NAME"])
    decoded = codec.decode(codec.encode("SourcePatientEvent", event), "SourcePatientEvent")
    assert decoded["envelope"]["event_id"] == "e1" and decoded["problems"] == [] and decoded["data_quality_flags"] == ["NO_NAME"]
    identity = messages.identity_event("i1", "LINKED", "PER-1", recorded_at=3, caused_by="e1", method="new")
    assert codec.decode(codec.encode("IdentityEvent", identity), "IdentityEvent")["person_id"] == "PER-1"
