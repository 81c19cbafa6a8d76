"""The dashboard in a real browser: Debian's chromium, headless, driven by playwright, against
the real daemon (simulated pins, the real broker, MQTT over the WebSocket listener).

Every page here fails its test on any console error, page error, failed request or HTTP
error, except the WebSocket failures of a deliberate outage, inside that outage.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import Client, Gatekeeper, GatekeeperThread, cheap_hash, wait_for

playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ROOT = "gatekeeper/web"
PASSWORDS = {"ada": "ada-admin-pw", "otto": "otto-operator-pw", "vera": "vera-viewer-pw"}
SCREENSHOTS = os.environ.get("PI_MQTT_SCREENSHOTS")  # a directory: keep the screenshots


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def head(node_id: str, tcp: int, ws: int) -> str:
    """The start of a test node's config: simulated pins, a TCP and a WebSocket listener."""
    return f"""
node_id: {node_id}
hardware: {{pin_factory: mock}}
broker:
  listeners:
    - {{type: tcp, host: 127.0.0.1, port: {tcp}}}
    - {{type: websocket, host: 127.0.0.1, port: {ws}}}
"""


def node_config(tcp: int, ws: int) -> str:
    users = "\n".join(
        f"    {name}: {{password_hash: '{cheap_hash(pw)}', role: {role}}}"
        for (name, pw), role in zip(PASSWORDS.items(), ("admin", "operator", "viewer"),
                                    strict=True))
    return head("web", tcp, ws) + f"""auth:
  allow_anonymous: false
  users:
{users}
leases: {{scope: device, ttl_s: 60}}
homeassistant: {{discovery: false}}
devices:
  porch_light: {{type: LED, pin: 17, description: Porch light}}
  heater: {{type: OutputDevice, pin: 23, safety: {{min_command_interval_s: 30}}}}
  doorbell: {{type: Button, pin: 27, pull_up: true}}
  gate: {{type: Motor, forward: 19, backward: 16, lease_required: true, safe_state: stop}}
  screen:
    type: Cover
    up: 20
    down: 21
    travel_time_up_s: 2.5
    travel_time_down_s: 2.5
    endstop_overrun_s: 0.2
    initial_position: 100
    position_step: 5
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: scripts/test installs Debian's chromium")
        pytest.skip("Debian's chromium is not installed (scripts/test installs it)")
    with playwright_sync.sync_playwright() as p:
        # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start.
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


class Node:
    def __init__(self) -> None:
        self.tcp, self.ws = free_port(), free_port()
        self.gk = GatekeeperThread(node_config(self.tcp, self.ws))
        self.gk.start()
        self.url = f"http://127.0.0.1:{self.ws}/"

    def pin(self, device: str) -> Any:
        return self.gk.pin(device).pin

    def cover_pins(self) -> tuple[Any, Any]:
        assert self.gk.daemon is not None
        adapter: Any = self.gk.daemon.hw.adapters["screen"]
        return adapter.up.pin, adapter.down.pin


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    n = Node()
    yield n
    n.gk.close()


class Watched:
    """A page whose problems are collected, and whose WebSocket frames are counted."""

    def __init__(self, browser: Any, **context: Any) -> None:
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.allow_ws_errors = False
        self.closed = False
        self.sent_publishes = 0
        page = self.page
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url} {r.failure}"))
        page.on("response", lambda r: r.status >= 400
                and self.problems.append(f"HTTP {r.status}: {r.url}"))
        page.on("websocket", self._websocket)

    def _console(self, msg: Any) -> None:
        if msg.type != "error":
            return
        if self.allow_ws_errors and ("WebSocket connection to" in msg.text
                                     or "WebSocket is already in CLOSING" in msg.text):
            return  # the outage the test made (Chrome logs a send on the dropped socket)
        self.problems.append(f"console error: {msg.text}")

    def _websocket(self, ws: Any) -> None:
        def sent(payload: Any) -> None:
            if isinstance(payload, bytes | bytearray) and payload and payload[0] >> 4 == 3:
                self.sent_publishes += 1  # MQTT PUBLISH (packet type 3)
        ws.on("framesent", sent)

    def close(self) -> None:
        """Close the page (once) and fail on anything it reported. A test that stops its
        gatekeeper calls this first: a page still connected when the server goes away logs
        its own sends on the closing socket."""
        if not self.closed:
            self.closed = True
            self.context.close()
        assert not self.problems, self.problems


@pytest.fixture
def watched(browser: Any) -> Iterator[Any]:
    pages: list[Watched] = []

    def make(**context: Any) -> Watched:
        w = Watched(browser, **context)
        pages.append(w)
        return w

    yield make
    for w in pages:
        w.close()


def login(w: Watched, node: Node, user: str) -> Any:
    page = w.page
    page.goto(node.url)
    expect(page.locator("#login")).to_be_visible()
    page.fill("#username", user)
    page.fill("#password", PASSWORDS[user])
    page.click("#login-form button[type=submit]")
    expect(page.locator("#conn")).to_have_text("connected")
    expect(page.locator("#node-status")).to_have_text("online")
    expect(page.locator("#card-porch_light [data-role=value]")).to_have_text(re.compile("^(on|off)$"))
    return page


def watcher(node: Node, *topics: str) -> Client:
    c = Client(node.tcp, mqtt.MQTTv5)
    c.c.username_pw_set("ada", PASSWORDS["ada"])
    c.connect()
    for t in topics:
        c.subscribe(t, 1)
    return c


def value(page: Any, device: str) -> Any:
    return page.locator(f"#card-{device} [data-role=value]")


def test_admin_sees_the_twin_switches_an_led_moves_a_cover_and_presses_a_button(
        node: Node, watched: Any) -> None:
    w = watched()
    page = login(w, node, "ada")
    expect(page.locator("#who")).to_have_text("ada (admin)")
    expect(value(page, "screen")).to_have_text("100 % · open")
    expect(page.locator("#health-status")).to_have_text("ok")

    # The LED: the page's click moves the MockFactory pin, and the twin comes back.
    assert node.pin("porch_light").state == 0
    page.click("#card-porch_light button.toggle")
    assert wait_for(lambda: node.pin("porch_light").state == 1)
    expect(value(page, "porch_light")).to_have_text("on")
    expect(page.locator("#audit-list li").first).to_contain_text("porch_light.on() via call: ok")

    # The cover: drag the slider to 0; the position moves live while it travels.
    events = watcher(node, f"{ROOT}/device/doorbell/event")
    page.locator("#card-screen input[type=range]").fill("0")
    seen: list[str] = []
    sliders: set[str] = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = value(page, "screen").inner_text()
        sliders.add(page.locator("#card-screen input[type=range]").input_value())
        if not seen or seen[-1] != text:
            seen.append(text)
        if text.startswith("0 % · closed"):
            break
        time.sleep(0.05)
    positions = {int(t.split(" ")[0]) for t in seen}
    assert seen[-1].startswith("0 % · closed"), seen
    assert len([p for p in positions if 0 < p < 100]) >= 4, seen  # live, not just the end
    assert any("closing" in t for t in seen), seen
    assert len([v for v in sliders if 0 < int(v) < 100]) >= 4, sliders  # the slider too
    up, down = node.cover_pins()
    assert up.state == 0 and down.state == 0  # arrived: both relays off
    assert page.locator("#card-screen input[type=range]").input_value() == "0"

    # A simulated press: the event shows on the card and goes out on MQTT.
    page.click("#card-doorbell button:text-is('Press')")
    expect(page.locator("#card-doorbell .events li").first).to_contain_text("pressed")
    expect(value(page, "doorbell")).to_have_text("pressed")
    page.click("#card-doorbell button:text-is('Release')")
    expect(page.locator("#card-doorbell .events li").first).to_contain_text("released")
    got = [events.get(5).payload for _ in range(2)]
    assert b'"pressed"' in got[0] and b'"released"' in got[1]
    events.close()


def test_refusals_show_their_code_and_retry_after_and_leases_work(node: Node,
                                                                 watched: Any) -> None:
    w = watched()
    page = login(w, node, "otto")
    expect(page.locator("#who")).to_have_text("otto (operator)")
    # An operator has no 'simulate' right: the simulated inputs are there, but disabled.
    expect(page.locator("#card-doorbell button:text-is('Press')")).to_be_disabled()

    # Safety: the heater takes one command per 30 s (switching off is never refused);
    # switching it on again so soon is refused, with retry_after.
    page.click("#card-heater button.toggle")
    expect(value(page, "heater")).to_have_text("on")
    page.click("#card-heater button.toggle")
    expect(value(page, "heater")).to_have_text("off")
    page.click("#card-heater button.toggle")
    toast = page.locator(".toast.bad").last
    # (retry in 29.x s, or less on a machine slow to show it: the 30 s spacing counts down)
    expect(toast).to_contain_text(re.compile(r"heater\.on refused: RATE_LIMITED — retry in 2\d\."))
    assert node.pin("heater").state == 0  # still off
    expect(page.locator("#audit-list li").first).to_contain_text("heater.on() via call: "
                                                                 "RATE_LIMITED")

    # The gate needs a lease: refused without one, then acquired from the lease panel.
    page.click("#card-gate button:text-is('Stop')")
    expect(page.locator(".toast.bad").last).to_contain_text("gate.stop refused: LEASE_REQUIRED")
    page.select_option("#lease-devices", ["gate"])
    page.fill("#lease-ttl", "30")
    page.click("#lease-form button[type=submit]")
    row = page.locator("#lease-list .lease")
    expect(row).to_contain_text("you")
    expect(row).to_contain_text("gate")
    expect(row.locator(".ttl")).to_contain_text("s left")
    left = int(row.locator(".ttl").inner_text().split()[0])
    assert 25 <= left <= 30
    page.locator("#card-gate input[type=range]").fill("50")
    assert wait_for(lambda: node.gk.pin("gate").value == 0.5)
    expect(value(page, "gate")).to_have_text("forward 50 %")
    page.click("#card-gate button:text-is('Stop')")
    assert wait_for(lambda: node.gk.pin("gate").value == 0)
    expect(value(page, "gate")).to_have_text("stopped")
    row.locator("button:text-is('Release')").click()
    expect(page.locator("#lease-list")).to_contain_text("No leases held")
    page.click("#card-gate button:text-is('Stop')")  # no lease any more: refused again
    expect(page.locator(".toast.bad").last).to_contain_text("gate.stop refused: LEASE_REQUIRED")


def test_a_viewer_sees_every_control_disabled_and_publishes_nothing(node: Node,
                                                                    watched: Any) -> None:
    spy = watcher(node, f"{ROOT}/device/+/call", f"{ROOT}/device/+/set", f"{ROOT}/lease/call")
    w = watched()
    page = login(w, node, "vera")
    expect(page.locator("#who")).to_have_text("vera (viewer)")
    expect(page.locator("#lease-form")).to_be_hidden()
    controls = page.locator(".card button, .card input, .card select")
    assert controls.count() >= 11  # every device has some (the buttons simulate)
    for i in range(controls.count()):
        expect(controls.nth(i)).to_be_disabled()
    before = node.pin("porch_light").state
    for selector in ("#card-porch_light button.toggle", "#card-screen button:text-is('Open')",
                     "#card-doorbell button:text-is('Press')"):
        page.locator(selector).click(force=True)  # a disabled control does nothing
    assert page.evaluate("window.gatekeeperDashboard.published") == 0  # counted on click
    # a QoS 1 PUBLISH of the page's own after the clicks (refused: a viewer publishes
    # nothing): once it is acknowledged, the broker has handled whatever a click sent
    acked = page.evaluate("t => new Promise(done => window.gatekeeperDashboard.client.publish("
                          "t, '{\"method\": \"state\"}', {qos: 1}, e => done(String(e))))",
                          f"{ROOT}/device/porch_light/call")
    print("the page's own publish:", acked)
    sentinel = f"{ROOT}/device/sentinel/call"  # then the spy's own, after all that
    spy.publish(sentinel, b'{"method": "state"}', 1)
    got = spy.until(sentinel)  # nothing reached the broker on a command topic before it
    assert got == [], [(m.topic, m.payload) for m in got]
    assert wait_for(lambda: w.sent_publishes >= 1)
    assert w.sent_publishes == 1  # the sentinel alone
    assert node.pin("porch_light").state == before
    spy.close()


def test_wrong_password_is_refused_with_a_message(node: Node, watched: Any) -> None:
    w = watched()
    page = w.page
    page.goto(node.url)
    page.fill("#username", "ada")
    page.fill("#password", "not-her-password")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("Wrong user name or password")
    expect(page.locator("#node")).to_be_hidden()


def test_anonymous_node_needs_no_login(broker: Gatekeeper, watched: Any) -> None:
    w = watched()
    page = w.page
    page.goto(f"http://127.0.0.1:{broker.ports['websocket']}/")
    expect(page.locator("#conn")).to_have_text("connected")
    expect(page.locator("#login")).to_be_hidden()
    expect(page.locator("#who")).to_have_text("anonymous (everyone)")


def test_phone_layout_and_screenshots(node: Node, watched: Any, tmp_path: Path) -> None:
    out = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    phone = watched(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                    is_mobile=True, has_touch=True)
    page = login(phone, node, "ada")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width} px)"
    box = page.locator("#card-porch_light").bounding_box()
    assert box is not None and box["width"] >= 330  # one card per row, full width
    toggle = page.locator("#card-porch_light button.toggle")
    tbox = toggle.bounding_box()
    assert tbox is not None and tbox["height"] >= 44  # a touch target
    state = node.pin("porch_light").state
    toggle.tap()
    assert wait_for(lambda: node.pin("porch_light").state != state)
    page.screenshot(path=str(out / "dashboard-phone.png"))
    desktop = watched(viewport={"width": 1280, "height": 900})
    page = login(desktop, node, "ada")
    page.screenshot(path=str(out / "dashboard-desktop.png"), full_page=True)
    assert (out / "dashboard-phone.png").stat().st_size > 10_000


def test_the_connection_goes_down_and_comes_back(node: Node, watched: Any) -> None:
    """Runs last in this file: it restarts the node."""
    w = watched()
    page = login(w, node, "ada")
    w.allow_ws_errors = True
    node.gk.stop()  # SIGTERM-like: offline published, every client disconnected
    expect(page.locator("#node-status")).to_have_text("offline", timeout=30000)
    expect(page.locator("#conn")).to_have_text("reconnecting…", timeout=30000)
    expect(page.locator("#card-porch_light button.toggle")).to_be_disabled()
    page.wait_for_timeout(1500)  # a few failed reconnects
    node.gk.start()  # the same ports
    expect(page.locator("#conn")).to_have_text("connected", timeout=10000)
    expect(page.locator("#node-status")).to_have_text("online")
    w.allow_ws_errors = False
    toggle = page.locator("#card-porch_light button.toggle")
    expect(toggle).to_be_enabled()
    state = node.pin("porch_light").state
    toggle.click()
    assert wait_for(lambda: node.pin("porch_light").state != state)


def test_the_page_over_tls_logs_in_over_wss(watched: Any, tmp_path: Path) -> None:
    """The TLS WebSocket listener serves the page over https and MQTT over wss."""
    import subprocess

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"),
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    wss = free_port()
    text = node_config(free_port(), free_port()).replace(
        "    - {type: websocket, host: 127.0.0.1, port:",
        f"    - {{type: websocket, host: 127.0.0.1, port: {wss}, "
        f"certfile: {tmp_path / 'cert.pem'}, keyfile: {tmp_path / 'key.pem'}}}\n"
        "    - {type: websocket, host: 127.0.0.1, port:")
    gk = GatekeeperThread(text)
    gk.start()
    try:
        w = watched(ignore_https_errors=True)  # a self-signed certificate
        page = w.page
        page.goto(f"https://127.0.0.1:{wss}/")
        page.fill("#username", "ada")
        page.fill("#password", PASSWORDS["ada"])
        page.click("#login-form button[type=submit]")
        expect(page.locator("#conn")).to_have_text("connected")
        page.click("#card-porch_light button.toggle")
        assert wait_for(lambda: gk.pin("porch_light").pin.state == 1)
        w.close()  # before the server goes away
    finally:
        gk.close()


def test_every_card_type_of_the_demo_works(watched: Any, tmp_path: Path) -> None:
    """The demo config (deploy/demo.yaml: servo, mixer, RGB, PWM, buzzer, expander pins,
    motion and distance sensors, a button with gestures) through each card's controls."""
    import yaml

    from tests.conftest import start_gatekeeper

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy" / "demo.yaml")
                            .read_text())
    config["broker"]["listeners"] = [{"type": "tcp", "host": "127.0.0.1", "port": 0},
                                     {"type": "websocket", "host": "127.0.0.1", "port": 0}]
    gk = start_gatekeeper(tmp_path, config)
    try:
        w = watched()
        page = w.page
        page.goto(f"http://127.0.0.1:{gk.ports['websocket']}/")
        expect(page.locator("#who")).to_have_text("anonymous (admin)")
        expect(page.locator("#login")).to_be_hidden()
        page.click("#card-camera_pan button:text-is('Max')")
        expect(value(page, "camera_pan")).to_have_text("90°")
        page.locator("#card-camera_pan input[type=range]").fill("-45")
        expect(value(page, "camera_pan")).to_have_text("-45°")
        page.click("#card-volume button.toggle")
        expect(value(page, "volume")).to_contain_text("(muted)")
        page.locator("#card-volume input[type=range]").fill("20")
        expect(value(page, "volume")).to_contain_text("20")
        page.locator("#card-mood_light input[type=color]").fill("#ff0000")
        expect(value(page, "mood_light")).to_have_text("#ff0000")
        page.locator("#card-status_led input[type=range]").fill("30")
        expect(value(page, "status_led")).to_have_text("30 %")
        page.click("#card-hallway_pir button:text-is('Motion')")
        expect(value(page, "hallway_pir")).to_have_text("motion")
        expect(page.locator("#card-hallway_pir .events li").first).to_contain_text("motion")
        page.locator("#card-garage_gap input[type=range]").fill("0.25")
        expect(value(page, "garage_gap")).to_have_text("0.500 m")  # max_distance 2 m
        page.click("#card-hall_light button.toggle")  # on the MCP23017 expander
        expect(value(page, "hall_light")).to_have_text("on")
        page.click("#card-wall_button button:text-is('Press')")
        page.click("#card-wall_button button:text-is('Release')")
        expect(page.locator("#card-wall_button .events")).to_contain_text("single")
        expect(page.locator(".toast.bad")).to_have_count(0)
        w.close()  # before the server goes away
    finally:
        assert gk.stop() == 0
