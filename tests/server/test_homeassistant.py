"""Home Assistant discovery: the configs made from the registry (pure), the payloads HA
sends to ``set``, and end to end over a real socket: HA's birth message brings every config
and state back within a second, a device removed from the config is cleared at the next
start, and a refused ``set`` republishes the state so that HA's switch snaps back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from pi_mqtt_gpio.server.config_loader import ConfigError, parse_config
from pi_mqtt_gpio.server.devices import registry
from pi_mqtt_gpio.server.homeassistant import allowed_components, discovery
from pi_mqtt_gpio.topics import Topics
from tests.conftest import Client, broker_config, start_gatekeeper, wait_for

DEVICES = """
node_id: pi
devices:
  porch: {type: LED, pin: 17, description: Porch light}
  heater: {type: OutputDevice, pin: 23}
  dimmer: {type: PWMLED, pin: 18}
  mood: {type: RGBLED, red: 5, green: 6, blue: 13}
  screen: {type: Cover, up: 20, down: 21, device_class: shutter}
  pan: {type: AngularServo, pin: 12, min_angle: -90, max_angle: 90}
  fan: {type: Motor, forward: 2, backward: 3}
  wall: {type: Button, pin: 27, gestures: {}}
  bell: {type: Button, pin: 22}
  pir: {type: MotionSensor, pin: 4}
  gap: {type: DistanceSensor, echo: 24, trigger: 25}
  adc: {type: MCP3008, channel: 0}
  tune: {type: TonalBuzzer, pin: 26}
  lamp: {type: LED, pin: 16, homeassistant: {component: switch, icon: "mdi:lamp",
                                            enabled_by_default: false}}
  hidden: {type: LED, pin: 19, homeassistant: false}
"""


def configs() -> dict[str, dict[str, Any]]:
    config = parse_config(DEVICES)
    topics = Topics("gatekeeper", "pi")
    events = {"wall": ["pressed", "released", "held", "single", "double", "long_start",
                       "long_end"], "bell": ["pressed", "released", "held"]}
    return discovery(topics, dict(config.devices), prefix="homeassistant", version="1.2.3",
                     events=lambda name: events.get(name, []))


def test_every_device_becomes_the_right_entity() -> None:
    got = configs()
    kinds = {topic.split("/")[1] + ":" + topic.split("/")[3] for topic in got}
    assert kinds == {
        "light:porch", "switch:heater", "light:dimmer", "light:mood", "cover:screen",
        "number:pan", "number:fan", "binary_sensor:wall", "event:wall_event",
        "binary_sensor:bell", "event:bell_event", "binary_sensor:pir", "sensor:gap",
        "sensor:adc", "switch:lamp", "binary_sensor:health"}  # no tune, no hidden
    for topic, payload in got.items():
        _prefix, _component, node, object_id, leaf = topic.split("/")
        assert node == "pi" and leaf == "config"
        assert payload["unique_id"] == f"pi_{object_id}"
        assert payload["availability_topic"] == "gatekeeper/pi/status"
        assert payload["device"] == {"identifiers": ["pi-mqtt-gpio_pi"], "name": "pi",
                                     "manufacturer": "pi-mqtt-gpio", "model": "GPIO Gatekeeper",
                                     "sw_version": "1.2.3"}
        for key, value in payload.items():
            if key.endswith("command_topic") or key == "set_position_topic":
                assert value == f"gatekeeper/pi/device/{object_id.split('_')[0]}/set"


def test_payload_details() -> None:
    got = configs()
    porch = got["homeassistant/light/pi/porch/config"]
    assert porch["name"] == "Porch light" and porch["payload_on"] == "ON"
    dimmer = got["homeassistant/light/pi/dimmer/config"]
    assert dimmer["brightness_scale"] == 255
    assert "value / 255" in dimmer["brightness_command_template"]
    cover = got["homeassistant/cover/pi/screen/config"]
    assert cover["device_class"] == "shutter" and cover["position_open"] == 100
    assert cover["payload_stop"] == "STOP" and cover["position_template"] == \
        "{{ value_json.position }}"
    pan = got["homeassistant/number/pi/pan/config"]
    assert (pan["min"], pan["max"], pan["unit_of_measurement"]) == (-90, 90, "°")
    wall = got["homeassistant/event/pi/wall_event/config"]
    assert "double" in wall["event_types"] and wall["state_topic"].endswith("/wall/event")
    assert got["homeassistant/binary_sensor/pi/pir/config"]["device_class"] == "motion"
    gap = got["homeassistant/sensor/pi/gap/config"]
    assert gap["unit_of_measurement"] == "m" and gap["device_class"] == "distance"
    lamp = got["homeassistant/switch/pi/lamp/config"]
    assert lamp["icon"] == "mdi:lamp" and lamp["enabled_by_default"] is False
    health = got["homeassistant/binary_sensor/pi/health/config"]
    assert health["device_class"] == "problem" and health["entity_category"] == "diagnostic"


def test_every_type_has_a_decision() -> None:
    """Each registered type is either shown (its default component first) or, by choice,
    not (TonalBuzzer): a new type must be decided on here."""
    hidden = {name for name in registry if not allowed_components(name)}
    assert hidden == {"TonalBuzzer"}


def test_a_component_the_type_cannot_be_is_refused() -> None:
    with pytest.raises(ConfigError, match="a PWMLED can be shown as: light, number"):
        parse_config("devices: {d: {type: PWMLED, pin: 4, homeassistant: {component: cover}}}")
    with pytest.raises(ConfigError, match="only a two-state input"):
        parse_config("devices: {d: {type: LED, pin: 4, homeassistant: {inverted: true}}}")


def test_an_inverted_input_is_on_while_inactive() -> None:
    config = parse_config("""
