"""Remote devices that read like gpiozero: ``RemoteLED("porch").on()`` returns once the Pi
has switched the LED and raises the error's exception when the gatekeeper refused.

Properties (``value``, ``is_lit``, ``is_pressed``, ...) read the retained twin, kept current by
subscription, without a round trip. Callbacks (``when_pressed``, ...) run on the connection's
one callback thread. Every class takes the device's name and ``gatekeeper=``; without it the
default connection (``Gatekeeper()`` from the ``PI_MQTT_*`` environment) is used.

Example::

    from pi_mqtt_gpio.client import Gatekeeper, RemoteLED, RemoteButton

    gk = Gatekeeper("localhost", node_id="demo")
    led = RemoteLED("porch_light", gatekeeper=gk)
    led.on()
    print(led.is_lit)                      # True
    bell = RemoteButton("doorbell", gatekeeper=gk)
    bell.when_pressed = lambda: print("ding")
"""

from __future__ import annotations

import difflib
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, cast

from pi_mqtt_gpio.client.connection import Gatekeeper
from pi_mqtt_gpio.client.registry import register
from pi_mqtt_gpio.client.registry import remote_class as _remote_class
from pi_mqtt_gpio.errors import BadArgument, UnknownDevice
from pi_mqtt_gpio.payloads import State

__all__ = [
    "DeviceClosed",
    "RemoteAngularServo",
    "RemoteButton",
    "RemoteBuzzer",
    "RemoteCover",
    "RemoteDevice",
    "RemoteDigitalInputDevice",
    "RemoteDigitalOutputDevice",
    "RemoteDistanceSensor",
    "RemoteLED",
    "RemoteLightSensor",
    "RemoteLineSensor",
    "RemoteMCP3001",
    "RemoteMCP3002",
    "RemoteMCP3004",
    "RemoteMCP3008",
    "RemoteMCP3201",
    "RemoteMCP3202",
    "RemoteMCP3204",
    "RemoteMCP3208",
    "RemoteMCP3301",
    "RemoteMCP3302",
    "RemoteMCP3304",
    "RemoteMotionSensor",
    "RemoteMotor",
    "RemoteOutputDevice",
    "RemotePWMLED",
    "RemotePWMOutputDevice",
    "RemotePhaseEnableMotor",
    "RemoteRGBLED",
    "RemoteServo",
    "RemoteTonalBuzzer",
    "WrongDeviceType",
    "remote_class",
]

class WrongDeviceType(BadArgument, TypeError):
    """A Remote class used on a device of another type (``RemoteLED`` on a Button)."""


class DeviceClosed(RuntimeError):
    """The Remote object was closed (the device on the Pi is unaffected)."""


_default: Gatekeeper | None = None
_default_lock = threading.Lock()


def _default_gatekeeper() -> Gatekeeper:
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Gatekeeper()
        return _default


