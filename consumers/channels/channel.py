"""The interface every delivery channel implements."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol


class Channel(Protocol):
    name: str
    pushes: bool        # carebus POSTs each change to the subscriber's endpoint; else the subscriber reads a stream

    async def render(self, change: dict[str, Any], subscription_id: str,
                     next_event_number: Callable[[], Awaitable[int]]) -> tuple[bytes, str]:
        """The body to send for this change and its content type."""
        ...
