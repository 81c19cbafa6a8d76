"""Gatekeeper benchmark: RPC round trip, edge -> subscriber latency, event loss at
100 Hz, idle CPU with 26 inputs, RSS with the demo config.

    .venv/bin/python benchmarks/rpc.py [--quick] [--taskset CPU]

``--taskset CPU`` pins our daemon (and the baseline's broker and daemon) to that CPU list
(``taskset -c``), as ``CPUAffinity=`` in its systemd unit would; the clients run anywhere.

"rpc lean client" calls from a raw MQTT 5 socket and "echo same daemon" is a plain
request/response between two raw clients through the same daemon (the broker hop alone).
"stub" makes the same calls through the client stub (``RemoteLED.on()``) and from 10 threads
at once through one connection. The RPC scenario runs twice in the same run: against our daemon (embedded broker, one
process), and against what a user would otherwise build: Debian's mosquitto plus a separate
Python daemon (paho-mqtt + gpiozero on the same simulated pins) doing the same work (decode
JSON, switch the LED, read its state, reply). Prints numbers; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from broker import (  # noqa: E402
    PROTOCOL_50,
    connect,
    free_port,
    request_response,
    round_trips,
    subscribe,
    wait_port,
)

NODE = "bench"
PIN: list[str] = []  # ``taskset -c CPU`` before the daemons' commands (``--taskset``)
TOPIC_ROOT = f"gatekeeper/{NODE}"


def start_daemon(tmp: Path, devices: dict[str, Any]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    import yaml

    cfg = {"node_id": NODE, "broker": {"listeners": [{"type": "tcp", "host": "127.0.0.1",
                                                      "port": port}]},
           "auth": {"allow_anonymous": True, "anonymous_role": "admin"}, "devices": devices}
    path = tmp / f"gk-{port}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    exe = ROOT / ".venv" / "bin" / "pi-mqtt-gatekeeper"
    proc = subprocess.Popen([*PIN, str(exe), "--config", str(path), "--simulate", "--log-level",
                             "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    time.sleep(0.5)
    return proc, port


class Caller:
    """A paho v5 client making sequential RPC calls (Response Topic + Correlation Data).

    It drives paho's network loop in the calling thread (``loop()``), as a script that only
    makes calls would: the measurement then holds no client-side thread hand-offs, which on
    this 2-core machine cost more than the broker hop being measured."""

    def __init__(self, port: int, client_id: str = "bench-caller") -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        self.done = False
        self.reply: bytes = b""
        self.c.on_message = self._on_message
        self.reply_topic = f"{TOPIC_ROOT}/reply/{client_id}"
        self.c.connect("127.0.0.1", port)
        subscribed: list[bool] = []
        self.c.on_subscribe = lambda *a: subscribed.append(True)
        self.c.subscribe(self.reply_topic, 0)
        end = time.monotonic() + 5
        while not subscribed and time.monotonic() < end:
            self.c.loop(0.1)

    def _on_message(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        self.reply = m.payload
        self.done = True

    def call(self, device: str, method: str, qos: int = 0) -> tuple[float, bytes]:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = b"1"
        self.done = False
        t0 = time.perf_counter()
        self.c.publish(f"{TOPIC_ROOT}/device/{device}/call",
                       json.dumps({"method": method}), qos, properties=props)
        end = time.monotonic() + 5
        while not self.done:
            self.c.loop(0.5)
            if time.monotonic() > end:
                raise RuntimeError("no reply")
        return (time.perf_counter() - t0) * 1e6, self.reply

    def close(self) -> None:
        self.c.disconnect()


class ThreadedCaller(Caller):
    """The same calls with paho's network loop on its background thread (``loop_start``),
    the way a script that also wants callbacks uses paho — and the way the stub does."""

    def __init__(self, port: int, client_id: str = "bench-caller-threaded") -> None:
        super().__init__(port, client_id)
        self.event = threading.Event()
        self.c.loop_start()

    def _on_message(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        self.reply = m.payload
        self.event.set()

    def call(self, device: str, method: str, qos: int = 0) -> tuple[float, bytes]:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = b"1"
        self.event.clear()
        t0 = time.perf_counter()
        self.c.publish(f"{TOPIC_ROOT}/device/{device}/call",
                       json.dumps({"method": method}), qos, properties=props)
        if not self.event.wait(5):
            raise RuntimeError("no reply")
        return (time.perf_counter() - t0) * 1e6, self.reply

    def close(self) -> None:
        super().close()
        self.c.loop_stop()


def lean_round_trips(port: int, n: int) -> dict[str, float]:
    """RPC calls from a lean client (a raw MQTT 5 socket, as in benchmarks/broker.py), to
    compare with a plain request/response echo between two such clients through the same
    daemon (``request_response``): what the gatekeeper adds on top of the broker hop."""
    cid = f"lean-{os.getpid()}"
    s = connect(port, cid, PROTOCOL_50)
    reply = f"{TOPIC_ROOT}/reply/{cid}"
    subscribe(s, f"{reply}/#", 0, PROTOCOL_50)
    try:
        return {**round_trips(s, f"{TOPIC_ROOT}/device/led/call",
                              json.dumps({"method": "toggle"}).encode(), f"{reply}/r", n),
                "calls": n}
    finally:
        s.close()


def rpc_round_trips(port: int, n: int, threaded: bool = False) -> dict[str, float]:
    caller = ThreadedCaller(port) if threaded else Caller(port)
    try:
        for _ in range(200):  # warm up
            caller.call("led", "toggle")
        samples = []
        for i in range(n):
            us, reply = caller.call("led", "on" if i % 2 else "off")
            samples.append(us)
        assert json.loads(reply)["ok"], reply
    finally:
        caller.close()
    samples.sort()
    return {"p50_us": statistics.median(samples), "p99_us": samples[int(n * 0.99) - 1],
            "calls": n}


BASELINE = r'''
import json, sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from gpiozero import LED
from gpiozero.pins.mock import MockFactory, MockPWMPin
led = LED(17, pin_factory=MockFactory(pin_class=MockPWMPin))
root = sys.argv[2]
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="baseline-daemon", protocol=mqtt.MQTTv5)
def on_message(client, userdata, m):
    req = json.loads(m.payload)
    getattr(led, req["method"])()
    state = {"value": int(led.value), "is_active": led.is_active}
    props = Properties(PacketTypes.PUBLISH)
    props.CorrelationData = m.properties.CorrelationData
    client.publish(m.properties.ResponseTopic,
                   json.dumps({"ok": True, "result": None, "state": state}), 0, properties=props)
    client.publish(root + "/device/led/state", json.dumps(state), 1, retain=True)
c.on_message = on_message
c.connect("127.0.0.1", int(sys.argv[1]))
c.subscribe(root + "/device/+/call", 0)
print("ready", flush=True)
c.loop_forever()
'''


def stub_round_trips(port: int, n: int) -> dict[str, float]:
    """The same calls through the client stub: RemoteLED.on()/off()."""
    from pi_mqtt_gpio.client import Gatekeeper, RemoteLED

    with Gatekeeper("127.0.0.1", port, node_id=NODE) as gk:
        led = RemoteLED("led", gatekeeper=gk)
        for _ in range(200):
            led.toggle()
        samples = []
        for i in range(n):
            t0 = time.perf_counter()
            (led.on if i % 2 else led.off)()
            samples.append((time.perf_counter() - t0) * 1e6)
    samples.sort()
    return {"p50_us": statistics.median(samples), "p99_us": samples[int(n * 0.99) - 1],
            "calls": n}


def stub_threads(port: int, threads: int = 10, calls: int = 200) -> dict[str, float]:
    """``threads`` threads calling through one connection at once: replies lost?"""
    from pi_mqtt_gpio.client import Gatekeeper, RemoteLED

    done = [0] * threads
    errors: list[BaseException] = []
    with Gatekeeper("127.0.0.1", port, node_id=NODE) as gk:
        led = RemoteLED("led", gatekeeper=gk)

        def work(k: int) -> None:
            try:
                for j in range(calls):
                    (led.on if j % 2 else led.off)()
                    done[k] += 1
            except BaseException as exc:
                errors.append(exc)

        start = time.perf_counter()
        pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - start
    return {"threads": threads, "calls": threads * calls, "answered": sum(done),
            "errors": len(errors), "calls_per_s": sum(done) / elapsed}


def baseline_round_trips(tmp: Path, n: int) -> dict[str, float] | None:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        return None
    port = free_port()
    conf = tmp / "mosq.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nlog_type none\n")
    broker = subprocess.Popen([*PIN, exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    daemon = None
    try:
        wait_port(port)
        daemon = subprocess.Popen([*PIN, sys.executable, "-c", BASELINE, str(port), TOPIC_ROOT],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert daemon.stdout is not None
        assert daemon.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        return rpc_round_trips(port, n)
    finally:
        if daemon is not None:
            daemon.kill()
        broker.terminate()
        broker.wait()


def edge_latency_and_loss(port: int, seconds: float, rate: float) -> dict[str, float]:
    """Drive the button at ``rate`` edges/s through sim_press/sim_release; the subscriber
    measures edge (the event's ts, taken in the gpiozero callback) -> arrival, and checks
    that sequence numbers have no gaps."""
    received: list[tuple[int, float]] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub", protocol=mqtt.MQTTv5)

    def on_message(c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        now = time.time()
        doc = json.loads(m.payload)
        ts = datetime.fromisoformat(doc["ts"].replace("Z", "+00:00")).timestamp()
        received.append((doc["seq"], now - ts))

    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    ready = threading.Event()
    sub.on_subscribe = lambda *a: ready.set()
    sub.subscribe(f"{TOPIC_ROOT}/device/button/event", 1)
    ready.wait(5)
    driver = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-driver",
                         protocol=mqtt.MQTTv5)
    driver.connect("127.0.0.1", port)
    driver.loop_start()
    total = int(seconds * rate)
    start = time.perf_counter()
    for i in range(total):
        target = start + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        method = "sim_press" if i % 2 == 0 else "sim_release"
        driver.publish(f"{TOPIC_ROOT}/device/button/call", json.dumps({"method": method}), 1)
    deadline = time.time() + 5
    while len(received) < total and time.time() < deadline:
        time.sleep(0.05)
    driver.disconnect()
    driver.loop_stop()
    sub.disconnect()
    sub.loop_stop()
    seqs = [s for s, _ in received]
    gaps = sum(1 for a, b in itertools.pairwise(seqs) if b != a + 1)
    lat = sorted(d * 1e6 for _, d in received)
    return {"edges": total, "events": len(received), "lost": total - len(received),
            "seq_gaps": gaps, "p50_us": statistics.median(lat) if lat else -1,
            "p99_us": lat[int(len(lat) * 0.99) - 1] if lat else -1}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--taskset", metavar="CPU", help="pin the daemons to this CPU list")
    args = parser.parse_args()
    if args.taskset:
        PIN[:] = ["taskset", "-c", args.taskset]
        print(f"daemons pinned to CPU {args.taskset}")
    n = 1000 if args.quick else 5000
    edge_seconds = 10 if args.quick else 60
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        proc, port = start_daemon(tmp, {"led": {"type": "LED", "pin": 17},
                                        "button": {"type": "Button", "pin": 27}})
        try:
            results["rpc lean client"] = lean_round_trips(port, n)
            results["echo same daemon"] = request_response(port, n)
            results["rpc ours"] = rpc_round_trips(port, n)
            results["rpc ours, paho thread"] = rpc_round_trips(port, n, threaded=True)
            results["stub RemoteLED"] = stub_round_trips(port, n)
            results["stub 10 threads"] = stub_threads(port)
            results["edges"] = edge_latency_and_loss(port, edge_seconds, 100)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        results["rpc mosquitto+paho daemon"] = baseline_round_trips(tmp, n)

        inputs = {f"in{i}": {"type": "Button", "pin": p}
                  for i, p in enumerate([*range(2, 28)][:26])}
        proc, port = start_daemon(tmp, inputs)
        try:
            time.sleep(1)
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(10)
            idle = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0) * 100
            results["idle 26 inputs"] = {"cpu_percent": idle, "rss_mib": rss_mib(proc.pid)}
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)

        demo = subprocess.Popen([*PIN, str(ROOT / ".venv/bin/pi-mqtt-gatekeeper"), "--config",
                                 str(ROOT / "deploy/demo.yaml"), "--simulate",
                                 "--log-level", "error"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(1883)
            time.sleep(2)
            c0, t0 = cpu_seconds(demo.pid), time.monotonic()
            time.sleep(5)
            results["demo config"] = {
                "rss_mib": rss_mib(demo.pid),
                "cpu_percent": (cpu_seconds(demo.pid) - c0) / (time.monotonic() - t0) * 100}
        finally:
            demo.send_signal(signal.SIGTERM)
            demo.wait(10)

    for name, values in results.items():
        if values is None:
            print(f"{name:<28} (mosquitto not installed: apt-get install mosquitto)")
            continue
        print(f"{name:<28} " + "  ".join(
            f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()))
    print(f"load average at the end: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    ours, stub = results["rpc ours"], results["stub RemoteLED"]
    threaded = results["rpc ours, paho thread"]
    print(f"{'ratio stub/raw paho':<28} p50={stub['p50_us'] / ours['p50_us']:.2f}x  "
          f"p99={stub['p99_us'] / ours['p99_us']:.2f}x")
    print(f"{'ratio stub/paho thread':<28} p50={stub['p50_us'] / threaded['p50_us']:.2f}x  "
          f"p99={stub['p99_us'] / threaded['p99_us']:.2f}x")
    lean, echo = results["rpc lean client"], results["echo same daemon"]
    print(f"{'ratio lean rpc/echo':<28} p50={lean['p50_us'] / echo['p50_us']:.2f}x  "
          f"p99={lean['p99_us'] / echo['p99_us']:.2f}x")
    base = results["rpc mosquitto+paho daemon"]
    if base:
        print(f"{'ratio ours/baseline':<28} p50={ours['p50_us'] / base['p50_us']:.2f}x  "
              f"p99={ours['p99_us'] / base['p99_us']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
