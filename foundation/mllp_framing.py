"""MLLP (HL7's Minimal Lower Layer Protocol) framing: the one definition the listener, the
dead-letter replay, the simulator and the tests share. A message travels as
<VT> message <FS><CR>; an ACK comes back framed the same way."""
from __future__ import annotations

START = b"\x0b"          # VT: start of block
END = b"\x1c\x0d"        # FS CR: end of block


def frame(message: bytes) -> bytes:
    return START + message + END


def unframe(block: bytes) -> bytes:
    """The message inside a block (tolerant of a missing start byte or trailing CR, as senders are)."""
    return block.strip(START + END)
