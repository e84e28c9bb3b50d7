"""schemas.event_ids.name_based must be uuid5 to the character: ids already published were made
with uuid.uuid5, and a replay must reproduce them."""
from __future__ import annotations

import uuid

from hypothesis import given, strategies as st

from schemas.event_ids import name_based


@given(st.uuids(), st.text())
def test_name_based_is_uuid5(namespace: uuid.UUID, name: str) -> None:
    assert name_based(namespace, name) == str(uuid.uuid5(namespace, name))


def test_a_known_id() -> None:
    # Fixed by hand once from uuid.uuid5, so that a change to both sides at once is caught too.
    ns = uuid.UUID("0b9d1c9e-5a43-4b8e-9f55-4c1d7e2e8a01")
    assert name_based(ns, "PER-0123|7") == "99ac9bf1-c678-5e17-af8b-50e6e634d02b"
    assert uuid.UUID(name_based(ns, "PER-0123|7")).version == 5
