"""FHIR R4 rest-hook: each change as a subscription-notification `history` Bundle, numbered."""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from consumers.notification_format import fhir_rest_hook_bundle


class FhirRestHook:
    name = "fhir-rest-hook"
    pushes = True

    async def render(self, change: dict[str, Any], subscription_id: str,
                     next_event_number: Callable[[], Awaitable[int]]) -> tuple[bytes, str]:
        # The Bundle carries the subscription's events-since-start count, so a receiver can tell
        # it missed one.
        number = await next_event_number()
        return json.dumps(fhir_rest_hook_bundle(change, subscription_id, number)).encode(), "application/fhir+json"


CHANNEL = FhirRestHook()
