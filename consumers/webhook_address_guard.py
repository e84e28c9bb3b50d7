"""Where a webhook may point: never, by default, at this machine or a private network.

A subscriber names the URL carebus POSTs to. Unchecked, that is server-side request forgery: a
subscription to http://127.0.0.1:6379/, http://169.254.169.254/ (cloud metadata) or an address
inside the trust's network makes carebus reach what the subscriber cannot. So a webhook must use
https, and every address its host resolves to must be public, unless CAREBUS_WEBHOOK_ALLOW_HOSTS
names the host or its network (an on-site EPR at 10.20.0.5, say). Checked when the subscription is
made, and again at every connection through the resolver below (a DNS name may later resolve
elsewhere). Development (CAREBUS_ALLOW_DEV_SECRETS=1) also allows plain http and this machine.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver

from foundation.config import Settings
from schemas.errors import CarebusError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LOOPBACK = "127.0.0.1,::1,localhost"


class WebhookAddressRefused(CarebusError, ValueError):
    """The URL points where webhooks may not go; the message says why, naming no resolved address."""


@dataclass(frozen=True)
class AddressPolicy:
    hosts: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    plain_http: bool

    @classmethod
    def from_settings(cls, allow_hosts: str, development: bool) -> AddressPolicy:
        hosts, networks = set(), []
        for item in filter(None, (x.strip().lower() for x in f"{allow_hosts},{LOOPBACK if development else ''}".split(","))):
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item)
        return cls(frozenset(hosts), tuple(networks), development)

    def address_allowed(self, host: str, address: IPAddress) -> bool:
        address = getattr(address, "ipv4_mapped", None) or address    # ::ffff:10.0.0.1 is 10.0.0.1
        if host.lower().strip("[]") in self.hosts or any(address in n for n in self.networks):
            return True
        return address.is_global and not address.is_multicast

    async def check(self, url: str) -> None:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme not in ("http", "https") or not host:
            raise WebhookAddressRefused("the endpoint must be an https URL with a host")
        if parts.scheme == "http" and not self.plain_http and host.lower() not in self.hosts:
            raise WebhookAddressRefused("the endpoint must use https")
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise WebhookAddressRefused("the endpoint's host does not resolve") from None
        for info in infos:
            if not self.address_allowed(host, ipaddress.ip_address(info[4][0].split("%")[0])):
                raise WebhookAddressRefused("the endpoint resolves to a loopback, private, link-local or reserved "
                                            "address; name it in CAREBUS_WEBHOOK_ALLOW_HOSTS if it is meant")


def webhook_policy(settings: Settings) -> AddressPolicy:
    return AddressPolicy.from_settings(settings.webhook_allow_hosts, settings.allow_dev_secrets == "1")


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, keeping only the addresses the policy allows (DNS rebinding)."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self._inner = ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        found = await self._inner.resolve(host, port, family)
        allowed = [r for r in found if self.policy.address_allowed(host, ipaddress.ip_address(r["host"]))]
        if not allowed:
            raise OSError("webhook address refused")
        return allowed

    async def close(self) -> None:
        await self._inner.close()
