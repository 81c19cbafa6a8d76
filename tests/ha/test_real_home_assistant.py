"""Discovery proven against a real Home Assistant (2024.3.3, see scripts/ha-setup).

The gatekeeper runs in this process (so the MockFactory pins can be read) with every device
type on one node, its embedded broker on a free loopback port; Home Assistant runs as a
separate process and logs into that broker as a user with the built-in ``homeassistant``
role. The test reads HA's own entity and device registries, calls HA services and checks the
pins, and restarts HA and the gatekeeper. Any MQTT line in HA's log that rejects or fails on
what we sent fails it.

Skipped only with PI_MQTT_SKIP_HA=1, which scripts/test refuses in CI.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GatekeeperThread, cheap_hash
from tests.ha.harness import HomeAssistant, ha_venv

pytestmark = [
    pytest.mark.skipif(os.environ.get("PI_MQTT_SKIP_HA") == "1",
                       reason="PI_MQTT_SKIP_HA=1: the real Home Assistant stage"),
    # The first test waits for Home Assistant's one-time install (scripts/ha-setup, started
    # in the background by scripts/test): on a fresh machine that downloads about 630 MB
    # while the rest of the suite runs, which took 12 minutes on a loaded 2-core machine.
    pytest.mark.timeout(2400),
]

NODE = "hapi"
HA_USER, HA_PASSWORD = "hass", "hass-secret-1"
ADMIN, ADMIN_PASSWORD = "tester", "tester-secret-1"

# Every device type on one node (on the simulated lines of a Compute Module: 54 of them),
# an expander's button and the loopback watchdog.
DEVICES = """
  porch:   {type: LED, pin: 17, description: Porch light}
  heater:  {type: OutputDevice, pin: 23}
  pump:    {type: DigitalOutputDevice, pin: 28}
  beeper:  {type: Buzzer, pin: 26, lease_required: true}
  dimmer:  {type: PWMLED, pin: 18}
  fader:   {type: PWMOutputDevice, pin: 19}
  mood:    {type: RGBLED, red: 5, green: 6, blue: 13}
  tune:    {type: TonalBuzzer, pin: 29}
  screen:  {type: Cover, up: 20, down: 21, travel_time_up_s: 2, travel_time_down_s: 2,
            endstop_overrun_s: 0.2, initial_position: 0, device_class: shutter}
  fan:     {type: Motor, forward: 2, backward: 3}
  drive:   {type: PhaseEnableMotor, phase: 14, enable: 15}
  arm:     {type: Servo, pin: 16}
  pan:     {type: AngularServo, pin: 12, min_angle: -90, max_angle: 90}
  wall:    {type: Button, pin: 27, gestures: {double_click_s: 0.3, long_press_s: 0.8}}
  bell:    {type: Button, pin: 22}
  door:    {type: DigitalInputDevice, pin: 4}
  pir:     {type: MotionSensor, pin: 7}
  line:    {type: LineSensor, pin: 0}
  ldr:     {type: LightSensor, pin: 1}
  gap:     {type: DistanceSensor, echo: 24, trigger: 25}
  adc:     {type: MCP3008, channel: 0}
  lamp:    {type: LED, pin: 30, homeassistant: {component: switch, icon: "mdi:lamp"}}
  hidden:  {type: LED, pin: 31, homeassistant: false}
  volume:  {type: AlsaMixer, control: Master}
  hall:    {type: Button, pin: "io1:3"}
  climate: {type: BME280, interval: 1}