class RemoteDevice:
    """Base class: a named device on a gatekeeper."""

    device_type: ClassVar[str] = ""
    _events: ClassVar[dict[str, str]] = {}  # event name -> when_* attribute

    def __init__(self, name: str, *, gatekeeper: Gatekeeper | None = None) -> None:
        self.name = name
        self.gatekeeper = gatekeeper or _default_gatekeeper()
        self._check_catalogue()
        self._handlers: dict[str, Callable[[], Any] | None] = {}
        self._closed = False
        if self._events:
            self.gatekeeper.add_event_listener(self._on_event)

    def _check_catalogue(self) -> None:
        """The device exists on the node, and this class fits its type (a ``RemoteLED`` on a
        Button would fail at its first call otherwise): refuse at construction."""
        catalogue = self.gatekeeper.devices()
        entry = catalogue.get(self.name)
        if entry is None:
            close = difflib.get_close_matches(self.name, list(catalogue), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else \
                f" (devices: {', '.join(sorted(catalogue)) or 'none'})"
            raise UnknownDevice(f"no device named {self.name!r} on "
                                f"{self.gatekeeper.topics.root}{hint}")
        actual = remote_class(str(entry.get("type", "")))
        wanted = remote_class(self.device_type) if self.device_type else RemoteDevice
        if not issubclass(actual, wanted):
            raise WrongDeviceType(f"{self.name!r} is a {entry.get('type')}, not a "
                                  f"{self.device_type or type(self).__name__}: use "
                                  f"{actual.__name__}")

    # --- plumbing -------------------------------------------------------------------------------
    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._check_open()
        reply = self.gatekeeper.call(self.name, method, *args, **kwargs)
        return reply.get("result")

    def _call_wait(self, wait: float | None, method: str, *args: Any, **kwargs: Any) -> Any:
        """A call that, with ``background=False``, returns when the activity has ended."""
        result = self._call(method, *args, **kwargs)
        if wait:
            time.sleep(wait)
            # The gatekeeper re-reads the state when the activity should have ended.
            gk = self.gatekeeper
            gk.wait_for(lambda: not gk.states.get(self.name, {}).get("blinking"), 1.0)
        return result

    def _check_open(self) -> None:
        if self._closed:
            raise DeviceClosed(f"{self!r} is closed")

    def _get(self, key: str, default: Any = None) -> Any:
        return self.gatekeeper.state(self.name).get(key, default)

    def _on_event(self, device: str, event: State) -> None:
        if device != self.name:
            return
        attr = self._events.get(str(event.get("event")))
        handler = self._handlers.get(attr) if attr else None
        if handler is not None:
            handler()

    def _set_handler(self, attr: str, fn: Callable[[], Any] | None) -> None:
        if fn is not None and not callable(fn):
            raise TypeError(f"{attr} must be callable or None")
        self._handlers[attr] = fn

    def _wait_state(self, key: str, wanted: Any, timeout: float | None) -> bool:
        gk = self.gatekeeper
        return gk.wait_for(lambda: gk.states.get(self.name, {}).get(key) == wanted, timeout)

    # --- common API -----------------------------------------------------------------------------
    @property
    def state(self) -> State:
        """The device's latest retained state (a dict, as published by the gatekeeper)."""
        return dict(self.gatekeeper.state(self.name))

    @property
    def value(self) -> Any:
        return self._get("value")

    @property
    def is_active(self) -> bool:
        return bool(self._get("is_active"))

    @property
    def closed(self) -> bool:
        return self._closed

    def refresh(self) -> State:
        """Ask the gatekeeper for the device's state now (a round trip)."""
        return dict(self._call("state") or {})

    def close(self) -> None:
        """Stop receiving events for this object (the device on the Pi is unaffected)."""
        if not self._closed:
            self._closed = True
            self.gatekeeper.remove_listener(self._on_event)

    def __enter__(self) -> RemoteDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} on {self.gatekeeper.topics.root}>"


def _waits(key: str) -> tuple[Callable[..., bool], Callable[..., bool]]:
    """gpiozero's ``wait_for_*`` pair for a boolean state ``key``: block until it is true
    (false), or ``timeout`` seconds; return whether it happened."""

    def until_true(self: RemoteDevice, timeout: float | None = None) -> bool:
        return self._wait_state(key, True, timeout)

    def until_false(self: RemoteDevice, timeout: float | None = None) -> bool:
        return self._wait_state(key, False, timeout)

    return until_true, until_false


def _handler_property(attr: str, doc: str) -> property:
    def getter(self: RemoteDevice) -> Callable[[], Any] | None:
        return self._handlers.get(attr)

    def setter(self: RemoteDevice, fn: Callable[[], Any] | None) -> None:
        self._set_handler(attr, fn)

    return property(getter, setter, doc=doc)


# --- outputs -------------------------------------------------------------------------------------
class RemoteOutputDevice(RemoteDevice):
    """A switched output (relay). ``on()``, ``off()``, ``toggle()``, ``value``.

    Example::

        relay = RemoteOutputDevice("heater_relay", gatekeeper=gk)
        relay.on()
        assert relay.is_active
    """

    device_type = "OutputDevice"

    def on(self) -> Any:
        return self._call("on")

    def off(self) -> Any:
        return self._call("off")

    def toggle(self) -> Any:
        return self._call("toggle")

    @property
    def value(self) -> Any:
        return self._get("value")

    @value.setter
    def value(self, value: Any) -> None:
        self._call("value", value)


