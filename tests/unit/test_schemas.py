"""The canonical schemas: encoding, evolution rules and the wire format (pure, no broker)."""
from __future__ import annotations

import copy
import io

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from schemas import codec, compatibility, registry
from tests.avro_strategies import for_schema


@pytest.mark.parametrize("message_type", registry.MESSAGE_TYPES)
def test_every_message_type_round_trips(message_type):
    schema = registry.current()[message_type]

    @hsettings(max_examples=30, suppress_health_check=[HealthCheck.too_slow], deadline=None)
    @given(for_schema(schema.expanded))
    def round_trip(record):
        data = codec.encode(message_type, record)
        decoded = codec.decode(data, message_type)
        # Re-encoding what we decoded gives the same bytes: nothing lost or altered.
        assert codec.encode(message_type, decoded) == data
        assert codec.message_type_of(data) == message_type
        # The fast writer writes exactly what fastavro's public schemaless_writer writes.
        public = io.BytesIO()
        fastavro.schemaless_writer(public, schema.parsed, record)
        assert data == codec.MAGIC + schema.fingerprint + public.getvalue()

    round_trip()


def test_a_change_encoded_around_its_ready_made_record_is_the_same_bytes():
    schema = registry.current()["RecordChange"]
    assert schema.expanded["fields"][-1]["name"] == "record", "encode_with_last needs the record last"

    @hsettings(max_examples=30, suppress_health_check=[HealthCheck.too_slow], deadline=None)
    @given(for_schema(schema.expanded))
    def same_bytes(change):
        head = {k: v for k, v in change.items() if k != "record"}
        spliced = codec.encode_with_last("RecordChange", head, codec.body("SharedRecord", change["record"]))
        assert spliced == codec.encode("RecordChange", change)
        assert codec.frame("SharedRecord", codec.body("SharedRecord", change["record"])) == \
            codec.encode("SharedRecord", change["record"])

    same_bytes()


def test_current_schemas_are_compatible_with_all_history():
    assert compatibility.check_all() == []


def _candidates():
    return {k: copy.deepcopy(v.expanded) for k, v in registry.current().items()}


def test_adding_a_required_field_is_rejected():
    cand = _candidates()
    cand["SourcePatientEvent"]["fields"].append({"name": "ward_code", "type": "string"})
    problems = compatibility.check_all(cand)
    assert any(p.message_type == "SourcePatientEvent" and p.direction == "new reads old" for p in problems)


def test_changing_a_field_type_is_rejected():
    cand = _candidates()
    for fld in cand["DeadLetter"]["fields"]:
        if fld["name"] == "attempts":
            fld["type"] = "string"
    assert any(p.message_type == "DeadLetter" for p in compatibility.check_all(cand))


def test_adding_an_optional_field_with_default_is_accepted():
    cand = _candidates()
    cand["IdentityEvent"]["fields"].append({"name": "reviewer", "type": ["null", "string"], "default": None})
    assert compatibility.check_all(cand) == []


def test_removing_an_enum_symbol_without_default_is_rejected():
    cand = _candidates()
    for fld in cand["IdentityEvent"]["fields"]:
        if fld["name"] == "type":
            fld["type"]["symbols"] = fld["type"]["symbols"][:-1]
    assert compatibility.check_all(cand)


@given(st.binary(max_size=64))
def test_decoding_garbage_raises_a_clear_error(data):
    try:
        codec.decode(data)
    except codec.UnknownSchemaError:
        pass
    except Exception as exc:  # noqa: BLE001
        # Bytes with our magic and a known fingerprint but a broken body fail inside fastavro.
        assert data[:2] == codec.MAGIC, exc


def test_unknown_fingerprint_is_named_in_the_error():
    with pytest.raises(codec.UnknownSchemaError, match="fingerprint"):
        codec.decode(codec.MAGIC + b"\x00" * 8 + b"\x00")


def test_old_writer_is_read_by_current_reader():
    """A message written with a historical schema decodes with today's reader."""
    old = registry.history()["DeadLetter"][0]
    import io

    from fastavro import schemaless_writer

    buf = io.BytesIO()
    buf.write(codec.MAGIC + old.fingerprint)
    record = {"dead_letter_id": "d1", "stage": "connector:test", "source_system": "RIO", "reason": "r",
              "error_code": "E", "failed_at": 1, "original_topic": None, "original_partition": None,
              "original_offset": None, "content_type": "text/plain", "payload": b"x", "attempts": 1}
    schemaless_writer(buf, old.parsed, record)
    assert codec.decode(buf.getvalue(), "DeadLetter")["payload"] == b"x"


@pytest.mark.parametrize("message_type", registry.MESSAGE_TYPES)
def test_fastavro_alone_loads_each_schema_file_and_reads_our_bytes(message_type):
    """An outside consumer with only fastavro and the .avsc files can read what carebus writes."""
    import io

    import fastavro

    schema = fastavro.schema.load_schema(str(registry.AVRO_DIR / f"carebus.{message_type}.avsc"))

    @hsettings(max_examples=10, suppress_health_check=[HealthCheck.too_slow], deadline=None)
    @given(for_schema(registry.current()[message_type].expanded))
    def readable(record):
        body = codec.body(message_type, record)
        ours = registry.current()[message_type].parsed      # with logical types, as an outside reader has
        assert fastavro.schemaless_reader(io.BytesIO(body), schema) == fastavro.schemaless_reader(io.BytesIO(body), ours)

    readable()
