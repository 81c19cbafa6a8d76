"""The dashboard on a fleet's hub says why a control cannot work before it is clicked, and
shows a command that nobody answered.

The hub is our embedded broker, serving the page, with anonymous visitors let in (as admin:
the hub's ACL would let them publish anything) and two gatekeepers in external mode as its
clients: ``a`` (real, one LED) and ``ghost``, a test client that announces a node (retained
catalogue and status) but only answers when the test says so. In a fleet every command's
topic ends in the sender's user name: an anonymous visitor has none, so its controls are
disabled with the reason and a banner asks it to log in."""

from __future__ import annotations

import json
import queue
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import Client, GatekeeperThread, cheap_hash, v5_props, wait_for
from tests.web.test_dashboard_browser import (  # noqa: F401
    Watched,
    browser,
    free_port,
    head,
)

playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect

PASSWORD = "fleet-access-pw"
ANSWER_S = 10  # the page's wait for a reply (app.js ANSWER_S)
READ = ('["gatekeeper/+/status", "gatekeeper/+/devices", "gatekeeper/+/device/+/state", '
        '"gatekeeper/+/device/+/event", "gatekeeper/+/lease", "gatekeeper/+/system/health", '
        '"gatekeeper/+/audit", "gatekeeper/+/reply/{username}/#"]')


def hub_config(tcp: int, ws: int) -> str:
    digest = cheap_hash(PASSWORD)
    return head("hub", tcp, ws) + f"""auth:
  allow_anonymous: true
  anonymous_role: admin
  users:
    ada: {{password_hash: '{digest}', role: person}}
    vera: {{password_hash: '{digest}', role: watcher}}
    a: {{password_hash: '{digest}', role: node}}
    ghost: {{password_hash: '{digest}', role: node}}
  roles:
    person:
      subscribe: {READ}
      publish: ["gatekeeper/+/device/+/call/{{username}}", "gatekeeper/+/lease/call/{{username}}"]
    watcher:
      subscribe: {READ}
    node:
      subscribe: ["gatekeeper/{{username}}/#"]
      publish: ["gatekeeper/{{username}}/#"]
homeassistant: {{discovery: false}}
devices: {{}}
"""


def node_config(hub: int, password_file: Path) -> str:
    return f"""
node_id: a
hardware: {{pin_factory: mock}}
broker:
  mode: external
  external: {{host: 127.0.0.1, port: {hub}, username: a, password_file: {password_file},
             acl_probe: false}}
auth:
  users:
    ada: {{role: operator}}
    vera: {{role: viewer}}
homeassistant: {{discovery: false}}
devices:
  lamp: {{type: LED, pin: 17, description: "Lamp of a"}}
"""


class Fleet:
    def __init__(self, tmp: Path) -> None:
        pw = tmp / "password"
        pw.write_text(PASSWORD + "\n")
        self.tcp, self.ws = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.ws}/"
        self.hub = GatekeeperThread(hub_config(self.tcp, self.ws))
        self.hub.start()
        self.a = GatekeeperThread(node_config(self.tcp, pw))
        self.a.start()
        assert self.a.daemon is not None and self.a.daemon.uplink is not None
        assert self.a.daemon.uplink.connected.wait(10)

    def client(self, user: str) -> Client:
        c = Client(self.tcp, mqtt.MQTTv5, client_id=f"{user}-test")
        c.c.username_pw_set(user, PASSWORD)
        c.connect()
        return c

    def close(self) -> None:
        self.a.close()
        self.hub.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("fleet-access"))
    yield f
    f.close()


