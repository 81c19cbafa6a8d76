"""WebSocket Origin rules, the listener keys that configure them, and the open files limit."""

from __future__ import annotations

import logging
import resource
import socket

import pytest

from pi_mqtt_gpio.mqtt.broker import BrokerLimits
from pi_mqtt_gpio.mqtt.logguard import LogLimiter
from pi_mqtt_gpio.server import fdlimit
from pi_mqtt_gpio.server.config_loader import ConfigError, parse_config
from pi_mqtt_gpio.server.web import host_allowed, local_names, normalize_origin, origin_allowed


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


def test_host_allowed() -> None:
    """With an Origin, Host must name this machine (DNS rebinding names another)."""
    me = socket.gethostname().lower()
    for host in ("127.0.0.1:9001", "192.168.1.5", "[::1]:9001", "[fe80::1]", "localhost:9001",
                 "LOCALHOST", f"{me}:9001", f"{me.split('.')[0]}.local", "ha.lan:8123",
                 "ha.lan."):
        assert host_allowed(host, {"ha.lan"}), host
    for host in (None, "", "rebind.attacker.example:9001", "evil.local", "127.0.0.1.evil",
                 "user@127.0.0.1", "ha.lan:99999", "ha.lan/x", "ha.lan.evil"):
        assert not host_allowed(host, {"ha.lan"}), host
    assert "localhost" in local_names()


def test_allowed_hosts_key() -> None:
    cfg = parse_config("""
broker:
  listeners:
    - {type: websocket, port: 9001, allowed_hosts: ["pi.example.com", "gk-2"]}
""")
    assert cfg.broker.listeners[0].allowed_hosts == ["pi.example.com", "gk-2"]
    with pytest.raises(ConfigError) as info:
        parse_config("""
broker:
  listeners:
    - {type: tcp, port: 1883, allowed_hosts: ["pi.lan"]}
    - {type: websocket, port: 9001,
       allowed_hosts: ["http://pi.lan", "pi.lan:9001", "-pi", "pi lan", "", "pi_lan"]}
""")
    text = str(info.value)
    assert "are for websocket listeners" in text
    for bad in ("http://pi.lan", "pi.lan:9001", "-pi", "pi lan", "", "pi_lan"):
        assert f"allowed_hosts: {bad!r} is not a host name" in text, bad


def test_log_limiter_total_across_keys(caplog: pytest.LogCaptureFixture) -> None:
    """5 lines per key and 20 in all per window; one line says what the total held back."""
    logger = logging.getLogger("test.limiter")
    limiter = LogLimiter(logger, total=20)
    with caplog.at_level(logging.INFO, logger="test.limiter"):
        allowed = sum(limiter.allow(f"10.0.0.{i}", 0.0) for i in range(49) for _ in range(5))
        assert allowed == 20 and not caplog.records
        assert limiter.allow("10.0.0.1", 10.0)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("225 more log lines about 45 sources"), lines
    assert limiter.suppressed == 225
    plain = LogLimiter(logger)  # no total: the per-key budget only
    assert sum(plain.allow(f"k{i}", 0.0) for i in range(49) for _ in range(5)) == 245