def _wait(n: int | None, background: bool, seconds: float) -> float | None:
    """How long a ``background=False`` call waits after the gatekeeper started it."""
    if background:
        return None
    if n is None:
        raise ValueError("background=False needs n (it would never return)")
    return n * seconds


class RemoteDigitalOutputDevice(RemoteOutputDevice):
    """A digital output with ``blink``."""

    device_type = "DigitalOutputDevice"

    def blink(self, on_time: float = 1, off_time: float = 1, n: int | None = None,
              background: bool = True) -> Any:
        """Blink ``n`` times (forever when ``None``). With ``background=False`` returns when
        the blinking has ended, like gpiozero."""
        wait = _wait(n, background, on_time + off_time)
        return self._call_wait(wait, "blink", on_time=on_time, off_time=off_time, n=n)


class RemoteLED(RemoteDigitalOutputDevice):
    """An LED.

    Example::

        led = RemoteLED("porch_light", gatekeeper=gk)
        led.on()
        led.blink(on_time=0.2, off_time=0.2, n=3)
        print(led.is_lit, led.value)
    """

    device_type = "LED"

    @property
    def is_lit(self) -> bool:
        return bool(self._get("is_active"))


class RemoteBuzzer(RemoteOutputDevice):
    """A buzzer with ``beep``."""

    device_type = "Buzzer"

    def beep(self, on_time: float = 1, off_time: float = 1, n: int | None = None,
             background: bool = True) -> Any:
        wait = _wait(n, background, on_time + off_time)
        return self._call_wait(wait, "beep", on_time=on_time, off_time=off_time, n=n)


class RemotePWMOutputDevice(RemoteOutputDevice):
    """A PWM output: ``value`` from 0.0 to 1.0, ``blink`` with fades, ``pulse``."""

    device_type = "PWMOutputDevice"

    def blink(self, on_time: float = 1, off_time: float = 1, fade_in_time: float = 0,
              fade_out_time: float = 0, n: int | None = None, background: bool = True) -> Any:
        wait = _wait(n, background, on_time + off_time + fade_in_time + fade_out_time)
        return self._call_wait(wait, "blink", on_time=on_time, off_time=off_time,
                               fade_in_time=fade_in_time, fade_out_time=fade_out_time, n=n)

    def pulse(self, fade_in_time: float = 1, fade_out_time: float = 1, n: int | None = None,
              background: bool = True) -> Any:
        wait = _wait(n, background, fade_in_time + fade_out_time)
        return self._call_wait(wait, "pulse", fade_in_time=fade_in_time,
                               fade_out_time=fade_out_time, n=n)


class RemotePWMLED(RemotePWMOutputDevice):
    """A dimmable LED.

    Example::

        led = RemotePWMLED("status_led", gatekeeper=gk)
        led.value = 0.3
        led.pulse(n=1, background=False)
    """

    device_type = "PWMLED"

    @property
    def is_lit(self) -> bool:
        return bool(self._get("is_active"))


