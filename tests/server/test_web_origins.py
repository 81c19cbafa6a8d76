"""WebSocket Origin rules, the listener keys that configure them, and the open files limit."""

from __future__ import annotations

import resource

import pytest

from pi_mqtt_gpio.mqtt.broker import BrokerLimits
from pi_mqtt_gpio.server import fdlimit
from pi_mqtt_gpio.server.config import ConfigError, parse_config
from pi_mqtt_gpio.server.web import normalize_origin, origin_allowed


@pytest.mark.parametrize(("origin", "host", "tls", "allowed", "ok"), [
    (None, "pi:9001", False, (), True),  # not a browser
    ("http://pi:9001", "pi:9001", False, (), True),
    ("http://PI:9001/", "pi:9001", False, (), True),
    ("https://pi", "pi", True, (), True),  # wss on 443
    ("https://pi:443", "pi:443", True, (), True),
    ("http://pi", "pi:80", False, (), True),
    ("http://pi:9001", "pi:9001", True, (), False),  # an http page, a wss listener
    ("http://evil.example", "pi:9001", False, (), False),
    ("http://pi:9002", "pi:9001", False, (), False),
    ("null", "pi:9001", False, (), False),
    ("http://pi:9001", None, False, (), False),
    ("https://panel:8443", "pi:9001", False, ("https://panel:8443",), True),
    ("https://panel", "pi:9001", False, ("https://panel:443",), True),
])
def test_origin_allowed(origin: str | None, host: str | None, tls: bool,
                        allowed: tuple[str, ...], ok: bool) -> None:
    assert origin_allowed(origin, host, tls, allowed) is ok


def test_normalize_origin() -> None:
    assert normalize_origin("HTTPS://Panel.LAN") == "https://panel.lan:443"
    assert normalize_origin("http://[::1]:8080") == "http://[::1]:8080"
    for bad in ("ws://pi", "http://pi/path", "http://user@pi", "pi:9001", "http://pi:99999",
                "http://pi?x=1", ""):
        assert normalize_origin(bad) is None, bad


def test_listener_keys_are_checked() -> None:
    cfg = parse_config("""
broker:
  listeners:
    - {type: websocket, port: 9001, allowed_origins: ["https://ha.lan:8123"],
       dashboard_brokers: ["wss://hub.lan:8081/mqtt"]}
""")
    ws = cfg.broker.listeners[0]
    assert ws.allowed_origins == ["https://ha.lan:8123"]
    assert ws.dashboard_brokers == ["wss://hub.lan:8081/mqtt"]
    with pytest.raises(ConfigError) as info:
        parse_config("""
broker:
  listeners:
    - {type: tcp, port: 1883, allowed_origins: ["https://ha.lan"]}
    - {type: websocket, port: 9001, allowed_origins: ["https://ha.lan/x", "ha.lan"],
       dashboard_brokers: ["https://hub.lan/mqtt"]}
""")
    text = str(info.value)
    assert "are for websocket listeners" in text
    assert "'https://ha.lan/x' is not an origin" in text
    assert "'ha.lan' is not an origin" in text
    assert "'https://hub.lan/mqtt' is not a WebSocket address" in text


def test_open_files_raised_or_the_pool_fitted(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = BrokerLimits()
    needed = fdlimit.files_needed(limits)
    state = {"soft": 1024, "hard": 1 << 20}
    monkeypatch.setattr(resource, "getrlimit", lambda _r: (state["soft"], state["hard"]))

    def setrlimit(_r: int, value: tuple[int, int]) -> None:
        state["soft"], state["hard"] = value

    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert fdlimit.fit_open_files(limits) == limits
    assert state["soft"] == needed

    state.update(soft=1024, hard=2048)  # cannot be raised far enough
    fitted = fdlimit.fit_open_files(limits)
    assert state["soft"] == 2048
    pool = fitted.max_pending_connections
    assert fitted.max_connections + 3 * pool + fdlimit.RESERVE <= 2048
    assert fitted.max_pending_per_address <= pool
