"""Output adapters: LEDs, relays, buzzers, PWM, RGB LEDs, motors and servos (gpiozero's
output devices, with gpiozero's method names, arguments and defaults)."""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pi_mqtt_gpio.errors import BadArgument
from pi_mqtt_gpio.server.devices.base import (
    DeviceAdapter,
    DeviceConfig,
    Method,
    Param,
    Pin,
    cycle_seconds,
    number,
    parse_color,
)
from pi_mqtt_gpio.server.schema import Range, section

__all__ = [
    "ADAPTERS",
]

Unit = Annotated[float, Range(ge=0, le=1)]
Positive = Annotated[float, Range(gt=0)]

_ON = frozenset({"ON", "1", "TRUE", "HIGH", "OPEN"})
_OFF = frozenset({"OFF", "0", "FALSE", "LOW", "CLOSE", "CLOSED"})


def _time(name: str, default: float | None = 1.0, nullable: bool = False) -> Param:
    return Param(name, "float", default, ge=0, le=86400, nullable=nullable)


_N = Param("n", "int", None, ge=1, le=1_000_000, nullable=True)
_ON_OFF = {
    "on": Method("on", doc="Turn the device on."),
    "off": Method("off", doc="Turn the device off."),
    "toggle": Method("toggle", doc="Reverse the state of the device."),
    "state": Method("state", writes=False, doc="The current state."),
}


def _blinking(device: Any) -> bool:
    """gpiozero keeps a finished blink thread referenced until the next command."""
    thread = getattr(device, "_blink_thread", None)
    return thread is not None and thread.is_alive()


def _on_off_safe(adapter: DeviceAdapter) -> None:
    """``safe_state: on`` or ``off`` for switch-like outputs."""
    if adapter.config.safe_state == "on":
        adapter.device.on()
    else:
        adapter.device.off()


def _starts_on(cfg: Any) -> bool:
    """An on/off output is built at its safe state, so that the pin takes that level when it
    is claimed and never another one first (a relay would click, a valve pulse);
    ``initial_value`` does not change that (check-config warns when it says otherwise)."""
    return bool(cfg.safe_state == "on")


def servo_start(cfg: Any) -> float | None:
    """Where a servo is built: its safe state (``detach``: no pulses at all), so that it
    does not first move to another position. An AngularServo's in degrees."""
    if cfg.safe_state == "detach":
        return None
    if isinstance(cfg, AngularServoConfig):
        lo, hi = cfg.min_angle, cfg.max_angle
        return {"min": lo, "mid": (lo + hi) / 2, "max": hi}[cfg.safe_state]
    return {"min": -1.0, "mid": 0.0, "max": 1.0}[cfg.safe_state]


def start_differs(cfg: Any) -> str | None:
    """The ``initial_value``/``initial_angle`` a config sets that its start state (the safe
    state) overrides, for check-config's warning; None when they agree."""
    angle = getattr(cfg, "initial_angle", None)
    if angle is not None and angle != servo_start(cfg):
        return f"initial_angle: {angle:g}"
    value = getattr(cfg, "initial_value", None)
    if value is None:
        return None
    if isinstance(cfg, ServoConfig):
        return None if value == servo_start(cfg) else f"initial_value: {value:g}"
    if not isinstance(getattr(cfg, "safe_state", None), str):
        return None
    # (false is also the default: only an initial_value that asks for "on" can be told
    # apart from an unset one)
    on = any(value) if isinstance(value, tuple) else bool(value)
    return f"initial_value: {value}" if on and not _starts_on(cfg) else None


