"""The dashboard, rendered by headless Chromium as an operator's browser would."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile

from pathlib import Path

import httpx
import pytest
from PIL import Image

from streams.record_store import RedisRecordStore
from tests.builders import cerner_key
from tests.bus_clients import person_of, send_story, wait_for

pytestmark = pytest.mark.integration


def _chromium(url: str, *action: str) -> subprocess.CompletedProcess:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "deploy/install.sh installs Debian's chromium"
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=8000", *action, url],
            capture_output=True, text=True, timeout=120)


def render(url: str) -> str:
    return _chromium(url, "--dump-dom").stdout


def screenshot(url: str, path: Path) -> Image.Image:
    _chromium(url, f"--screenshot={path}", "--window-size=1400,1000", "--hide-scrollbars")
    return Image.open(path).convert("RGB")


def pixels_of(image: Image.Image, colour: str) -> int:
    """How many pixels are (nearly) this colour: a drawn line leaves hundreds."""
    want = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
    raw = image.tobytes()
    return sum(1 for i in range(0, len(raw), 3) if all(abs(raw[i + c] - want[c]) <= 24 for c in range(3)))


def signed_in(delivery, extra: str = "") -> str:
    """The dashboard's address with a fresh one-time sign-in code (never the token itself)."""
    resp = httpx.post(f"{delivery.base}/dashboard/sign-in-codes", headers={"Authorization": "Bearer dev-auditor-token"},
                      timeout=30)
    assert resp.status_code == 200, resp.text
    return f"{delivery.base}{resp.json()['open']}{extra}"


def test_dashboard_renders_live_figures(bus_settings, connectors, link_workers, delivery, redis_client, unique):
    send_story(bus_settings, unique, n=1)
    person = person_of(redis_client, cerner_key(f"S{unique}"))
    wait_for(lambda: RedisRecordStore(redis_client).record(person), what="a shared record")
    expected = httpx.get(f"{delivery.base}/monitor", headers={"Authorization": "Bearer dev-auditor-token"},
                         timeout=60).json()
    dom = render(signed_in(delivery))
    assert 'id="updated">never<' not in dom, "the page fetched figures"
    persons = int(re.search(r'id="persons">(\d+)<', dom).group(1))
    assert persons >= 1 and abs(persons - expected["linkage"]["persons_with_records"]) <= 5
    assert "source-events.v1" in dom and "carebus-linker" in dom
    assert re.search(r"<td[^>]*>links</td><td class=\"n\">[1-9]\d*</td>", dom)


def test_dashboard_without_a_token_shows_the_refusal_and_no_data(bus_settings, delivery):
    dom = render(f"{delivery.base}/dashboard")
    assert "/monitor answered 401" in dom
    assert 'id="persons">–<' in dom


def test_dashboard_charts_the_last_hour(bus_settings, connectors, link_workers, delivery, redis_client, unique,
                                        tmp_path):
    """Traffic, then the charts: the history API has series and the page draws them (screenshot)."""
    auditor = {"Authorization": "Bearer dev-auditor-token"}
    send_story(bus_settings, unique, n=2)
    person_of(redis_client, cerner_key(f"S{unique}"))
    history = wait_for(lambda: (lambda h: h if len(h["at"]) >= 3 and any(h["source_events_per_s"]) else None)(
        httpx.get(f"{delivery.base}/monitor/history", headers=auditor, timeout=60).json()), what="history samples")
    assert set(history) >= {"at", "source_events_per_s", "changes_per_s", "linker_lag", "delivery_latency_ms",
                            "dead_letters_per_min"}
    assert all(len(v) == len(history["at"]) for v in history.values())
    assert httpx.get(f"{delivery.base}/monitor/history", timeout=30).status_code == 401
    js = httpx.get(f"{delivery.base}/dashboard/static/uPlot.iife.min.js", timeout=30)
    assert js.status_code == 200 and "uPlot" in js.text, "the charting library is served by carebus itself"
    dom = render(signed_in(delivery))
    assert dom.count('class="uplot') >= 4, "four charts were built"
    assert "cdn" not in dom.lower() and "https://" not in dom.split("<body")[0], "nothing is fetched from outside"
    image = screenshot(signed_in(delivery), tmp_path / "dashboard.png")
    blank = screenshot(f"{delivery.base}/dashboard", tmp_path / "no-token.png")
    # The record-changes line (#007f3b) and the delivery-lag line (#ed8b00) are drawn from the
    # data (lines that coincide hide each other, so they are counted together); without a token
    # there is no data and nothing is drawn.
    drawn = sum(pixels_of(image, c) for c in ("#007f3b", "#ed8b00"))
    assert drawn > sum(pixels_of(blank, c) for c in ("#007f3b", "#ed8b00")) + 300, drawn