class RemoteRGBLED(RemoteDevice):
    """An RGB LED: ``color`` is (red, green, blue), each 0.0 to 1.0.

    Example::

        rgb = RemoteRGBLED("mood_light", gatekeeper=gk)
        rgb.color = (1, 0.5, 0)
        rgb.blink(on_color=(0, 0, 1), n=2)
    """

    device_type = "RGBLED"

    def on(self) -> Any:
        return self._call("on")

    def off(self) -> Any:
        return self._call("off")

    def toggle(self) -> Any:
        return self._call("toggle")

    @property
    def value(self) -> tuple[float, float, float]:
        r, g, b = self._get("value", (0, 0, 0))
        return (r, g, b)

    @value.setter
    def value(self, value: tuple[float, float, float]) -> None:
        self._call("color", list(value))

    color = value

    @property
    def is_lit(self) -> bool:
        return bool(self._get("is_active"))

    def blink(self, on_time: float = 1, off_time: float = 1, fade_in_time: float = 0,
              fade_out_time: float = 0, on_color: tuple[float, float, float] = (1, 1, 1),
              off_color: tuple[float, float, float] = (0, 0, 0), n: int | None = None,
              background: bool = True) -> Any:
        wait = _wait(n, background, on_time + off_time + fade_in_time + fade_out_time)
        return self._call_wait(wait, "blink", on_time=on_time, off_time=off_time,
                               fade_in_time=fade_in_time, fade_out_time=fade_out_time,
                               on_color=list(on_color), off_color=list(off_color), n=n)

    def pulse(self, fade_in_time: float = 1, fade_out_time: float = 1,
              on_color: tuple[float, float, float] = (1, 1, 1),
              off_color: tuple[float, float, float] = (0, 0, 0), n: int | None = None,
              background: bool = True) -> Any:
        wait = _wait(n, background, fade_in_time + fade_out_time)
        return self._call_wait(wait, "pulse", fade_in_time=fade_in_time,
                               fade_out_time=fade_out_time, on_color=list(on_color),
                               off_color=list(off_color), n=n)


class RemoteTonalBuzzer(RemoteDevice):
    """A buzzer that plays notes: ``play("A4")``, ``play(440)``, ``stop()``."""

    device_type = "TonalBuzzer"

    def play(self, tone: str | float) -> Any:
        return self._call("play", tone)

    def stop(self) -> Any:
        return self._call("stop")

    @property
    def tone(self) -> str | None:
        tone: str | None = self._get("tone")
        return tone

    @property
    def is_active(self) -> bool:
        return bool(self._get("is_active"))


class RemoteMotor(RemoteDevice):
    """A motor: ``forward(speed)``, ``backward(speed)``, ``reverse()``, ``stop()``, ``value``
    from -1.0 (full backward) to 1.0.

    Example::

        with gk.lease(["screen"], ttl=30):
            RemoteMotor("screen", gatekeeper=gk).forward(0.5)
    """

    device_type = "Motor"

    def forward(self, speed: float = 1) -> Any:
        return self._call("forward", speed)

    def backward(self, speed: float = 1) -> Any:
        return self._call("backward", speed)

    def reverse(self) -> Any:
        return self._call("reverse")

    def stop(self) -> Any:
        return self._call("stop")

    @property
    def value(self) -> float:
        return float(self._get("value", 0.0))

    @value.setter
    def value(self, value: float) -> None:
        self._call("value", value)

    @property
    def is_active(self) -> bool:
        return bool(self._get("is_active"))


class RemoteCover(RemoteDevice):
    """A time-based cover (shutter, blind, awning): ``open()``, ``close()``, ``stop()``,
    ``toggle()``, ``set_position(position)`` and ``position`` from 0 (closed) to 100 (open).

    ``open()`` and ``close()`` return once the motor runs; ``set_position()`` returns when
    the cover has stopped at the position (``timeout``: how long to wait for that, by
    default the longest travel the gatekeeper may need), and raises ``Busy`` when something
    stopped or reversed it first (``error.details["interrupted_by"]`` says what).

    Example::

        screen = RemoteCover("screen", gatekeeper=gk)
        screen.set_position(40)
        print(screen.position, screen.is_moving)
    """

    device_type = "Cover"

    def open(self) -> Any:
        return self._call("open")

    def close_cover(self) -> Any:
        """Close the cover (``close()`` closes this object, as on every Remote device)."""
        return self._call("close")

    def stop(self) -> Any:
        return self._call("stop")

    def toggle(self) -> Any:
        return self._call("toggle")

    def set_position(self, position: float, *, timeout: float | None = None) -> Any:
        if timeout is None:
            timeout = self.gatekeeper.timeout + 600.0  # the longest travel a config allows
        self._check_open()
        reply = self.gatekeeper.call(self.name, "set_position", position, timeout=timeout)
        return reply.get("result")

    @property
    def position(self) -> int:
        return int(self._get("position", 0))

    @property
    def is_moving(self) -> bool:
        return bool(self._get("is_active"))

    @property
    def is_open(self) -> bool:
        return self.position > 0

    @property
    def is_closed(self) -> bool:
        return self.position == 0