def _json_light(payload: str) -> dict[str, Any] | None:
    """Home Assistant's JSON-schema light command (``{"state": "ON", "brightness": 128,
    "color": {"r": 255, "g": 0, "b": 0}}``), or None when the payload is not JSON."""
    text = payload.strip()
    if not text.startswith("{"):
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        raise BadArgument("set payload is not valid JSON") from None
    if not isinstance(doc, dict) or str(doc.get("state", "")).upper() not in ("ON", "OFF"):
        raise BadArgument('a JSON light command needs "state": "ON" or "OFF"')
    brightness = doc.get("brightness")
    if brightness is not None and (isinstance(brightness, bool)
                                   or not isinstance(brightness, int | float)
                                   or not 0 <= brightness <= 255):
        raise BadArgument("brightness must be a number from 0 to 255")
    color = doc.get("color")
    if color is not None and (not isinstance(color, dict) or any(
            isinstance(color.get(k), bool) or not isinstance(color.get(k), int | float)
            or not 0 <= color[k] <= 255 for k in "rgb")):
        raise BadArgument('color must be {"r": 0-255, "g": 0-255, "b": 0-255}')
    return {"on": str(doc["state"]).upper() == "ON", "brightness": brightness,
            "color": None if color is None else tuple(color[k] / 255 for k in "rgb")}


def _on_off_set(payload: str) -> tuple[str, dict[str, Any]]:
    light = _json_light(payload)
    if light is not None:
        return ("on", {}) if light["on"] else ("off", {})
    word = payload.strip().upper()
    if word in _ON:
        return "on", {}
    if word in _OFF:
        return "off", {}
    if word == "TOGGLE":
        return "toggle", {}
    raise BadArgument(f"expected ON, OFF or TOGGLE, got {payload[:40]!r}")


# --- digital outputs ---------------------------------------------------------------------------
@section
class DigitalConfig(DeviceConfig):
    pin: Pin
    active_high: bool = True
    initial_value: bool = False
    safe_state: Literal["off", "on"] = "off"

    def pin_keys(self) -> tuple[str, ...]:
        return ("pin",)


class OutputDeviceAdapter(DeviceAdapter):
    """gpiozero ``OutputDevice``: a switched line (relay) with ``on``/``off``/``toggle``."""

    type_name = "OutputDevice"
    Config = DigitalConfig
    kind = "output"
    capabilities: ClassVar[tuple[str, ...]] = ("switch",)
    methods = {**_ON_OFF, "value": Method("value", (Param("value", "int", ge=0, le=1),),
                                          doc="Set the value (0 or 1).")}
    gpiozero_class = "OutputDevice"

    def create(self, factory: Any) -> Any:
        import gpiozero

        cfg = self.config
        cls = getattr(gpiozero, self.gpiozero_class)
        return cls(cfg.pin, active_high=cfg.active_high, initial_value=_starts_on(cfg),
                   pin_factory=factory)

    def do_value(self, value: int) -> None:
        self.device.value = value

    def state(self) -> dict[str, Any]:
        dev = self.device
        out = {"value": int(dev.value), "is_active": bool(dev.is_active)}
        if hasattr(dev, "_blink_thread"):
            out["blinking"] = _blinking(dev)
        return out

    def safe(self) -> None:
        _on_off_safe(self)

    def parse_set(self, payload: str) -> tuple[str, dict[str, Any]]:
        return _on_off_set(payload)


_BLINK = Method("blink", (_time("on_time"), _time("off_time"), _N),
                doc="Blink n times (forever when n is null), in the background.")


class DigitalOutputDeviceAdapter(OutputDeviceAdapter):
    type_name = "DigitalOutputDevice"
    gpiozero_class = "DigitalOutputDevice"
    methods = {**OutputDeviceAdapter.methods, "blink": _BLINK}

    def invoke(self, method: str, kwargs: dict[str, Any]) -> Any:
        if method == "blink":
            return self.device.blink(**kwargs, background=True)
        return super().invoke(method, kwargs)

    def refresh_after(self, method: str, kwargs: dict[str, Any]) -> float | None:
        if method == "blink":
            return cycle_seconds(kwargs, "on_time", "off_time")
        return None


class LEDAdapter(DigitalOutputDeviceAdapter):
    type_name = "LED"
    gpiozero_class = "LED"
    capabilities: ClassVar[tuple[str, ...]] = ("light",)

    def state(self) -> dict[str, Any]:
        out = super().state()
        out["is_lit"] = out["is_active"]
        return out


