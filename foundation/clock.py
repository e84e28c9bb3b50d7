"""Wall-clock time as the bus records it: epoch milliseconds (Avro timestamp-millis)."""
from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)
