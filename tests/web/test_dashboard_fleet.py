"""The dashboard's node list: two gatekeepers in external broker mode share one broker (here
our own embedded broker as the hub, with an ACL that guarantees the caller's user name as
the last level of every command topic); the hub serves the page; a user picks a node and
switches its LED, and only that node's pin moves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GatekeeperThread, cheap_hash, wait_for
from tests.web.test_dashboard_browser import (  # noqa: F401
    Watched,
    browser,
    free_port,
    head,
)

playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect

PASSWORD = "fleet-test-pw"


def hub_config(tcp: int, ws: int) -> str:
    digest = cheap_hash(PASSWORD)
    return head("hub", tcp, ws) + f"""auth:
  allow_anonymous: false
  users:
    ada: {{password_hash: '{digest}', role: person}}
    a: {{password_hash: '{digest}', role: node}}
    b: {{password_hash: '{digest}', role: node}}
  roles:
    person:
      subscribe: ["gatekeeper/+/status", "gatekeeper/+/devices", "gatekeeper/+/device/+/state",
                  "gatekeeper/+/device/+/event", "gatekeeper/+/lease", "gatekeeper/+/system/health",
                  "gatekeeper/+/audit", "gatekeeper/+/reply/{{username}}/#"]
      publish: ["gatekeeper/+/device/+/call/{{username}}", "gatekeeper/+/lease/call/{{username}}"]
    node:
      subscribe: ["gatekeeper/{{username}}/#"]
      publish: ["gatekeeper/{{username}}/#"]
homeassistant: {{discovery: false}}
devices: {{}}
"""


def node_config(node: str, hub: int, password_file: Path) -> str:
    return f"""
node_id: {node}
hardware: {{pin_factory: mock}}
broker:
  mode: external
  external: {{host: 127.0.0.1, port: {hub}, username: {node}, password_file: {password_file},
             acl_probe: false}}
auth:
  users:
    ada: {{role: operator}}
homeassistant: {{discovery: false}}
devices:
  lamp: {{type: LED, pin: 17, description: "Lamp of {node}"}}
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("fleet-web")
    pw = tmp / "password"
    pw.write_text(PASSWORD + "\n")
    tcp, ws = free_port(), free_port()
    hub = GatekeeperThread(hub_config(tcp, ws))
    hub.start()
    nodes = {name: GatekeeperThread(node_config(name, tcp, pw)) for name in ("a", "b")}
    try:
        for gk in nodes.values():
            gk.start()
            assert gk.daemon is not None and gk.daemon.uplink is not None
            assert gk.daemon.uplink.connected.wait(10)
        yield ws, nodes
    finally:
        for gk in nodes.values():
            gk.close()
        hub.close()


def test_node_list_and_one_page_per_node(fleet: tuple[int, dict[str, Any]],
                                         browser: Any) -> None:  # noqa: F811
    ws, nodes = fleet
    w = Watched(browser)
    page = w.page
    page.goto(f"http://127.0.0.1:{ws}/")
    page.fill("#username", "ada")
    page.fill("#password", PASSWORD)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#conn")).to_have_text("connected")
    expect(page.locator("#node-list a")).to_have_count(2)
    for name in ("a", "b"):
        link = page.locator(f"#node-list a[data-node={name}]")
        expect(link).to_contain_text("1 devices")
        expect(link.locator(".pill")).to_have_text("online")

    def lamp(name: str) -> Any:
        return nodes[name].pin("lamp").pin

    for name, other in (("a", "b"), ("b", "a")):
        page.click(f"#node-list a[data-node={name}]")
        expect(page.locator("#node-title")).to_have_text(name)
        expect(page.locator("#node-status")).to_have_text("online")
        expect(page.locator("#card-lamp .desc")).to_have_text(f"Lamp of {name}")
        page.click("#card-lamp button.toggle")
        assert wait_for(lambda name=name: lamp(name).state == 1)
        expect(page.locator("#card-lamp [data-role=value]")).to_have_text("on")
        if name == "a":
            assert lamp(other).state == 0  # only the chosen node's pin moved
        expect(page.locator("#audit-list li").first).to_contain_text("ada lamp.on()")
        page.click("#home")
        expect(page.locator("#nodes")).to_be_visible()
    w.close()