def test_dead_letters_are_browsable_by_reason_without_content(bus_settings, connectors, delivery, unique):
    from tests.bus_clients import mllp_send

    bad = (f"MSH|^~\\&|CERNER|RAL|CAREBUS|LONDON|20261124101500||ADT^A01^ADT_A01|BAD{unique}|P|2.4\r"
           f"PID|1||||SECRET{unique}^NAME\r").encode()
    [nak] = mllp_send(bus_settings.mllp_port, bad)
    assert b"MSA|AE" in nak or b"MSA|AR" in nak
    auditor = {"Authorization": "Bearer dev-auditor-token"}
    listed = wait_for(lambda: [d for d in httpx.get(f"{delivery.base}/monitor/dead-letters",
                                                    params={"which": "connectors"}, headers=auditor,
                                                    timeout=60).json() if d["reason"]], what="a dead letter")
    assert all({"reason", "error_code", "failed_at", "stage"} <= set(d) for d in listed)
    assert f"SECRET{unique}" not in str(listed) and all("payload" not in d for d in listed)
    dom = render(signed_in(delivery, "&dead=connectors"))
    # The browsable list itself (the live tables elsewhere also name error codes, with counts).
    dead_list = re.search(r'<table id="dead-list">(.*?)</table>', dom, re.S)
    assert dead_list and listed[0]["error_code"] in dead_list.group(1) and "<td" in dead_list.group(1)


def test_a_sign_in_code_works_once_and_the_token_never_reaches_the_address(bus_settings, delivery):
    url = signed_in(delivery)
    code = url.split("#code=")[1]
    first = httpx.post(f"{delivery.base}/dashboard/session", json={"code": code}, timeout=30)
    assert first.status_code == 200 and "httponly" in first.headers["set-cookie"].lower()
    assert "samesite=strict" in first.headers["set-cookie"].lower()
    assert httpx.post(f"{delivery.base}/dashboard/session", json={"code": code}, timeout=30).status_code == 401
    cookie = first.cookies.get("carebus_dashboard")
    assert httpx.get(f"{delivery.base}/monitor", cookies={"carebus_dashboard": cookie}, timeout=60).status_code == 200
    assert httpx.get(f"{delivery.base}/monitor", cookies={"carebus_dashboard": "forged"}, timeout=30).status_code == 401
    # A subscriber's token opens no dashboard, whether typed or as a code.
    assert httpx.post(f"{delivery.base}/dashboard/session", json={"token": "dev-subscriber2-token"},
                      timeout=30).status_code == 403
    page = httpx.get(f"{delivery.base}/dashboard", timeout=30)
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "<script>" not in page.text


def test_hostile_text_in_a_dead_letter_is_shown_as_text_and_never_runs(bus_settings, connectors, delivery, unique):
    """A Vision file whose name is markup: its bad row's reason names the file; the dashboard
    must show the name as text (no element, no script run: the page title stays)."""
    from simulator.traffic import vision_csv, write_drop_file

    name = f'x{unique}<img src=q onerror="document.title=\'pwned\'">.csv'
    rows = [{"record_type": "PROBLEM", "patient_id": f"H{unique}", "practice_ods": "E87001"}]   # no code: a bad row
    write_drop_file(bus_settings.data_dir / "drop" / "vision" / "incoming", name, vision_csv(rows))
    auditor = {"Authorization": "Bearer dev-auditor-token"}
    wait_for(lambda: [d for d in httpx.get(f"{delivery.base}/monitor/dead-letters", params={"which": "connectors"},
                                           headers=auditor, timeout=60).json() if unique in d["reason"]],
             what="the hostile dead letter")
    dom = render(signed_in(delivery, "&dead=connectors"))
    assert f"x{unique}&lt;img src=q" in dom, "the name is shown as text"
    assert "<img src=\"q\"" not in dom and "<img src=q" not in dom
    assert "<title>carebus — live bus</title>" in dom and "pwned" not in dom.split("<body")[0]
