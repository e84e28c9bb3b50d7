"""The interface every delivery channel implements."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol


class Channel(Protocol):
    name: str
    pushes: bool        # carebus POSTs each change to the subscriber's endpoint; else the subscriber reads a stream
    carries_several: bool   # one notification may carry several changes (the subscription's max_per_notification)

    async def render(self, changes: list[dict[str, Any]], subscription_id: str,
                     next_event_number: Callable[[int], Awaitable[int]]) -> tuple[bytes, str]:
        """The body to send for these changes (one, unless `carries_several`) and its content type.
        `next_event_number(n)` numbers n more events of the subscription and returns the last."""
        ...