devices:
  door: {type: DigitalInputDevice, pin: 24, homeassistant: {inverted: true, name: Door}}
  bell: {type: Button, pin: 22}
""")
    out = discovery(Topics("gatekeeper", "pi"), dict(config.devices), prefix="homeassistant",
                    version="1", events=lambda name: [])
    door = out["homeassistant/binary_sensor/pi/door/config"]
    bell = out["homeassistant/binary_sensor/pi/bell/config"]
    assert door["value_template"] == "{{ 'OFF' if value_json.is_active else 'ON' }}"
    assert bell["value_template"] == "{{ 'ON' if value_json.is_active else 'OFF' }}"


@pytest.mark.parametrize(("device", "payload", "expected"), [
    ("porch", '{"state": "ON"}', ("on", {})),
    ("porch", '{"state": "OFF"}', ("off", {})),
    ("dimmer", '{"state":"ON","brightness":128}', ("value", {"value": 0.502})),
    ("dimmer", "0.5019", ("value", {"value": 0.5019})),
    ("dimmer", '{"state": "ON"}', ("on", {})),
    ("mood", "255,0,128", ("color", {"color": (1.0, 0.0, 128 / 255)})),
    ("mood", '{"state":"ON","color":{"r":255,"g":0,"b":0},"brightness":51}',
     ("color", {"color": (0.2, 0.0, 0.0)})),
    ("screen", "40", ("set_position", {"position": 40.0})),
    ("screen", "STOP", ("stop", {})),
    ("pan", "45.0", ("angle", {"angle": 45.0})),
    ("fan", "-0.5", ("value", {"value": -0.5})),
])
def test_payloads_home_assistant_sends(device: str, payload: str,
                                       expected: tuple[str, dict[str, Any]]) -> None:
    config = parse_config(DEVICES)
    dev = config.devices[device]
    adapter = registry[dev.type](device, dev, simulate=True, emit=lambda *a: None)
    method, kwargs = adapter.parse_set(payload)
    assert method == expected[0]
    assert kwargs == pytest.approx(expected[1]) if "color" not in kwargs else \
        kwargs["color"] == pytest.approx(expected[1]["color"], abs=1e-3)


@pytest.mark.parametrize("payload", ['{"state": "MAYBE"}', '{"state":"ON","brightness":300}',
                                     '{"state":"ON","color":{"r":1}}', "{not json"])
def test_bad_json_light_commands_are_refused(payload: str) -> None:
    config = parse_config(DEVICES)
    adapter = registry["RGBLED"]("mood", config.devices["mood"], simulate=True,
                                 emit=lambda *a: None)
    with pytest.raises(Exception) as err:
        adapter.parse_set(payload)
    assert getattr(err.value, "code", None) is not None and err.value.code.value == "BAD_ARGUMENT"


# --- end to end ----------------------------------------------------------------------------
def ha_config(tmp: Path, devices: dict[str, Any]) -> dict[str, Any]:
    return broker_config(node_id="pi", devices=devices,
                         persistence={"path": str(tmp / "state.json"), "autosave_s": 0.2})


SENTINEL = "homeassistant/test/sentinel"


def settled(c: Client) -> list[mqtt.MQTTMessage]:
    """What ``c`` (subscribed to homeassistant/#) got before a sentinel it publishes now: the
    retained messages of its subscriptions, and everything the gatekeeper published before."""
    c.publish(SENTINEL, b"sentinel", 1)
    return c.until(SENTINEL)


def until_seen(c: Client, topics: set[str]) -> list[mqtt.MQTTMessage]:
    """Every message until each of ``topics`` arrived (a republish published at once: its
    last one)."""
    got: list[mqtt.MQTTMessage] = []
    missing = set(topics)
    while missing:
        m = c.get(10)
        got.append(m)
        missing.discard(m.topic)
    return got


def saved_configs(tmp: Path) -> list[str]:
    """The discovery topics the state file holds (none while it is not written yet)."""
    try:
        return list(json.loads((tmp / "state.json").read_text())["homeassistant"])
    except (OSError, ValueError, KeyError):
        return []


@pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_birth_message_republishes_every_config_and_state_within_a_second(
        tmp_path: Path, version: int) -> None:
    devices = {"porch": {"type": "LED", "pin": 17}, "bell": {"type": "Button", "pin": 22}}
    gk = start_gatekeeper(tmp_path, ha_config(tmp_path, devices))
    try:
        ha = Client(gk.port, version, client_id="ha")
        ha.connect()
        ha.subscribe("homeassistant/#", 1)
        ha.subscribe("gatekeeper/pi/device/+/state", 1)
        retained = settled(ha)
        configs = {m.topic for m in retained if m.topic.endswith("/config")}
        assert len(configs) == 4  # light, binary_sensor + event, health
        states = {"gatekeeper/pi/device/porch/state", "gatekeeper/pi/device/bell/state"}
        ha.publish("homeassistant/status", "online", 1)
        # the republish goes out at once, configs first, states last; then a sentinel
        again = until_seen(ha, configs | states)
        again += settled(ha)
        fresh = [m for m in again if not m.retain or m.topic.endswith("/config")]
        assert {m.topic for m in again if m.topic.endswith("/config")} == configs
        assert {m.topic for m in again if m.topic.endswith("/state")} == states
        assert fresh
        ha.close()
    finally:
        assert gk.stop() == 0


def test_a_removed_device_is_cleared_at_the_next_start(tmp_path: Path) -> None:
    devices = {"porch": {"type": "LED", "pin": 17}, "old": {"type": "LED", "pin": 18}}
    gk = start_gatekeeper(tmp_path, ha_config(tmp_path, devices))
    # saved within autosave_s
    assert wait_for(lambda: "homeassistant/light/pi/old/config" in saved_configs(tmp_path), 10)
    assert gk.stop() == 0
    assert "homeassistant/light/pi/old/config" in saved_configs(tmp_path)
    del devices["old"]
    gk = start_gatekeeper(tmp_path, ha_config(tmp_path, devices))
    try:
        ha = Client(gk.port, mqtt.MQTTv311, client_id="ha")
        ha.connect()
        ha.subscribe("homeassistant/#", 1)
        before = {m.topic for m in settled(ha)}
        assert "homeassistant/light/pi/old/config" not in before  # nothing retained for it
        ha.publish("homeassistant/status", "online", 1)  # HA (re)started: it hears the clear
        # the republish (the clear with it) goes out at once; then a sentinel
        after = until_seen(ha, before | {"homeassistant/light/pi/old/config"})
        after += settled(ha)
        cleared = [m for m in after if m.topic == "homeassistant/light/pi/old/config"]
        assert len(cleared) == 1 and cleared[0].payload == b""
        ha.close()
        # cleared: forgotten (autosaved)
        assert wait_for(lambda: "homeassistant/light/pi/old/config"
                        not in saved_configs(tmp_path), 10)
    finally:
        assert gk.stop() == 0
    saved = saved_configs(tmp_path)
    assert saved and "homeassistant/light/pi/old/config" not in saved  # cleared: forgotten


def test_a_refused_set_republishes_the_state_unchanged(tmp_path: Path) -> None:
    devices = {"gate": {"type": "OutputDevice", "pin": 17, "lease_required": True}}
    gk = start_gatekeeper(tmp_path, ha_config(tmp_path, devices))
    try:
        watcher = Client(gk.port, mqtt.MQTTv5, client_id="watcher")
        watcher.connect()
        watcher.subscribe("gatekeeper/pi/device/gate/state", 1)
        first = watcher.get()
        assert first.retain and json.loads(first.payload)["value"] == 0
        ha = Client(gk.port, mqtt.MQTTv311, client_id="ha")
        ha.connect()
        ha.publish("gatekeeper/pi/device/gate/set", "ON", 1)  # LEASE_REQUIRED
        again = watcher.get(2)
        assert json.loads(again.payload)["value"] == 0 and not again.retain
        ha.close()
        watcher.close()
    finally:
        assert gk.stop() == 0


def test_a_flood_of_birth_messages_republishes_at_most_every_two_seconds() -> None:
    from pi_mqtt_gpio.server.homeassistant import Discovery

    published: list[str] = []
    timers: list[tuple[float, Any]] = []
    d = Discovery({"homeassistant/light/pi/a/config": {"name": "a"}}, prefix="homeassistant",
                  publish=lambda t, p, q, r: published.append(t), republish_states=lambda: None,
                  call_later=lambda delay, fn: timers.append((delay, fn)) or _Handle())
    for _ in range(100):
        d.birth(b"online")
    assert len(timers) == 1 and timers[0][0] == pytest.approx(0.2)  # coalesced
    timers.pop()[1]()
    assert published == ["homeassistant/light/pi/a/config"]
    d.birth(b"online")
    assert timers[0][0] > 1.5  # the next one waits for the spacing
    d.birth(b"offline")
    assert len(timers) == 1


class _Handle:
    def cancel(self) -> None:
        pass


def test_every_config_has_an_origin_and_both_entity_id_keys() -> None:
    got = configs()
    for topic, payload in got.items():
        component = topic.split("/")[1]
        assert payload["origin"] == {"name": "pi-mqtt-gpio", "sw_version": "1.2.3"}
        # default_entity_id for HA 2025.10+, object_id for the releases before it
        assert payload["default_entity_id"] == f"{component}.{payload['unique_id']}"
        assert payload["object_id"] == payload["unique_id"]


def test_a_sensor_is_one_entity_per_value_with_its_class_unit_and_availability() -> None:
    config = parse_config("""
node_id: pi
devices:
  climate: {type: BME280, digits: 1}
  supply: {type: INA219}
  adc: {type: ADS1115, channels: [1]}
""")
    got = discovery(Topics("gatekeeper", "pi"), dict(config.devices), prefix="homeassistant",
                    version="1.2.3", events=lambda name: [], support_url="https://example.org/x")
    sensors = {t.split("/")[3]: p for t, p in got.items() if t.split("/")[1] == "sensor"}
    assert {key: (p["device_class"], p["unit_of_measurement"]) for key, p in sensors.items()} \
        == {"climate_temperature": ("temperature", "°C"), "climate_humidity": ("humidity", "%"),
            "climate_pressure": ("pressure", "hPa"), "supply_bus_voltage": ("voltage", "V"),
            "supply_shunt_voltage": ("voltage", "mV"), "supply_current": ("current", "A"),
            "supply_power": ("power", "W"), "adc_a1": ("voltage", "V")}
    temperature = sensors["climate_temperature"]
    assert temperature["state_class"] == "measurement"
    assert temperature["value_template"] == "{{ value_json.temperature }}"
    assert temperature["state_topic"] == "gatekeeper/pi/device/climate/state"
    assert temperature["suggested_display_precision"] == 1
    assert "availability_topic" not in temperature
    assert temperature["availability_mode"] == "all"
    assert temperature["availability"] == [
        {"topic": "gatekeeper/pi/status", "payload_available": "online",
         "payload_not_available": "offline"},
        {"topic": "gatekeeper/pi/device/climate/state",
         "value_template": "{{ 'online' if value_json.available else 'offline' }}"}]
    assert temperature["origin"]["support_url"] == "https://example.org/x"
    assert allowed_components("BME280") == ("sensor",)
