"""Every Python example in docs/client.md and the README runs as written against the demo
config; an example that ends in ``pause()`` keeps running, and its callbacks fire."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml

from tests.conftest import Client, Gatekeeper, start_gatekeeper, v5_props

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "docs" / "client.md", ROOT / "README.md"]
EXAMPLES = [(src.name, code) for src in SOURCES
            for code in re.findall(r"```python\n(.*?)```", src.read_text(), re.S)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gatekeeper]:
    config = yaml.safe_load((ROOT / "deploy" / "demo.yaml").read_text())
    config["broker"]["listeners"] = [{"type": "tcp", "host": "127.0.0.1", "port": 0}]
    gk = start_gatekeeper(tmp_path_factory.mktemp("docs"), config)
    yield gk
    assert gk.stop() == 0


def _ring(demo: Gatekeeper) -> None:
    """Press and release the simulated doorbell from another client."""
    c = Client(demo.port, mqtt.MQTTv5, client_id="ringer")
    c.connect()
    try:
        c.subscribe(f"{demo.root}/reply/ringer/#", 1)
        for method in ("sim_press", "sim_release"):
            c.publish(f"{demo.root}/device/doorbell/call", json.dumps({"method": method}), 1,
                      properties=v5_props(ResponseTopic=f"{demo.root}/reply/ringer/x",
                                          CorrelationData=b"1"))
            assert json.loads(c.get(5).payload)["ok"]
    finally:
        c.close()


@pytest.mark.parametrize(("source", "code"), EXAMPLES,
                         ids=[f"{src}-{i}" for i, (src, _c) in enumerate(EXAMPLES)])
def test_example_runs(demo: Gatekeeper, source: str, code: str, tmp_path: Path) -> None:
    # The examples say "localhost"; the test daemon listens on a free port.
    env = {"PI_MQTT_PORT": str(demo.port), "PATH": "/usr/bin:/bin"}
    script = tmp_path / "example.py"
    script.write_text(code)
    if "pause()" not in code:
        res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             timeout=60, env=env)
        assert res.returncode == 0, res.stderr[-2000:]
        return
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(3)
        assert proc.poll() is None, proc.communicate()[1][-2000:]  # still running: pause()
        _ring(demo)
        time.sleep(1)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert "ding" in out, err[-2000:]
    assert "KeyboardInterrupt" in err or proc.returncode == 0


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 8