"""


def _converted() -> str:
    """mqtt-io's own Home Assistant example (tests/data/mqtt_io/ha_discovery.yml) through
    ``import-mqtt-io``, on free lines: its entities must show as mqtt-io showed them."""
    import json

    from pi_mqtt_gpio.server.compat.mqtt_io_import import convert
    from tests.conftest import ROOT

    devices = convert((ROOT / "tests/data/mqtt_io/ha_discovery.yml").read_text(),
                      hash_password=str).config["devices"]
    devices["door_sensor"]["pin"], devices["hall_fan"]["pin"] = 34, 35
    return "\n".join(f"  {name}: {json.dumps(dev)}" for name, dev in devices.items()) + "\n"


DEVICES += _converted()
EXTRA = """
expanders: {io1: {type: MCP23017}}
watchdog: {out: 32, in: 33}
"""

# unique_id -> the entity's domain in HA
EXPECTED = {
    "porch": "light", "heater": "switch", "pump": "switch", "beeper": "switch",
    "dimmer": "light", "fader": "light", "mood": "light", "screen": "cover",
    "fan": "number", "drive": "number", "arm": "number", "pan": "number",
    "wall": "binary_sensor", "wall_event": "event", "bell": "binary_sensor",
    "bell_event": "event", "door": "binary_sensor", "pir": "binary_sensor",
    "line": "binary_sensor", "ldr": "binary_sensor", "gap": "sensor", "adc": "sensor",
    "lamp": "switch", "health": "binary_sensor", "volume": "number",
    "hall": "binary_sensor", "hall_event": "event", "watchdog": "binary_sensor",
    "door_sensor": "binary_sensor", "hall_fan": "switch",
    "climate_temperature": "sensor", "climate_humidity": "sensor", "climate_pressure": "sensor",
}


def config_text(tmp: Path, devices: str = DEVICES) -> str:
    return f"""
node_id: {NODE}
broker: {{listeners: [{{type: tcp, host: 127.0.0.1, port: 0}}]}}
auth:
  users:
    {HA_USER}: {{password_hash: '{cheap_hash(HA_PASSWORD)}', role: homeassistant}}
    {ADMIN}: {{password_hash: '{cheap_hash(ADMIN_PASSWORD)}', role: admin}}
persistence: {{path: {tmp / 'state.json'}, autosave_s: 0.5}}
safety: {{min_relay_interval_s: 0, min_command_interval_s: 0, flap_lockout_s: 0}}
devices:
{devices}
{EXTRA}
"""


def wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        try:
            last = predicate()
        except AssertionError:
            raise
        except Exception as exc:  # HA restarting: its API is down for a moment
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


class Stage:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        venv = ha_venv()  # (first: it may wait for the one-time install)
        self.gk = GatekeeperThread(config_text(tmp))
        self.port = self.gk.start()
        self.ha = HomeAssistant(venv, tmp / "ha")
        self.ha.add_user("tester", "tester-pass")
        self.ha.start()
        self.ha.login("tester", "tester-pass")
        self.ha.add_mqtt(self.port, HA_USER, HA_PASSWORD)

    def ours(self) -> dict[str, dict[str, Any]]:
        """Our entities in HA's entity registry, by the part of unique_id after the node."""
        return {e["unique_id"].removeprefix(f"{NODE}_"): e for e in self.ha.entities()
                if e.get("platform") == "mqtt" and str(e.get("unique_id", "")).startswith(
                    f"{NODE}_")}

    def entity(self, key: str) -> str:
        return str(self.ours()[key]["entity_id"])

    def state(self, key: str) -> dict[str, Any]:
        return self.ha.states()[self.entity(key)]


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    s = Stage(tmp_path_factory.mktemp("ha-stage"))
    try:
        def registered() -> bool:
            problems = s.ha.mqtt_problems()
            assert not problems, "Home Assistant refused:\n" + "\n".join(problems)
            return len(s.ours()) >= len(EXPECTED)

        wait(registered, 30, "every entity registered")
        yield s
    finally:
        s.ha.stop()
        s.gk.close()
        print("\n".join(s.ha.mqtt_problems()))