class Ghost:
    """A node that is announced (online, one LED, external mode) but answers nothing unless
    told to: it receives each command, and the test may reply to it later."""

    ROOT = "gatekeeper/ghost"

    def __init__(self, fleet: Fleet) -> None:
        reader = fleet.client("ada")
        reader.subscribe("gatekeeper/a/devices", 1)
        doc = json.loads(reader.get(10).payload)  # node a's catalogue, renamed
        reader.close()
        text = json.dumps(doc).replace("gatekeeper/a/", f"{self.ROOT}/")
        doc = json.loads(text)
        doc.update(node_id="ghost", root=self.ROOT)
        assert doc["broker"] == "external"
        self.c = fleet.client("ghost")
        self.c.subscribe(f"{self.ROOT}/device/+/call/+", 1)
        self.c.publish(f"{self.ROOT}/devices", json.dumps(doc), 1, retain=True)
        self.c.publish(f"{self.ROOT}/device/lamp/state", json.dumps({"value": 0, "is_active": False}),
                       1, retain=True)
        self.online(True)

    def online(self, up: bool) -> None:
        self.c.publish(f"{self.ROOT}/status", "online" if up else "offline", 1, retain=True)

    def command(self, timeout: float) -> mqtt.MQTTMessage:
        try:
            return self.c.get(timeout)
        except queue.Empty:
            raise AssertionError(f"no command reached the ghost within {timeout} s") from None

    def reply(self, request: mqtt.MQTTMessage, doc: dict[str, Any]) -> None:
        props: Any = request.properties
        self.c.publish(props.ResponseTopic, json.dumps(doc), 1,
                       properties=v5_props(CorrelationData=props.CorrelationData))

    def close(self) -> None:
        for leaf in ("devices", "status", "device/lamp/state"):
            self.c.publish(f"{self.ROOT}/{leaf}", b"", 1, retain=True)
        self.c.close()


@pytest.fixture
def ghost(fleet: Fleet) -> Iterator[Ghost]:
    g = Ghost(fleet)
    yield g
    g.close()


def open_node(page: Any, node: str) -> None:
    page.click(f"#node-list a[data-node={node}]")
    expect(page.locator("#node-title")).to_have_text(node)
    expect(page.locator("#node-status")).to_have_text("online")
    expect(page.locator("#card-lamp [data-role=value]")).to_have_text(re.compile("^(on|off)$"))


def log_in(page: Any, user: str) -> None:
    page.fill("#username", user)
    page.fill("#password", PASSWORD)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#conn")).to_have_text("connected")


def logged_in(browser: Any, fleet: Fleet, user: str) -> tuple[Watched, Any]:  # noqa: F811
    """A page that came in anonymously and logged in with the header's button."""
    w = Watched(browser)
    page = w.page
    page.goto(fleet.url)
    expect(page.locator("#conn")).to_have_text("connected")
    page.click("#login-open")
    log_in(page, user)
    return w, page


def test_an_anonymous_visitor_sees_why_and_logs_in_to_control(fleet: Fleet,
                                                               browser: Any) -> None:  # noqa: F811
    w = Watched(browser)
    page = w.page
    page.goto(fleet.url)
    expect(page.locator("#conn")).to_have_text("connected")
    expect(page.locator("#who")).to_have_text("anonymous (admin)")
    banner = page.locator("#banner")
    # Already on the node list: the nodes are a fleet's.
    expect(banner).to_contain_text("You are not logged in")
    open_node(page, "a")

    # Before any click: disabled, with the reason on the card and as the tooltip.
    toggle = page.locator("#card-lamp button.toggle")
    reason = "Log in to control lamp: in a fleet every command names its sender, and an " \
             "anonymous visitor has no user name."
    expect(toggle).to_be_disabled()
    expect(toggle).to_have_attribute("title", reason)
    expect(page.locator("#card-lamp [data-role=why]")).to_have_text(reason)
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("an anonymous visitor can watch but not control: log in")
    expect(page.locator("#lease-form button[type=submit]")).to_be_disabled()
    expect(page.locator("#lease-why")).to_contain_text("Log in to take control leases")
    toggle.click(force=True)  # a disabled control does nothing
    page.evaluate("() => new Promise((r) => setTimeout(r, 300))")
    assert w.sent_publishes == 0
    assert page.evaluate("window.gatekeeperDashboard.published") == 0
    assert fleet.a.pin("lamp").pin.state == 0

    # The banner's button logs in; then the same control works.
    page.click("#banner-login")
    expect(page.locator("#login")).to_be_visible()
    log_in(page, "ada")
    expect(page.locator("#who")).to_have_text("ada (person)")
    expect(page.locator("#node-status")).to_have_text("online")
    expect(banner).to_be_hidden()
    expect(toggle).to_be_enabled()
    expect(toggle).to_have_attribute("title", "")
    expect(page.locator("#card-lamp [data-role=why]")).to_be_hidden()
    toggle.click()
    assert wait_for(lambda: fleet.a.pin("lamp").pin.state == 1)
    expect(page.locator("#card-lamp [data-role=value]")).to_have_text("on")
    expect(page.locator("#audit-list li").first).to_contain_text("ada lamp.on()")
    expect(page.locator("#card-lamp [data-role=error]")).to_be_hidden()
    toggle.click()
    assert wait_for(lambda: fleet.a.pin("lamp").pin.state == 0)
    w.close()


