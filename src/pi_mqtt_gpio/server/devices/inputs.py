"""Input adapters: buttons, binary sensors, light and distance sensors.

Events come from gpiozero callbacks (lgpio's threads on a Pi, the calling thread for mock
pins) and go to the event loop only through ``emit`` (the HardwareManager's airlock). In
simulation mode, binary inputs are driven through their mock pins (``pin.drive_high()``), the
same path as a real edge; light and distance sensors read a simulated value instead of timing
a capacitor or an echo.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, ClassVar

from pi_mqtt_gpio.errors import BadArgument
from pi_mqtt_gpio.server.devices.actions import (
    BUTTON_EVENTS,
    GESTURES,
    BindingConfig,
    GesturesConfig,
)
from pi_mqtt_gpio.server.devices.base import DeviceAdapter, DeviceConfig, Method, Param, Pin
from pi_mqtt_gpio.server.schema import Range, section

__all__ = ["ADAPTERS"]

Positive = Annotated[float, Range(gt=0)]
Unit = Annotated[float, Range(ge=0, le=1)]

_STATE = Method("state", writes=False, doc="The current state.")
_SIM_PRESS = Method("sim_press", sim_only=True, doc="Simulation: drive the input active.")
_SIM_RELEASE = Method("sim_release", sim_only=True, doc="Simulation: drive the input inactive.")


def _sim_set(kind: str = "float", ge: float = 0, le: float = 1) -> Method:
    return Method("sim_set", (Param("value", kind, ge=ge, le=le),), sim_only=True,
                  doc="Simulation: set the input's value.")


@section
class DigitalInputConfig(DeviceConfig):
    pin: Pin
    pull_up: bool | None = False
    active_state: bool | None = None
    bounce_time: Annotated[float, Range(gt=0, le=10)] | None = None

    def pin_keys(self) -> tuple[str, ...]:
        return ("pin",)

    def check(self) -> list[str]:
        if self.pull_up is None and self.active_state is None:
            return ["a floating input (pull_up: null) needs active_state"]
        if self.pull_up is not None and self.active_state is not None:
            return ["active_state is only for floating inputs: give it with pull_up: null"]
        return []


@section
class ButtonConfig(DigitalInputConfig):
    pull_up: bool | None = True
    hold_time: Annotated[float, Range(gt=0, le=3600)] = 1.0
    hold_repeat: bool = False
    gestures: GesturesConfig | None = None  # single, double, long_start, long_end events
    bindings: dict[str, BindingConfig] | None = None  # gesture or event -> local action

    def check(self) -> list[str]:
        problems = DigitalInputConfig.check(self)  # (slotted dataclasses: no super())
        for trigger in self.bindings or {}:
            if trigger in GESTURES and self.gestures is None:
                problems.append(f"bindings.{trigger}: a gesture binding needs "
                                f"gestures: {{double_click_s, long_press_s}}")
            elif trigger not in GESTURES and trigger not in BUTTON_EVENTS:
                problems.append(f"bindings.{trigger}: not a gesture or event of a Button "
                                f"(known: {', '.join((*GESTURES, *BUTTON_EVENTS))})")
        return problems


class BinaryInputAdapter(DeviceAdapter):
    """Inputs with two states; ``event_map`` maps our event names to gpiozero callbacks."""

    kind = "input"
    gpiozero_class: ClassVar[str]
    event_map: ClassVar[tuple[tuple[str, str, bool], ...]]  # (event, when_* attribute, active)
    methods = {"state": _STATE, "sim_press": _SIM_PRESS, "sim_release": _SIM_RELEASE,
               "sim_set": _sim_set("int")}

    def wire(self) -> None:
        for event, attr, active in self.event_map:
            setattr(self.device, attr, self._callback(event, active))

    def _callback(self, event: str, active: bool) -> Any:
        def fire() -> None:
            self.emit(self.name, event, self.state_for(active, event))

        return fire

    def state_for(self, active: bool, event: str | None = None) -> dict[str, Any]:
        return {"value": int(active), "is_active": active}

    def state(self) -> dict[str, Any]:
        return self.state_for(bool(self.device.is_active))

    def _active_high(self) -> bool:
        """The pin level that means "active", as gpiozero derives it from the config: the
        opposite of the pull, or ``active_state`` for a floating input."""
        cfg = self.config
        pull_up = getattr(cfg, "pull_up", False)
        if pull_up is None:
            return bool(getattr(cfg, "active_state", True))
        return not pull_up

    def _drive(self, active: bool) -> None:
        pin = self.device.pin
        high = active == self._active_high()
        clean = getattr(pin, "drive_clean", None)  # our simulated pins: no debounce delay
        if clean is not None:
            clean(high)
        elif high:
            pin.drive_high()
        else:
            pin.drive_low()

    def do_sim_press(self) -> None:
        self._drive(True)

    def do_sim_release(self) -> None:
        self._drive(False)

    def do_sim_set(self, value: float) -> None:
        self._drive(bool(value))


class ButtonAdapter(BinaryInputAdapter):
    type_name = "Button"
    Config: ClassVar[Any] = ButtonConfig
    capabilities: ClassVar[tuple[str, ...]] = ("binary_sensor", "button")
    events: ClassVar[tuple[str, ...]] = ("pressed", "released", "held")
    event_map = (("pressed", "when_pressed", True), ("released", "when_released", False),
                 ("held", "when_held", True))

    def create(self, factory: Any) -> Any:
        import gpiozero

        cfg = self.config
        return gpiozero.Button(cfg.pin, pull_up=cfg.pull_up, active_state=cfg.active_state,
                               bounce_time=cfg.bounce_time, hold_time=cfg.hold_time,
                               hold_repeat=cfg.hold_repeat, pin_factory=factory)

    def catalogue(self) -> dict[str, Any]:
        out = super().catalogue()
        if self.config.gestures is not None:
            out["events"] = [*self.events, *GESTURES]
        return out

    def state_for(self, active: bool, event: str | None = None) -> dict[str, Any]:
        held = event == "held" or (event is None and bool(self.device.is_held))
        return {"value": int(active), "is_active": active, "is_pressed": active,
                "is_held": active and held}


class DigitalInputDeviceAdapter(BinaryInputAdapter):
    type_name = "DigitalInputDevice"
    Config = DigitalInputConfig
    capabilities: ClassVar[tuple[str, ...]] = ("binary_sensor",)
    events: ClassVar[tuple[str, ...]] = ("activated", "deactivated")
    event_map = (("activated", "when_activated", True),
                 ("deactivated", "when_deactivated", False))

    def create(self, factory: Any) -> Any:
        import gpiozero

        cfg = self.config
        return gpiozero.DigitalInputDevice(cfg.pin, pull_up=cfg.pull_up,
                                           active_state=cfg.active_state,
                                           bounce_time=cfg.bounce_time, pin_factory=factory)


@section
class SmoothedConfig(DeviceConfig):
    pin: Pin
    pull_up: bool | None = False
    active_state: bool | None = None
    queue_len: Annotated[int, Range(ge=1, le=1000)] = 1
    sample_rate: Annotated[float, Range(gt=0, le=10000)] = 10.0
    threshold: Unit = 0.5
    partial: bool = False

    def pin_keys(self) -> tuple[str, ...]:
        return ("pin",)

    def check(self) -> list[str]:
        if self.pull_up is None and self.active_state is None:
            return ["a floating input (pull_up: null) needs active_state"]
        return []


@section
class LineSensorConfig(SmoothedConfig):
    queue_len: Annotated[int, Range(ge=1, le=1000)] = 5
    sample_rate: Annotated[float, Range(gt=0, le=10000)] = 100.0


class MotionSensorAdapter(BinaryInputAdapter):
    type_name = "MotionSensor"
    Config: ClassVar[Any] = SmoothedConfig
    capabilities: ClassVar[tuple[str, ...]] = ("binary_sensor", "motion")
    events: ClassVar[tuple[str, ...]] = ("motion", "no_motion")
    event_map = (("motion", "when_motion", True), ("no_motion", "when_no_motion", False))
    gpiozero_class = "MotionSensor"

    def create(self, factory: Any) -> Any:
        import gpiozero

        cfg = self.config
        return getattr(gpiozero, self.gpiozero_class)(
            cfg.pin, pull_up=cfg.pull_up, active_state=cfg.active_state,
            queue_len=cfg.queue_len, sample_rate=cfg.sample_rate, threshold=cfg.threshold,
            partial=cfg.partial, pin_factory=factory)

    def state_for(self, active: bool, event: str | None = None) -> dict[str, Any]:
        return {"value": int(active), "is_active": active, "motion_detected": active}


class LineSensorAdapter(MotionSensorAdapter):
    type_name = "LineSensor"
    Config = LineSensorConfig
    capabilities: ClassVar[tuple[str, ...]] = ("binary_sensor",)
    events: ClassVar[tuple[str, ...]] = ("line", "no_line")
    # gpiozero: a line is detected when the sensor is *not* active (the line absorbs light).
    event_map = (("line", "when_line", False), ("no_line", "when_no_line", True))
    gpiozero_class = "LineSensor"

    def state_for(self, active: bool, event: str | None = None) -> dict[str, Any]:
        return {"value": int(active), "is_active": active, "line_detected": not active}


# --- analog-ish sensors ------------------------------------------------------------------------
@section
class LightSensorConfig(DeviceConfig):
    pin: Pin
    queue_len: Annotated[int, Range(ge=1, le=1000)] = 5
    charge_time_limit: Annotated[float, Range(gt=0, le=10)] = 0.01
    threshold: Unit = 0.1
    partial: bool = False
    publish_interval: Annotated[float, Range(ge=0.05, le=3600)] = 1.0
    publish_delta: Annotated[float, Range(ge=0, le=1)] = 0.02

    def pin_keys(self) -> tuple[str, ...]:
        return ("pin",)


class PolledInputAdapter(DeviceAdapter):
    """Inputs whose value changes continuously: state is sampled every ``publish_interval``
    and published when it moved by ``publish_delta`` or more; threshold events come from
    gpiozero."""

    kind = "input"
    event_map: ClassVar[tuple[tuple[str, str, bool], ...]] = ()
    sim_value: float = 0.0

    def wire(self) -> None:
        for event, attr, _active in self.event_map:
            setattr(self.device, attr, self._callback(event))

    def _callback(self, event: str) -> Any:
        def fire() -> None:
            self.emit(self.name, event, self.state())

        return fire

    @property
    def poll_interval(self) -> float:
        return float(self.config.publish_interval)

    @property
    def poll_delta(self) -> float:
        return float(self.config.publish_delta)

    def do_sim_set(self, value: float) -> None:
        self.sim_value = value


class LightSensorAdapter(PolledInputAdapter):
    type_name = "LightSensor"
    Config = LightSensorConfig
    capabilities: ClassVar[tuple[str, ...]] = ("sensor", "illuminance")
    events: ClassVar[tuple[str, ...]] = ("light", "dark")
    event_map = (("light", "when_light", True), ("dark", "when_dark", False))
    methods = {"state": _STATE, "sim_set": _sim_set()}

    def create(self, factory: Any) -> Any:
        import gpiozero

        cfg = self.config
        cls: Any = gpiozero.LightSensor
        if self.simulate:
            adapter = self

            class SimulatedLightSensor(gpiozero.LightSensor):  # type: ignore[misc]
                def _read(self) -> float:
                    time.sleep(0.05)  # the real reading drains a capacitor for 0.1 s
                    return adapter.sim_value

            cls = SimulatedLightSensor
        return cls(cfg.pin, queue_len=cfg.queue_len, charge_time_limit=cfg.charge_time_limit,
                   threshold=cfg.threshold, partial=cfg.partial, pin_factory=factory)

    def state(self) -> dict[str, Any]:
        value = float(self.device.value)
        return {"value": round(value, 4), "is_active": value > self.config.threshold,
                "light_detected": value > self.config.threshold}


@section
class DistanceSensorConfig(DeviceConfig):
    echo: Pin
    trigger: Pin
    queue_len: Annotated[int, Range(ge=1, le=1000)] = 9
    max_distance: Annotated[float, Range(gt=0, le=10)] = 1.0
    threshold_distance: Annotated[float, Range(gt=0, le=10)] = 0.3
    partial: bool = False
    publish_interval: Annotated[float, Range(ge=0.05, le=3600)] = 1.0
    publish_delta: Annotated[float, Range(ge=0, le=1)] = 0.01  # of max_distance

    def pin_keys(self) -> tuple[str, ...]:
        return ("echo", "trigger")

    def check(self) -> list[str]:
        if self.threshold_distance > self.max_distance:
            return ["threshold_distance must not exceed max_distance"]
        return []


class DistanceSensorAdapter(PolledInputAdapter):
    """HC-SR04 ultrasonic distance sensor."""

    type_name = "DistanceSensor"
    Config = DistanceSensorConfig
    capabilities: ClassVar[tuple[str, ...]] = ("sensor", "distance")
    events: ClassVar[tuple[str, ...]] = ("in_range", "out_of_range")
    event_map = (("in_range", "when_in_range", False),
                 ("out_of_range", "when_out_of_range", True))
    methods = {
        "state": _STATE,
        "sim_set": Method("sim_set", (Param("value", "float", None, ge=0, le=1, nullable=True),
                                      Param("distance", "float", None, ge=0, nullable=True)),
                          sim_only=True,
                          doc="Simulation: set value (0..1 of max_distance) or distance (m)."),
    }
    sim_value = 1.0

    def create(self, factory: Any) -> Any:
        import gpiozero

        cfg = self.config
        cls: Any = gpiozero.DistanceSensor
        if self.simulate:
            adapter = self

            class SimulatedDistanceSensor(gpiozero.DistanceSensor):  # type: ignore[misc]
                def _read(self) -> float:
                    return adapter.sim_value

            cls = SimulatedDistanceSensor
        return cls(echo=cfg.echo, trigger=cfg.trigger, queue_len=cfg.queue_len,
                   max_distance=cfg.max_distance, threshold_distance=cfg.threshold_distance,
                   partial=cfg.partial, pin_factory=factory)

    def validate(self, method: str, kwargs: dict[str, Any]) -> None:
        if method == "sim_set":
            if (kwargs.get("value") is None) == (kwargs.get("distance") is None):
                raise BadArgument("sim_set needs value or distance (one of them)")
            distance = kwargs.get("distance")
            if distance is not None and distance > self.config.max_distance:
                raise BadArgument(f"distance must be <= max_distance "
                                  f"({self.config.max_distance:g} m)")

    def do_sim_set(self, value: float | None = None, distance: float | None = None) -> None:
        if distance is not None:
            value = distance / self.config.max_distance
        self.sim_value = float(value or 0.0)

    @property
    def poll_delta(self) -> float:
        return float(self.config.publish_delta)

    def state(self) -> dict[str, Any]:
        dev = self.device
        value = float(dev.value)
        distance = value * self.config.max_distance
        in_range = distance < self.config.threshold_distance
        return {"value": round(value, 4), "distance": round(distance, 4),
                "is_active": not in_range, "in_range": in_range}


ADAPTERS: tuple[type[DeviceAdapter], ...] = (
    ButtonAdapter, DigitalInputDeviceAdapter, MotionSensorAdapter, LineSensorAdapter,
    LightSensorAdapter, DistanceSensorAdapter,
)
