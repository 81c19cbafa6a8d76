"""mqtt-io's topics and payloads for this node's devices (``compat.mqtt_io``).

- ``<prefix>/output/<name>/set`` with the output's ``on_payload`` / ``off_payload``;
  ``.../set_on_ms`` and ``.../set_off_ms`` with milliseconds (on, then off after that long;
  or the other way round); ``timed_set_ms`` turns a ``set`` back after that long.
- ``<prefix>/output/<name>``: the output's state with its payloads and retain flag.
- ``<prefix>/input/<name>``: an input's state (``inverted`` as mqtt-io has it), or its
  ``interrupt_payload`` at each edge of its ``interrupt`` kind.
- ``<prefix>/sensor/<name>``: a listed sensor's number as mqtt-io printed it (one key of the
  device's state times ``scale``, ``digits`` decimals).
- ``<prefix>/<status_topic>``: ``running`` (retained) while the gatekeeper runs, ``stopped``
  when it stops, ``dead`` as the Will of a connection of its own in external broker mode.

Commands on these topics take the same path as the gatekeeper's own ``set`` topic: the ACL
(a compat topic is authorised as the device topic it stands for, ``acl_topic``), rights,
leases, safety and the audit, as the MQTT user who sent them.

``MqttIoTopics`` is the pure half (names, topics, payloads); ``MqttIoBridge`` runs it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from pi_mqtt_gpio.errors import BadArgument, GatekeeperError, NotAuthorized
from pi_mqtt_gpio.mqtt.message import Message
from pi_mqtt_gpio.server.compat.config import (
    INPUT_TYPES,
    OUTPUT_TYPES,
    MqttIoCompatConfig,
    MqttIoInput,
    MqttIoOutput,
    MqttIoSensor,
)
from pi_mqtt_gpio.server.devices.base import is_active
from pi_mqtt_gpio.topics import MqttIoTopicNames, Topics

__all__ = ["MqttIoBridge", "MqttIoTopics"]

log = logging.getLogger("pi_mqtt_gpio.compat.mqtt_io")

SOURCE = "mqtt_io"
COMMANDS = ("set", "set_on_ms", "set_off_ms")
MAX_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class _Output:
    name: str
    device: str
    cfg: MqttIoOutput


@dataclass(frozen=True, slots=True)
class _Sensor:
    name: str
    device: str
    cfg: MqttIoSensor


@dataclass(frozen=True, slots=True)
class _Input:
    name: str
    device: str
    cfg: MqttIoInput
    active_low: bool  # the device is active while its pin is low (a pull-up input)


def _active_low(dev: Any) -> bool:
    pull_up = getattr(dev, "pull_up", False)
    return pull_up is True or (pull_up is None and getattr(dev, "active_state", True) is False)


_Entry = TypeVar("_Entry", _Output, _Input, _Sensor)


def _by_device(entries: Iterable[_Entry]) -> dict[str, list[_Entry]]:
    """The entries of each device (a device may stand under several names)."""
    out: dict[str, list[_Entry]] = {}
    for entry in entries:
        out.setdefault(entry.device, []).append(entry)
    return out


class MqttIoTopics:
    """Names, topics and payloads: no I/O."""

    def __init__(self, cfg: MqttIoCompatConfig, devices: dict[str, Any], topics: Topics) -> None:
        self.cfg = cfg
        self.topics = topics
        self.prefix = cfg.topic_prefix
        self.names = MqttIoTopicNames(cfg.topic_prefix)
        self.status_topic = self.names.status(cfg.status_topic)
        self.outputs: dict[str, _Output] = {}
        self.inputs: dict[str, _Input] = {}
        for name, out_cfg in cfg.outputs.items():
            self.outputs[name] = _Output(name, out_cfg.device or name, out_cfg)
        for name, in_cfg in cfg.inputs.items():
            device = in_cfg.device or name
            self.inputs[name] = _Input(name, device, in_cfg, _active_low(devices[device]))
        if not cfg.only_listed:
            self._serve_unlisted(devices)
        self.sensors = {name: _Sensor(name, sen.device or name, sen)
                        for name, sen in cfg.sensors.items()}
        self.sensors_of = _by_device(self.sensors.values())
        self.outputs_of = _by_device(self.outputs.values())
        self.inputs_of = _by_device(self.inputs.values())

    def _serve_unlisted(self, devices: dict[str, Any]) -> None:
        """Every on/off output and two-state input not listed, under its own name."""
        served_out = {o.device for o in self.outputs.values()}
        served_in = {i.device for i in self.inputs.values()}
        for name, dev in devices.items():
            if "/" in name or "+" in name or "#" in name:
                continue
            if dev.type in OUTPUT_TYPES and name not in served_out \
                    and name not in self.outputs:
                self.outputs[name] = _Output(name, name, MqttIoOutput())
            elif dev.type in INPUT_TYPES and name not in served_in \
                    and name not in self.inputs:
                self.inputs[name] = _Input(name, name, MqttIoInput(), _active_low(dev))

    # --- topics ---------------------------------------------------------------------------------
    def subscriptions(self) -> list[str]:
        return [self.names.output("+", leaf) for leaf in COMMANDS]

    def command(self, topic: str) -> tuple[_Output, str] | None:
        """(output, ``set`` | ``set_on_ms`` | ``set_off_ms``) of a command topic, else None."""
        parsed = self.names.parse(topic)
        if parsed is None or parsed[0] != "output":
            return None
        _kind, name, leaf = parsed
        out = self.outputs.get(name)
        if out is None or leaf not in COMMANDS:
            return None
        return out, leaf

    def acl_topic(self, topic: str) -> str | None:
        """The gatekeeper topic a compat topic stands for when the ACL decides: a command is
        the device's ``set``, a state is the device's ``state``, the status is the node's
        status. None for any other topic (the ACL then decides on the topic itself)."""
        parsed = self.names.parse(topic)
        if parsed is None:
            return None
        if topic == self.status_topic:
            return self.topics.status
        kind, name, leaf = parsed
        if kind == "output" and name in self.outputs:
            device = self.outputs[name].device
            if not leaf:
                return self.topics.device(device, "state")
            if leaf in COMMANDS:
                return self.topics.device(device, "set")
        elif kind == "input" and name in self.inputs and not leaf:
            return self.topics.device(self.inputs[name].device, "state")
        elif kind == "sensor" and name in self.sensors and not leaf:
            return self.topics.device(self.sensors[name].device, "state")
        return None

    def all_topics(self) -> list[str]:
        """Every topic of ours under the prefix (for the ACL)."""
        out = [self.status_topic]
        for name in self.outputs:
            out.append(self.names.output(name))
            out.extend(self.names.output(name, leaf) for leaf in COMMANDS)
        out.extend(self.names.input(name) for name in self.inputs)
        out.extend(self.names.sensor(name) for name in self.sensors)
        return out

    # --- payloads -------------------------------------------------------------------------------
    @staticmethod
    def parse_set(out: _Output, payload: bytes) -> str:
        """``on`` or ``off`` for exactly the output's payloads (mqtt-io compares them as
        they are, case and spaces included)."""
        text = payload.decode("utf-8", "replace")
        if text == out.cfg.on_payload:
            return "on"
        if text == out.cfg.off_payload:
            return "off"
        raise BadArgument(f"{text[:40]!r} is not a valid payload for output {out.name}: only "
                          f"{out.cfg.on_payload!r} and {out.cfg.off_payload!r}")

    @staticmethod
    def parse_ms(payload: bytes) -> float:
        """Seconds from a ``set_on_ms`` / ``set_off_ms`` payload (milliseconds)."""
        text = payload.decode("utf-8", "replace").strip()
        try:
            ms = float(text)
        except ValueError:
            raise BadArgument(f"expected milliseconds, got {text[:40]!r}") from None
        if not 0 < ms <= MAX_MS:  # NaN fails this too
            raise BadArgument(f"milliseconds must be more than 0 and at most {MAX_MS}")
        return ms / 1000.0

    @staticmethod
    def output_payload(out: _Output, state: dict[str, Any]) -> bytes:
        on = is_active(state.get("value"))
        return (out.cfg.on_payload if on else out.cfg.off_payload).encode()

    @staticmethod
    def _active(state: dict[str, Any]) -> bool | None:
        active = state.get("is_active")
        if active is None:
            value = state.get("value")
            return None if value is None else is_active(value)
        return bool(active)

    @classmethod
    def input_on(cls, inp: _Input, state: dict[str, Any]) -> bool | None:
        """Whether the input reads "on" as its compat settings define it; None when the
        state has no value (unavailable)."""
        active = cls._active(state)
        if active is None:
            return None
        return (active != inp.active_low) != inp.cfg.inverted

    @classmethod
    def level_high(cls, inp: _Input, state: dict[str, Any]) -> bool | None:
        active = cls._active(state)
        return None if active is None else active != inp.active_low

    def input_messages(self, inp: _Input, old: dict[str, Any] | None, new: dict[str, Any]
                       ) -> list[tuple[str, bytes, bool]]:
        topic = self.names.input(inp.name)
        cfg = inp.cfg
        if cfg.interrupt_payload is not None and cfg.interrupt is not None:
            if old is None:
                return []  # an interrupt is an edge: nothing at start
            before, after = self.level_high(inp, old), self.level_high(inp, new)
            if before is None or after is None or before == after:
                return []
            if cfg.interrupt == "both" or (cfg.interrupt == "rising") == after:
                return [(topic, cfg.interrupt_payload.encode(), cfg.retain)]
            return []
        on = self.input_on(inp, new)
        if on is None:
            return []
        if old is not None and self.input_on(inp, old) == on:
            return []
        return [(topic, (cfg.on_payload if on else cfg.off_payload).encode(), cfg.retain)]

    def state_messages(self, device: str, old: dict[str, Any] | None, new: dict[str, Any]
                       ) -> list[tuple[str, bytes, bool]]:
        """What to publish for a device's new state: (topic, payload, retain)."""
        out: list[tuple[str, bytes, bool]] = []
        for o in self.outputs_of.get(device, ()):
            if new.get("value") is None and "value" not in new:
                continue
            payload = self.output_payload(o, new)
            if old is not None and "value" in old and self.output_payload(o, old) == payload:
                continue
            out.append((self.names.output(o.name), payload, o.cfg.retain))
        for i in self.inputs_of.get(device, ()):
            out.extend(self.input_messages(i, old, new))
        for sen in self.sensors_of.get(device, ()):
            text = self.sensor_payload(sen, new)
            if text is not None and (old is None or self.sensor_payload(sen, old) != text):
                out.append((self.names.sensor(sen.name), text, sen.cfg.retain))
        return out

    @staticmethod
    def sensor_payload(sen: _Sensor, state: dict[str, Any]) -> bytes | None:
        """The number as mqtt-io printed it: ``digits`` decimals."""
        value = state.get(sen.cfg.field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return f"{value * sen.cfg.scale:.{sen.cfg.digits}f}".encode()


Publish = Callable[[str, bytes, int, bool], None]


class MqttIoBridge:
    """Runs ``MqttIoTopics`` on the event loop: commands to the RPC handler, states from the
    twin, the status topic."""

    def __init__(self, names: MqttIoTopics, *, publish: Publish,
                 call: Callable[..., bool],
                 refuse: Callable[[Message, str, str | None, GatekeeperError, str], None],
                 may_command: Callable[[Message], bool]) -> None:
        self.names = names
        self.publish = publish
        # (msg, device, method, kwargs, source, *, deferred) -> accepted
        self.call = call
        self.refuse = refuse
        self.may_command = may_command
        self._states: dict[str, dict[str, Any]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}  # device -> its pending turn back

    # --- status ---------------------------------------------------------------------------------
    def running(self) -> None:
        self.publish(self.names.status_topic,
                     self.names.cfg.status_payload_running.encode(), 1, True)

    def stopped(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self.publish(self.names.status_topic,
                     self.names.cfg.status_payload_stopped.encode(), 1, True)

    # --- states ---------------------------------------------------------------------------------
    def state(self, device: str, doc: dict[str, Any], force: bool = False) -> None:
        """A device's state was published (or is published again: ``force``)."""
        old = None if force else self._states.get(device)
        self._states[device] = doc
        for topic, payload, retain in self.names.state_messages(device, old, doc):
            self.publish(topic, payload, 1 if retain else 0, retain)

    # --- commands -------------------------------------------------------------------------------
    def handle(self, msg: Message) -> bool:
        """A message on a compat topic; True when it was one of our command topics."""
        found = self.names.command(msg.topic)
        if found is None:
            return False
        out, leaf = found
        if not self.may_command(msg):
            self.denied(msg)
            return True
        try:
            if leaf == "set":
                method = self.names.parse_set(out, msg.payload)
                back = out.cfg.timed_set_ms / 1000.0 if out.cfg.timed_set_ms else None
            else:
                seconds = self.names.parse_ms(msg.payload)
                method = "on" if leaf == "set_on_ms" else "off"
                back = seconds
        except GatekeeperError as exc:
            self.refuse(msg, out.device, None, exc, SOURCE)
            self._restate(out.device)
            return True
        # A newer command replaces a pending turn back, once it has run: a refused one
        # (another user's, a rate-limited one) leaves the promised turn back in place.
        other = "off" if method == "on" else "on"
        self.call(msg, out.device, method, {}, SOURCE,
                  then=lambda ok: self._ran(ok, msg, out.device, other, back))
        return True

    def _ran(self, ok: bool, msg: Message, device: str, other: str,
             back: float | None) -> None:
        if not ok:
            return
        self._cancel(device)
        if back is not None:
            loop = asyncio.get_running_loop()
            self._timers[device] = loop.call_later(back, self._turn_back, msg, device, other)

    def denied(self, msg: Message) -> None:
        """The ACL refused a command on a compat topic: audited like any refused command."""
        found = self.names.command(msg.topic)
        if found is None:
            return
        self.refuse(msg, found[0].device, None,
                    NotAuthorized(f"role {msg.role!r} may not publish to {msg.topic}"), SOURCE)

    def _turn_back(self, msg: Message, device: str, method: str) -> None:
        """The second half of a timed set, admitted as it is now: a turn off always runs,
        a turn on only while the sender may still command the device (rights, leases)."""
        self._timers.pop(device, None)
        self.call(msg, device, method, {}, SOURCE, deferred=True)

    def _cancel(self, device: str) -> None:
        """A newer command replaces a pending turn back of the same device."""
        timer = self._timers.pop(device, None)
        if timer is not None:
            timer.cancel()

    def _restate(self, device: str) -> None:
        doc = self._states.get(device)
        if doc is not None:
            self.state(device, doc, force=True)
