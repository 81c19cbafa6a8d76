"""Sensor cards in a real browser (Debian's chromium) against the real daemon simulating a
BME280 and a DS18B20: a viewer who opens the page after readings were made sees each value
with its unit and a chart already holding the gatekeeper's kept history; an admin makes the
sensor stop answering from the card and sees it unavailable with the reason, then back."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import Client, GatekeeperThread, cheap_hash
from tests.web.test_dashboard_browser import (  # noqa: F401
    Watched,
    browser,
    free_port,
    head,
    watched,
)

playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect

ROOT = "gatekeeper/sensors"
PASSWORDS = {"ada": "ada-admin-pw", "vera": "vera-viewer-pw"}


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[GatekeeperThread, int, int]]:
    tcp, ws = free_port(), free_port()
    users = "\n".join(f"    {name}: {{password_hash: '{cheap_hash(pw)}', role: {role}}}"
                      for (name, pw), role in zip(PASSWORDS.items(), ("admin", "viewer"),
                                                  strict=True))
    gk = GatekeeperThread(head("sensors", tcp, ws) + f"""auth:
  allow_anonymous: false
  users:
{users}
homeassistant: {{discovery: false}}
devices:
  climate: {{type: BME280, interval: 1, description: Living room}}
  tank: {{type: DS18B20, interval: 1}}
""")
    gk.start()
    yield gk, tcp, ws
    gk.close()


def login(w: Watched, ws: int, user: str) -> Any:
    page = w.page
    page.goto(f"http://127.0.0.1:{ws}/")
    page.fill("#username", user)
    page.fill("#password", PASSWORDS[user])
    page.click("#login-form button[type=submit]")
    expect(page.locator("#node-status")).to_have_text("online")
    return page


def test_sensor_cards_values_units_history_chart_and_unavailable(
        node: tuple[GatekeeperThread, int, int], watched: Any) -> None:  # noqa: F811
    _gk, tcp, ws = node
    # Readings were made (and kept) before any page is opened.
    c = Client(tcp, mqtt.MQTTv5)
    c.c.username_pw_set("ada", PASSWORDS["ada"])
    c.connect()
    try:
        c.subscribe(f"{ROOT}/device/climate/history", 1)
        kept = json.loads(c.get(10).payload)
    finally:
        c.close()
    assert len(kept["t"]) >= 1 and kept["values"]["temperature"][0] is not None

    # A viewer (no right to call a device) sees values, units and the kept history.
    viewer = watched()
    page = login(viewer, ws, "vera")
    card = page.locator("#card-climate")
    expect(card.locator("[data-role=value]")).to_have_text(re.compile(r"^\d+(\.\d+)? °C$"))
    for key, unit in (("temperature", "°C"), ("humidity", "%"), ("pressure", "hPa")):
        expect(card.locator(f".reading[data-key={key}] [data-role=reading]")).to_have_text(
            re.compile(rf"^\d+(\.\d+)? {unit}$"))
    chart = card.locator(".reading[data-key=temperature] svg[data-role=chart]")
    expect(chart).to_have_attribute("data-history", re.compile(r"^[1-9]\d*$"))
    expect(chart.locator("path")).to_have_attribute("d", re.compile(r"^M[\d.]+ [\d.]+"))
    expect(page.locator("#card-tank .reading[data-key=temperature] [data-role=reading]")
           ).to_have_text(re.compile(r"^\d+(\.\d+)? °C$"))
    expect(card.locator("button:text-is('Stop answering')")).to_be_disabled()
    viewer.close()

    # An admin makes it stop answering from the card: unavailable, with the reason.
    admin = watched()
    page = login(admin, ws, "ada")
    card = page.locator("#card-climate")
    expect(card.locator(".reading[data-key=pressure] [data-role=reading]")).to_contain_text(
        "hPa")
    card.locator("button:text-is('Stop answering')").click()
    expect(card).to_have_class(re.compile(r"\bunavailable\b"))
    expect(card.locator("[data-role=value]")).to_have_text("unavailable")
    expect(card.locator("[data-role=sensor-error]")).to_contain_text(
        "no answer from BME280 at 0x76 on /dev/i2c-1")
    expect(card.locator(".reading[data-key=humidity] [data-role=reading]")).to_have_text("—")
    card.locator("button:text-is('Answer again')").click()
    expect(card.locator("[data-role=value]")).to_have_text(re.compile(r"^\d+(\.\d+)? °C$"))
    expect(card).not_to_have_class(re.compile(r"\bunavailable\b"))
    expect(card.locator("[data-role=sensor-error]")).to_be_hidden()
    admin.close()
