"""A config that would start an open daemon, or blow up the parser, is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BOMB = "\n".join(
    [f"l0: &l0 [{', '.join(['x'] * 9)}]"]
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
) + "\n"


def _run(*args: str, limit_mib: int = 400) -> subprocess.CompletedProcess[str]:
    # The address-space cap makes an unbounded expansion fail fast instead of eating the host.
    cmd = ["prlimit", f"--as={limit_mib * 1024 * 1024}", sys.executable, "-m",
           "pi_mqtt_gpio.server.main", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("text", "message"), [
    ("", "the config is empty"),
    ("# only a comment\n", "the config is empty"),
    (BOMB, "expands to more than"),
    ("a: &a [*a]\n", "refers to itself"),
    ("devices: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
])
def test_refused_by_check_config_and_at_start(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    for args in (["check-config", "--config", str(path)], ["--config", str(path), "--simulate"]):
        res = _run(*args)
        assert res.returncode != 0
        assert message in res.stderr + res.stdout, res.stderr[-2000:]
        assert "Traceback" not in res.stderr
