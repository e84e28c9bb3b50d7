"""A lean, read-only view of one HL7 v2 message: the connector's hot path. Pure: no I/O.

python-hl7 builds a tree of containers for every field of every segment (about 330 us for a
six-segment ADT on a 2-core machine), and the mapper then reads a few dozen of those fields, each
lookup scanning the segment list again. This view splits the message into segments and fields once
and splits a field into repetitions, components and sub-components only when it is read. Which value
a path reaches, the encoding characters taken from MSH-1/MSH-2 and the unescaping of \\F\\, \\S\\,
\\X..\\ and the rest are python-hl7's own: `tests/test_hl7v2_message.py` checks with hypothesis that
every path answers exactly what `hl7.Message.extract_field` answers.
"""
from __future__ import annotations

import logging

from hl7.util import unescape

# python-hl7 logs a field it cannot unescape verbatim; a field is patient data, never logged.
logging.getLogger("hl7").setLevel(logging.CRITICAL)

SEGMENT_SEPARATOR = "\r"


class HL7v2Message:
    """Segments of one message, indexed by segment id; fields numbered as HL7 numbers them
    (PID-3 is field 3; MSH-1 is the field separator and MSH-2 the encoding characters)."""

    __slots__ = ("separators", "esc", "_segments")

    def __init__(self, text: str) -> None:
        """`text` starts with MSH (callers check it), segments separated by carriage returns."""
        text = text.strip()   # as python-hl7 does: trailing whitespace is not part of the last field
        field_sep = text[3]
        # As python-hl7 reads MSH-2: component, repetition, escape, sub-component, each defaulted.
        encoding = text[4:text.find(field_sep, 4)] if text.find(field_sep, 4) > 0 else text[4:]
        comp = encoding[0] if len(encoding) > 0 else "^"
        rep = encoding[1] if len(encoding) > 1 else "~"
        self.esc = encoding[2] if len(encoding) > 2 else "\\"
        sub = encoding[3] if len(encoding) > 3 else "&"
        # The layout python-hl7's unescape reads: segment, field, repetition, component, sub.
        self.separators = SEGMENT_SEPARATOR + field_sep + rep + comp + sub
        self._segments: dict[str, list[list[str]]] = {}
        for line in text.split(SEGMENT_SEPARATOR):
            if not line:
                continue
            fields = line.split(field_sep)
            if line.startswith(("MSH", "BHS", "FHS")):
                fields.insert(1, field_sep)   # MSH-1 is the separator itself
                if fields[3:] == [""]:        # "MSH|^~\&|" ends at MSH-2, as python-hl7 reads it
                    del fields[3:]
            self._segments.setdefault(fields[0], []).append(fields)

    def count(self, segment: str) -> int:
        return len(self._segments.get(segment, ()))

    def repetitions(self, segment: str, number: int, occurrence: int = 1) -> int:
        raw = self._raw(segment, number, occurrence)
        if raw is None:
            return 0
        if segment == "MSH" and number in (1, 2):
            return 1
        return raw.count(self.separators[2]) + 1

    def value(self, segment: str, number: int, rep: int = 1, comp: int = 1, sub: int = 1,
              occurrence: int = 1) -> str:
        """The unescaped value at SEG-number.rep.comp.sub, '' when the message does not have it."""
        raw = self._raw(segment, number, occurrence)
        if not raw:
            return ""
        if segment == "MSH" and number in (1, 2):
            return raw if rep == comp == sub == 1 else ""
        for separator, index in ((self.separators[2], rep), (self.separators[3], comp), (self.separators[4], sub)):
            if separator in raw:
                parts = raw.split(separator)
                if index > len(parts):
                    return ""
                raw = parts[index - 1]
            elif index != 1:
                return ""
        return unescape(self, raw) if self.esc in raw else raw

    def _raw(self, segment: str, number: int, occurrence: int) -> str | None:
        found = self._segments.get(segment)
        if not found or occurrence < 1 or occurrence > len(found):
            return None
        fields = found[occurrence - 1]
        return fields[number] if 0 < number < len(fields) else None
