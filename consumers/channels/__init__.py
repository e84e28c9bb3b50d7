"""How a change reaches a subscriber: one module per channel, behind one small interface.

A channel that pushes (`webhook`, `fhir-rest-hook`) turns a change into the body carebus POSTs,
signed, to the subscriber's endpoint (consumers/push_delivery.py does the posting, retrying and
parking); a channel that does not (`sse`) is read by the subscriber holding a stream open
(the delivery service's /stream route). Adding a channel is a module here and its entry below.
"""
from __future__ import annotations

from consumers.channels import fhir_rest_hook, sse, webhook
from consumers.channels.channel import Channel

CHANNELS: dict[str, Channel] = {c.name: c for c in (webhook.CHANNEL, fhir_rest_hook.CHANNEL, sse.CHANNEL)}

__all__ = ["CHANNELS", "Channel"]
