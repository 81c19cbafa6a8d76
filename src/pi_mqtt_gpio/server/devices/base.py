"""What every device adapter is made of: a config schema, callable methods with argument
validation, a state, events, and the plain ``set`` payloads it understands.

Adapters run their hardware code (``open``, ``invoke``, ``state``, ``safe``, ``close``) on the
hardware worker thread only. ``parse_set`` and ``Method.bind`` are pure and run on the event
loop. gpiozero is imported inside ``open`` so that loading the config never pulls it in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pi_mqtt_gpio.errors import BadArgument
from pi_mqtt_gpio.server.pins.header import pin_number
from pi_mqtt_gpio.server.schema import Matches, Normalize, Range, section
from pi_mqtt_gpio.server.sections import EntityOverride

__all__ = [
    "REQUIRED",
    "DeviceAdapter",
    "DeviceConfig",
    "Emit",
    "Method",
    "Param",
    "Pin",
    "is_active",
]

# A BCM GPIO line number (also as gpiozero names it: "GPIO22", "BCM22", or a header pin
# "BOARD15", "J8:15"), or a pin of an I/O expander: "<expander>:<0-15>" ("io1:3").
Pin = Annotated[Annotated[int, Range(ge=0, le=53)] | Annotated[
    str, Matches(r"[A-Za-z_][A-Za-z0-9_-]*:(1[0-5]|[0-9])",
                 "a GPIO number or an expander pin like 'io1:3'")], Normalize(pin_number)]
Emit = Callable[[str, str | None, dict[str, Any]], None]  # (device, event, state), any thread


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

_HEX = re.compile(r"^#?([0-9a-fA-F]{2})([0-9a-fA-F]{2})([0-9a-fA-F]{2})$")


@dataclass(frozen=True, slots=True)
class Param:
    """One argument of a callable method.

    ``kind``: ``float``, ``int``, ``bool``, ``str``, ``color`` (r, g, b in 0..1, or
    ``"#rrggbb"``), ``tone`` (note name like ``"A4"``, frequency in Hz, or MIDI number).
    """

    name: str
    kind: str = "float"
    default: Any = REQUIRED
    ge: float | None = None
    le: float | None = None
    nullable: bool = False
    choices: tuple[Any, ...] | None = None

    def convert(self, value: Any) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise BadArgument(f"{self.name} must not be null")
        check = _KINDS.get(self.kind)
        if check is not None:
            value = check(self, value)
        if self.choices is not None and value not in self.choices:
            raise BadArgument(f"{self.name} must be one of {list(self.choices)}, got {value!r}")
        return value

    def _number(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadArgument(f"{self.name} must be a number, got {value!r}")
        if self.kind == "int" and not float(value).is_integer():
            raise BadArgument(f"{self.name} must be a whole number, got {value!r}")
        if not math.isfinite(value):
            raise BadArgument(f"{self.name} must be finite")
        value = int(value) if self.kind == "int" else float(value)
        if self.ge is not None and value < self.ge:
            raise BadArgument(f"{self.name} must be >= {self.ge:g}, got {value:g}")
        if self.le is not None and value > self.le:
            raise BadArgument(f"{self.name} must be <= {self.le:g}, got {value:g}")
        return value

    def _bool(self, value: Any) -> Any:
        if not isinstance(value, bool):
            raise BadArgument(f"{self.name} must be true or false, got {value!r}")
        return value

    def _str(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise BadArgument(f"{self.name} must be a string, got {value!r}")
        return value

    def _color(self, value: Any) -> Any:
        return parse_color(value, self.name)

    def _tone(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise BadArgument(f"{self.name} must be a note name or a frequency")
        return value


# How each kind of argument is checked and converted (another kind: taken as it is).
_KINDS: dict[str, Callable[[Param, Any], Any]] = {
    "float": Param._number, "int": Param._number, "bool": Param._bool, "str": Param._str,
    "color": Param._color, "tone": Param._tone,
}


def parse_color(value: Any, name: str = "color") -> tuple[float, float, float]:
    if isinstance(value, str):
        m = _HEX.match(value.strip())
        if not m:
            raise BadArgument(f"{name} must be '#rrggbb' or [r, g, b], got {value!r}")
        return tuple(int(x, 16) / 255 for x in m.groups())  # type: ignore[return-value]
    if isinstance(value, list | tuple) and len(value) == 3:
        out = []
        for c in value:
            if isinstance(c, bool) or not isinstance(c, int | float) or not 0 <= c <= 1:
                raise BadArgument(f"{name} components must be numbers from 0 to 1, got {value!r}")
            out.append(float(c))
        return out[0], out[1], out[2]
    raise BadArgument(f"{name} must be '#rrggbb' or [r, g, b], got {value!r}")


@dataclass(frozen=True, slots=True)
class Method:
    """A callable method: its parameters (in gpiozero's order) and what kind of call it is."""

    name: str
    params: tuple[Param, ...] = ()
    writes: bool = True  # actuates hardware (leases and safety apply)
    sim_only: bool = False  # only in simulation mode, admin only
    doc: str = ""

    def bind(self, args: Any, kwargs: Any) -> dict[str, Any]:
        """Match positional and keyword arguments to the parameters, validating each."""
        if args is None:
            args = []
        if kwargs is None:
            kwargs = {}
        if not isinstance(args, list):
            raise BadArgument("args must be a list")
        if not isinstance(kwargs, dict):
            raise BadArgument("kwargs must be an object")
        if len(args) > len(self.params):
            raise BadArgument(f"{self.name}() takes at most {len(self.params)} arguments, "
                              f"got {len(args)}")
        names = {p.name for p in self.params}
        for key in kwargs:
            if key not in names:
                raise BadArgument(f"{self.name}() has no argument {key!r}")
        bound: dict[str, Any] = {}
        for i, param in enumerate(self.params):
            if i < len(args):
                if param.name in kwargs:
                    raise BadArgument(f"{self.name}() got {param.name!r} twice")
                bound[param.name] = param.convert(args[i])
            elif param.name in kwargs:
                bound[param.name] = param.convert(kwargs[param.name])
            elif param.default is REQUIRED:
                raise BadArgument(f"{self.name}() needs argument {param.name!r}")
            else:
                bound[param.name] = param.default
        return bound

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "params": [
            {k: v for k, v in (("name", p.name), ("kind", p.kind),
                               ("default", None if p.default is REQUIRED else p.default),
                               ("required", p.default is REQUIRED), ("min", p.ge),
                               ("max", p.le)) if v is not None}
            for p in self.params
        ]}
        if self.sim_only:
            out["simulation_only"] = True
        return out