class BuzzerAdapter(OutputDeviceAdapter):
    type_name = "Buzzer"
    gpiozero_class = "Buzzer"
    methods = {**OutputDeviceAdapter.methods,
               "beep": Method("beep", (_time("on_time"), _time("off_time"), _N),
                              doc="Beep n times (forever when n is null), in the background.")}

    def invoke(self, method: str, kwargs: dict[str, Any]) -> Any:
        if method == "beep":
            return self.device.beep(**kwargs, background=True)
        return super().invoke(method, kwargs)

    def refresh_after(self, method: str, kwargs: dict[str, Any]) -> float | None:
        if method == "beep":
            return cycle_seconds(kwargs, "on_time", "off_time")
        return None


# --- PWM ---------------------------------------------------------------------------------------
@section
class PWMConfig(DeviceConfig):
    pin: Pin
    active_high: bool = True
    initial_value: Unit = 0.0
    frequency: Annotated[float, Range(gt=0, le=1_000_000)] = 100.0
    safe_state: Literal["off", "on"] = "off"

    def pin_keys(self) -> tuple[str, ...]:
        return ("pin",)


_FADE_BLINK = Method(
    "blink",
    (_time("on_time"), _time("off_time"), _time("fade_in_time", 0.0),
     _time("fade_out_time", 0.0), _N),
    doc="Blink (with optional fades) n times, in the background.",
)
_PULSE = Method("pulse", (_time("fade_in_time"), _time("fade_out_time"), _N),
                doc="Fade in and out n times, in the background.")


class PWMOutputDeviceAdapter(DeviceAdapter):
    type_name = "PWMOutputDevice"
    Config = PWMConfig
    kind = "output"
    capabilities: ClassVar[tuple[str, ...]] = ("dimmable",)
    gpiozero_class = "PWMOutputDevice"
    methods = {
        **_ON_OFF,
        "value": Method("value", (Param("value", "float", ge=0, le=1),),
                        doc="Set the duty cycle, 0.0 to 1.0."),
        "blink": _FADE_BLINK,
        "pulse": _PULSE,
    }

    def create(self, factory: Any) -> Any:
        import gpiozero

        cfg = self.config
        return getattr(gpiozero, self.gpiozero_class)(
            cfg.pin, active_high=cfg.active_high, initial_value=float(_starts_on(cfg)),
            frequency=cfg.frequency, pin_factory=factory)

    def invoke(self, method: str, kwargs: dict[str, Any]) -> Any:
        if method in ("blink", "pulse"):
            return getattr(self.device, method)(**kwargs, background=True)
        if method == "value":
            self.device.value = kwargs["value"]
            return None
        return super().invoke(method, kwargs)

    def refresh_after(self, method: str, kwargs: dict[str, Any]) -> float | None:
        if method in ("blink", "pulse"):
            return cycle_seconds(kwargs, "on_time", "off_time", "fade_in_time", "fade_out_time")
        return None

    def state(self) -> dict[str, Any]:
        dev = self.device
        return {"value": round(float(dev.value), 6), "is_active": bool(dev.is_active),
                "blinking": _blinking(dev)}

    def safe(self) -> None:
        _on_off_safe(self)

    def parse_set(self, payload: str) -> tuple[str, dict[str, Any]]:
        light = _json_light(payload)
        if light is not None:
            if not light["on"]:
                return "off", {}
            if light["brightness"] is None:
                return "on", {}
            return "value", {"value": round(light["brightness"] / 255, 4)}
        value = number(payload)
        if value is None:
            return _on_off_set(payload)
        if not 0 <= value <= 1:
            raise BadArgument(f"value must be from 0.0 to 1.0, got {payload.strip()[:20]}")
        return "value", {"value": value}


class PWMLEDAdapter(PWMOutputDeviceAdapter):
    type_name = "PWMLED"
    gpiozero_class = "PWMLED"
    capabilities: ClassVar[tuple[str, ...]] = ("light", "dimmable")

    def state(self) -> dict[str, Any]:
        out = super().state()
        out["is_lit"] = out["is_active"]
        return out


# --- RGB LED -----------------------------------------------------------------------------------
@section
class RGBConfig(DeviceConfig):
    red: Pin
    green: Pin
    blue: Pin
    active_high: bool = True
    initial_value: tuple[Unit, ...] = (0.0, 0.0, 0.0)
    pwm: bool = True
    safe_state: Literal["off", "on"] = "off"

    def pin_keys(self) -> tuple[str, ...]:
        return ("red", "green", "blue")

    def check(self) -> list[str]:
        if len(self.initial_value) != 3:
            return ["initial_value needs three components (r, g, b)"]
        return []


