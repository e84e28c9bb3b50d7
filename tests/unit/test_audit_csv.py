"""The audit CSV export never hands a spreadsheet a formula, whatever a sender put in a message."""
from __future__ import annotations

import csv
import io

from hypothesis import given, strategies as st

from consumers.audit_trail import FORMULA_STARTS, TimelineEntry, to_csv

text = st.text(alphabet=st.sampled_from("=+-@\t\rAbc1 ,\"'|^"), max_size=12)


@given(text, text, text, st.one_of(st.none(), text))
def test_no_exported_cell_is_a_formula_and_nothing_else_changes(what, system, organisation, original):
    entry = TimelineEntry(1, "source-event", system, organisation, what, {"x": what}, original)
    [row] = list(csv.DictReader(io.StringIO(to_csv([entry]), newline="")))
    for name, cell in row.items():
        assert not cell.startswith(FORMULA_STARTS), (name, cell)
    expected = entry.as_row()
    for name, cell in row.items():
        value = str(expected[name])
        assert cell == (("'" + value) if value.startswith(FORMULA_STARTS) else value)


def test_a_hyperlink_formula_from_a_sender_is_shown_as_text():
    entry = TimelineEntry(1, "source-event", "CERNER", "RAL", '=HYPERLINK("http://x","click")', {})
    assert "'=HYPERLINK" in to_csv([entry])
