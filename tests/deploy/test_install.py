"""scripts/install into a staging tree: the layout, runtime dependencies only, the installed
program checks and serves a config, a second run changes nothing, uninstall and purge, an
upgrade built beside the running venv (a failed one changes nothing, a change to package data
alone is installed), udev re-applied on install, uninstall and purge; the wheel's metadata
keeps development tools in an extra."""

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
DEV_TOOLS = {"pytest", "mypy", "ruff", "hypothesis", "mqtt5", "pytest-timeout", "types-pyyaml",
             "build", "pytest-xdist"}
# Installs with pip: about a minute each on a quiet machine, several on a loaded one.
pytestmark = pytest.mark.timeout(900)


def _install(stage: Path, *args: str, src: Path = ROOT) -> subprocess.CompletedProcess[str]:
    res = _run_install(src, stage, *args)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _source_copy(dest: Path) -> Path:
    """The parts of the repository the installer reads, copied so that a test can change them."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for part in ("src", "deploy", "docs", "scripts"):
        shutil.copytree(ROOT / part, dest / part, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def _run_install(src: Path, stage: Path, *args: str, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installer as a root login might run it: umask 000 (it must set its own)."""
    return subprocess.run(["bash", str(src / "scripts/install"), "--root", str(stage), *args],
                          capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={**os.environ, **(env or {})}, preexec_fn=lambda: os.umask(0))


