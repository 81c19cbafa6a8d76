"""The ``compat:`` config section: mqtt-io's topics and payloads for this node's devices."""

from __future__ import annotations

from typing import Any

from pi_mqtt_gpio.server.config import Config
from pi_mqtt_gpio.server.devices.sensors import SENSOR_TYPES as POLLED_SENSORS
from pi_mqtt_gpio.server.devices.sensors import values_of
from pi_mqtt_gpio.server.schema import Problem
from pi_mqtt_gpio.server.sections import (
    CompatConfig,
    MqttIoCompatConfig,
    MqttIoInput,
    MqttIoOutput,
    MqttIoSensor,
)
from pi_mqtt_gpio.topics import Topics

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
    "config_problems",
]

# Devices mqtt-io's digital outputs and inputs stand for: on/off outputs, two-state inputs.
OUTPUT_TYPES = ("OutputDevice", "DigitalOutputDevice", "LED", "Buzzer", "PWMOutputDevice",
                "PWMLED")
INPUT_TYPES = ("Button", "DigitalInputDevice", "MotionSensor", "LineSensor", "LightSensor")
SENSOR_TYPES = ("MCP3001", "MCP3002", "MCP3004", "MCP3008", "MCP3201", "MCP3202", "MCP3204",
                "MCP3208", "MCP3301", "MCP3302", "MCP3304", "DistanceSensor", *POLLED_SENSORS)

def _bad_level(text: str) -> bool:
    return any(c in text for c in "+#\x00")


WHERE = ("compat", "mqtt_io")


def compat_problems(compat: CompatConfig, devices: dict[str, Any], root: str,
                    ha_prefix: str) -> list[Problem | str]:
    """The prefix is a plain topic apart from the gatekeeper's own tree and Home Assistant's;
    every listed name is one topic level and names a device of a type it can stand for."""
    cfg = compat.mqtt_io
    if cfg is None:
        return []
    problems = _topic_problems(cfg, root, ha_prefix)
    for kind, entries, types in (("outputs", cfg.outputs, OUTPUT_TYPES),
                                 ("inputs", cfg.inputs, INPUT_TYPES),
                                 ("sensors", cfg.sensors, SENSOR_TYPES)):
        for name, entry in entries.items():
            problems.extend(_entry_problems(kind, name, entry.device or name, types, devices))
    for name, sensor in cfg.sensors.items():
        problems.extend(_field_problems(name, sensor, devices.get(sensor.device or name)))
    for name, entry in cfg.inputs.items():
        if entry.interrupt_payload is not None and entry.interrupt is None:
            problems.append(((*WHERE, "inputs", name, "interrupt_payload"),
                             "needs interrupt: rising, falling or both"))
    return problems


def _topic_problems(cfg: MqttIoCompatConfig, root: str, ha_prefix: str
                    ) -> list[Problem | str]:
    problems: list[Problem | str] = []
    prefix = cfg.topic_prefix
    if _bad_level(prefix) or prefix.endswith("/"):
        problems.append(((*WHERE, "topic_prefix"), "must be a topic without '+', '#' and "
                         "without a trailing '/'"))
    for other, what in ((root, "the gatekeeper's own topics"),
                        (ha_prefix, "Home Assistant's discovery prefix")):
        if Topics.within(prefix, other) or (prefix and Topics.within(other, prefix)):
            problems.append(((*WHERE, "topic_prefix"), f"{prefix!r} overlaps {what} "
                             f"({other!r}); give it a prefix of its own"))
    if _bad_level(cfg.status_topic):
        problems.append(((*WHERE, "status_topic"), "must not contain '+' or '#'"))
    return problems


def _entry_problems(kind: str, name: str, device: str, types: tuple[str, ...],
                    devices: dict[str, Any]) -> list[Problem | str]:
    """An entry's name is one topic level; its device exists and is of a type it can be."""
    problems: list[Problem | str] = []
    if not name or _bad_level(name) or "/" in name:
        problems.append(((*WHERE, kind, name), "names are one topic level: no '/', '+', '#'"))
    dev = devices.get(device)
    if dev is None:
        problems.append(((*WHERE, kind, name), f"no device named {device!r}"))
    elif dev.type not in types:
        problems.append(((*WHERE, kind, name), f"{device!r} is a {dev.type}; mqtt-io "
                         f"{kind} stand for {', '.join(types)}"))
    return problems


def _state_fields(dev: Any) -> tuple[str, ...]:
    """The keys of a sensor device's state a mqtt-io sensor may read."""
    if dev.type == "DistanceSensor":
        return ("value", "distance")
    if dev.type in POLLED_SENSORS:
        return ("value", *(q.key for q in values_of(dev)))
    return ("value", "raw_value", "voltage")


def _field_problems(name: str, sensor: MqttIoSensor, dev: Any) -> list[Problem | str]:
    if dev is not None and dev.type in SENSOR_TYPES and sensor.field not in _state_fields(dev):
        return [((*WHERE, "sensors", name, "field"), f"a {dev.type} has no "
                 f"{sensor.field!r} in its state")]
    return []


def config_problems(config: Config) -> list[Problem | str]:
    """``compat_problems`` of a whole config (a check the config layer is given)."""
    return compat_problems(config.compat, config.devices, config.root,
                           config.homeassistant.prefix)