_COLOR = Param("color", "color")


class RGBLEDAdapter(DeviceAdapter):
    type_name = "RGBLED"
    Config = RGBConfig
    kind = "output"
    capabilities: ClassVar[tuple[str, ...]] = ("light", "rgb")
    methods = {
        **_ON_OFF,
        "color": Method("color", (_COLOR,), doc="Set the color: [r, g, b] 0..1 or '#rrggbb'."),
        "value": Method("value", (Param("value", "color"),), doc="Same as color."),
        "blink": Method("blink", (
            _time("on_time"), _time("off_time"), _time("fade_in_time", 0.0),
            _time("fade_out_time", 0.0), Param("on_color", "color", (1.0, 1.0, 1.0)),
            Param("off_color", "color", (0.0, 0.0, 0.0)), _N),
            doc="Blink between two colors n times, in the background."),
        "pulse": Method("pulse", (
            _time("fade_in_time"), _time("fade_out_time"),
            Param("on_color", "color", (1.0, 1.0, 1.0)),
            Param("off_color", "color", (0.0, 0.0, 0.0)), _N),
            doc="Fade between two colors n times, in the background."),
    }

    def create(self, factory: Any) -> Any:
        import gpiozero

        cfg = self.config
        return gpiozero.RGBLED(cfg.red, cfg.green, cfg.blue, active_high=cfg.active_high,
                               initial_value=(float(_starts_on(cfg)),) * 3, pwm=cfg.pwm,
                               pin_factory=factory)

    def validate(self, method: str, kwargs: dict[str, Any]) -> None:
        if self.config.pwm:
            return
        for key in ("color", "value", "on_color", "off_color"):
            color = kwargs.get(key)
            if color is not None and any(c not in (0, 1) for c in color):
                raise BadArgument("this RGBLED has pwm: false; components must be 0 or 1")

    def invoke(self, method: str, kwargs: dict[str, Any]) -> Any:
        if method in ("color", "value"):
            self.device.color = kwargs.get("color", kwargs.get("value"))
            return None
        if method in ("blink", "pulse"):
            return getattr(self.device, method)(**kwargs, background=True)
        return super().invoke(method, kwargs)

    def refresh_after(self, method: str, kwargs: dict[str, Any]) -> float | None:
        if method in ("blink", "pulse"):
            return cycle_seconds(kwargs, "on_time", "off_time", "fade_in_time", "fade_out_time")
        return None

    def state(self) -> dict[str, Any]:
        r, g, b = (round(float(c), 6) for c in self.device.value)
        return {"value": [r, g, b], "is_active": bool(self.device.is_active),
                "color": "#{:02x}{:02x}{:02x}".format(*(round(c * 255) for c in (r, g, b))),
                "blinking": _blinking(self.device)}

    def safe(self) -> None:
        _on_off_safe(self)

    def parse_set(self, payload: str) -> tuple[str, dict[str, Any]]:
        light = _json_light(payload)
        if light is not None:
            if not light["on"]:
                return "off", {}
            color = light["color"] or (1.0, 1.0, 1.0)
            scale = 1.0 if light["brightness"] is None else light["brightness"] / 255
            if light["color"] is None and light["brightness"] is None:
                return "on", {}
            return "color", {"color": tuple(round(c * scale, 4) for c in color)}
        text = payload.strip()
        if text.startswith("#"):
            return "color", {"color": parse_color(text)}
        if "," in text:
            # "r,g,b" with 0..255 components, as Home Assistant's rgb_command_topic sends.
            parts = text.split(",")
            values = [number(p) for p in parts]
            if len(parts) != 3 or any(v is None or not 0 <= v <= 255 for v in values):
                raise BadArgument(f"expected 'r,g,b' with 0..255 components, got {text[:40]!r}")
            return "color", {"color": tuple(v / 255 for v in values)}  # type: ignore[operator]
        return _on_off_set(payload)


