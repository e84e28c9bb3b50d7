"""Webhook: each change POSTed as JSON (consumers/notification_format.webhook_body), signed."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from consumers.notification_format import webhook_body


class Webhook:
    name = "webhook"
    pushes = True
    carries_several = False

    async def render(self, changes: list[dict[str, Any]], subscription_id: str,
                     next_event_number: Callable[[int], Awaitable[int]]) -> tuple[bytes, str]:
        [change] = changes
        return webhook_body(change, subscription_id), "application/json"


CHANNEL = Webhook()
