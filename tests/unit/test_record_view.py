"""A shared record rendered for a terminal (carebus records show), pure."""
from __future__ import annotations

from rich.console import Console

from carebus.record_view import render
from streams import record_builder
from tests.builders import adt
from tests.builders import ALLERGY, state_of


def test_a_record_reads_as_tables_with_its_sources():
    record = record_builder.build_record("PER-1", [state_of(adt("R1", "C1", extra=ALLERGY))], 3, 10)
    console = Console(record=True, width=200)
    console.print(render(record))
    text = console.export_text()
    assert "PER-1 · version 3" in text and "Allergies" in text and "Penicillin" in text
    assert "CERNER_MILLENNIUM RAL" in text and "Problems" not in text     # empty sections are left out
