"""mqtt-io's topics beside the gatekeeper's own (``compat.mqtt_io``), end to end: the real
daemon (simulated pins) and Debian's ``mosquitto_pub`` / ``mosquitto_sub`` speaking only
mqtt-io's topics, on MQTT 3.1.1 and 5.0. Refusals are watched from a separate client."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import (
    Client,
    Gatekeeper,
    cheap_hash,
    start_gatekeeper,
    v5_props,
    wait_for,
)

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_pub") is None and not __import__("os").environ.get("CI"),
    reason="mosquitto-clients not installed (scripts/test installs it)",
)

PASSWORD = "s3cret-mio"
PREFIX = "home/kitchen"
VERSIONS = pytest.mark.parametrize("proto", ["mqttv311", "mqttv5"])


def config() -> dict[str, Any]:
    h = cheap_hash(PASSWORD)
    return {
        "node_id": "kitchen",
        "broker": {"listeners": [{"type": "tcp", "host": "127.0.0.1", "port": 0}]},
        "auth": {"users": {"op": {"password_hash": h, "role": "operator"},
                           "view": {"password_hash": h, "role": "viewer"},
                           "admin": {"password_hash": h, "role": "admin"},
                           "limited": {"password_hash": h, "role": "limited"},
                           "nobody": {"password_hash": h, "role": "nobody"}},
                 "roles": {"limited": {"subscribe": ["{root}/#"],
                                       "deny": ["{root}/device/porch_light/#"]},
                           "nobody": {"subscribe": ["elsewhere/#"]}}},
        "safety": {"min_relay_interval_s": 0, "min_command_interval_s": 0,
                   "flap_lockout_s": 0},
        "homeassistant": {"discovery": False},
        "devices": {
            "porch_light": {"type": "OutputDevice", "pin": 17},
            "bell": {"type": "OutputDevice", "pin": 27},
            "fan": {"type": "LED", "pin": 22},
            "doorbell": {"type": "DigitalInputDevice", "pin": 5, "pull_up": True},
            "door": {"type": "DigitalInputDevice", "pin": 6, "pull_up": True},
            "knock": {"type": "Button", "pin": 7},
            "light_level": {"type": "MCP3008", "channel": 0, "publish_interval": 0.1},
            "tank": {"type": "DistanceSensor", "echo": 23, "trigger": 24, "max_distance": 4,
                     "publish_interval": 0.1},
        },
        "compat": {"mqtt_io": {
            "topic_prefix": PREFIX,
            "outputs": {"porch_light": {"on_payload": "lamp on", "off_payload": "lamp off",
                                        "retain": True},
                        "bell": {"timed_set_ms": 400}},
            "inputs": {"doorbell": {"on_payload": "PRESSED", "off_payload": "IDLE",
                                    "inverted": True, "retain": True},
                       "door": {"interrupt": "falling", "interrupt_payload": "INT"}},
            "sensors": {"light_level": {"field": "raw_value", "digits": 0, "retain": True},
                        "tank": {"field": "distance", "scale": 100}},
        }},
    }


@pytest.fixture(scope="module")
def gk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gatekeeper]:
    g = start_gatekeeper(tmp_path_factory.mktemp("mqtt-io"), config())
    yield g
    g.stop()


def pub(gk: Gatekeeper, proto: str, user: str, topic: str, payload: str) -> None:
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(gk.port), "-V", proto,
                    "-u", user, "-P", PASSWORD, "-q", "1", "-t", topic, "-m", payload],
                   check=True, timeout=10)


class Sub:
    """``mosquitto_sub -v`` as ``user`` (anonymous: None) on ``topics``, read line by line;
    subscribed once the retained message of ``probe`` (subscribed last; the node's status by
    default) is printed: the broker sends a filter's retained messages with its SUBACK, and
    handles one client's SUBSCRIBEs in order. The probe's line is not kept."""

    def __init__(self, gk: Gatekeeper, proto: str, user: str | None, *topics: str,
                 probe: str = "") -> None:
        probe = probe or f"{gk.root}/status"
        args = [a for t in (*topics, probe) for a in ("-t", t)]
        login = ["-u", user, "-P", PASSWORD] if user else []
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(gk.port), "-V", proto, *login,
             "-v", "-q", "1", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        subscribed = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if not subscribed.is_set() and line.startswith(probe + " "):
                    subscribed.set()
                    continue
                self.lines.append(line.rstrip("\n"))

        threading.Thread(target=read, daemon=True).start()
        assert subscribed.wait(10), f"mosquitto_sub not subscribed: {self.lines}"

    def until(self, line: str, start: int, timeout: float = 10.0) -> list[str]:
        """The lines printed before ``line`` (the sentinel), looked for from line ``start``."""
        assert wait_for(lambda: line in self.lines[start:], timeout), f"no {line!r}: {self.lines}"
        return self.lines[:self.lines.index(line, start)]

    def wait(self, line: str, timeout: float = 5.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if line in self.lines:
                return True
            time.sleep(0.02)
        return line in self.lines

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


@pytest.fixture
def subs() -> Iterator[list[Sub]]:
    made: list[Sub] = []
    yield made
    for s in made:
        s.close()


def admin(gk: Gatekeeper) -> Client:
    c = Client(gk.port, mqtt.MQTTv5, client_id=f"admin-{time.monotonic_ns()}")
    c.c.username_pw_set("admin", PASSWORD)
    c.connect()
    return c


def call(gk: Gatekeeper, device: str, method: str, **kwargs: Any) -> dict[str, Any]:
    c = admin(gk)
    try:
        reply = f"gatekeeper/kitchen/reply/{c.client_id}/r"
        c.subscribe(reply, 1)
        c.publish(f"gatekeeper/kitchen/device/{device}/call",
                  json.dumps({"method": method, "kwargs": kwargs}), 1,
                  properties=v5_props(ResponseTopic=reply, CorrelationData=b"x"))
        return dict(json.loads(c.get(5).payload))
    finally:
        c.close()


def state(gk: Gatekeeper, device: str) -> Any:
    out = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(gk.port), "-u", "view",
                          "-P", PASSWORD, "-t", f"gatekeeper/kitchen/device/{device}/state",
                          "-C", "1", "-W", "5"], capture_output=True, text=True, timeout=10)
    return json.loads(out.stdout)["value"]


@VERSIONS
def test_an_output_switches_with_its_own_payloads_and_retains_its_state(
        gk: Gatekeeper, proto: str, subs: list[Sub]) -> None:
    pub(gk, proto, "op", f"{PREFIX}/output/porch_light/set", "lamp off")
    watch = Sub(gk, proto, "view", f"{PREFIX}/output/porch_light")
    subs.append(watch)
    assert watch.wait(f"{PREFIX}/output/porch_light lamp off")  # retained, as configured
    pub(gk, proto, "op", f"{PREFIX}/output/porch_light/set", "lamp on")
    assert watch.wait(f"{PREFIX}/output/porch_light lamp on")
    assert state(gk, "porch_light") == 1  # the gatekeeper's own topic agrees
    late = Sub(gk, proto, "view", f"{PREFIX}/output/porch_light")
    subs.append(late)
    assert late.wait(f"{PREFIX}/output/porch_light lamp on")  # retained for a late reader
    pub(gk, proto, "op", f"{PREFIX}/output/porch_light/set", "lamp off")
    assert watch.wait(f"{PREFIX}/output/porch_light lamp off")


@VERSIONS
def test_default_payloads_set_on_ms_and_timed_set_ms(gk: Gatekeeper, proto: str,
                                                      subs: list[Sub]) -> None:
    watch = Sub(gk, proto, "view", f"{PREFIX}/output/fan", f"{PREFIX}/output/bell")
    subs.append(watch)
    t0 = time.monotonic()
    pub(gk, proto, "op", f"{PREFIX}/output/fan/set_on_ms", "300")
    assert watch.wait(f"{PREFIX}/output/fan ON")
    assert watch.wait(f"{PREFIX}/output/fan OFF")
    assert time.monotonic() - t0 >= 0.3
    watch.lines.clear()
    t0 = time.monotonic()
    pub(gk, proto, "op", f"{PREFIX}/output/fan/set_off_ms", "300")  # already off: stays off
    assert watch.wait(f"{PREFIX}/output/fan ON")  # then on after 300 ms
    assert time.monotonic() - t0 >= 0.3
    pub(gk, proto, "op", f"{PREFIX}/output/fan/set", "OFF")
    assert watch.wait(f"{PREFIX}/output/fan OFF")
    watch.lines.clear()
    t0 = time.monotonic()
    pub(gk, proto, "op", f"{PREFIX}/output/bell/set", "ON")  # timed_set_ms: 400
    assert watch.wait(f"{PREFIX}/output/bell ON")
    assert watch.wait(f"{PREFIX}/output/bell OFF")
    assert time.monotonic() - t0 >= 0.4


@VERSIONS
def test_a_viewer_and_bad_payloads_move_nothing_seen_from_another_client(
        gk: Gatekeeper, proto: str, subs: list[Sub]) -> None:
    pub(gk, proto, "op", f"{PREFIX}/output/porch_light/set", "lamp off")
    watch = Sub(gk, "mqttv5", "admin", f"{PREFIX}/output/#", "gatekeeper/kitchen/audit",
                "gatekeeper/kitchen/device/porch_light/state")
    subs.append(watch)
    watch.lines.clear()  # the retained ones
    pub(gk, proto, "view", f"{PREFIX}/output/porch_light/set", "lamp on")  # not its right
    pub(gk, proto, "op", f"{PREFIX}/output/porch_light/set", "ON")  # not this output's payload
    pub(gk, proto, "op", f"{PREFIX}/output/porch_light/set_on_ms", "soon")
    pub(gk, proto, "view", f"{PREFIX}/output/porch_light", "lamp on")  # a forged state
    pub(gk, proto, "op", f"{PREFIX}/output/porch_light", "lamp on")  # ... by an operator
    wait_for(lambda: sum("audit" in ln for ln in watch.lines) >= 3, 10)
    audits = [json.loads(ln.split(" ", 1)[1]) for ln in watch.lines if "audit" in ln]
    codes = sorted((a["username"], (a.get("error") or {}).get("code")) for a in audits)
    assert codes == [("op", "BAD_ARGUMENT"), ("op", "BAD_ARGUMENT"),
                     ("view", "NOT_AUTHORIZED")], audits
    assert all(a["source"] == "mqtt_io" and a["device"] == "porch_light" for a in audits)
    # the sentinel: the fan's mirror after a later command on the same hardware worker (and
    # the forged states were handled before their mosquitto_pub got its PUBACK)
    assert call(gk, "fan", "off")["ok"]
    start = len(watch.lines)
    assert call(gk, "fan", "on")["ok"]
    before = watch.until(f"{PREFIX}/output/fan ON", start)
    assert call(gk, "fan", "off")["ok"]
    assert f"{PREFIX}/output/porch_light lamp on" not in before, before
    assert not any('"value":1' in ln for ln in before if "porch_light/state" in ln), before
    assert state(gk, "porch_light") == 0


@VERSIONS
def test_inputs_with_inverted_payloads_and_an_interrupt_payload(
        gk: Gatekeeper, proto: str, subs: list[Sub]) -> None:
    watch = Sub(gk, proto, "view", f"{PREFIX}/input/#")
    subs.append(watch)
    # A pull-up input reads high when idle: inverted: true makes that IDLE (retained).
    assert watch.wait(f"{PREFIX}/input/doorbell IDLE")
    watch.lines.clear()
    assert call(gk, "doorbell", "sim_press")["ok"]  # the pin goes low
    assert watch.wait(f"{PREFIX}/input/doorbell PRESSED")
    assert call(gk, "doorbell", "sim_release")["ok"]
    assert watch.wait(f"{PREFIX}/input/doorbell IDLE")
    assert call(gk, "door", "sim_press")["ok"]  # falling edge: the interrupt payload
    assert watch.wait(f"{PREFIX}/input/door INT")
    assert call(gk, "door", "sim_release")["ok"]  # rising: not this interrupt's edge
    # the sentinel: the doorbell's input, changed by a later command on the same worker
    start = len(watch.lines)
    assert call(gk, "doorbell", "sim_press")["ok"]
    before = watch.until(f"{PREFIX}/input/doorbell PRESSED", start)
    assert before.count(f"{PREFIX}/input/door INT") == 1, before
    assert call(gk, "doorbell", "sim_release")["ok"]
    assert watch.wait(f"{PREFIX}/input/doorbell IDLE")


def test_status_running_then_stopped(tmp_path: Path) -> None:
    g = start_gatekeeper(tmp_path, config())
    try:
        watch = Sub(g, "mqttv311", "view", f"{PREFIX}/status")
        assert watch.wait(f"{PREFIX}/status running")
        g.stop()
        assert watch.wait(f"{PREFIX}/status stopped", 3), watch.lines
        watch.close()
    finally:
        if g.alive():
            g.stop()


def test_the_gatekeepers_own_topics_keep_working_side_by_side(gk: Gatekeeper,
                                                               subs: list[Sub]) -> None:
    watch = Sub(gk, "mqttv5", "view", f"{PREFIX}/output/porch_light")
    subs.append(watch)
    watch.lines.clear()  # the retained one
    pub(gk, "mqttv5", "op", "gatekeeper/kitchen/device/porch_light/set", "ON")
    assert watch.wait(f"{PREFIX}/output/porch_light lamp on")
    pub(gk, "mqttv5", "op", "gatekeeper/kitchen/device/porch_light/set", "OFF")
    assert watch.wait(f"{PREFIX}/output/porch_light lamp off")


def test_mqtt_ios_readme_example_imported_runs_with_its_own_topics(tmp_path: Path) -> None:
    """mqtt-io's README example through ``import-mqtt-io``, then served: the doorbell and
    the porch light on ``home/...`` as mqtt-io published them (an anonymous broker before,
    so anonymous clients keep working)."""
    from pi_mqtt_gpio.server.compat.mqtt_io_import import convert
    from tests.conftest import ROOT

    cfg = convert((ROOT / "tests/data/mqtt_io/readme.yml").read_text()).config
    cfg["broker"]["listeners"] = [{"type": "tcp", "host": "127.0.0.1", "port": 0}]
    cfg["node_id"] = "pi"
    for sensor in ("lm75_sensor", "ina219_sensor"):  # mqtt-io read them every 60 s
        cfg["devices"][sensor]["interval"] = 1
    cfg["auth"]["users"] = {"admin": {"password_hash": cheap_hash(PASSWORD),
                                      "role": "admin"}}
    g = start_gatekeeper(tmp_path, cfg)
    try:
        def mosq(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([tool, "-h", "127.0.0.1", "-p", str(g.port), *args],
                                  capture_output=True, text=True, timeout=10)

        assert mosq("mosquitto_sub", "-t", "home/status", "-C", "1", "-W", "5"
                    ).stdout.strip() == "running"
        watch = Sub(g, "mqttv311", None, "home/output/porch_light", "home/input/doorbell",
                    probe="home/status")
        try:
            mosq("mosquitto_pub", "-t", "home/output/porch_light/set", "-m", "ON")
            c = Client(g.port, mqtt.MQTTv5, client_id="admin-readme")
            c.c.username_pw_set("admin", PASSWORD)
            c.connect()
            c.publish("gatekeeper/pi/device/doorbell/call", json.dumps({"method": "sim_set",
                                                                         "args": [1]}), 1)
            c.close()
            assert watch.wait("home/output/porch_light ON", 10), watch.lines
            assert watch.wait("home/input/doorbell ON", 10), watch.lines  # high, not inverted
        finally:
            watch.close()
        # its LM75 and INA219 (simulated here) on mqtt-io's sensor topics, with 2 decimals
        got = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(g.port), "-v",
                              "-t", "home/sensor/porch_temperature", "-t", "home/sensor/current",
                              "-C", "2", "-W", "20"], capture_output=True, text=True,
                             timeout=30).stdout.splitlines()
        assert sorted(line.split(" ")[0] for line in got) == [
            "home/sensor/current", "home/sensor/porch_temperature"], got
        assert all(re.fullmatch(r"-?\d+\.\d\d", line.split(" ")[1]) for line in got), got
    finally:
        g.stop()


@pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5])
def test_wildcard_readers_get_only_the_mirrors_of_what_they_may_read(
        gk: Gatekeeper, version: int) -> None:
    """A role denied one device's topics subscribes to the whole mqtt-io prefix: it gets the
    other mirrors, never that device's (retained or live); a role that may read no device
    gets nothing there. Watched while an operator switches the denied device."""
    def login(user: str) -> Client:
        c = Client(gk.port, version, client_id=f"{user}-{version}-{time.monotonic_ns()}")
        c.c.username_pw_set(user, PASSWORD)
        c.connect()
        return c

    limited, nobody, watcher = login("limited"), login("nobody"), admin(gk)
    try:
        limited.subscribe(f"{PREFIX}/#", 1)
        codes = nobody.subscribe(f"{PREFIX}/#", 1)
        assert all(getattr(rc, "value", rc) >= 0x80 for rc in codes), codes
        nobody.subscribe("elsewhere/#", 1)  # for the sentinel
        pub(gk, "mqttv5", "op", f"{PREFIX}/output/porch_light/set", "lamp on")
        pub(gk, "mqttv5", "op", f"{PREFIX}/output/fan/set", "ON")
        pub(gk, "mqttv5", "op", f"{PREFIX}/output/porch_light/set", "lamp off")
        pub(gk, "mqttv5", "op", f"{PREFIX}/output/fan/set", "OFF")
        # the fan's last mirror is the sentinel: the worker ran the commands in order
        got = [(m.topic, m.payload) for m in limited.until(
            lambda m: m.topic == f"{PREFIX}/output/fan" and m.payload == b"OFF")]
        topics = {t for t, _ in got}
        assert f"{PREFIX}/input/doorbell" in topics, got  # retained
        assert not any("porch_light" in t for t in topics), got
        # every mirror was routed when limited got the last; published after that, this
        # sentinel comes after anything nobody could have got
        watcher.publish("elsewhere/sentinel", b"s", 1)
        nobody.nothing_until("elsewhere/sentinel")
    finally:
        limited.close()
        nobody.close()
        watcher.close()


@VERSIONS
def test_sensors_as_mqtt_io_printed_them(gk: Gatekeeper, proto: str, subs: list[Sub]) -> None:
    """An ADC's raw count with no decimals (retained), a distance in centimetres with two."""
    watch = Sub(gk, proto, "view", f"{PREFIX}/sensor/#")
    subs.append(watch)
    assert call(gk, "light_level", "sim_set", value=0.5)["ok"]
    metres = 1.25 if proto == "mqttv311" else 2.5  # a change each run (not retained)
    assert call(gk, "tank", "sim_set", distance=metres)["ok"]
    assert watch.wait(f"{PREFIX}/sensor/tank {metres * 100:.2f}"), watch.lines
    raw = None
    end = time.monotonic() + 5
    while time.monotonic() < end and raw is None:
        out = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(gk.port), "-u",
                              "view", "-P", PASSWORD, "-t",
                              "gatekeeper/kitchen/device/light_level/state", "-C", "1",
                              "-W", "5"], capture_output=True, text=True, timeout=10)
        doc = json.loads(out.stdout)
        raw = doc["raw_value"] if doc["value"] == 0.5 or doc["raw_value"] > 400 else None
    assert raw is not None and watch.wait(f"{PREFIX}/sensor/light_level {raw}"), watch.lines
    late = Sub(gk, proto, "view", f"{PREFIX}/sensor/light_level")  # retained
    subs.append(late)
    assert late.wait(f"{PREFIX}/sensor/light_level {raw}")