def test_every_device_appears_with_the_right_entity_type(stage: Stage) -> None:
    ours = stage.ours()
    got = {key: e["entity_id"].split(".")[0] for key, e in ours.items()}
    print("entities:", sorted(e["entity_id"] for e in ours.values()))
    assert got == EXPECTED
    # one device for the node, holding every entity
    devices = [d for d in stage.ha.devices()
               if ["mqtt", f"pi-mqtt-gpio_{NODE}"] in d["identifiers"]]
    assert len(devices) == 1
    device = devices[0]
    assert device["manufacturer"] == "pi-mqtt-gpio" and device["model"] == "GPIO Gatekeeper"
    assert device["name"] == NODE and device["sw_version"]
    assert {e["device_id"] for e in ours.values()} == {device["id"]}
    assert ours["health"]["entity_category"] == "diagnostic"
    # the states are read: nothing unknown or unavailable (events have no state until one)
    states = stage.ha.states()
    assert states[ours["lamp"]["entity_id"]]["attributes"].get("icon") == "mdi:lamp"

    twin = stage.gk.run(lambda: dict(stage.gk.daemon.twin.states))  # type: ignore[union-attr]
    # a detached servo has no position: HA rightly shows it as unknown
    detached = {key for key in ("arm", "pan") if twin[key]["value"] is None}
    assert detached == {"arm", "pan"}

    def unread() -> list[str]:
        now = stage.ha.states()
        return [key for key, e in ours.items() if not key.endswith("_event")
                and now[e["entity_id"]]["state"] in ("unknown", "unavailable")
                and not (key in detached and now[e["entity_id"]]["state"] == "unknown")]

    try:
        wait(lambda: not unread(), 10, "every state read")
    finally:
        print("not read:", unread())
    states = stage.ha.states()
    assert states[ours["screen"]["entity_id"]]["state"] == "closed"
    assert states[ours["health"]["entity_id"]]["state"] == "off"
    assert stage.ha.mqtt_problems() == []


def test_a_sensor_shows_each_value_with_its_unit_and_class(stage: Stage) -> None:
    want = {"climate_temperature": ("°C", "temperature"), "climate_humidity": ("%", "humidity"),
            "climate_pressure": ("hPa", "pressure")}
    for key, (unit, device_class) in want.items():
        def read(key: str = key) -> dict[str, Any] | None:
            state = stage.state(key)
            return state if state["state"] not in ("unknown", "unavailable") else None

        state = wait(read, 10, f"{key} read")
        float(state["state"])
        attributes = state["attributes"]
        assert attributes["unit_of_measurement"] == unit
        assert attributes["device_class"] == device_class
        assert attributes["state_class"] == "measurement"
    # the sensor's own availability: a sensor that stops answering is unavailable in HA
    daemon = stage.gk.daemon
    assert daemon is not None
    adapter = daemon.hw.adapters["climate"]
    async def sim_fail(failed: bool) -> None:
        await daemon.hw.submit(adapter.do_sim_fail, failed)  # type: ignore[attr-defined]

    stage.gk.run(lambda: sim_fail(True))
    wait(lambda: stage.state("climate_temperature")["state"] == "unavailable", 10,
         "the failing sensor unavailable")
    stage.gk.run(lambda: sim_fail(False))
    wait(lambda: stage.state("climate_temperature")["state"] not in ("unknown", "unavailable"),
         10, "the sensor back")


