"""Every Python example in docs/client.md and the README runs as written against the demo
config; an example that ends in ``pause()`` keeps running, and its callbacks fire."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
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
    # SIGINT ends it as Ctrl-C would, also when the suite runs as a background job (which
    # inherits SIGINT ignored: Python then installs no KeyboardInterrupt handler).
    errors = tmp_path / "stderr"
    with errors.open("w") as err_file:
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                stderr=err_file, text=True,
                                env=dict(env, PYTHONUNBUFFERED="1"),
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: queue.Queue[str] = queue.Queue()
    out: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            lines.put(line)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        # Rung until its callback says so: the example subscribes some time after it started,
        # and nothing but its output tells when.
        deadline = time.monotonic() + 30
        while "ding" not in "".join(out):
            assert proc.poll() is None, errors.read_text()[-2000:]
            assert time.monotonic() < deadline, "no ding within 30 s: " + errors.read_text()
            _ring(demo)
            try:
                lines.get(timeout=1)
            except queue.Empty:
                pass
        assert proc.poll() is None, errors.read_text()[-2000:]  # still running: pause()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        thread.join(5)
    err = errors.read_text()
    assert "KeyboardInterrupt" in err or proc.returncode == 0, err[-2000:]


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 8
