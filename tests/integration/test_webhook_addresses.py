"""Webhooks cannot be pointed at this machine or a private network (server-side request forgery),
however the address is written, and a failed push never tells open ports from closed ones."""
from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpx
import pytest

from consumers.webhook_address_guard import AddressPolicy, WebhookAddressRefused
from tests.builders import adt
from tests.bus_clients import mllp_send
from tests.builders import own_identity
from tests.bus_clients import SUB2, subscribe, wait_for

PRODUCTION = AddressPolicy.from_settings("", development=False)


def check(policy: AddressPolicy, url: str) -> None:
    asyncio.run(policy.check(url))


@pytest.mark.parametrize("url", [
    "https://127.0.0.1/hook", "https://[::1]/hook", "https://10.0.0.1/hook", "https://167772161/hook",
    "https://0x7f.1/hook", "https://[::ffff:169.254.169.254]/latest/meta-data", "https://169.254.169.254/",
    "https://192.168.1.20:8443/x", "https://0.0.0.0/", "https://[fe80::1]/", "https://224.0.0.1/",
    "http://8.8.8.8/hook", "ftp://8.8.8.8/", "https:///nohost",
])
def test_outside_development_only_https_to_public_addresses(url):
    with pytest.raises(WebhookAddressRefused):
        check(PRODUCTION, url)


def test_a_public_https_address_and_an_allow_listed_private_one_are_accepted():
    check(PRODUCTION, "https://8.8.8.8/hook")
    on_site = AddressPolicy.from_settings("10.20.0.0/16, epr.trust.local", development=False)
    check(on_site, "https://10.20.3.4/hook")
    with pytest.raises(WebhookAddressRefused):
        check(on_site, "https://10.21.0.1/hook")


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "::ffff:10.1.2.3", "169.254.169.254", "fc00::1"])
def test_the_resolver_drops_what_the_policy_refuses(address):
    # What a DNS name resolving to these (rebinding) meets at connection time.
    assert not PRODUCTION.address_allowed("rebind.example", ipaddress.ip_address(address))
    assert PRODUCTION.address_allowed("ok.example", ipaddress.ip_address("8.8.4.4"))


# ---- through the subscription API ----------------------------------------------------------------
@pytest.mark.parametrize("endpoint", ["http://10.0.0.1/x", "http://167772161/x", "http://[::ffff:a9fe:a9fe]/x",
                                      "http://169.254.169.254/latest/meta-data", "http://0.0.0.0:6379/"])
def test_the_api_refuses_a_webhook_to_a_private_or_metadata_address(delivery, endpoint):
    resp = httpx.post(f"{delivery.base}/subscriptions", json={"channel": "webhook", "endpoint": endpoint},
                      headers=SUB2, timeout=30)
    assert resp.status_code == 400 and "endpoint refused" in resp.text, resp.text
    assert "10.0.0.1" not in resp.json()["detail"].split("endpoint refused")[1] or "10.0.0.1" in endpoint


def test_a_failed_push_says_the_same_whether_a_port_is_closed_or_silent(bus_settings, connectors, link_workers,
                                                                       delivery, redis_client, unique):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()                       # nothing listens there now
    sub = subscribe(delivery, SUB2, channel="webhook", endpoint=f"http://127.0.0.1:{port}/x", max_attempts=1)
    assert b"MSA|AA" in mllp_send(bus_settings.mllp_port, adt(f"W{unique}", f"W{unique}", **own_identity(unique)))[0]
    error = wait_for(lambda: (redis_client.hget(f"carebus:delivery:{sub['id']}", "last_error") or b"").decode(),
                     timeout=120, what="a failed push")
    assert error.startswith("no HTTP answer") and "Error" not in error and "refused" not in error.lower()


# ---- quotas -------------------------------------------------------------------------------------
def test_a_client_holds_at_most_its_quota_of_subscriptions(delivery):
    """Each subscription costs a consumer and a task: one client cannot exhaust the service."""
    from tests.bus_clients import RFH

    made, refused = [], None
    for _ in range(101):                 # the default quota is 100
        resp = httpx.post(f"{delivery.base}/subscriptions", json={"channel": "sse"}, headers=RFH, timeout=30)
        if resp.status_code == 429:
            refused = resp
            break
        assert resp.status_code == 201, resp.text
        made.append(resp.json()["id"])
    try:
        assert refused is not None and "quota" in refused.json()["detail"]
        assert httpx.delete(f"{delivery.base}/subscriptions/{made.pop()}", headers=RFH, timeout=30).status_code == 204
        again = httpx.post(f"{delivery.base}/subscriptions", json={"channel": "sse"}, headers=RFH, timeout=30)
        assert again.status_code == 201, "a freed place can be taken again"
        made.append(again.json()["id"])
    finally:
        for sub_id in made:
            httpx.delete(f"{delivery.base}/subscriptions/{sub_id}", headers=RFH, timeout=30)
