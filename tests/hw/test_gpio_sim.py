"""The real daemon against a real kernel GPIO chip (gpio-sim, inside the gpiosim VM).

Run by ``scripts/hw-stage`` through ``vm/run.sh``; skipped outside the VM.
The daemon uses the lgpio pin factory (not mock); inputs are driven through gpio-sim's
``pull`` attribute, which makes the kernel deliver real edge events.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif("GPIOSIM_SYSFS" not in os.environ,
                                reason="runs inside the gpiosim VM (scripts/hw-stage)")

if "GPIOSIM_SYSFS" in os.environ:
    import gpiosim_vm as sim
    import paho.mqtt.client as mqtt
    import yaml
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parents[2]
TAG = "gatekeeper"
DEVICES = {
    "lamp": {"type": "LED", "pin": 17},
    "relay": {"type": "OutputDevice", "pin": 23, "active_high": False},
    "dimmer": {"type": "PWMLED", "pin": 18},
    "bell": {"type": "Button", "pin": 27, "pull_up": True},
    "contact": {"type": "DigitalInputDevice", "pin": 22},
}
LINES = {"lamp": 17, "relay": 23, "dimmer": 18, "bell": 27, "contact": 22}


class Daemon:
    def __init__(self, tmp: Path, port: int, extra: dict[str, Any] | None = None,
                 devices: dict[str, Any] | None = None,
                 top: dict[str, Any] | None = None) -> None:
        cfg = {"node_id": "vm", "hardware": {"pin_factory": "lgpio", "chip": "auto",
                                             "consumer_tag": TAG, **(extra or {})},
               "broker": {"listeners": [{"type": "tcp", "host": "127.0.0.1", "port": port}]},
               "auth": {"allow_anonymous": True, "anonymous_role": "admin"},
               "devices": devices if devices is not None else DEVICES, **(top or {})}
        self.path = tmp / f"gk-{port}.yaml"
        self.path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pi_mqtt_gpio.server.main", "--config", str(self.path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp)
        self.port = port
        self.output: list[str] = []
        assert self.proc.stdout is not None
        # (a hang's limit: a start takes seconds, minutes on a loaded host under TCG)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line.rstrip())
            if "pi-mqtt-gatekeeper ready" in line:
                return
        raise RuntimeError("daemon did not start:\n" + "\n".join(self.output))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(30)


class Mqtt:
    def __init__(self, port: int, client_id: str) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        self.messages: queue.Queue[tuple[str, bytes, float]] = queue.Queue()
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.reply_topic = f"gatekeeper/vm/reply/{client_id}"
        self.subscribe(self.reply_topic)

    def _on_message(self, c: Any, u: Any, m: Any) -> None:
        if m.topic == self.reply_topic:
            self.replies.put(json.loads(m.payload))
        else:
            self.messages.put((m.topic, m.payload, time.time()))

    def subscribe(self, topic: str) -> None:
        done: queue.Queue[Any] = queue.Queue()
        self.c.on_subscribe = lambda *a: done.put(a)
        self.c.subscribe(topic, 1)
        done.get(timeout=60)

    def call(self, device: str, method: str, *args: Any) -> dict[str, Any]:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = b"x"
        self.c.publish(f"gatekeeper/vm/device/{device}/call",
                       json.dumps({"method": method, "args": list(args)}), 1, properties=props)
        return self.replies.get(timeout=60)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def owners() -> dict[int, dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "pi_mqtt_gpio.server.main", "gpio-owners",
                          "--chip", str(sim.CHIP_NUM), "--json"], capture_output=True,
                         text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}:"
                                  f"{os.environ.get('PYTHONPATH', '')}"))
    assert out.returncode == 0, out.stderr
    return {entry["line"]: entry for entry in json.loads(out.stdout)["lines"]}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("gk"), 18830)
    yield d
    if d.proc.poll() is None:
        d.stop()


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[Mqtt]:
    c = Mqtt(daemon.port, "hwtest")
    yield c
    c.close()


def test_chip_found_by_label(daemon: Daemon) -> None:
    assert os.environ["GPIOSIM_LABEL"] == "pinctrl-rp1"
    # hardware.chip: auto found the gpio-sim chip labelled like a Pi 5's RP1
    found = owners()
    assert found[17]["owner"] == "ours"


def test_lines_claimed_with_consumer_labels(daemon: Daemon) -> None:
    found = owners()
    for name, line in LINES.items():
        assert found[line]["used"] and found[line]["consumer"] == f"{TAG}:{name}:{line}"
    assert not found[5]["used"] and found[5]["owner"] is None
    info = subprocess.run(["gpioinfo", sim.DEV], capture_output=True, text=True).stdout
    assert f'"{TAG}:lamp:17"' in info and f'"{TAG}:bell:27"' in info


def test_rivals_get_ebusy(daemon: Daemon) -> None:
    rival_lgpio = (
        "import lgpio, sys\n"
        f"h = lgpio.gpiochip_open({sim.CHIP_NUM})\n"
        "try:\n    lgpio.gpio_claim_output(h, 17, 0)\nexcept lgpio.error as e:\n"
        "    print(e); sys.exit(3)\n")
    res = subprocess.run([sys.executable, "-c", rival_lgpio], capture_output=True, text=True,
                         cwd="/tmp")
    assert res.returncode == 3 and "busy" in res.stdout.lower()
    rival_gpiod = (
        "import gpiod, sys, errno\n"
        "from gpiod.line_settings import LineSettings\nfrom gpiod.line import Direction\n"
        "try:\n"
        f"    gpiod.request_lines('{sim.DEV}', consumer='rival',"
        " config={17: LineSettings(direction=Direction.OUTPUT)})\n"
        "except OSError as e:\n    print(e.errno); sys.exit(3 if e.errno == errno.EBUSY else 4)\n")
    res = subprocess.run([sys.executable, "-c", rival_gpiod], capture_output=True, text=True)
    assert res.returncode == 3, res.stdout + res.stderr


WATCHER = r"""
import gc, json, sys, time
from datetime import datetime
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
gc.disable()  # a short-lived measuring process: no collector pauses in the numbers
port, total = int(sys.argv[1]), int(sys.argv[2])
count = 0
def on_message(c, u, m):
    global count
    arrived = time.time()
    doc = json.loads(m.payload)
    ts = datetime.fromisoformat(doc["ts"].replace("Z", "+00:00")).timestamp()
    count += 1
    print(json.dumps([doc["seq"], doc["event"], (arrived - ts) * 1000]), flush=True)
