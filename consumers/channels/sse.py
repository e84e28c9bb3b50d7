"""Server-sent events: the subscriber holds GET /subscriptions/{id}/stream open and reads each
change as a `record-change` event (id = the change's event id), nothing is pushed."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from consumers.notification_format import webhook_body


class ServerSentEvents:
    name = "sse"
    pushes = False
    carries_several = False

    async def render(self, changes: list[dict[str, Any]], subscription_id: str,
                     next_event_number: Callable[[int], Awaitable[int]]) -> tuple[bytes, str]:
        return "".join(event(change, subscription_id) for change in changes).encode(), "text/event-stream"


def event(change: dict[str, Any], subscription_id: str) -> str:
    return f"id: {change['event_id']}\nevent: record-change\ndata: {webhook_body(change, subscription_id).decode()}\n\n"


CHANNEL = ServerSentEvents()
