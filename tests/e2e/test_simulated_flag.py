"""Simulated pins nobody asked for on the command line (a production config that still says
pin_factory: mock) are said out loud: a warning at start, and "simulated": true in the
health document and the catalogue."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml

from tests.conftest import READY, Client


def test_mock_pins_without_simulate_are_flagged(tmp_path: Path) -> None:
    config = {"node_id": "prod", "hardware": {"pin_factory": "mock"},
              "broker": {"listeners": [{"type": "tcp", "host": "127.0.0.1", "port": 0}]},
              "auth": {"allow_anonymous": True, "anonymous_role": "viewer"},
              "devices": {"lamp": {"type": "LED", "pin": 17}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "-m", "pi_mqtt_gpio.server.main", "--config",
                             str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=tmp_path, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout or []],
                     daemon=True).start()
    try:
        seen, port = [], 0
        while not port:
            line = lines.get(timeout=20)
            seen.append(line)
            m = READY.search(line)
            if m:
                port = int(re.findall(r":(\d+)", m.group(2))[0])
        while True:  # the warning follows the "up" line
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                break
        assert any("the pins are SIMULATED" in line for line in seen), seen
        c = Client(port, mqtt.MQTTv5)
        c.connect()
        c.subscribe("gatekeeper/prod/system/health", 1)
        assert json.loads(c.get(5).payload)["simulated"] is True
        c.subscribe("gatekeeper/prod/devices", 1)
        assert json.loads(c.get(5).payload)["simulated"] is True
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
