"""Home Assistant MQTT discovery: one retained config per entity, made from the device
registry. Pure: config in, (topic, payload) out; the daemon publishes them.

- Topic ``<prefix>/<component>/<node_id>/<device>[_<suffix>]/config``, ``unique_id``
  ``<node_id>_<device>[_<suffix>]``; full key names (not the abbreviations).
- One ``device`` block per node, shared by every entity: HA shows one device per Pi.
- Availability from ``{root}/status``; commands to ``{root}/device/<name>/set`` (the plain
  payloads of each adapter's ``parse_set``); states read with templates from the JSON state.
- A device may override its entity (``homeassistant: {component, name, icon, device_class,
  entity_category, enabled_by_default}``) or hide it (``homeassistant: false``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pi_mqtt_gpio.server.devices.sensors import SENSOR_TYPES, values_of
from pi_mqtt_gpio.server.sections import COMPONENTS, EntityOverride
from pi_mqtt_gpio.topics import HomeAssistantTopics, Topics

__all__ = ["COMPONENTS", "EntityOverride", "allowed_components", "discovery", "health_topic_id"]

ON_OFF = ("OutputDevice", "DigitalOutputDevice", "LED", "Buzzer")
DIMMABLE = ("PWMOutputDevice", "PWMLED")
NUMBERS = ("Motor", "PhaseEnableMotor", "Servo", "AngularServo", "AlsaMixer")
BINARY = ("Button", "DigitalInputDevice", "MotionSensor", "LineSensor", "LightSensor")
BINARY_CLASS = {"MotionSensor": "motion", "LightSensor": "light", "Button": None,
                "DigitalInputDevice": None, "LineSensor": None}
ON_OFF_STATE = "{{ 'ON' if value_json.is_active else 'OFF' }}"
OFF_ON_STATE = "{{ 'OFF' if value_json.is_active else 'ON' }}"


def allowed_components(type_name: str) -> tuple[str, ...]:
    """The entity kinds a device type can be shown as (the first is the default)."""
    if type_name == "LED":
        return ("light", "switch")
    if type_name in ON_OFF:
        return ("switch", "light")
    if type_name in DIMMABLE:
        return ("light", "number")
    if type_name == "RGBLED":
        return ("light",)
    if type_name == "Cover":
        return ("cover",)
    if type_name in NUMBERS:
        return ("number",)
    if type_name == "Button":
        return ("binary_sensor",)  # and its event entity
    if type_name in BINARY:
        return ("binary_sensor",)
    if type_name == "DistanceSensor" or type_name.startswith("MCP3"):
        return ("sensor",)
    if type_name in SENSOR_TYPES:
        return ("sensor",)
    return ()  # TonalBuzzer: nothing Home Assistant has a fitting entity for


def health_topic_id(node_id: str) -> str:
    return f"{node_id}_health"


def discovery(topics: Topics, devices: dict[str, Any], *, prefix: str, version: str,
              events: Callable[[str], list[str]], watchdog: bool = False,
              command_suffix: str | None = None, support_url: str | None = None
              ) -> dict[str, dict[str, Any]]:
    """Every discovery config: config topic -> payload. ``events(name)``: the event types
    of a device (a button's gestures when it has them)."""
    node = topics.node_id
    device_block = {
        "identifiers": [f"pi-mqtt-gpio_{node}"],
        "name": node,
        "manufacturer": "pi-mqtt-gpio",
        "model": "GPIO Gatekeeper",
        "sw_version": version,
    }
    common = {
        "availability_topic": topics.status,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device_block,
    }
    origin: dict[str, Any] = {"name": "pi-mqtt-gpio", "sw_version": version}
    if support_url:
        origin["support_url"] = support_url
    out: dict[str, dict[str, Any]] = {}

    def add(component: str, object_id: str, payload: dict[str, Any]) -> None:
        topic = HomeAssistantTopics(prefix).config(component, node, object_id)
        entity_id = f"{node}_{object_id}"
        shared = dict(common)
        if "availability" in payload:  # its own availability besides the node's
            payload["availability"] = [{"topic": topics.status, "payload_available": "online",
                                        "payload_not_available": "offline"},
                                       *payload["availability"]]
            payload["availability_mode"] = "all"
            for key in ("availability_topic", "payload_available", "payload_not_available"):
                shared.pop(key)
        # default_entity_id: Home Assistant 2025.10 and later (object_id is deprecated
        # there); object_id: the releases before it, which drop keys they do not know.
        out[topic] = {"unique_id": entity_id, "object_id": entity_id,
                      "default_entity_id": f"{component}.{entity_id}", **payload, **shared,
                      "origin": origin}

    for name, dev in devices.items():
        override = getattr(dev, "homeassistant", None)
        if override is False:
            continue
        own = override if isinstance(override, EntityOverride) else None
        for component, suffix, payload in _entities(topics, name, dev, own, events(name)):
            if command_suffix:  # an external broker: commands carry HA's user name
                for key in ("command_topic", "brightness_command_topic", "rgb_command_topic",
                            "set_position_topic"):
                    if key in payload:
                        payload[key] = Topics.sent_by(payload[key], command_suffix)
            if own is not None:
                for key in ("icon", "device_class", "entity_category"):
                    value = getattr(own, key)
                    if value is not None and (suffix is None or key == "icon"):
                        payload[key] = value
                if own.enabled_by_default is not None:
                    payload["enabled_by_default"] = own.enabled_by_default
                if own.inverted and component == "binary_sensor":
                    payload["value_template"] = OFF_ON_STATE
            add(component, name if suffix is None else f"{name}_{suffix}", payload)
    add("binary_sensor", "health", {
        "name": "GPIO health",
        "state_topic": topics.health,
        "value_template": "{{ 'OFF' if value_json.status == 'ok' else 'ON' }}",
        "device_class": "problem",
        "entity_category": "diagnostic",
        "json_attributes_topic": topics.health,
        "json_attributes_template": "{{ {'problems': value_json.problems} | tojson }}",
    })
    if watchdog:
        add("binary_sensor", "watchdog", {
            "name": "GPIO loopback",
            "state_topic": topics.health,
            "value_template": "{{ 'ON' if value_json.watchdog and "
                              "value_json.watchdog.status != 'ok' else 'OFF' }}",
            "device_class": "problem",
            "entity_category": "diagnostic",
        })
    return out


Entities = list[tuple[str, str | None, dict[str, Any]]]  # (component, id suffix, payload)


@dataclass(frozen=True, slots=True)
class _Entity:
    """One device as its entities see it: its topics, label and the payload they share."""

    topics: Topics
    name: str
    dev: Any
    component: str
    label: str
    events: list[str]

    @property
    def kind(self) -> str:
        return str(self.dev.type)

    @property
    def state(self) -> str:
        return self.topics.device(self.name, "state")

    @property
    def command(self) -> str:
        return self.topics.device(self.name, "set")

    @property
    def base(self) -> dict[str, Any]:
        return {"name": self.label, "state_topic": self.state}


def _entities(topics: Topics, name: str, dev: Any, own: EntityOverride | None,
              events: list[str]) -> Entities:
    """(component, object id suffix, payload) of each entity of one device."""
    components = allowed_components(dev.type)
    if not components:
        return []
    component = own.component if own is not None and own.component else components[0]
    label = (own.name if own is not None and own.name else None) or dev.description \
        or name.replace("_", " ").capitalize()
    entity = _Entity(topics, name, dev, component, label, events)
    build = _BUILDERS.get(component)
    return build(entity) if build is not None else []


def _light_or_switch(e: _Entity) -> Entities:
    if e.kind in DIMMABLE or e.kind == "RGBLED":
        if e.component != "light":
            return []  # pragma: no cover - not an allowed component
        return _dimmable(e) if e.kind in DIMMABLE else _rgb(e)
    return [(e.component, None, {**e.base, "command_topic": e.command,
                                 "payload_on": "ON", "payload_off": "OFF",
                                 "state_value_template" if e.component == "light"
                                 else "value_template": ON_OFF_STATE})]


def _dimmable(e: _Entity) -> Entities:
    return [("light", None, {
        **e.base, "command_topic": e.command, "payload_on": "ON", "payload_off": "OFF",
        "state_value_template": ON_OFF_STATE,
        "brightness_command_topic": e.command,
        "brightness_command_template": "{{ (value / 255) | round(4) }}",
        "brightness_state_topic": e.state,
        "brightness_value_template": "{{ (value_json.value * 255) | round(0) | int }}",
        "brightness_scale": 255, "on_command_type": "brightness",
    })]


def _rgb(e: _Entity) -> Entities:
    return [("light", None, {
        **e.base, "command_topic": e.command, "payload_on": "ON", "payload_off": "OFF",
        "state_value_template": ON_OFF_STATE,
        "rgb_command_topic": e.command,
        "rgb_state_topic": e.state,
        "rgb_value_template": "{{ value_json.value | map('multiply', 255) | map('round') "
                              "| map('int') | join(',') }}",
        "on_command_type": "first",  # ON (white) at once, then the colour
    })]


def _cover(e: _Entity) -> Entities:
    payload = {
        **e.base, "command_topic": e.command, "payload_open": "OPEN",
        "payload_close": "CLOSE", "payload_stop": "STOP",
        "value_template": "{{ value_json.state }}",
        "state_open": "open", "state_opening": "opening", "state_closed": "closed",
        "state_closing": "closing", "state_stopped": "stopped",
        "position_topic": e.state, "position_template": "{{ value_json.position }}",
        "set_position_topic": e.command, "position_open": 100, "position_closed": 0,
    }
    if getattr(e.dev, "device_class", None):
        payload["device_class"] = e.dev.device_class
    return [("cover", None, payload)]


def _number(e: _Entity) -> Entities:
    lo, hi, step, unit, key = _number_range(e.dev)
    payload = {**e.base, "command_topic": e.command, "min": lo, "max": hi, "step": step,
               "mode": "slider", "value_template": f"{{{{ value_json.{key} }}}}"}
    if unit:
        payload["unit_of_measurement"] = unit
    return [("number", None, payload)]


def _binary_sensor(e: _Entity) -> Entities:
    payload = {**e.base, "value_template": ON_OFF_STATE}
    device_class = BINARY_CLASS.get(e.kind)
    if device_class:
        payload["device_class"] = device_class
    out: Entities = [("binary_sensor", None, payload)]
    if e.kind == "Button":
        out.append(("event", "event", {
            "name": f"{e.label} press", "state_topic": e.topics.device(e.name, "event"),
            "event_types": e.events,
            "value_template": '{"event_type": "{{ value_json.event }}"}',
            "device_class": "button",
        }))
    return out


def _sensor(e: _Entity) -> Entities:
    if e.kind in SENSOR_TYPES:
        return _sensor_entities(e.topics, e.name, e.dev, e.base, e.label)
    if e.kind == "DistanceSensor":
        return [("sensor", None, {**e.base, "value_template": "{{ value_json.distance }}",
                                  "unit_of_measurement": "m", "device_class": "distance",
                                  "state_class": "measurement",
                                  "suggested_display_precision": 3})]
    return [("sensor", None, {**e.base, "value_template": "{{ value_json.voltage }}",
                              "unit_of_measurement": "V", "device_class": "voltage",
                              "state_class": "measurement",
                              "suggested_display_precision": 3})]


_BUILDERS: dict[str, Callable[[_Entity], Entities]] = {
    "light": _light_or_switch, "switch": _light_or_switch, "cover": _cover,
    "number": _number, "binary_sensor": _binary_sensor, "sensor": _sensor,
}


def _sensor_entities(topics: Topics, name: str, dev: Any, base: dict[str, Any], label: str
                     ) -> list[tuple[str, str | None, dict[str, Any]]]:
    """One ``sensor`` per value of a polled sensor, unavailable while it does not answer."""
    values = values_of(dev)
    own = {"topic": topics.device(name, "state"),
           "value_template": "{{ 'online' if value_json.available else 'offline' }}"}
    out: list[tuple[str, str | None, dict[str, Any]]] = []
    for q in values:
        digits = dev.digits if dev.digits is not None else q.digits
        payload = {**base, "name": f"{label} {q.key.replace('_', ' ')}",
                   "value_template": f"{{{{ value_json.{q.key} }}}}",
                   "unit_of_measurement": q.unit, "device_class": q.device_class,
                   "state_class": "measurement", "suggested_display_precision": digits,
                   "availability": [own]}
        out.append(("sensor", q.key, payload))
    return out


def _number_range(dev: Any) -> tuple[float, float, float, str | None, str]:
    """min, max, step, unit and the state key of a device shown as a number."""
    kind = dev.type
    if kind == "AngularServo":
        lo, hi = sorted((dev.min_angle, dev.max_angle))
        return lo, hi, 1, "°", "angle"
    if kind == "AlsaMixer":
        return dev.min, dev.max, dev.step, dev.unit, "value"
    if kind in ("PWMOutputDevice", "PWMLED"):
        return 0, 1, 0.01, None, "value"
    return -1, 1, 0.01, None, "value"  # motors (speed, - backward), servos (position)


class Discovery:
    """Publishes the discovery configs (retained), clears those of devices that left the
    config, and answers Home Assistant's birth message (``<prefix>/status`` = ``online``)
    by publishing every config and state again within a second."""

    BIRTH_DELAY_S = 0.2  # HA has subscribed when it sends its birth; a short grace anyway
    MIN_SPACING_S = 2.0  # births in quick succession (a flood) republish at most this often

    def __init__(self, configs: dict[str, dict[str, Any]], *, prefix: str,
                 publish: Callable[[str, bytes, int, bool], None],
                 republish_states: Callable[[], None],
                 call_later: Callable[..., Any]) -> None:
        self.configs = configs
        self.prefix = prefix
        self.publish = publish
        self.republish_states = republish_states
        self.call_later = call_later
        self.stale: set[str] = set()  # config topics published before and gone now
        self._pending: Any = None
        self._last: float | None = None  # when the last republish ran
        self.births = 0

    @property
    def birth_topic(self) -> str:
        return HomeAssistantTopics(self.prefix).status

    def start(self, previous: Any) -> None:
        """Publish every config; clear the ones published last time that are gone
        (``previous``: the config topics saved by the last run)."""
        if isinstance(previous, list):
            self.stale = {t for t in previous if isinstance(t, str)
                          and Topics.within(t, self.prefix) and t != self.prefix
                          and t not in self.configs}
        self._publish_all()

    def saved(self) -> list[str]:
        """What the next start needs: every config topic it may have to clear."""
        return sorted({*self.configs, *self.stale})

    def _publish_all(self) -> None:
        for topic in sorted(self.stale):
            self.publish(topic, b"", 1, True)
        for topic, payload in self.configs.items():
            self.publish(topic, json.dumps(payload, separators=(",", ":")).encode(), 1, True)

    def republish(self) -> None:
        """Every config again (the link to an external broker came back)."""
        self._publish_all()

    def birth(self, payload: bytes) -> None:
        """A message on ``<prefix>/status``: ``online`` means HA (re)started."""
        if payload.strip() != b"online" or self._pending is not None:
            return
        delay = self.BIRTH_DELAY_S
        if self._last is not None:
            delay = max(delay, self._last + self.MIN_SPACING_S - time.monotonic())
        self._pending = self.call_later(delay, self._reborn)

    def _reborn(self) -> None:
        self._pending = None
        self._last = time.monotonic()
        self.births += 1
        self._publish_all()
        self.stale.clear()  # HA was listening: the clears have reached it
        self.republish_states()

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