class RemotePhaseEnableMotor(RemoteMotor):
    device_type = "PhaseEnableMotor"


class RemoteServo(RemoteDevice):
    """A servo: ``min()``, ``mid()``, ``max()``, ``detach()``, ``value`` from -1.0 to 1.0."""

    device_type = "Servo"

    def min(self) -> Any:
        return self._call("min")

    def mid(self) -> Any:
        return self._call("mid")

    def max(self) -> Any:
        return self._call("max")

    def detach(self) -> Any:
        return self._call("detach")

    @property
    def value(self) -> float | None:
        value: float | None = self._get("value")
        return value

    @value.setter
    def value(self, value: float | None) -> None:
        self._call("value", value)


class RemoteAngularServo(RemoteServo):
    """A servo positioned by angle.

    Example::

        pan = RemoteAngularServo("camera_pan", gatekeeper=gk)
        pan.angle = 45
    """

    device_type = "AngularServo"

    @property
    def angle(self) -> float | None:
        angle: float | None = self._get("angle")
        return angle

    @angle.setter
    def angle(self, angle: float | None) -> None:
        self._call("angle", angle)


# --- inputs --------------------------------------------------------------------------------------
class _Input(RemoteDevice):
    def sim_press(self) -> Any:
        """Simulation mode only (admin): drive the input active on the Pi's mock pin."""
        return self._call("sim_press")

    def sim_release(self) -> Any:
        return self._call("sim_release")

    def sim_set(self, value: float, **kwargs: Any) -> Any:
        return self._call("sim_set", value, **kwargs)


class RemoteDigitalInputDevice(_Input):
    """A binary input: ``is_active``, ``when_activated``, ``wait_for_active()``."""

    device_type = "DigitalInputDevice"
    _events = {"activated": "when_activated", "deactivated": "when_deactivated"}
    when_activated = _handler_property("when_activated", "Called when the input activates.")
    when_deactivated = _handler_property("when_deactivated", "Called when it deactivates.")

    wait_for_active, wait_for_inactive = _waits("is_active")


class RemoteButton(_Input):
    """A button.

    Example::

        bell = RemoteButton("doorbell", gatekeeper=gk)
        bell.when_pressed = lambda: print("ding")
        if bell.wait_for_press(timeout=10):
            print("someone is at the door")
    """

    device_type = "Button"
    _events = {"pressed": "when_pressed", "released": "when_released", "held": "when_held",
               "single": "when_single", "double": "when_double",
               "long_start": "when_long_start", "long_end": "when_long_end"}
    when_pressed = _handler_property("when_pressed", "Called when the button is pressed.")
    when_released = _handler_property("when_released", "Called when it is released.")
    when_held = _handler_property("when_held", "Called when it has been held hold_time.")
    # With gestures configured on the gatekeeper (docs/buttons.md):
    when_single = _handler_property("when_single", "Called after a single click.")
    when_double = _handler_property("when_double", "Called after a double click.")
    when_long_start = _handler_property("when_long_start", "Called when a long press starts.")
    when_long_end = _handler_property("when_long_end", "Called when a long press ends.")

    @property
    def is_pressed(self) -> bool:
        return bool(self._get("is_pressed"))

    @property
    def is_held(self) -> bool:
        return bool(self._get("is_held"))

    wait_for_press, wait_for_release = _waits("is_pressed")


class RemoteMotionSensor(_Input):
    """A PIR motion sensor: ``motion_detected``, ``when_motion``, ``wait_for_motion()``."""

    device_type = "MotionSensor"
    _events = {"motion": "when_motion", "no_motion": "when_no_motion"}
    when_motion = _handler_property("when_motion", "Called when motion is detected.")
    when_no_motion = _handler_property("when_no_motion", "Called when motion stops.")

    @property
    def motion_detected(self) -> bool:
        return bool(self._get("motion_detected"))

    wait_for_motion, wait_for_no_motion = _waits("motion_detected")


