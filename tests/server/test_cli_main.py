"""``pi-mqtt-gatekeeper`` and ``pi-mqtt-gpio`` as a user meets them: ``--config`` before or
after the subcommand, help without internal names, a closed pipe (``| head``) and Ctrl-C at
a prompt end without a traceback."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SERVER = [sys.executable, "-m", "pi_mqtt_gpio.server.main"]
CLIENT = [sys.executable, "-m", "pi_mqtt_gpio.client.cli"]
CONFIG = "node_id: cli\ndevices:\n  porch_light: {type: LED, pin: 17}\n"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


def test_config_before_or_after_the_subcommand(config: Path) -> None:
    for argv in (["--config", str(config), "check-config"],
                 ["check-config", "--config", str(config)]):
        res = _run(*SERVER, *argv)
        assert (res.returncode, res.stdout.strip()) == (0, "ok"), res.stderr
    for argv in (["--config", str(config), "asyncapi"], ["asyncapi", "--config", str(config)]):
        res = _run(*SERVER, *argv)
        assert res.returncode == 0 and '"asyncapi": "3.0.0"' in res.stdout, res.stderr
    missing = _run(*SERVER, "check-config")
    assert missing.returncode == 2 and "check-config --config FILE" in missing.stderr


# An argparse dest shown as a metavar: upper case with an underscore (CHECK_CONFIG, LEASE_ID),
# or a bare internal name; the environment variables (PI_MQTT_HOST) are meant.
INTERNAL = re.compile(r"\b(?!PI_MQTT_)[A-Z]+_[A-Z_]+\b|\b(HOLD|OLD|STDIN)\b(?!\.)")


@pytest.mark.parametrize("argv", [
    [*SERVER, "--help"], *([*SERVER, c, "--help"] for c in (
        "check-config", "hash-password", "passwd", "gpio-owners", "asyncapi",
        "import-mqtt-io")),
    [*CLIENT, "--help"], *([*CLIENT, c, "--help"] for c in ("devices", "call", "watch",
                                                            "nodes", "lease"))])
def test_help_shows_no_internal_names(argv: list[str]) -> None:
    res = _run(*argv)
    assert res.returncode == 0
    assert INTERNAL.search(res.stdout) is None, res.stdout


def test_a_closed_pipe_ends_quietly(config: Path) -> None:
    """``asyncapi | head -1``: the reader is gone before the document is written."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([*SERVER, "--config", str(config), "asyncapi"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert proc.returncode == 141  # as a shell shows a command whose reader went away
    assert proc.stderr == ""


@pytest.mark.parametrize("argv", [[*SERVER, "hash-password"],
                                  [*SERVER, "passwd", "USERS", "alice"]])
def test_ctrl_c_at_the_password_prompt(tmp_path: Path, argv: list[str]) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal
        os.chdir(tmp_path)
        # As in a terminal's shell: a suite started in the background (``./scripts/test &``)
        # hands its children SIGINT ignored.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execv(sys.executable, argv)
    out = b""
    end = time.monotonic() + 30
    try:
        while b"Password:" not in out:
            assert time.monotonic() < end, out
            if select.select([fd], [], [], 0.5)[0]:
                out += os.read(fd, 1024)
        os.write(fd, b"\x03")  # Ctrl-C: the terminal sends SIGINT
        while True:
            try:
                ready = select.select([fd], [], [], 10)[0]
                chunk = os.read(fd, 1024) if ready else b""
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 130, out
    assert b"Traceback" not in out and b"KeyboardInterrupt" not in out, out
    assert not (tmp_path / "USERS").exists()


def test_the_daemon_runs_with_a_short_switch_interval(config: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The hardware worker thread gets the interpreter lock within 0.5 ms of asking while
    the event loop is busy (Python's default would make a command wait up to 5 ms); a
    config check leaves the interval alone."""
    from pi_mqtt_gpio.server import main as cli

    seen: list[float] = []

    def fake_run_loop(coro: object) -> int:
        seen.append(sys.getswitchinterval())
        coro.close()  # type: ignore[attr-defined]
        return 0

    monkeypatch.setattr(cli, "_run_loop", fake_run_loop)
    before = sys.getswitchinterval()
    try:
        assert cli._check_and_run(str(config), checking=True, simulate=True) == 0
        assert seen == [] and sys.getswitchinterval() == before
        assert cli._check_and_run(str(config), checking=False, simulate=True) == 0
        assert seen == [pytest.approx(cli.SWITCH_INTERVAL_S)]
        assert cli.SWITCH_INTERVAL_S <= 0.001
    finally:
        sys.setswitchinterval(before)
