"""The ``compat:`` config section: mqtt-io's topics and payloads for this node's devices."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Any, Literal

from pi_mqtt_gpio.server.devices.sensors import SENSOR_TYPES as POLLED_SENSORS
from pi_mqtt_gpio.server.devices.sensors import values_of
from pi_mqtt_gpio.server.schema import NonEmpty, Problem, Range, section

__all__ = [
    "INPUT_TYPES",
    "OUTPUT_TYPES",
    "SENSOR_TYPES",
    "CompatConfig",
    "MqttIoCompatConfig",
    "MqttIoInput",
    "MqttIoOutput",
    "MqttIoSensor",
    "compat_problems",
]

# Devices mqtt-io's digital outputs and inputs stand for: on/off outputs, two-state inputs.
OUTPUT_TYPES = ("OutputDevice", "DigitalOutputDevice", "LED", "Buzzer", "PWMOutputDevice",
                "PWMLED")
INPUT_TYPES = ("Button", "DigitalInputDevice", "MotionSensor", "LineSensor", "LightSensor")
SENSOR_TYPES = ("MCP3001", "MCP3002", "MCP3004", "MCP3008", "MCP3201", "MCP3202", "MCP3204",
                "MCP3208", "MCP3301", "MCP3302", "MCP3304", "DistanceSensor", *POLLED_SENSORS)

Payload = Annotated[str, NonEmpty()]


@section
class MqttIoOutput:
    """One of mqtt-io's ``digital_outputs``: ``<prefix>/output/<name>``."""

    device: str | None = None  # the gatekeeper's device (default: the same name)
    on_payload: Payload = "ON"
    off_payload: Payload = "OFF"
    retain: bool = False
    timed_set_ms: Annotated[int, Range(ge=1, le=86_400_000)] | None = None


@section
class MqttIoInput:
    """One of mqtt-io's ``digital_inputs``: ``<prefix>/input/<name>``."""

    device: str | None = None
    on_payload: Payload = "ON"
    off_payload: Payload = "OFF"
    retain: bool = False
    # mqtt-io's meaning, by the pin's level: on_payload while the level is high, or low
    # when inverted (a pull-up button reads "OFF" while pressed unless inverted).
    inverted: bool = False
    # With interrupt_payload: that payload (instead of on/off) at each edge of this kind,
    # by the pin's level as mqtt-io counts them.
    interrupt: Literal["rising", "falling", "both"] | None = None
    interrupt_payload: Payload | None = None


@section
class MqttIoSensor:
    """One of mqtt-io's ``sensor_inputs``: ``<prefix>/sensor/<name>``, the number as mqtt-io
    printed it (``digits`` decimals) from one key of the device's state times ``scale``."""

    device: str | None = None
    field: Literal["value", "raw_value", "voltage", "distance", "temperature", "humidity",
                   "pressure", "illuminance", "bus_voltage", "shunt_voltage", "current", "power",
                   "a0", "a1", "a2", "a3"] = "value"
    scale: Annotated[float, Range(gt=0, le=1e9)] = 1.0
    digits: Annotated[int, Range(ge=0, le=10)] = 2
    retain: bool = False


@section
class MqttIoCompatConfig:
    topic_prefix: str  # "" as mqtt-io allows: topics then start with "/"
    status_topic: Annotated[str, NonEmpty()] = "status"
    status_payload_running: Payload = "running"
    status_payload_stopped: Payload = "stopped"
    status_payload_dead: Payload = "dead"
    outputs: dict[str, MqttIoOutput] = field(default_factory=dict)
    inputs: dict[str, MqttIoInput] = field(default_factory=dict)
    sensors: dict[str, MqttIoSensor] = field(default_factory=dict)  # only those listed
    # false: every on/off output and two-state input is served under its own name too
    only_listed: bool = False
    # External broker mode: the user whose role applies to commands on these topics
    # (the broker's own ACL decides who may publish them).
    username: Annotated[str, NonEmpty()] = "mqtt-io"
    # External broker mode: the client id of the connection that holds the status Will.
    client_id: str | None = None


@section
class CompatConfig:
    mqtt_io: MqttIoCompatConfig | None = None


def _bad_level(text: str) -> bool:
    return any(c in text for c in "+#\x00")


def compat_problems(compat: CompatConfig, devices: dict[str, Any], root: str,
                    ha_prefix: str) -> list[Problem | str]:
    """The prefix is a plain topic apart from the gatekeeper's own tree and Home Assistant's;
    every listed name is one topic level and names a device of a type it can stand for."""
    cfg = compat.mqtt_io
    if cfg is None:
        return []
    problems: list[Problem | str] = []
    where = ("compat", "mqtt_io")
    prefix = cfg.topic_prefix
    if _bad_level(prefix) or prefix.endswith("/"):
        problems.append(((*where, "topic_prefix"), "must be a topic without '+', '#' and "
                         "without a trailing '/'"))
    for other, what in ((root, "the gatekeeper's own topics"),
                        (ha_prefix, "Home Assistant's discovery prefix")):
        if prefix == other or prefix.startswith(other + "/") or (
                prefix and other.startswith(prefix + "/")):
            problems.append(((*where, "topic_prefix"), f"{prefix!r} overlaps {what} "
                             f"({other!r}); give it a prefix of its own"))
    if _bad_level(cfg.status_topic):
        problems.append(((*where, "status_topic"), "must not contain '+' or '#'"))
    for kind, entries, types in (("outputs", cfg.outputs, OUTPUT_TYPES),
                                 ("inputs", cfg.inputs, INPUT_TYPES),
                                 ("sensors", cfg.sensors, SENSOR_TYPES)):
        for name, entry in entries.items():
            if not name or _bad_level(name) or "/" in name:
                problems.append(((*where, kind, name), "names are one topic level: no '/', "
                                 "'+', '#'"))
            device = entry.device or name
            dev = devices.get(device)
            if dev is None:
                problems.append(((*where, kind, name), f"no device named {device!r}"))
            elif dev.type not in types:
                problems.append(((*where, kind, name), f"{device!r} is a {dev.type}; mqtt-io "
                                 f"{kind} stand for {', '.join(types)}"))
    for name, sensor in cfg.sensors.items():
        dev = devices.get(sensor.device or name)
        fields = ("value", "distance") if dev is not None and dev.type == "DistanceSensor" \
            else ("value", *(q.key for q in values_of(dev))) \
            if dev is not None and dev.type in POLLED_SENSORS \
            else ("value", "raw_value", "voltage")
        if dev is not None and dev.type in SENSOR_TYPES and sensor.field not in fields:
            problems.append(((*where, "sensors", name, "field"), f"a {dev.type} has no "
                             f"{sensor.field!r} in its state"))
    for name, entry in cfg.inputs.items():
        if entry.interrupt_payload is not None and entry.interrupt is None:
            problems.append(((*where, "inputs", name, "interrupt_payload"),
                             "needs interrupt: rising, falling or both"))
    return problems
