"""``pi-mqtt-gpio``'s password without ``--password`` on the command line (where every user
sees it in the process list): from stdin, a file, the environment or a prompt on a terminal;
``--password`` still works; two ways at once are refused."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Gatekeeper as Daemon
from tests.conftest import broker_config, cheap_hash, start_gatekeeper, wait_for

PASSWORD = "correct horse"
CLI = [sys.executable, "-m", "pi_mqtt_gpio.client.cli"]


@pytest.fixture(scope="module")
def gk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    cfg = broker_config(node_id="pw", devices={"porch_light": {"type": "LED", "pin": 17}},
                        auth={"allow_anonymous": False, "roles": {}, "users": {
                            "alice": {"password_hash": cheap_hash(PASSWORD),
                                      "role": "operator"}}})
    daemon = start_gatekeeper(tmp_path_factory.mktemp("pw"), cfg)
    yield daemon
    assert daemon.stop() == 0


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PI_MQTT_")}
    return {**env, **extra}


def _cli(gk: Daemon, *args: str, stdin: str = "", env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "--host", "127.0.0.1", "--port", str(gk.port), "--node", "pw",
                           "--user", "alice", *args, "devices"], input=stdin,
                          capture_output=True, text=True, timeout=30,
                          env=env if env is not None else _env())


def test_password_from_stdin_a_file_the_environment_and_the_old_flag(
        gk: Daemon, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    for res in (_cli(gk, "--password-stdin", stdin=PASSWORD + "\n"),
                _cli(gk, "--password-file", str(secret)),
                _cli(gk, env=_env(PI_MQTT_PASSWORD=PASSWORD)),
                _cli(gk, "--password", PASSWORD)):  # still works, for old scripts
        assert res.returncode == 0 and "porch_light" in res.stdout, res.stderr
    wrong = _cli(gk, "--password-stdin", stdin="wrong\n")
    assert wrong.returncode == 2 and "porch_light" not in wrong.stdout


def test_two_ways_at_once_are_refused(gk: Daemon, tmp_path: Path) -> None:
    res = _cli(gk, "--password", PASSWORD, "--password-stdin", stdin=PASSWORD + "\n")
    assert res.returncode == 2
    assert "give the password one way, not with --password and --password-stdin" in res.stderr
    missing = _cli(gk, "--password-file", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "nope" in missing.stderr


def test_a_terminal_gets_a_prompt(gk: Daemon) -> None:
    """On a terminal, with a user name and no password given: asked for it, not echoed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal
        os.execve(sys.executable, [*CLI, "--host", "127.0.0.1", "--port", str(gk.port),
                                   "--node", "pw", "--user", "alice", "devices"], _env())
    out = b""

    def read_until(marker: bytes) -> bool:
        nonlocal out
        while marker not in out:
            ready, _, _ = select.select([fd], [], [], 30)
            if not ready:
                return False
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                return False
            if not chunk:
                return False
            out += chunk
        return True

    try:
        assert read_until(b"Password for alice: "), out
        os.write(fd, PASSWORD.encode() + b"\n")
        assert read_until(b"porch_light"), out
        assert PASSWORD.encode() not in out  # not echoed
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, out


def test_the_password_is_not_in_the_process_list(gk: Daemon) -> None:
    watch = subprocess.Popen([*CLI, "--host", "127.0.0.1", "--port", str(gk.port), "--node",
                              "pw", "--user", "alice", "--password-stdin", "watch",
                              "porch_light"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=_env())
    assert watch.stdin is not None and watch.stdout is not None
    watch.stdin.write(PASSWORD + "\n")
    watch.stdin.close()
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(watch.stdout or []), daemon=True).start()
    try:
        assert wait_for(lambda: bool(lines), 15)  # connected: its first state
        cmdline = Path(f"/proc/{watch.pid}/cmdline").read_bytes()
        assert b"alice" in cmdline and PASSWORD.encode() not in cmdline
    finally:
        watch.terminate()
        watch.wait(5)
