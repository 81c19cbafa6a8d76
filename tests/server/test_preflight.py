"""No setting is accepted and ignored; check-config refuses what the daemon would refuse at
start (with file and line), and warns about risky but legal settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cheap_hash

H = cheap_hash("pw")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pi_mqtt_gpio.server.main", *args],
                          capture_output=True, text=True, timeout=30)


def _both(path: Path) -> list[subprocess.CompletedProcess[str]]:
    """check-config, and a start (which must refuse before it listens)."""
    return [_cli("check-config", "--config", str(path)),
            _cli("--config", str(path), "--simulate")]


BASE = "node_id: x\nbroker: {listeners: [{type: tcp, host: 127.0.0.1, port: 0}]}\n"


@pytest.mark.parametrize(("extra", "message"), [
    ("interlocks: [[a, b]]\n", "line 3: interlocks[0][0]: no device named 'a'"),
    ("devices: {p: {type: OutputDevice, pin: 5}, b: {type: Button, pin: 6}}\n"
     "interlocks: [[p, b]]\n",
     "interlocks[0][1]: 'b' is a Button, which cannot be switched on"),
    ("devices: {p: {type: OutputDevice, pin: 5}}\ninterlocks: [[p]]\n",
     "interlocks[0]: an interlock group needs two devices or more"),
    ("devices: {p: {type: OutputDevice, pin: 5, safety: {flap_max_edges: 0}}}\n",
     "devices.p.safety.flap_max_edges"),
    ("homeassistant: {prefix: 'ha/#'}\n", "line 3: homeassistant.prefix: must be non-empty"),
    ("persistence: {path: /nonexistent-dir/x.json}\n",
     "persistence.path: the directory /nonexistent-dir does not exist"),
    ("devices: {b: {type: Button, pin: 6, restore: true}}\n",
     "devices.b.restore: a Button has no value to restore"),
    ("auth: {users: {bob: {password_hash: 'h', role: operater}}}\n",
     "line 3: auth.users.bob.role: 'operater' is not a role"),
    ("auth: {roles: {r: {subscribe: ['a/#/b']}}}\n",
     "auth.roles.r.subscribe[0]: 'a/#/b' is not a valid MQTT topic filter"),
    ("auth: {roles: {r: {rights: [fly]}}}\n", "auth.roles.r.rights[0]"),
])
def test_refused_with_its_line(tmp_path: Path, extra: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(BASE + extra)
    for res in _both(path):
        assert res.returncode == 2, res.stderr
        assert message in res.stderr, res.stderr


@pytest.mark.parametrize(("broker", "message"), [
    ("  mode: external\n", "broker: mode external needs an 'external' section"),
    ("  mode: external\n  external: {port: 1883}\n", "give host (and port) or hosts"),
    ("  mode: external\n  external: {hosts: [a, 'b:x']}\n", "hosts: 'a' is not host:port"),
])
def test_external_broker_config_problems(tmp_path: Path, broker: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("node_id: x\nbroker:\n" + broker)
    for res in _both(path):
        assert res.returncode == 2 and message in res.stderr, res.stderr


def test_users_file_role_typo_names_file_and_line(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text(f"# comment\nann:{H}:operator\nbob:{H}:operater\n")
    path = tmp_path / "c.yaml"
    path.write_text(BASE + f"auth: {{users_file: {users}}}\n")
    for res in _both(path):
        assert res.returncode == 2
        assert f"{users}:3: user 'bob': 'operater' is not a role" in res.stderr, res.stderr


@pytest.mark.parametrize(("listener", "message"), [
    ("{type: tls, host: 127.0.0.1, port: 0, certfile: /nope.pem, keyfile: /nope.key}",
     "certfile: no such file: /nope.pem"),
    ("{type: tcp, host: 'no such host.invalid', port: 0}", "cannot listen on"),
])
def test_bad_listeners_refused(tmp_path: Path, listener: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"node_id: x\nbroker: {{listeners: [{listener}]}}\n")
    for res in _both(path):
        assert res.returncode == 2 and message in res.stderr, res.stderr


def test_unreadable_users_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(BASE + f"auth: {{users_file: {tmp_path / 'missing'}}}\n")
    for res in _both(path):
        assert res.returncode == 2 and "cannot read" in res.stderr


@pytest.mark.parametrize(("config", "warning"), [
    ("node_id: x\nbroker: {listeners: [{type: tcp, host: 0.0.0.0, port: 0}]}\n"
     "auth: {allow_anonymous: true, anonymous_role: operator}\n",
     "anonymous clients (role 'operator') may publish"),
    ("node_id: x\nbroker: {listeners: [{type: tcp, host: 0.0.0.0, port: 0}]}\n"
     f"auth: {{users: {{a: {{password_hash: '{H}', role: admin}}}}}}\n",
     "passwords travel in clear text on tcp 0.0.0.0:0"),
    (BASE + "hardware: {pin_factory: mock}\n", "the pins are simulated"),
    (BASE + "safety: {min_relay_interval_s: 0, min_command_interval_s: 0, flap_lockout_s: 0}\n"
     "devices: {pump: {type: OutputDevice, pin: 5}}\n",
     "devices.pump: a relay-like output with every safety guard off"),
    (BASE + "devices: {screen: {type: Cover, up: 5, down: 6}}\n",
     "devices.screen: a Cover without persistence (persistence.path)"),
    (BASE + "safety: {min_relay_interval_s: 0, min_command_interval_s: 0, flap_lockout_s: 0}\n"
     "persistence: {path: /tmp/pi-mqtt-preflight-test-state.json}\n"
     "devices: {screen: {type: Cover, up: 5, down: 6}}\n",
     "devices.screen: a relay-like output with every safety guard off"),
    (BASE + "devices: {lamp: {type: LED, pin: 5, initial_value: true}}\n",
     "devices.lamp: initial_value: True has no effect: outputs start in their safe state"),
    (BASE + "devices: {arm: {type: Servo, pin: 5, initial_value: 0.5}}\n",
     "devices.arm: initial_value: 0.5 has no effect"),
    (BASE + "devices: {arm: {type: AngularServo, pin: 5, initial_angle: 30}}\n",
     "devices.arm: initial_angle: 30 has no effect"),
])
def test_risky_settings_warn(tmp_path: Path, config: str, warning: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(config)
    res = _cli("check-config", "--config", str(path))
    assert (res.returncode == 0 and "warning: " + warning in res.stderr.replace("\n", " ")) \
        or warning in res.stderr, res.stderr
    assert res.stdout.startswith("ok (1 warnings)")


@pytest.mark.parametrize("device", [
    "{type: LED, pin: 5, initial_value: true, safe_state: 'on'}",
    "{type: LED, pin: 5, initial_value: false}",
    "{type: OutputDevice, pin: 5, safe_state: 'on'}",
    "{type: Servo, pin: 5, safe_state: mid, initial_value: 0}",
    "{type: AngularServo, pin: 5, safe_state: max, max_angle: 60, initial_angle: 60}",
])
def test_a_start_value_that_agrees_with_the_safe_state_is_quiet(tmp_path: Path,
                                                                 device: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(BASE + f"devices: {{x: {device}}}\n")
    res = _cli("check-config", "--config", str(path))
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_loopback_anonymous_reader_is_quiet(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(BASE + "auth: {allow_anonymous: true, anonymous_role: viewer}\n")
    res = _cli("check-config", "--config", str(path))
    assert res.returncode == 0 and res.stdout.strip() == "ok" and res.stderr == ""


def test_version_on_both_clis() -> None:
    for module in ("pi_mqtt_gpio.server.main", "pi_mqtt_gpio.client.cli"):
        res = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True,
                             text=True, timeout=30)
        assert res.returncode == 0 and res.stdout.split()[-1][0].isdigit(), res


def test_hash_password_reads_a_pipe_without_a_traceback() -> None:
    res = subprocess.run([sys.executable, "-m", "pi_mqtt_gpio.server.main", "hash-password"],
                         input="s3cret\n", capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and res.stdout.startswith("$argon2id$"), res.stderr
    assert "Traceback" not in res.stderr