# --- tonal buzzer ------------------------------------------------------------------------------
@section
class TonalBuzzerConfig(DeviceConfig):
    pin: Pin
    mid_tone: str = "A4"
    octaves: Annotated[int, Range(ge=1, le=9)] = 1
    safe_state: Literal["stop"] = "stop"

    def pin_keys(self) -> tuple[str, ...]:
        return ("pin",)


class TonalBuzzerAdapter(DeviceAdapter):
    type_name = "TonalBuzzer"
    Config = TonalBuzzerConfig
    kind = "output"
    capabilities: ClassVar[tuple[str, ...]] = ("tone",)
    methods = {
        "play": Method("play", (Param("tone", "tone"),),
                       doc="Play a tone: note name ('A4'), frequency in Hz, or MIDI number."),
        "stop": Method("stop", doc="Stop playing."),
        "value": Method("value", (Param("value", "float", ge=-1, le=1, nullable=True),),
                        doc="Set the tone as a value from -1 to 1 (null stops)."),
        "state": Method("state", writes=False, doc="The current state."),
    }

    def create(self, factory: Any) -> Any:
        import gpiozero
        from gpiozero.tones import Tone

        cfg = self.config
        return gpiozero.TonalBuzzer(cfg.pin, mid_tone=Tone(cfg.mid_tone), octaves=cfg.octaves,
                                    pin_factory=factory)

    def invoke(self, method: str, kwargs: dict[str, Any]) -> Any:
        from gpiozero.tones import Tone

        if method == "play":
            tone = kwargs["tone"]
            try:
                t = Tone(tone) if isinstance(tone, str) else (
                    Tone(midi=tone) if isinstance(tone, int) and tone < 128 else
                    Tone(frequency=tone))
                self.device.play(t)
            except ValueError as exc:
                raise BadArgument(str(exc)) from None
            return None
        if method == "value":
            self.device.value = kwargs["value"]
            return None
        return super().invoke(method, kwargs)

    def state(self) -> dict[str, Any]:
        dev = self.device
        tone = dev.tone
        return {"value": None if dev.value is None else round(float(dev.value), 6),
                "is_active": bool(dev.is_active),
                "tone": None if tone is None else tone.note,
                "frequency": None if tone is None else round(float(tone.frequency), 3)}

    def safe(self) -> None:
        self.device.stop()

    def parse_set(self, payload: str) -> tuple[str, dict[str, Any]]:
        text = payload.strip()
        if text.upper() in ("STOP", "OFF"):
            return "stop", {}
        value = number(text)
        return "play", {"tone": value if value is not None else text}


# --- motors ------------------------------------------------------------------------------------
@section
class MotorConfig(DeviceConfig):
    forward: Pin
    backward: Pin
    enable: Pin | None = None
    pwm: bool = True
    safe_state: Literal["stop"] = "stop"

    def pin_keys(self) -> tuple[str, ...]:
        return ("forward", "backward", "enable")


@section
class PhaseEnableMotorConfig(DeviceConfig):
    phase: Pin
    enable: Pin
    pwm: bool = True
    safe_state: Literal["stop"] = "stop"

    def pin_keys(self) -> tuple[str, ...]:
        return ("phase", "enable")


_SPEED = Param("speed", "float", 1.0, ge=0, le=1)