def on_subscribe(*a):
    print("ready", flush=True)
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edgewatch", protocol=mqtt.MQTTv5)
c.on_message, c.on_subscribe = on_message, on_subscribe
c.connect("127.0.0.1", port)
c.subscribe("gatekeeper/vm/device/contact/event", 1)
# Ends after the last event, or once 30 s pass without one (a lost edge leaves it waiting).
last = time.monotonic()
while count < total and time.monotonic() - last < 30:
    before = count
    c.loop(0.2)
    if count != before:
        last = time.monotonic()
print("done", flush=True)
"""


def irq_count(line: int) -> int:
    """How many interrupts the kernel raised for a gpio-sim line (its edge IRQ, in
    /proc/interrupts: the chip ``irq_sim``, the line's offset as hwirq, summed over the CPUs)."""
    total = 0
    with open("/proc/interrupts") as f:
        cpus = len(f.readline().split())
        for row in f:
            fields = row.split()
            if len(fields) > cpus + 2 and fields[cpus + 1] == "irq_sim" \
                    and fields[cpus + 2] == str(line):
                total += sum(int(n) for n in fields[1:cpus + 1])
    return total


def _edge_run(port: int, line: int, rate: int, total: int, lockstep: bool) -> dict[str, Any]:
    """``total`` edges on ``line``, at most ``rate`` a second. ``lockstep``: each edge only
    once the one before it arrived at the subscriber (so no edge is ever in flight behind
    another: nothing for the kernel to merge or overflow); else free-running at ``rate``."""
    irqs_before = irq_count(line)
    watcher = subprocess.Popen([sys.executable, "-c", WATCHER, str(port), str(total)],
                               stdout=subprocess.PIPE, text=True)
    assert watcher.stdout is not None
    stdout = watcher.stdout
    assert stdout.readline().strip() == "ready"
    arrived: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for text in stdout:
            arrived.put(text)

    threading.Thread(target=read, daemon=True).start()
    events: list[tuple[int, str, float]] = []

    def take(timeout: float) -> bool:
        item = arrived.get(timeout=timeout)
        if item.strip() == "done":
            return False
        seq, event, ms = json.loads(item)
        events.append((seq, event, ms))
        return True

    start = time.perf_counter()
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sim.set_pull(line, i % 2 == 0)
        if lockstep:
            assert take(60), f"edge {i + 1} of {total} never arrived"
    while take(120):
        pass
    watcher.wait(30)
    seqs = [seq for seq, _event, _ms in events]
    lat = sorted(ms for _seq, _event, ms in events) or [float("inf")]
    return {"edges": total, "irqs": irq_count(line) - irqs_before, "events": len(events),
            "contiguous": seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else False,
            "alternating": all(a[1] != b[1] for a, b in itertools.pairwise(events)),
            "p50": lat[len(lat) // 2], "p99": lat[max(int(len(lat) * 0.99) - 1, 0)]}


def test_100hz_edges_no_loss_and_latency(daemon: Daemon) -> None:
    """Edges written to gpio-sim arrive at an MQTT subscriber (its own process), measured
    from the time stamp taken in the gpiozero callback to arrival. Runs before the RPC tests
    start lgpio's PWM thread.

    What the daemon promises, checked whatever the machine's load: 1,000 edges, each written
    once the one before it arrived (at most 100 a second), give 1,000 events, alternating,
    with sequence numbers without gaps: every edge the kernel hands over becomes one event.

    Then 1,000 edges free-running at 100 Hz, reported with the kernel's IRQ count for the
    line: on a quiet machine every one arrives. Under TCG emulation on a loaded host the
    guest falls behind and edges go missing after the kernel's interrupt (its per-request
    event buffer of 16, lgpio's reader): printed, not failed; gaps in the sequence numbers
    (a loss in the daemon) fail. A p99 over 20 ms is reported as an expected failure (xfail)."""
    rate, total = 100, int(100 * float(os.environ.get("HW_EDGE_SECONDS", "10")))
    paced = _edge_run(daemon.port, 22, rate, total, lockstep=True)
    print(f"\nHW: {total} edges, each after the one before arrived -> {paced['irqs']} kernel "
          f"IRQs -> {paced['events']} events (seq contiguous: {paced['contiguous']}), "
          f"edge->MQTT p50 {paced['p50']:.1f} ms p99 {paced['p99']:.1f} ms")
    assert paced["events"] == total, paced  # no event lost
    assert paced["contiguous"] and paced["alternating"], paced
    free = _edge_run(daemon.port, 22, rate, total, lockstep=False)
    print(f"HW: {total} edges at {rate} Hz free-running -> {free['irqs']} kernel IRQs -> "
          f"{free['events']} events (seq contiguous: {free['contiguous']}), edge->MQTT p50 "
          f"{free['p50']:.1f} ms p99 {free['p99']:.1f} ms")
    Path("/tmp/hw-edges.json").write_text(json.dumps([paced, free]))
    assert free["contiguous"], free  # the daemon numbered every event it was handed
    if free["events"] < total or free["p99"] > 20.0:
        # Every Python instruction is emulated (TCG): a loaded host stretches the tail. The
        # figures are reported, and the miss is visible in the summary instead of failing CI.
        pytest.xfail(f"free-running at {rate} Hz under TCG: {free['events']} of {total} "
                     f"events, p99 {free['p99']:.1f} ms (lockstep: p99 {paced['p99']:.1f} ms)")


def test_rpc_moves_the_real_lines(daemon: Daemon, client: Mqtt) -> None:
    assert client.call("lamp", "on")["ok"]
    assert sim.wait_value(17, 1, timeout=60)
    assert client.call("lamp", "off")["ok"]
    assert sim.wait_value(17, 0, timeout=60)
    assert client.call("relay", "on")["ok"]  # active low
    assert sim.wait_value(23, 0, timeout=60)
    assert client.call("relay", "value", 0)["ok"]
    assert sim.wait_value(23, 1, timeout=60)
    reply = client.call("dimmer", "value", 1)
    assert reply["ok"] and reply["state"]["value"] == 1
    assert sim.wait_value(18, 1, timeout=60)
    assert client.call("dimmer", "off")["ok"]
    assert sim.wait_value(18, 0, timeout=60)


def test_pull_changes_arrive_as_events(daemon: Daemon, client: Mqtt) -> None:
    client.subscribe("gatekeeper/vm/device/bell/event")
    sim.set_pull(27, False)  # pulled-up button: low = pressed
    topic, payload, _ = client.messages.get(timeout=60)
    assert json.loads(payload)["event"] == "pressed"
    sim.set_pull(27, True)
    while True:
        topic, payload, _ = client.messages.get(timeout=60)
        if topic.endswith("/event"):
            assert json.loads(payload)["event"] == "released"
            break


def test_health_topic_has_the_inventory(daemon: Daemon, client: Mqtt) -> None:
    client.subscribe("gatekeeper/vm/system/health")
    while True:
        topic, payload, _ = client.messages.get(timeout=60)
        if topic.endswith("/system/health"):
            break
    doc = json.loads(payload)
    assert doc["status"] == "ok" and doc["gpio"]["chip"] == f"gpiochip{sim.CHIP_NUM}"
    lines = {entry["line"]: entry for entry in doc["gpio"]["lines"]}
    assert lines[17]["owner"] == "ours" and lines[0]["used"] is False


def test_sigterm_releases_every_line_after_safe_state(tmp_path: Path) -> None:
    d = Daemon(tmp_path, 18831, devices={"lamp": {"type": "LED", "pin": 5},
                                         "relay": {"type": "OutputDevice", "pin": 6,
                                                   "safe_state": "on"}})
    c = Mqtt(d.port, "sigterm")
    c.subscribe("gatekeeper/vm/#")
    assert c.call("lamp", "on")["ok"] and sim.wait_value(5, 1, timeout=60)
    assert c.call("relay", "off")["ok"] and sim.wait_value(6, 0, timeout=60)
    assert d.stop() == 0
    # The safe states were driven (and published) before "offline" and the release.
    seen: list[tuple[str, Any]] = []
    while True:
        topic, payload, _ = c.messages.get(timeout=60)
        seen.append((topic, payload))
        if topic.endswith("/status") and payload == b"offline":
            break
    states = {t.split("/")[3]: json.loads(p) for t, p in seen if t.endswith("/state")}
    assert states["lamp"]["value"] == 0 and states["relay"]["is_active"] is True
    c.close()
    found = owners()
    assert not found[5]["used"] and not found[6]["used"]


def daemon_alive_elsewhere() -> bool:
    """The module's main daemon (another instance under the same tag) still runs."""
    return owners()[17]["owner"] == "ours"


def test_reclaim_stale_instance_but_never_a_foreign_holder(daemon: Daemon,
                                                          tmp_path: Path) -> None:
    devices = {"lamp": {"type": "LED", "pin": 7}}
    stale = Daemon(tmp_path, 18832, devices=devices)
    stale.proc.send_signal(signal.SIGSTOP)  # hung: still holds GPIO7 under our tag
    try:
        found = owners()
        assert found[7]["consumer"] == f"{TAG}:lamp:7"
        with pytest.raises(RuntimeError, match=r"busy|held"):
            Daemon(tmp_path, 18833, devices=devices)  # without reclaim: refused, named
        fresh = Daemon(tmp_path, 18834, extra={"reclaim_on_busy": True}, devices=devices)
        assert stale.proc.wait(60) != 0  # the stale instance was stopped ...
        assert owners()[7]["consumer"] == f"{TAG}:lamp:7"
        assert fresh.stop() == 0
        assert daemon_alive_elsewhere()  # ... and only that one
    finally:
        if stale.proc.poll() is None:
            stale.proc.kill()
    # A foreign holder is never touched, and the error names it.
    foreign = subprocess.Popen([sys.executable, "-c",
                                "import lgpio, ctypes, time\n"
                                f"h = lgpio.gpiochip_open({sim.CHIP_NUM})\n"
                                "lib = ctypes.CDLL(lgpio._lgpio.__file__)\n"
                                "lib.lgGpioSetUser(h & 0xFFFF, b'foreign-app')\n"
                                "lgpio.gpio_claim_output(h, 8, 0)\nprint('held', flush=True)\n"
                                "time.sleep(120)\n"], stdout=subprocess.PIPE, text=True,
                               cwd="/tmp")
    try:
        assert foreign.stdout is not None and foreign.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError) as info:
            Daemon(tmp_path, 18835, extra={"reclaim_on_busy": True},
                   devices={"lamp": {"type": "LED", "pin": 8}})
        assert "foreign-app" in str(info.value)
        assert foreign.poll() is None  # still alive
    finally:
        foreign.kill()


def test_auto_finds_the_header_chip_on_gpiochip4(tmp_path: Path) -> None:
    """The second VM boot pads four dummy chips first, as on a Pi 5 with an older kernel."""
    if sim.CHIP_NUM != 4:
        pytest.skip("runs in the second VM boot (GPIOSIM_PAD_CHIPS=4)")
    d = Daemon(tmp_path, 18836, devices={"lamp": {"type": "LED", "pin": 17}})
    try:
        found = owners()
        assert found[17]["consumer"] == f"{TAG}:lamp:17"
        info = subprocess.run(["gpioinfo", "gpiochip0"], capture_output=True, text=True).stdout
        assert "gatekeeper" not in info  # nothing claimed on the pad chips
    finally:
        assert d.stop() == 0