@section
class DeviceSafetyConfig:
    """A device's own safety guards: each key overrides the global ``safety:`` one; a device
    with this block is guarded whatever its type."""

    min_relay_interval_s: Annotated[float, Range(ge=0)] | None = None
    min_command_interval_s: Annotated[float, Range(ge=0)] | None = None
    flap_window_s: Annotated[float, Range(gt=0)] | None = None
    flap_max_edges: Annotated[int, Range(ge=1)] | None = None
    flap_lockout_s: Annotated[float, Range(ge=0)] | None = None
    max_on_s: Annotated[float, Range(gt=0)] | None = None


@section
class DeviceConfig:
    """Keys every device accepts."""

    type: str
    description: str | None = None
    lease_required: bool = False
    safety: DeviceSafetyConfig | None = None
    restore: bool = False  # at start, go back to the value saved before the restart
    # Home Assistant: the entity's own settings, or false to leave the device out.
    homeassistant: EntityOverride | bool | None = None

    def lines(self) -> list[tuple[str, int | str, bool]]:
        """(config key, GPIO line or expander pin, shared-bus line) for every line this
        device claims."""
        return [(name, getattr(self, name), False) for name in self.pin_keys()
                if getattr(self, name) is not None]

    def pin_keys(self) -> tuple[str, ...]:
        return ()


_GOES_ON = frozenset({"on", "blink", "beep", "pulse"})
_GOES_OFF = frozenset({"off", "stop", "detach"})


