"""Config loading: typed and frozen, every problem listed with key path and line."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from pi_mqtt_gpio.server.config_loader import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_configs_are_valid() -> None:
    for name in ("broker-only.yaml", "demo.yaml"):
        cfg = load_config(ROOT / "deploy" / name)
        assert cfg.broker.mode == "embedded"
    assert load_config(ROOT / "broker-only.yaml").node_id == "broker"


def test_defaults() -> None:
    cfg = parse_config("node_id: pi\n")
    assert cfg.root == "gatekeeper/pi"
    assert cfg.broker.listeners[0].port == 1883
    assert cfg.broker.limits.max_packet_size == 262144
    assert cfg.auth.allow_anonymous is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.node_id = "other"  # type: ignore[misc]  # frozen


def test_every_problem_listed_with_lines() -> None:
    text = """\
node_id: pi
broker:
  listeners:
    - {type: tcp, port: 70000}
    - {type: tls, port: 8883}
  limits: {max_keepalive: 0, bogus: 1}
auth:
  allow_anonymous: maybe
unknown_top: 1
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.yaml")
    problems = info.value.problems
    assert problems == [
        "line 4: broker.listeners[0].port: must be <= 65535 (got 70000)",
        "line 5: broker.listeners[1]: a tls listener needs certfile and keyfile",
        "line 6: broker.limits.bogus: unknown key",
        "line 6: broker.limits.max_keepalive: must be >= 1 (got 0)",
        "line 8: auth.allow_anonymous: expected true or false (got 'maybe')",
        "line 9: unknown_top: unknown key",
    ]


def test_device_problems_all_listed() -> None:
    text = """\
devices:
  a: {type: LED, pin: 17}
  b: {type: Button, pin: 17, pull_up: maybe}
  c: {type: Lamp, pin: 3}
  d: {type: AngularServo, pin: 4, min_angle: 10, max_angle: 10}
  e: {type: Motor, forward: 5}
  f: {type: MCP3004, channel: 6}
  g: {type: MCP3008, channel: 1}
  j: {type: LED, pin: 8}
  k: {type: Motor, forward: 17, backward: 11}
  l: {type: PWMLED, pin: 99, frequency: 0}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    problems = info.value.problems
    assert problems[0] == "line 3: devices.b.pull_up: expected true or false (got 'maybe')"
    assert problems[1].startswith("line 4: devices.c.type: unknown type 'Lamp'; known: ")
    assert problems[2:] == [
        "line 5: devices.d: min_angle and max_angle must differ",
        "line 6: devices.e.backward: required key missing",
        "line 7: devices.f: MCP3004 has 4 channel(s): channel must be < 4",
        "line 9: devices.j.pin: GPIO8 is already used by g.device",
        "line 10: devices.k.forward: GPIO17 is already used by a.pin",
        "line 10: devices.k.backward: GPIO11 is already used by g.port",
        "line 11: devices.l.pin: must be <= 53 (got 99)",
        "line 11: devices.l.frequency: must be > 0 (got 0)",
    ]


def test_two_adcs_share_the_spi_bus() -> None:
    cfg = parse_config("devices:\n  a: {type: MCP3008}\n  b: {type: MCP3208, device: 1}\n")
    assert set(cfg.devices) == {"a", "b"}


def test_semantic_checks() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("auth: {allow_anonymous: true, anonymous_role: nobody}\n")
    assert "auth.anonymous_role: 'nobody' is not a role" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_config("node_id: a/b\n")
    assert "node_id: must not contain '/'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_config("broker:\n  listeners:\n    - {type: tcp, port: 1}\n    - {type: websocket, port: 1}\n")
    assert "two listeners on 0.0.0.0:1" in str(info.value)


def test_yaml_errors_and_duplicates() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("a: [1,\n")
    assert "not valid YAML" in info.value.problems[0]
    with pytest.raises(ConfigError) as info:
        parse_config("node_id: a\nnode_id: b\n")
    assert info.value.problems == ["line 2: node_id: key given twice"]
    with pytest.raises(ConfigError) as info:
        parse_config("- 1\n")
    assert "must be a mapping" in info.value.problems[0]


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pi_mqtt_gpio.server.main", *args],
                          capture_output=True, text=True, input=stdin, timeout=30)


def test_cli_check_config(tmp_path: Path) -> None:
    quiet = tmp_path / "quiet.yaml"
    quiet.write_text("node_id: x\nbroker: {listeners: [{type: tcp, host: 127.0.0.1, port: 0}]}\n")
    ok = _cli("check-config", "--config", str(quiet))
    assert ok.returncode == 0 and ok.stdout.strip() == "ok", ok.stderr
    demo = _cli("check-config", "--config", str(ROOT / "deploy" / "demo.yaml"))
    assert demo.returncode == 0 and "the pins are simulated" in demo.stderr
    open_broker = _cli("check-config", "--config", str(ROOT / "deploy" / "broker-only.yaml"))
    assert open_broker.returncode == 0 and open_broker.stdout.strip() == "ok (1 warnings)"
    assert "anonymous clients (role 'everyone') may publish #" in open_broker.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("node_id: x\nbroker: {mode: cloud}\n")
    res = _cli("check-config", "--config", str(bad))
    assert res.returncode == 2
    assert "line 2: broker.mode: expected one of 'embedded', 'external' (got 'cloud')" in res.stderr
    missing = _cli("check-config", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_cli_hash_password() -> None:
    from pi_mqtt_gpio.server.security import verify_password

    res = _cli("hash-password", "--stdin", stdin="hunter2\n")
    assert res.returncode == 0
    digest = res.stdout.strip()
    assert digest.startswith("$argon2id$")
    assert verify_password(digest, b"hunter2") and not verify_password(digest, b"x")
    assert _cli("hash-password", "--stdin", stdin="\n").returncode == 1
