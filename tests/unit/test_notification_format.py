"""What a subscriber checks on every notification: the signature over timestamp and body. Pure."""
from __future__ import annotations

from hypothesis import given, strategies as st

from consumers.notification_format import fhir_rest_hook_notification, sign, verify
from tests.unit.test_delivery_channels import CHANGE


@given(st.text(min_size=1, max_size=40), st.binary(max_size=300), st.integers(0, 2**33))
def test_a_signature_verifies_only_for_its_secret_body_and_time(secret, body, at):
    header = sign(secret, body, at)
    assert verify(secret, body, header, at + 299)
    assert not verify(secret + "x", body, header, at)
    assert not verify(secret, body + b"x", header, at)
    assert not verify(secret, body, header, at + 301), "a replay after five minutes is refused"
    assert not verify(secret, body, header.replace("t=", "x="), at)


def test_a_rest_hook_notification_names_the_subscription_and_counts_its_events():
    bundle = fhir_rest_hook_notification([CHANGE], "sub-9", 42)
    assert bundle["type"] == "history"
    status = bundle["entry"][0]["resource"]
    text = repr(status)
    assert "sub-9" in text and "42" in text