def test_a_role_that_may_not_command_says_so(fleet: Fleet, browser: Any) -> None:  # noqa: F811
    w, page = logged_in(browser, fleet, "vera")
    expect(page.locator("#who")).to_have_text("vera (watcher)")
    open_node(page, "a")
    toggle = page.locator("#card-lamp button.toggle")
    expect(toggle).to_be_disabled()
    reason = "View only: vera (role watcher) may not control lamp."
    expect(toggle).to_have_attribute("title", reason)
    expect(page.locator("#card-lamp [data-role=why]")).to_have_text(reason)
    expect(page.locator("#banner")).to_be_hidden()  # logged in: nothing to ask
    assert page.evaluate("window.gatekeeperDashboard.published") == 0
    w.close()


def test_a_command_nobody_answers_shows_on_the_card(fleet: Fleet, ghost: Ghost,
                                                     browser: Any) -> None:  # noqa: F811
    w, page = logged_in(browser, fleet, "ada")
    open_node(page, "ghost")
    toggle = page.locator("#card-lamp button.toggle")
    error = page.locator("#card-lamp [data-role=error]")
    expect(toggle).to_be_enabled()
    toggle.click()
    request = ghost.command(5)  # it was sent, to the node, under ada's name ...
    assert request.topic == "gatekeeper/ghost/device/lamp/call/ada"
    assert json.loads(request.payload)["method"] == "on"
    expect(error).to_be_hidden()
    # ... and nobody answered: the card says so once the page's wait is over.
    expect(error).to_have_text(
        f"lamp.on: no answer from ghost within {ANSWER_S} s: the command was not carried out "
        "or not acknowledged.", timeout=(ANSWER_S + 5) * 1000)
    expect(page.locator(".toast.bad").last).to_contain_text("lamp.on: no answer from ghost")

    # An answer that comes late still counts: the error goes, a notice says so.
    ghost.reply(request, {"ok": True, "result": None, "state": {"value": 1, "is_active": True}})
    expect(error).to_be_hidden()
    expect(page.locator(".toast:not(.bad)").last).to_contain_text("lamp.on was answered late")

    # The node goes offline: the control is disabled, and says why, before any click.
    ghost.online(False)
    expect(toggle).to_be_disabled()
    expect(page.locator("#card-lamp [data-role=why]")).to_have_text(
        "ghost is offline: its devices cannot be controlled until it is back.")
    expect(page.locator("#banner")).to_have_text("ghost is offline: its devices cannot be "
                                                 "controlled.")
    ghost.online(True)
    expect(toggle).to_be_enabled()
    expect(page.locator("#card-lamp [data-role=why]")).to_be_hidden()
    w.close()