def test_home_assistant_services_move_the_pins(stage: Stage) -> None:
    ha, gk = stage.ha, stage.gk
    ha.call("light", "turn_on", stage.entity("dimmer"), brightness=128)
    wait(lambda: abs(gk.pin("dimmer", "value") - 128 / 255) < 0.01, 5, "dimmer at 128/255")
    ha.call("light", "turn_on", stage.entity("mood"), rgb_color=[255, 0, 0])
    wait(lambda: gk.pin("mood", "value")[0] > 0.99 and gk.pin("mood", "value")[1] == 0,
         5, "mood red")
    ha.call("switch", "turn_on", stage.entity("heater"))
    wait(lambda: gk.pin("heater", "value") == 1, 5, "heater on")
    ha.call("switch", "turn_off", stage.entity("heater"))
    wait(lambda: gk.pin("heater", "value") == 0, 5, "heater off")
    assert gk.pin("heater").pin.state == 0
    ha.call("number", "set_value", stage.entity("pan"), value=45)
    wait(lambda: abs((gk.pin("pan", "angle") or 0) - 45) < 0.5, 5, "pan at 45")
    ha.call("number", "set_value", stage.entity("fan"), value=-0.5)
    wait(lambda: gk.pin("fan", "value") == -0.5, 5, "fan backward at half speed")
    assert gk.pin("fan").backward_device.pin.state == pytest.approx(0.5)
    ha.call("cover", "set_cover_position", stage.entity("screen"), position=40)
    wait(lambda: stage.state("screen")["attributes"].get("current_position") == 40, 10,
         "screen at 40 in HA")
    adapter: Any = stage.gk.daemon.hw.adapters["screen"]  # type: ignore[union-attr]
    assert adapter.up.pin.state == 0 and adapter.down.pin.state == 0
    assert any(s.state for s in adapter.up.pin.states[1:])  # the up relay did run
    wait(lambda: stage.state("dimmer")["attributes"].get("brightness") == 128, 5,
         "HA shows brightness 128")
    assert stage.ha.mqtt_problems() == []


def test_a_refused_command_snaps_back_in_home_assistant(stage: Stage) -> None:
    entity = stage.entity("beeper")  # lease_required: HA holds no lease
    stage.ha.call("switch", "turn_on", entity)
    time.sleep(1.0)
    assert stage.gk.pin("beeper", "value") == 0
    assert stage.state("beeper")["state"] == "off"


def test_home_assistant_restart_keeps_everything(stage: Stage) -> None:
    stage.ha.stop()
    stage.ha.start()
    stage.ha.login("tester", "tester-pass")
    wait(lambda: len(stage.ours()) == len(EXPECTED), 30, "entities after HA restart")
    wait(lambda: stage.state("screen")["state"] == "open"
         and stage.state("screen")["attributes"].get("current_position") == 40, 20,
         "screen state read again after HA restart")
    assert stage.state("dimmer")["attributes"].get("brightness") == 128
    assert stage.ha.mqtt_problems() == []


def test_gatekeeper_restart_goes_unavailable_and_back(stage: Stage) -> None:
    stage.gk.stop()
    wait(lambda: stage.state("porch")["state"] == "unavailable", 15, "unavailable when down")
    # the same node, one device fewer: its entity is removed from HA at the next start
    fewer = DEVICES.replace('  pump:    {type: DigitalOutputDevice, pin: 28}\n', "")
    stage.gk.text = config_text(stage.tmp, fewer).replace("port: 0", f"port: {stage.port}")
    stage.gk.start()
    wait(lambda: stage.state("porch")["state"] == "off", 20, "available again")
    wait(lambda: "pump" not in stage.ours(), 20, "the removed device's entity gone")
    assert len(stage.ours()) == len(EXPECTED) - 1
    assert stage.ha.mqtt_problems() == []


def test_converted_mqtt_io_discovery_shows_the_same_entities(stage: Stage) -> None:
    """mqtt-io announced "Front Door" (a door binary_sensor) and "Hall Fan" (a switch; its
    device_class fan is not one Home Assistant takes for a switch, so the importer leaves it
    out): the converted config shows the same entities."""
    ours = stage.ours()
    door, fan = ours["door_sensor"], ours["hall_fan"]
    assert door["entity_id"].startswith("binary_sensor.") and fan["entity_id"].startswith(
        "switch.")
    states = stage.ha.states()
    assert "Front Door" in states[door["entity_id"]]["attributes"]["friendly_name"]
    assert "Hall Fan" in states[fan["entity_id"]]["attributes"]["friendly_name"]
    assert states[door["entity_id"]]["attributes"].get("device_class") == "door"
    stage.ha.call("switch", "turn_on", fan["entity_id"])
    wait(lambda: stage.gk.pin("hall_fan", "value") == 1, 5, "hall fan on")
