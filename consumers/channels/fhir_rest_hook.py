"""FHIR R4 rest-hook: changes as subscription-notification `history` Bundles, numbered; one
Bundle may carry several changes when the subscription asks (max_per_notification)."""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from consumers.notification_format import fhir_rest_hook_notification


class FhirRestHook:
    name = "fhir-rest-hook"
    pushes = True
    carries_several = True

    async def render(self, changes: list[dict[str, Any]], subscription_id: str,
                     next_event_number: Callable[[int], Awaitable[int]]) -> tuple[bytes, str]:
        # The Bundle carries the subscription's events-since-start count, so a receiver can tell
        # it missed one.
        last = await next_event_number(len(changes))
        return (json.dumps(fhir_rest_hook_notification(changes, subscription_id, last)).encode(),
                "application/fhir+json")


CHANNEL = FhirRestHook()