def _snapshot(stage: Path) -> list[tuple[str, int, int, float, str]]:
    out = []
    for path in sorted(stage.rglob("*")):
        st = path.lstat()
        out.append((str(path), st.st_mode, st.st_size, st.st_mtime,
                    os.readlink(path) if path.is_symlink() else ""))
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the sources: the working tree may change while the tests run."""
    return _source_copy(tmp_path_factory.mktemp("src"))


def _planted(where: Path, marker: Path) -> Path:
    """A directory whose modules, if Python imported them, would write ``marker``."""
    for name in ("venv/__init__.py", "venv/__main__.py", "pip/__init__.py", "pip/__main__.py",
                 "gpiozero.py"):
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_text(f"open({str(marker)!r}, 'w').write({name!r})\n")
    return where


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Iterator[Path]:
    stage = tmp_path_factory.mktemp("stage")
    cwd = _planted(tmp_path_factory.mktemp("cwd"), stage.parent / "imported")
    res = _run_install(source, stage, cwd=cwd)
    assert res.returncode == 0, res.stderr[-3000:]
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
    listed = subprocess.run(
        [str(venv / "bin/python"), "-I", "-c",
         "import importlib.metadata as m; print(*(d.name for d in m.distributions()))"],
        capture_output=True, text=True, check=True).stdout
    names = {name.lower().replace("_", "-") for name in listed.split()}
    assert not names & DEV_TOOLS, names & DEV_TOOLS
    assert {"gpiozero", "paho-mqtt", "argon2-cffi", "pi-mqtt-gatekeeper"} <= names
    # pip ran from Python's own wheel of it, and setuptools was removed: neither is installed
    assert not names & {"pip", "setuptools"}, names
    size = subprocess.run(["du", "-sm", str(venv)], capture_output=True, text=True).stdout
    print(f"installed venv: {size.split()[0]} MiB")
    version = subprocess.run([str(stage / "usr/local/bin/pi-mqtt-gatekeeper"), "--version"],
                             capture_output=True, text=True)
    assert version.returncode == 0 and "pi-mqtt-gatekeeper" in version.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_nothing_installed_is_writable_by_group_or_others(stage: Path) -> None:
    """Installed under umask 000 (see _run_install): the installer sets its own."""
    loose = [str(p.relative_to(stage)) for p in stage.rglob("*")
             if not p.is_symlink() and p.lstat().st_mode & 0o022]
    assert loose == []


def test_a_symlink_in_the_checkout_is_refused(tmp_path: Path) -> None:
    """A link could make a root-only file part of the install (docs/x.md -> /etc/shadow)."""
    src = _source_copy(tmp_path / "src")
    (src / "docs" / "x.md").symlink_to("/etc/hostname")
    res = _run_install(src, tmp_path / "stage")
    assert res.returncode == 1
    assert "refusing to install from a checkout with symbolic links: docs/x.md" in res.stderr
    assert not (tmp_path / "stage" / "opt").exists()


def test_python_runs_isolated_from_the_callers_directory(stage: Path) -> None:
    """The stage was installed from a directory holding modules named venv, pip, gpiozero
    (``_planted``): none of them was imported (as root, they would run as root)."""
    marker = stage.parent / "imported"
    assert not marker.exists(), marker.read_text()


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


def test_second_run_changes_nothing(stage: Path, source: Path) -> None:
    before = _snapshot(stage)
    res = _install(stage, src=source)
    assert "is current" in res.stdout
    assert _snapshot(stage) == before


def test_config_is_never_overwritten_and_uninstall_keeps_it(tmp_path: Path,
                                                           source: Path) -> None:
    stage = tmp_path / "s"
    _install(stage, src=source)
    config = stage / "etc/pi-mqtt-gatekeeper/config.yaml"
    config.write_text("# mine\n")
    _install(stage, src=source)
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


def test_upgrade_is_built_beside_and_a_failed_one_changes_nothing(tmp_path: Path) -> None:
    src = _source_copy(tmp_path / "src")
    stage = tmp_path / "stage"
    assert _run_install(src, stage).returncode == 0
    opt = stage / "opt/pi-mqtt-gatekeeper"
    first = os.readlink(opt / "venv")
    assert first.startswith("venv-") and (opt / first / "bin/pi-mqtt-gatekeeper").exists()
    # A change to the dashboard's files alone is a new version: installed, not "current".
    static = Path("pi_mqtt_gpio/server/web/static/style.css")
    css = src / "src" / static
    css.write_text(css.read_text() + "\n/* upgraded */\n")
    res = _run_install(src, stage)
    assert res.returncode == 0 and "is current" not in res.stdout, res.stdout
    second = os.readlink(opt / "venv")
    assert second != first and (opt / first).is_dir(), "the previous venv is kept"
    site = next((opt / second / "lib").glob("python3*/site-packages"))
    assert (site / static).read_text().endswith("/* upgraded */\n")
    gk = stage / "usr/local/bin/pi-mqtt-gatekeeper"
    # A build that fails (here: a broken pyproject.toml) leaves the running venv in place.
    (src / "pyproject.toml").write_text((src / "pyproject.toml").read_text() + "\n[[[\n")
    res = _run_install(src, stage)
    assert res.returncode != 0 and "nothing was changed" in res.stderr, res.stderr[-2000:]
    assert os.readlink(opt / "venv") == second
    assert sorted(p.name for p in opt.iterdir()) == sorted(["venv", first, second])
    version = subprocess.run([str(gk), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    # Only the one in use and the one before it are kept.
    (src / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    css.write_text(css.read_text() + "/* again */\n")
    assert _run_install(src, stage).returncode == 0
    third = os.readlink(opt / "venv")
    assert sorted(p.name for p in opt.iterdir()) == sorted(["venv", second, third])


def test_udev_rules_are_reapplied_on_install_uninstall_and_purge(tmp_path: Path,
                                                                 source: Path) -> None:
    """Without a reload and a trigger the chips keep the gatekeeper's owner after uninstall
    (and a dangling UID after purge) until a reboot; /dev/gpiomem* never get the rule."""
    log = tmp_path / "udevadm.log"
    fake = tmp_path / "udevadm"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    dev = tmp_path / "dev"
    dev.mkdir()
    chip = dev / "gpiochip0"
    chip.touch()
    env = {"PI_MQTT_INSTALL_UDEVADM": str(fake), "PI_MQTT_INSTALL_DEV": str(dev)}
    stage = tmp_path / "stage"
    triggers = ["control --reload", "trigger --subsystem-match=gpio --action=change",
                "trigger --sysname-match=gpiomem* --action=change"]
    for action in ((), ("--uninstall",), ("--purge",)):
        if os.geteuid() == 0:  # as the rule left it: owned by a user that is gone
            os.chown(chip, 54321, 54321)
            chip.chmod(0o600)
        log.write_text("")
        res = _run_install(source, stage, *action, env=env)
        assert res.returncode == 0, res.stderr[-2000:]
        calls = log.read_text().splitlines()
        for call in triggers:
            assert call in calls, (action, calls)
        assert calls.index("control --reload") < calls.index(triggers[1]), calls
        if os.geteuid() == 0 and action:
            st = chip.stat()
            gpio = subprocess.run(["getent", "group", "gpio"], capture_output=True, text=True)
            gid = int(gpio.stdout.split(":")[2]) if gpio.returncode == 0 else 0
            assert (st.st_uid, st.st_gid) == (0, gid), action
            assert st.st_mode & 0o777 == (0o660 if gid else 0o600), oct(st.st_mode)


def test_config_directory_mode_agrees_with_the_unit(stage: Path) -> None:
    """systemd warns at every start when ConfigurationDirectory= exists with another mode."""
    unit = (ROOT / "deploy/pi-mqtt-gatekeeper.service").read_text()
    modes = re.findall(r"^ConfigurationDirectoryMode=(\d+)$", unit, re.M)
    assert modes == ["0750"], modes
    assert (stage / "etc/pi-mqtt-gatekeeper").stat().st_mode & 0o777 == 0o750


def test_docs_say_who_can_list_the_lines() -> None:
    text = (ROOT / "docs/install.md").read_text()
    assert "sudo gpioinfo" in text
    assert not re.search(r"(?<!sudo )`gpioinfo` shows", text)