class RemoteLineSensor(_Input):
    """A line sensor: ``line_detected``, ``when_line``, ``wait_for_line()``."""

    device_type = "LineSensor"
    _events = {"line": "when_line", "no_line": "when_no_line"}
    when_line = _handler_property("when_line", "Called when a line is detected.")
    when_no_line = _handler_property("when_no_line", "Called when the line is lost.")

    @property
    def line_detected(self) -> bool:
        return bool(self._get("line_detected"))

    wait_for_line, wait_for_no_line = _waits("line_detected")


class RemoteLightSensor(_Input):
    """A light sensor: ``value`` 0.0 to 1.0, ``light_detected``, ``when_light``/``when_dark``."""

    device_type = "LightSensor"
    _events = {"light": "when_light", "dark": "when_dark"}
    when_light = _handler_property("when_light", "Called when light is detected.")
    when_dark = _handler_property("when_dark", "Called when it goes dark.")

    @property
    def light_detected(self) -> bool:
        return bool(self._get("light_detected"))

    wait_for_light, wait_for_dark = _waits("light_detected")


class RemoteDistanceSensor(_Input):
    """An HC-SR04 distance sensor: ``distance`` in metres, ``in_range``, ``when_in_range``.

    Example::

        gap = RemoteDistanceSensor("garage_gap", gatekeeper=gk)
        print(f"{gap.distance:.2f} m")
    """

    device_type = "DistanceSensor"
    _events = {"in_range": "when_in_range", "out_of_range": "when_out_of_range"}
    when_in_range = _handler_property("when_in_range", "Called when something comes close.")
    when_out_of_range = _handler_property("when_out_of_range", "Called when it goes away.")

    @property
    def distance(self) -> float:
        return float(self._get("distance", 0.0))

    @property
    def in_range(self) -> bool:
        return bool(self._get("in_range"))

    wait_for_in_range, wait_for_out_of_range = _waits("in_range")


class _RemoteMCP(_Input):
    """An MCP3xxx analog-to-digital converter channel: ``value``, ``voltage``, ``raw_value``."""

    @property
    def voltage(self) -> float:
        return float(self._get("voltage", 0.0))

    @property
    def raw_value(self) -> int:
        return int(self._get("raw_value", 0))


def _mcp(chip: str) -> type[_RemoteMCP]:
    return type(f"Remote{chip}", (_RemoteMCP,), {
        "device_type": chip, "__doc__": f"A channel of an {chip} ADC ``value``, ``voltage``."})


RemoteMCP3001 = _mcp("MCP3001")
RemoteMCP3002 = _mcp("MCP3002")
RemoteMCP3004 = _mcp("MCP3004")
RemoteMCP3008 = _mcp("MCP3008")
RemoteMCP3201 = _mcp("MCP3201")
RemoteMCP3202 = _mcp("MCP3202")
RemoteMCP3204 = _mcp("MCP3204")
RemoteMCP3208 = _mcp("MCP3208")
RemoteMCP3301 = _mcp("MCP3301")
RemoteMCP3302 = _mcp("MCP3302")
RemoteMCP3304 = _mcp("MCP3304")

register(
    RemoteDevice,
    RemoteOutputDevice, RemoteDigitalOutputDevice, RemoteLED, RemoteBuzzer,
    RemotePWMOutputDevice, RemotePWMLED, RemoteRGBLED, RemoteTonalBuzzer, RemoteMotor,
    RemotePhaseEnableMotor, RemoteCover, RemoteServo, RemoteAngularServo, RemoteButton,
    RemoteDigitalInputDevice, RemoteMotionSensor, RemoteLineSensor, RemoteLightSensor,
    RemoteDistanceSensor, RemoteMCP3001, RemoteMCP3002, RemoteMCP3004, RemoteMCP3008,
    RemoteMCP3201, RemoteMCP3202, RemoteMCP3204, RemoteMCP3208, RemoteMCP3301,
    RemoteMCP3302, RemoteMCP3304,
)


def remote_class(device_type: str) -> type[RemoteDevice]:
    """The Remote class for a gatekeeper device type (``"LED"`` -> ``RemoteLED``)."""
    return cast(type[RemoteDevice], _remote_class(device_type))