def test_an_input_without_settings_reads_by_level_as_mqtt_io_does(gk: Gatekeeper,
                                                                   subs: list[Sub]) -> None:
    """Served with the defaults (only_listed: false), a pulled-up input reads ON while idle
    (its level is high) and OFF while pressed, exactly as mqtt-io's default inverted: no."""
    watch = Sub(gk, "mqttv5", "view", f"{PREFIX}/input/knock")
    subs.append(watch)
    assert call(gk, "knock", "sim_press")["ok"]
    assert watch.wait(f"{PREFIX}/input/knock OFF")
    assert call(gk, "knock", "sim_release")["ok"]
    assert watch.wait(f"{PREFIX}/input/knock ON")


def test_a_retained_command_is_not_kept(gk: Gatekeeper) -> None:
    """A ``set`` sent with the retain flag runs once; a later subscriber (a restarted
    gatekeeper would be one) does not get it again."""
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(gk.port), "-u", "op", "-P",
                    PASSWORD, "-q", "1", "-r", "-t", f"{PREFIX}/output/fan/set", "-m", "ON"],
                   check=True, timeout=10)
    out = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(gk.port), "-u",
                          "admin", "-P", PASSWORD, "-t", f"{PREFIX}/output/fan/set", "-C", "1",
                          "-W", "2", "-v"], capture_output=True, text=True, timeout=10)
    assert out.stdout == "", out.stdout
    pub(gk, "mqttv5", "op", f"{PREFIX}/output/fan/set", "OFF")