class MotorAdapter(DeviceAdapter):
    type_name = "Motor"
    Config: ClassVar[Any] = MotorConfig
    kind = "output"
    capabilities: ClassVar[tuple[str, ...]] = ("motor", "cover")
    methods = {
        "forward": Method("forward", (_SPEED,), doc="Drive forward at speed 0.0 to 1.0."),
        "backward": Method("backward", (_SPEED,), doc="Drive backward at speed 0.0 to 1.0."),
        "reverse": Method("reverse", doc="Reverse the current direction."),
        "stop": Method("stop", doc="Stop the motor."),
        "value": Method("value", (Param("value", "float", ge=-1, le=1),),
                        doc="Speed and direction, -1.0 (full backward) to 1.0 (full forward)."),
        "state": Method("state", writes=False, doc="The current state."),
    }

    def create(self, factory: Any) -> Any:
        import gpiozero

        cfg = self.config
        return gpiozero.Motor(cfg.forward, cfg.backward, enable=cfg.enable, pwm=cfg.pwm,
                              pin_factory=factory)

    def validate(self, method: str, kwargs: dict[str, Any]) -> None:
        speed = abs(kwargs.get("speed", kwargs.get("value", 0)) or 0)
        if not self.config.pwm and speed not in (0, 1):
            raise BadArgument("this motor has pwm: false; speed must be 0 or 1")

    def invoke(self, method: str, kwargs: dict[str, Any]) -> Any:
        if method == "value":
            self.device.value = kwargs["value"]
            return None
        return super().invoke(method, kwargs)

    def state(self) -> dict[str, Any]:
        value = round(float(self.device.value), 6)
        direction = "forward" if value > 0 else "backward" if value < 0 else "stopped"
        return {"value": value, "is_active": bool(self.device.is_active), "direction": direction}

    def safe(self) -> None:
        self.device.stop()

    def parse_set(self, payload: str) -> tuple[str, dict[str, Any]]:
        text = payload.strip().upper()
        if text in ("STOP", "OFF", "0"):
            return "stop", {}
        if text in ("OPEN", "FORWARD", "ON"):
            return "forward", {"speed": 1.0}
        if text in ("CLOSE", "BACKWARD"):
            return "backward", {"speed": 1.0}
        value = number(text)
        if value is None or not -1 <= value <= 1:
            raise BadArgument(f"expected a number from -1 to 1, STOP, OPEN or CLOSE, "
                              f"got {payload.strip()[:40]!r}")
        return "value", {"value": value}


class PhaseEnableMotorAdapter(MotorAdapter):
    type_name = "PhaseEnableMotor"
    Config = PhaseEnableMotorConfig

    def create(self, factory: Any) -> Any:
        import gpiozero

        cfg = self.config
        return gpiozero.PhaseEnableMotor(cfg.phase, cfg.enable, pwm=cfg.pwm, pin_factory=factory)


# --- servos ------------------------------------------------------------------------------------
@section
class ServoConfig(DeviceConfig):
    pin: Pin
    initial_value: Annotated[float, Range(ge=-1, le=1)] | None = None
    min_pulse_width: Annotated[float, Range(gt=0, le=0.1)] = 1 / 1000
    max_pulse_width: Annotated[float, Range(gt=0, le=0.1)] = 2 / 1000
    frame_width: Annotated[float, Range(gt=0, le=1)] = 20 / 1000
    safe_state: Literal["detach", "min", "mid", "max"] = "detach"

    def pin_keys(self) -> tuple[str, ...]:
        return ("pin",)

    def check(self) -> list[str]:
        problems = []
        if self.min_pulse_width >= self.max_pulse_width:
            problems.append("min_pulse_width must be less than max_pulse_width")
        if self.max_pulse_width >= self.frame_width:
            problems.append("max_pulse_width must be less than frame_width")
        return problems


@section
class AngularServoConfig(ServoConfig):
    initial_value: Annotated[float, Range(ge=-1, le=1)] | None = None  # use initial_angle
    initial_angle: float | None = None
    min_angle: float = -90.0
    max_angle: float = 90.0

    def check(self) -> list[str]:
        problems = ServoConfig.check(self)  # (zero-argument super() fails on slotted dataclasses)
        if self.min_angle == self.max_angle:
            problems.append("min_angle and max_angle must differ")
        lo, hi = sorted((self.min_angle, self.max_angle))
        if self.initial_angle is not None and not lo <= self.initial_angle <= hi:
            problems.append(f"initial_angle must be between {lo:g} and {hi:g}")
        if self.initial_value is not None:
            problems.append("use initial_angle for an AngularServo")
        return problems


