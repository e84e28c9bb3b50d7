"""The dashboard, rendered by headless Chromium as an operator's browser would."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile

import httpx
import pytest

from streams.record_store import RedisRecordStore
from tests.test_delivery_e2e import cerner_key, person_of, send_story, wait_for

pytestmark = pytest.mark.integration


def render(url: str) -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "deploy/install.sh installs Debian's chromium"
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=8000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120)
    return result.stdout


def test_dashboard_renders_live_figures(bus_settings, connectors, link_workers, delivery, redis_client, unique):
    send_story(bus_settings, unique, n=1)
    person = person_of(redis_client, cerner_key(f"S{unique}"))
    wait_for(lambda: RedisRecordStore(redis_client).record(person), what="a shared record")
    expected = httpx.get(f"{delivery.base}/monitor", headers={"Authorization": "Bearer dev-auditor-token"},
                         timeout=60).json()
    dom = render(f"{delivery.base}/dashboard#token=dev-auditor-token")
    assert 'id="updated">never<' not in dom, "the page fetched figures"
    persons = int(re.search(r'id="persons">(\d+)<', dom).group(1))
    assert persons >= 1 and abs(persons - expected["linkage"]["persons_with_records"]) <= 5
    assert "source-events.v1" in dom and "carebus-linker" in dom
    assert re.search(r"<td[^>]*>links</td><td class=\"n\">[1-9]\d*</td>", dom)


def test_dashboard_without_a_token_shows_the_refusal_and_no_data(bus_settings, delivery):
    dom = render(f"{delivery.base}/dashboard")
    assert "monitor answered 401" in dom
    assert 'id="persons">–<' in dom
