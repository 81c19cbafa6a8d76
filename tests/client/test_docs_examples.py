"""Every Python example in docs/client.md runs as written against the demo config."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import Gatekeeper, start_gatekeeper

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "client.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gatekeeper]:
    config = yaml.safe_load((ROOT / "deploy" / "demo.yaml").read_text())
    config["broker"]["listeners"] = [{"type": "tcp", "host": "127.0.0.1", "port": 0}]
    gk = start_gatekeeper(tmp_path_factory.mktemp("docs"), config)
    yield gk
    assert gk.stop() == 0


@pytest.mark.parametrize("code", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_example_runs(demo: Gatekeeper, code: str, tmp_path: Path) -> None:
    # The examples say "localhost"; the test daemon listens on a free port.
    env = {"PI_MQTT_PORT": str(demo.port), "PATH": "/usr/bin:/bin"}
    script = tmp_path / "example.py"
    script.write_text(code)
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, env=env)
    assert res.returncode == 0, res.stderr[-2000:]


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 6