class ServoAdapter(DeviceAdapter):
    type_name = "Servo"
    Config: ClassVar[Any] = ServoConfig
    kind = "output"
    capabilities: ClassVar[tuple[str, ...]] = ("servo",)
    methods = {
        "min": Method("min", doc="Move to the minimum position."),
        "mid": Method("mid", doc="Move to the middle position."),
        "max": Method("max", doc="Move to the maximum position."),
        "detach": Method("detach", doc="Stop sending pulses (the servo goes limp)."),
        "value": Method("value", (Param("value", "float", ge=-1, le=1, nullable=True),),
                        doc="Position from -1.0 to 1.0; null detaches."),
        "state": Method("state", writes=False, doc="The current state."),
    }

    def create(self, factory: Any) -> Any:
        import gpiozero

        cfg = self.config
        return gpiozero.Servo(cfg.pin, initial_value=servo_start(cfg),
                              min_pulse_width=cfg.min_pulse_width,
                              max_pulse_width=cfg.max_pulse_width,
                              frame_width=cfg.frame_width, pin_factory=factory)

    def invoke(self, method: str, kwargs: dict[str, Any]) -> Any:
        if method == "value":
            self.device.value = kwargs["value"]
            return None
        return super().invoke(method, kwargs)

    def state(self) -> dict[str, Any]:
        value = self.device.value
        return {"value": None if value is None else round(float(value), 6),
                "is_active": bool(self.device.is_active)}

    def safe(self) -> None:
        getattr(self.device, self.config.safe_state)()

    def parse_set(self, payload: str) -> tuple[str, dict[str, Any]]:
        text = payload.strip().upper()
        if text in ("MIN", "MID", "MAX", "DETACH"):
            return text.lower(), {}
        if text == "OFF":
            return "detach", {}
        value = number(text)
        if value is None or not -1 <= value <= 1:
            raise BadArgument(f"expected a number from -1 to 1, MIN, MID, MAX or DETACH, "
                              f"got {payload.strip()[:40]!r}")
        return "value", {"value": value}


class AngularServoAdapter(ServoAdapter):
    type_name = "AngularServo"
    Config = AngularServoConfig

    @property
    def _limits(self) -> tuple[float, float]:
        lo, hi = sorted((self.config.min_angle, self.config.max_angle))
        return lo, hi

    def bind_angle(self, angle: float) -> float:
        lo, hi = self._limits
        if not lo <= angle <= hi:
            raise BadArgument(f"angle must be between {lo:g} and {hi:g}, got {angle:g}")
        return angle

    def catalogue(self) -> dict[str, Any]:
        lo, hi = self._limits
        return {**super().catalogue(), "range": {"min": lo, "max": hi, "step": 1,
                                                 "unit": "°", "key": "angle"}}

    methods = {
        **ServoAdapter.methods,
        "angle": Method("angle", (Param("angle", "float", nullable=True),),
                        doc="Move to an angle between min_angle and max_angle; null detaches."),
    }

    def create(self, factory: Any) -> Any:
        import gpiozero

        cfg = self.config
        return gpiozero.AngularServo(
            cfg.pin, initial_angle=servo_start(cfg), min_angle=cfg.min_angle,
            max_angle=cfg.max_angle, min_pulse_width=cfg.min_pulse_width,
            max_pulse_width=cfg.max_pulse_width, frame_width=cfg.frame_width,
            pin_factory=factory)

    def validate(self, method: str, kwargs: dict[str, Any]) -> None:
        if method == "angle" and kwargs["angle"] is not None:
            self.bind_angle(kwargs["angle"])

    def invoke(self, method: str, kwargs: dict[str, Any]) -> Any:
        if method == "angle":
            self.device.angle = kwargs["angle"]
            return None
        return super().invoke(method, kwargs)

    def state(self) -> dict[str, Any]:
        out = super().state()
        angle = self.device.angle
        out["angle"] = None if angle is None else round(float(angle), 3)
        return out

    def parse_set(self, payload: str) -> tuple[str, dict[str, Any]]:
        value = number(payload.strip())
        if value is not None:
            return "angle", {"angle": self.bind_angle(value)}
        return super().parse_set(payload)


ADAPTERS: tuple[type[DeviceAdapter], ...] = (
    OutputDeviceAdapter, DigitalOutputDeviceAdapter, LEDAdapter, BuzzerAdapter,
    PWMOutputDeviceAdapter, PWMLEDAdapter, RGBLEDAdapter, TonalBuzzerAdapter, MotorAdapter,
    PhaseEnableMotorAdapter, ServoAdapter, AngularServoAdapter,
)
