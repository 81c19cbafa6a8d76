"""scripts/install into a staging tree: the layout, runtime dependencies only, the installed
program checks and serves a config, a second run changes nothing, uninstall and purge; the
wheel's metadata keeps development tools in an extra."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml

from tests.conftest import READY, Client

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "scripts" / "install"
DEV_TOOLS = {"pytest", "mypy", "ruff", "hypothesis", "mqtt5", "pytest-timeout", "types-pyyaml"}


def _install(stage: Path, *args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["bash", str(INSTALL), "--root", str(stage), *args],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _snapshot(stage: Path) -> list[tuple[str, int, int, float, str]]:
    out = []
    for path in sorted(stage.rglob("*")):
        st = path.lstat()
        out.append((str(path), st.st_mode, st.st_size, st.st_mtime,
                    os.readlink(path) if path.is_symlink() else ""))
    return out


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    stage = tmp_path_factory.mktemp("stage")
    _install(stage)
    yield stage


def test_layout_and_runtime_dependencies_only(stage: Path) -> None:
    for rel in ("opt/pi-mqtt-gatekeeper/venv/bin/pi-mqtt-gatekeeper",
                "etc/pi-mqtt-gatekeeper/config.yaml", "etc/pi-mqtt-gatekeeper/users",
                "etc/systemd/system/pi-mqtt-gatekeeper.service",
                "etc/udev/rules.d/99-pi-mqtt-gatekeeper-gpio.rules",
                "usr/share/doc/pi-mqtt-gatekeeper/security.md", "var/lib/pi-mqtt-gatekeeper"):
        assert (stage / rel).exists(), rel
    for cli in ("pi-mqtt-gatekeeper", "pi-mqtt-gpio"):
        link = stage / "usr/local/bin" / cli
        assert link.is_symlink() and Path(os.readlink(link)).exists()
    assert (stage / "etc/pi-mqtt-gatekeeper/config.yaml").read_text() == \
        (ROOT / "deploy/gatekeeper.yaml").read_text()
    venv = stage / "opt/pi-mqtt-gatekeeper/venv"
    listed = subprocess.run([str(venv / "bin/python"), "-m", "pip", "list", "--format=freeze"],
                            capture_output=True, text=True, check=True).stdout
    names = {line.split("==")[0].lower() for line in listed.splitlines()}
    assert not names & DEV_TOOLS, names & DEV_TOOLS
    assert {"gpiozero", "paho-mqtt", "argon2-cffi", "pi-mqtt-gatekeeper"} <= names
    size = subprocess.run(["du", "-sm", str(venv)], capture_output=True, text=True).stdout
    print(f"installed venv: {size.split()[0]} MiB")
    version = subprocess.run([str(stage / "usr/local/bin/pi-mqtt-gatekeeper"), "--version"],
                             capture_output=True, text=True)
    assert version.returncode == 0 and "pi-mqtt-gatekeeper" in version.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_verifies(stage: Path) -> None:
    res = subprocess.run(["systemd-analyze", "verify",
                          str(stage / "etc/systemd/system/pi-mqtt-gatekeeper.service")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_installed_program_checks_and_serves_its_config(stage: Path, tmp_path: Path) -> None:
    config = yaml.safe_load((stage / "etc/pi-mqtt-gatekeeper/config.yaml").read_text())
    config["auth"]["users_file"] = str(stage / "etc/pi-mqtt-gatekeeper/users")
    config["persistence"]["path"] = str(stage / "var/lib/pi-mqtt-gatekeeper/state.json")
    config["broker"]["listeners"] = [{"type": "tcp", "host": "127.0.0.1", "port": 0}]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    gk = str(stage / "usr/local/bin/pi-mqtt-gatekeeper")
    check = subprocess.run([gk, "check-config", "--config", str(path)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0 and check.stdout.strip() == "ok", check.stderr
    subprocess.run([gk, "passwd", str(stage / "etc/pi-mqtt-gatekeeper/users"), "alice",
                    "--role", "operator"], input="pw\n", text=True, check=True, timeout=60)
    proc = subprocess.Popen([gk, "--config", str(path), "--simulate"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        port = 0
        for line in proc.stdout:
            m = READY.search(line)
            if m:
                port = int(re.findall(r":(\d+)", m.group(2))[0])
                break
        assert port
        c = Client(port, mqtt.MQTTv5)
        c.c.username_pw_set("alice", "pw")
        rc, _ = c.connect()
        assert int(getattr(rc, "value", rc)) == 0
        c.subscribe("gatekeeper/living-room/status", 1)
        assert c.get(5).payload == b"online"
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_second_run_changes_nothing(stage: Path) -> None:
    before = _snapshot(stage)
    res = _install(stage)
    assert "is current" in res.stdout
    assert _snapshot(stage) == before


def test_config_is_never_overwritten_and_uninstall_keeps_it(tmp_path: Path) -> None:
    stage = tmp_path / "s"
    _install(stage)
    config = stage / "etc/pi-mqtt-gatekeeper/config.yaml"
    config.write_text("# mine\n")
    _install(stage)
    assert config.read_text() == "# mine\n"
    _install(stage, "--uninstall")
    assert config.exists() and (stage / "var/lib/pi-mqtt-gatekeeper").exists()
    assert not (stage / "opt/pi-mqtt-gatekeeper").exists()
    assert not (stage / "usr/local/bin/pi-mqtt-gatekeeper").is_symlink()
    assert not (stage / "etc/systemd/system/pi-mqtt-gatekeeper.service").exists()
    _install(stage, "--purge")
    assert not config.exists() and not (stage / "var/lib/pi-mqtt-gatekeeper").exists()


def test_wheel_keeps_development_tools_in_an_extra(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w",
                    str(tmp_path), str(ROOT)], check=True, timeout=300, capture_output=True)
    wheel = next(tmp_path.glob("pi_mqtt_gatekeeper-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith("METADATA"))
        text = z.read(meta).decode()
        entry = next(n for n in z.namelist() if n.endswith("entry_points.txt"))
        scripts = z.read(entry).decode()
    requires = [line for line in text.splitlines() if line.startswith("Requires-Dist:")]
    for line in requires:
        name = re.split(r"[ ;<>=\[]", line.split(":", 1)[1].strip())[0].lower()
        if name in DEV_TOOLS:
            assert 'extra == "dev"' in line, line
    assert "pi-mqtt-gatekeeper = pi_mqtt_gpio.server.main:main" in scripts
    assert "pi-mqtt-gpio = pi_mqtt_gpio.client.cli:main" in scripts
