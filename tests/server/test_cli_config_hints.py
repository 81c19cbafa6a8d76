"""Config errors a user can act on: the closest key, device type or role is suggested; pins
may be written as gpiozero names them (GPIO22, BCM22, BOARD15, J8:15); a header pin that is
no GPIO is refused, a GPIO that only a Compute Module has is warned about."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pi_mqtt_gpio.server import daemon
from pi_mqtt_gpio.server.config_loader import ConfigError, load_config

SERVER = [sys.executable, "-m", "pi_mqtt_gpio.server.main"]


def _problems(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    return str(info.value)


def test_the_closest_key_type_and_role_are_suggested(tmp_path: Path) -> None:
    text = _problems(tmp_path, "node_id: x\n"
                               "auth: {allow_anonymous: true, anonymous_role: viewr}\n"
                               "devices:\n"
                               "  bell: {type: Button, pin: 17, bouce_time: 0.1}\n"
                               "  lamp: {type: LDE, pin: 18}\n")
    assert "devices.bell.bouce_time: unknown key; did you mean 'bounce_time'?" in text
    assert "devices.lamp.type: unknown type 'LDE' (did you mean 'LED'?); known: " in text
    assert "auth.anonymous_role: 'viewr' is not a role; did you mean 'viewer'?" in text
    far = _problems(tmp_path, "node_id: x\nzzzzqqq: 1\ndevices: {}\n")
    assert "zzzzqqq: unknown key" in far and "did you mean" not in far


def test_gpiozero_pin_names(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("node_id: x\ndevices:\n"
                    "  a: {type: LED, pin: GPIO22}\n"
                    "  b: {type: LED, pin: BCM23}\n"
                    "  c: {type: Button, pin: BOARD11}\n"
                    "  d: {type: LED, pin: 'J8:13'}\n"
                    "  e: {type: LED, pin: 'io1:3'}\n"
                    "expanders: {io1: {type: MCP23017, address: 0x20}}\n")
    config = load_config(str(path))
    pins = {name: dev.pin for name, dev in config.devices.items()}
    assert pins == {"a": 22, "b": 23, "c": 17, "d": 27, "e": "io1:3"}
    text = _problems(tmp_path, "node_id: x\ndevices:\n  a: {type: LED, pin: BOARD6}\n"
                               "  b: {type: LED, pin: BOARD41}\n")
    assert "devices.a.pin: header pin 6 is a ground pin, not a GPIO (got 'BOARD6')" in text
    assert "devices.b.pin: the header has pins 1 to 40 (got 'BOARD41')" in text


def test_a_gpio_off_the_header_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("node_id: x\ndevices:\n  a: {type: LED, pin: 40}\n")
    res = subprocess.run([*SERVER, "check-config", "--config", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0
    assert ("warning: devices.a.pin: GPIO40 is not on the 40-pin header (GPIO0 to GPIO27): "
            "only a Compute Module has it") in res.stderr
    simulated = subprocess.run([*SERVER, "--simulate", "check-config", "--config", str(path)],
                               capture_output=True, text=True, timeout=60)
    assert simulated.returncode == 0 and "40-pin header" not in simulated.stderr


def _fake(anonymous: bool, bound: list[tuple[str, str, int]]) -> Any:
    from pi_mqtt_gpio.topics import Topics

    return SimpleNamespace(server=SimpleNamespace(bound=bound), topics=Topics("gatekeeper", "n"),
                           hw=SimpleNamespace(adapters={"lamp": None}),
                           config=SimpleNamespace(auth=SimpleNamespace(
                               allow_anonymous=anonymous)))


def test_the_ready_hint_gives_credentials_and_the_dashboard(
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    daemon._hint(_fake(False, [("tcp", "0.0.0.0", 1883), ("websocket", "0.0.0.0", 9001)]))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("try: mosquitto_sub -h 127.0.0.1 -p 1883 -u <user> -P "
                               "<password> -t 'gatekeeper/n/#' -v")
    assert "mosquitto_rr -h 127.0.0.1 -p 1883 -u <user> -P <password> -i me" in lines[0]
    assert lines[1] == "dashboard: http://127.0.0.1:9001/"
    out.truncate(0)
    out.seek(0)
    daemon._hint(_fake(True, [("tcp", "127.0.0.1", 1883),
                              ("websocket+tls", "127.0.0.1", 9443)]))
    lines = out.getvalue().splitlines()
    assert "-u " not in lines[0] and lines[1] == "dashboard: https://127.0.0.1:9443/"
