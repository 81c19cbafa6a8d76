"""Fleet benchmark: the RPC round trip through Debian's Mosquitto (external mode) against the
same call through the embedded broker, and how it grows with 1, 5 and 20 simulated
gatekeepers on one Mosquitto.

    .venv/bin/python benchmarks/fleet.py [--calls 300]

Prints p50/p99 in ms; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from broker import free_port, wait_port  # noqa: E402


def start_node(tmp: Path, node: str, broker: dict[str, Any]) -> subprocess.Popen[str]:
    config = {"node_id": node, "broker": broker,
              "auth": {"allow_anonymous": True, "anonymous_role": "admin"},
              "homeassistant": {"discovery": False},
              "safety": {"min_relay_interval_s": 0, "min_command_interval_s": 0,
                         "flap_lockout_s": 0},
              "devices": {"lamp": {"type": "LED", "pin": 17}}}
    path = tmp / f"{node}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "-m", "pi_mqtt_gpio.server.main", "--config",
                             str(path), "--simulate", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "ready" in line:
            break
    threading.Thread(target=lambda: [None for _ in proc.stdout or []], daemon=True).start()
    return proc


def rpc(port: int, node: str, calls: int, suffix: str) -> list[float]:
    """``calls`` sequential v5 calls (toggle) from one client; round trips in ms."""
    done = threading.Event()
    client_id = f"bench-{time.monotonic_ns()}"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    # replies under the caller's prefix: its client id (embedded), its user name (external)
    reply_to = f"gatekeeper/{node}/reply/{suffix.strip('/') or client_id}/x"
    client.on_message = lambda c, u, m: done.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(reply_to, 0)
    time.sleep(0.5)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = reply_to
    props.CorrelationData = b"1"
    topic = f"gatekeeper/{node}/device/lamp/call{suffix}"
    out = []
    for i in range(calls + 20):
        done.clear()
        t = time.perf_counter()
        client.publish(topic, json.dumps({"method": "toggle"}), 0, properties=props)
        if not done.wait(5):
            raise RuntimeError("no reply")
        if i >= 20:  # warm-up
            out.append((time.perf_counter() - t) * 1000)
    client.loop_stop()
    client.disconnect()
    return out


def line(name: str, ms: list[float]) -> str:
    ms = sorted(ms)
    return (f"{name:<44} p50 {statistics.median(ms):6.2f} ms   "
            f"p99 {ms[int(len(ms) * 0.99) - 1]:6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    results = []
    # the embedded broker
    port = free_port()
    node = start_node(tmp, "solo", {"listeners": [{"type": "tcp", "host": "127.0.0.1",
                                                   "port": port}]})
    try:
        wait_port(port)
        results.append(line("embedded broker, 1 node", rpc(port, "solo", args.calls, "")))
    finally:
        node.terminate()
        node.wait()
    # Mosquitto, with 1, 5 and 20 nodes connected
    mport = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {mport} 127.0.0.1\nallow_anonymous true\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    nodes: list[subprocess.Popen[str]] = []
    try:
        wait_port(mport)
        external = {"mode": "external", "external": {"host": "127.0.0.1", "port": mport}}
        for count in (1, 5, 20):
            while len(nodes) < count:
                nodes.append(start_node(tmp, f"n{len(nodes)}", external))
            time.sleep(1.0)
            results.append(line(f"Mosquitto (external mode), {count} nodes",
                                rpc(mport, "n0", args.calls, "/bench")))
    finally:
        for n in nodes:
            n.terminate()
        for n in nodes:
            n.wait()
        broker.terminate()
        broker.wait()
    print(f"RPC round trip (toggle, MQTT 5, {args.calls} sequential calls, one client):")
    for r in results:
        print("  " + r)


if __name__ == "__main__":
    main()
