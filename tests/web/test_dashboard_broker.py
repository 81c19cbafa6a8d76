"""The dashboard logs in only to its own server (or a broker its server lists): a link to the
real dashboard with ``?broker=`` naming another server does not send the login there."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.web.test_dashboard_browser import (  # noqa: F401
    PASSWORDS,
    Node,
    Watched,
    browser,
    expect,
    free_port,
    node,
)


class FakeBroker:
    """A listening socket on another port that records every connection made to it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.accepted: list[bytes] = []
        self.stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(1)
            try:
                self.accepted.append(conn.recv(65536))
            except OSError:
                self.accepted.append(b"")
            conn.close()

    def close(self) -> None:
        self.stop = True
        self.sock.close()


@pytest.fixture
def fake() -> Iterator[FakeBroker]:
    f = FakeBroker()
    yield f
    f.close()


def _log_in(w: Watched, url: str) -> Any:
    page = w.page
    page.goto(url)
    expect(page.locator("#login")).to_be_visible()
    page.fill("#username", "ada")
    page.fill("#password", PASSWORDS["ada"])
    page.click("#login-form button[type=submit]")
    return page


def test_a_broker_in_the_link_that_is_not_allowed_gets_no_login(
        node: Node, browser: Any, fake: FakeBroker) -> None:  # noqa: F811
    w = Watched(browser)
    page = _log_in(w, f"{node.url}?broker=ws://127.0.0.1:{fake.port}/mqtt")
    # until the page is connected somewhere, or the other server was reached
    assert wait_for(lambda: bool(fake.accepted)
                    or page.locator("#conn").inner_text() == "connected", timeout=10)
    print("connections to the other server:", fake.accepted)
    assert fake.accepted == []
    expect(page.locator("#notice")).to_be_visible()
    expect(page.locator("#notice")).to_contain_text(f"127.0.0.1:{fake.port}")
    expect(page.locator("#node-status")).to_have_text("online")  # its own server's node
    w.close()


def test_the_pages_own_server_in_the_link_is_used(node: Node, browser: Any) -> None:  # noqa: F811
    w = Watched(browser)
    page = _log_in(w, f"{node.url}?broker=ws://127.0.0.1:{node.ws}/mqtt")
    expect(page.locator("#conn")).to_have_text("connected")
    expect(page.locator("#notice")).to_be_hidden()
    expect(page.locator("#node-status")).to_have_text("online")
    w.close()
