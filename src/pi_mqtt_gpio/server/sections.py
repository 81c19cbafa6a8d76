"""Config sections whose code lives above the config layer: the expanders' chips, the
loopback watchdog, the publish queue of local bindings, a device's Home Assistant entity and
the ``compat:`` section. Here, with the facts ``check-config`` needs about them, so that the
config layer imports nothing above it; their modules import them from here.
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Literal

from pi_mqtt_gpio.server.schema import NonEmpty, Range, section

__all__ = [
    "COMPONENTS",
    "DEFAULT_FREQUENCY",
    "FREQUENCY_TOLERANCE",
    "BindingsQueueConfig",
    "CompatConfig",
    "EntityOverride",
    "ExpanderConfig",
    "MqttIoCompatConfig",
    "MqttIoInput",
    "MqttIoOutput",
    "MqttIoSensor",
    "WatchdogConfig",
    "frequency_matches",
]

# --- expanders (the chips: server/pins/) ---------------------------------------------------
DEFAULT_FREQUENCY = 50.0  # a PCA9685's PWM frequency when its config gives none
FREQUENCY_TOLERANCE = 0.01  # a device's frequency within 1 % of the chip's is the chip's


def frequency_matches(asked: float, frequency: float) -> bool:
    """Whether a device's frequency is the chip's (gpiozero's Servo truncates 1/frame_width
    to whole hertz, hence at least 1 Hz of slack)."""
    return abs(asked - frequency) <= max(1.0, FREQUENCY_TOLERANCE * frequency)


@section
class ExpanderConfig:
    type: Literal["MCP23017", "PCF8574", "PCF8575", "PCA9685"]
    bus: Annotated[int, Range(ge=0, le=255)] = 1
    address: Annotated[int, Range(ge=0x20, le=0x7F)] = 0x20
    interrupt: Annotated[int, Range(ge=0, le=53)] | None = None  # the INT line (GPIO)
    poll_interval_s: Annotated[float, Range(ge=0.005, le=10)] = 0.02
    # PCA9685 only: the PWM frequency of all its channels (default 50 Hz), its outputs'
    # polarity (MODE2 INVRT) and driver (MODE2 OUTDRV: totem pole, or open drain)
    frequency: Annotated[float, Range(ge=24, le=1526)] | None = None
    invert: bool = False
    open_drain: bool = False

    def check(self) -> list[str]:
        """Each chip's address pins give it 0x20-0x27; the PCF8574A variant 0x38-0x3F; a
        PCA9685 0x40-0x7F but 0x70 (the all-call address every PCA9685 answers)."""
        if self.type == "PCA9685":
            return self._pca9685_problems()
        problems = [f"{key} is a PCA9685 setting (a {self.type} has no PWM)"
                    for key in ("frequency", "invert", "open_drain")
                    if getattr(self, key) not in (None, False)]
        if 0x20 <= self.address <= 0x27 or (self.type == "PCF8574"
                                            and 0x38 <= self.address <= 0x3F):
            return problems
        where = "0x20-0x27, or 0x38-0x3F for a PCF8574A" if self.type == "PCF8574" \
            else "0x20-0x27"
        article = "an" if self.type == "MCP23017" else "a"
        return [*problems,
                f"{article} {self.type} answers at {where}, not 0x{self.address:02x}"]

    def _pca9685_problems(self) -> list[str]:
        problems = []
        if self.address == 0x70:
            problems.append("0x70 is the all-call address every PCA9685 answers at power-on "
                            "(use 0x40-0x6f or 0x71-0x7f)")
        elif not 0x40 <= self.address <= 0x7F:
            problems.append(f"a PCA9685 answers at 0x40-0x7f, not 0x{self.address:02x} "
                            f"(give its address: 0x40 with no address jumper set)")
        if self.interrupt is not None:
            problems.append("a PCA9685 has no interrupt line (its channels are outputs)")
        return problems


# --- the loopback watchdog (server/watchdog.py) -----------------------------------------------
Line = Annotated[int, Range(ge=0, le=53)]


@section
class WatchdogConfig:
    out: Line
    in_: Line  # "in" in the config
    period_s: Annotated[float, Range(ge=0.05, le=3600)] = 1.0
    stale_s: Annotated[float, Range(gt=0, le=36000)] = 3.0

    def check(self) -> list[str]:
        problems = []
        if self.out == self.in_:
            problems.append("out and in must be two different lines (wired together)")
        if self.stale_s <= self.period_s:
            problems.append("stale_s must be longer than period_s (an edge comes every "
                            "period_s)")
        return problems


# --- local bindings (server/bindings.py) ------------------------------------------------------
@section
class BindingsQueueConfig:
    """Publish bindings waiting for the broker link (external mode)."""

    max: Annotated[int, Range(ge=1, le=10000)] = 200
    max_age_s: Annotated[float, Range(gt=0, le=3600)] = 30.0


# --- Home Assistant (server/homeassistant.py) -------------------------------------------------
Component = Literal["light", "switch", "cover", "number", "binary_sensor", "sensor", "event"]
COMPONENTS = ("light", "switch", "cover", "number", "binary_sensor", "sensor", "event")


@section
class EntityOverride:
    """A device's own Home Assistant entity settings."""

    component: Component | None = None
    name: Annotated[str, NonEmpty()] | None = None
    icon: str | None = None  # "mdi:..."
    device_class: str | None = None
    entity_category: Literal["config", "diagnostic"] | None = None
    enabled_by_default: bool | None = None
    # A two-state input shown the other way round: on while the device is inactive (a
    # config converted from mqtt-io whose "ON" was the pin's level, not the device's state).
    inverted: bool = False


# --- compat: mqtt-io's topics and payloads (server/compat/) -----------------------------------
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