def is_active(value: Any) -> bool:
    """Whether a device value means "on": non-zero, any non-zero channel, anything else
    that is not None or false."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, list | tuple):
        return any(is_active(v) for v in value)
    return True


class DeviceAdapter:
    """Base adapter. Subclasses set the class attributes and implement ``create``."""

    type_name: ClassVar[str]
    Config: ClassVar[type[DeviceConfig]]
    kind: ClassVar[Literal["output", "input"]]
    methods: ClassVar[dict[str, Method]] = {}
    events: ClassVar[tuple[str, ...]] = ()
    capabilities: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, config: Any, *, simulate: bool, emit: Emit) -> None:
        self.name = name
        self.config = config
        self.simulate = simulate
        self.emit = emit
        self.device: Any = None
        self.closed = False

    # --- worker thread -----------------------------------------------------------------------
    def open(self, factory: Any) -> None:
        self.device = self.create(factory)
        self.wire()

    def create(self, factory: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def wire(self) -> None:
        """Connect gpiozero callbacks to ``emit`` (inputs)."""

    def invoke(self, method: str, kwargs: dict[str, Any]) -> Any:
        handler = getattr(self, f"do_{method}", None)
        if handler is not None:
            return handler(**kwargs)
        return getattr(self.device, method)(**kwargs)

    def do_state(self) -> dict[str, Any]:
        return self.state()

    def state(self) -> dict[str, Any]:
        value = self.device.value
        return {"value": value, "is_active": bool(self.device.is_active)}

    def safe(self) -> None:
        """Drive the device to its configured safe state (outputs)."""

    def safe_active(self) -> bool:
        """Whether the device's safe state is an active one (``safe_state: on``)."""
        return getattr(self.config, "safe_state", None) == "on"

    def active_on_pins(self) -> bool:
        """Whether the device is active on its pins now (a running blink counts): what an
        interlock looks at on the worker just before another member is switched on."""
        state = self.state()
        return is_active(state.get("value")) or bool(state.get("blinking"))

    def close(self) -> None:
        if self.device is not None and not self.closed:
            self.closed = True
            self.device.close()

    def refresh_after(self, method: str, kwargs: dict[str, Any]) -> float | None:
        """Seconds after which a background activity started by ``method`` has ended and the
        state should be published again (``blink(n=3)``), or None."""
        return None

    # --- event loop (pure) ---------------------------------------------------------------------
    def validate(self, method: str, kwargs: dict[str, Any]) -> None:
        """Checks that depend on the config (angle limits, pwm: false); raises BadArgument.
        Runs before anything is queued, so a refused call never half-moves hardware."""

    def predict(self, method: str, kwargs: dict[str, Any], current: Any) -> Any:
        """The value a write leaves the device at (``current``: the value the commands
        already queued will have left), for the safety guards. A method this does not know
        counts as a change to an active state (the careful answer for interlocks)."""
        if method in _GOES_ON:
            return 1
        if method in _GOES_OFF:
            return 0
        if method == "toggle":
            return 0 if is_active(current) else 1
        if method == "value":
            return kwargs.get("value")
        if method == "forward":
            return kwargs.get("speed", 1.0)
        if method == "backward":
            return -kwargs.get("speed", 1.0)
        if method == "reverse":
            return -current if isinstance(current, int | float) else current
        return ("changed", method, repr(sorted(kwargs.items())))

    def parse_set(self, payload: str) -> tuple[str, dict[str, Any]]:
        """Turn a plain ``set`` payload into (method, arguments); raises ``BadArgument``."""
        raise BadArgument(f"{self.type_name} {self.name!r} accepts no set commands")

    def method(self, name: str) -> Method | None:
        method = self.methods.get(name)
        if method is not None and method.sim_only and not self.simulate:
            return None
        return method

    def catalogue(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type_name,
            "kind": self.kind,
            "description": self.config.description,
            "lease_required": self.config.lease_required,
            "methods": [m.name for m in self.methods.values()
                        if not m.sim_only or self.simulate],
            "method_params": [m.describe() for m in self.methods.values()
                              if not m.sim_only or self.simulate],
            "events": list(self.events),
            "capabilities": list(self.capabilities),
        }


def number(payload: str) -> float | None:
    try:
        value = float(payload)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def cycle_seconds(kwargs: dict[str, Any], *keys: str) -> float | None:
    """Duration of ``n`` cycles of a blink/pulse/beep, or None when it runs forever."""
    n = kwargs.get("n")
    if n is None:
        return None
    return float(n) * sum(float(kwargs.get(k) or 0) for k in keys)

