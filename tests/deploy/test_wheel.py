"""The wheel (python -m build): it holds the package data, and installed into a fresh venv it
gives the client library and the pi-mqtt-gpio command."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Builds and installs with pip: half a minute on a quiet machine, several on a loaded one.
pytestmark = pytest.mark.timeout(900)


def test_wheel_installs_into_a_fresh_venv_with_the_client(tmp_path: Path) -> None:
    # From a clean copy: no build/ left over from earlier builds, no edits made meanwhile.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    dist = tmp_path / "dist"
    res = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist),
                          str(src)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    wheel = next(dist.glob("pi_mqtt_gatekeeper-*-py3-none-any.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert "pi_mqtt_gpio/py.typed" in names
    assert "pi_mqtt_gpio/server/web/static/index.html" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # The dependencies as a user gets them (pip's cache, else PyPI), as scripts/install does.
    res = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet",
                          "--disable-pip-version-check", str(wheel)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    cli = subprocess.run([str(venv / "bin/pi-mqtt-gpio"), "--help"], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert cli.returncode == 0 and "usage: pi-mqtt-gpio" in cli.stdout, cli.stderr
    imp = subprocess.run([str(venv / "bin/python"), "-c",
                          "import pi_mqtt_gpio.client as c; print(c.Gatekeeper.__name__, c.__file__)"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert imp.returncode == 0, imp.stderr
    name, path = imp.stdout.split()
    assert name == "Gatekeeper" and path.startswith(str(venv)), path
