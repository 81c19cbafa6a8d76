"""Time-based covers (shutters, blinds, awnings): two relays, one per direction, and no
position sensor. The position is worked out from how long a relay has been on.

Two parts:

- ``CoverModel``: the pure position model. Time is passed in with every call (the loop's
  clock in the daemon, plain numbers in tests: a 22 s travel runs in microseconds). It knows
  the travel times, the motor's start delay, the endstop overrun and learning.
- ``CoverAdapter``: the hardware side, run on the hardware worker like every other device:
  two ``OutputDevice`` relays that are never on together (``drive`` switches the other
  relay off before it switches one on, and checks), and the optional endstop inputs.

The event-loop side that sequences commands, timers and replies is ``server/covers.py``.

Positions follow Home Assistant: 0 is closed, 100 is open; "up" opens, "down" closes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pi_mqtt_gpio.errors import BadArgument, HardwareError
from pi_mqtt_gpio.server.devices.base import DeviceAdapter, DeviceConfig, Method, Param, Pin
from pi_mqtt_gpio.server.schema import Range, section

__all__ = ["ADAPTERS", "CoverAdapter", "CoverConfig", "CoverModel", "Direction", "Travel"]

Direction = Literal["up", "down"]
Seconds = Annotated[float, Range(ge=0, le=600)]
Travel_s = Annotated[float, Range(gt=0, le=600)]
Percent = Annotated[float, Range(ge=0, le=100)]


@section
class EndstopsConfig:
    """Limit switches: inputs that are active when the cover is fully open / closed."""

    open: Pin | None = None
    closed: Pin | None = None
    pull_up: bool = True  # a switch to ground; false: the switch drives the line high
    bounce_time: Annotated[float, Range(gt=0, le=1)] | None = 0.02


@section
class LearningConfig:
    """Travel times learned from measured full travels (endstop to endstop)."""

    enabled: bool = False
    alpha: Annotated[float, Range(gt=0, le=1)] = 0.2
    clamp_percent: Annotated[float, Range(ge=0, le=100)] = 20.0


@section
class CoverConfig(DeviceConfig):
    up: Pin
    down: Pin
    travel_time_up_s: Travel_s = 20.0
    travel_time_down_s: Travel_s = 20.0
    start_delay_up_s: Seconds = 0.0
    start_delay_down_s: Seconds = 0.0
    direction_change_pause_s: Seconds = 0.5
    endstop_overrun_s: Seconds = 2.0
    initial_position: Percent = 100.0
    position_step: Annotated[float, Range(ge=1, le=100)] = 5.0
    active_high: bool = True  # relay boards that switch on a low line: false
    endstops: EndstopsConfig | None = None
    learning: LearningConfig | None = None
    device_class: Literal["awning", "blind", "curtain", "damper", "door", "garage", "gate",
                          "shade", "shutter", "window"] | None = None

    def pin_keys(self) -> tuple[str, ...]:
        return ("up", "down")

    def lines(self) -> list[tuple[str, int | str, bool]]:
        out: list[tuple[str, int | str, bool]] = [("up", self.up, False), ("down", self.down, False)]
        if self.endstops is not None:
            for key in ("open", "closed"):
                line = getattr(self.endstops, key)
                if line is not None:
                    out.append((f"endstops.{key}", line, False))
        return out

    def check(self) -> list[str]:
        problems = []
        if self.up == self.down:
            problems.append("up and down must be two different relays")
        learning = self.learning
        if learning is not None and learning.enabled and (
                self.endstops is None or self.endstops.open is None
                or self.endstops.closed is None):
            problems.append("learning needs both endstops (endstops: {open: PIN, closed: PIN}):"
                            " only a travel from one endstop to the other can be measured")
        return problems


@dataclass(slots=True)
class Travel:
    """A movement in progress: the relay of ``direction`` has been on since ``on_at``."""

    direction: Direction
    on_at: float
    start: float  # position when the relay switched on
    target: float  # where it stops (0 or 100: run on into the endstop, then snap)
    from_end: bool  # started at the opposite end, calibrated (a full travel, for learning)


class CoverModel:
    """Position from time. 0 = closed, 100 = open.

    While a relay is on the cover first does not move for the start delay (motor lag), then
    moves at 100 % per travel time. A movement to 0 or 100 runs ``endstop_overrun_s`` past
    the computed end so that the cover really reaches its stop; the position then snaps to
    the end and the cover counts as calibrated."""

    def __init__(self, config: CoverConfig, *, position: float | None = None,
                 calibrated: bool = False, travel_up_s: float | None = None,
                 travel_down_s: float | None = None) -> None:
        self.config = config
        self.position = float(config.initial_position if position is None else position)
        self.position = min(100.0, max(0.0, self.position))
        self.calibrated = calibrated
        self.travel_up_s = self._clamped("up", travel_up_s)
        self.travel_down_s = self._clamped("down", travel_down_s)
        self.moving: Travel | None = None
        self.last_direction: Direction | None = None

    # --- the numbers ---------------------------------------------------------------------------
    def configured(self, direction: Direction) -> float:
        cfg = self.config
        return float(cfg.travel_time_up_s if direction == "up" else cfg.travel_time_down_s)

    def travel_time(self, direction: Direction) -> float:
        return self.travel_up_s if direction == "up" else self.travel_down_s

    def start_delay(self, direction: Direction) -> float:
        cfg = self.config
        return float(cfg.start_delay_up_s if direction == "up" else cfg.start_delay_down_s)

    def _clamped(self, direction: Direction, value: float | None) -> float:
        base = self.configured(direction)
        if value is None or not isinstance(value, int | float) or not math.isfinite(value):
            return base
        learning = self.config.learning
        clamp = (learning.clamp_percent if learning is not None else 0.0) / 100.0
        return min(base * (1 + clamp), max(base * (1 - clamp), float(value)))

    @staticmethod
    def direction_to(position: float, target: float) -> Direction:
        return "up" if target > position else "down"

    # --- where it is ---------------------------------------------------------------------------
    def position_at(self, now: float) -> float:
        travel = self.moving
        if travel is None:
            return self.position
        moved = max(0.0, now - travel.on_at - self.start_delay(travel.direction))
        delta = moved * 100.0 / self.travel_time(travel.direction)
        pos = travel.start + delta if travel.direction == "up" else travel.start - delta
        return min(100.0, max(0.0, pos))

    def run_time(self, direction: Direction, start: float, target: float) -> float:
        """How long the relay stays on to go from ``start`` to ``target``."""
        distance = abs(target - start)
        run = self.start_delay(direction) + distance / 100.0 * self.travel_time(direction)
        if target in (0.0, 100.0):
            run += self.config.endstop_overrun_s
        return run

    # --- movements -----------------------------------------------------------------------------
    def begin(self, direction: Direction, target: float, on_at: float) -> float:
        """The relay of ``direction`` switched on at ``on_at``; returns when it must go off."""
        start = self.position
        from_end = self.calibrated and start == (0.0 if direction == "up" else 100.0)
        self.moving = Travel(direction, on_at, start, float(target), from_end)
        self.last_direction = direction
        return on_at + self.run_time(direction, start, float(target))

    def retarget(self, target: float, now: float) -> float:
        """A new target in the direction already moving; returns the new switch-off time."""
        travel = self.moving
        assert travel is not None
        travel.target = float(target)
        return travel.on_at + self.run_time(travel.direction, travel.start, float(target))

    def end(self, off_at: float, *, arrived: bool) -> float:
        """The relay went off at ``off_at``. ``arrived``: the movement ran its full time to
        its target (an end then snaps and calibrates); otherwise it was cut short."""
        travel = self.moving
        if travel is None:
            return self.position
        pos = self.position_at(off_at)
        if arrived:
            pos = travel.target
            if travel.target in (0.0, 100.0):
                self.calibrated = True
        self.position = pos
        self.moving = None
        return pos

    def endstop(self, which: Literal["open", "closed"], at: float) -> float | None:
        """An endstop switch closed at ``at``. The position snaps to its end and the cover is
        calibrated. Returns the travel time learned, when this ended a measured full travel
        towards that end (None otherwise)."""
        end = 100.0 if which == "open" else 0.0
        travel = self.moving
        learned: float | None = None
        learning = self.config.learning
        if (travel is not None and learning is not None and learning.enabled
                and travel.from_end and travel.target == end
                and travel.direction == ("up" if which == "open" else "down")):
            measured = at - travel.on_at - self.start_delay(travel.direction)
            if measured > 0:
                learned = self.learn(travel.direction, measured)
        self.position = end
        self.calibrated = True
        self.moving = None
        return learned

    def learn(self, direction: Direction, measured: float) -> float:
        """``t += alpha * (measured - t)``, clamped to +- ``clamp_percent`` % of the
        configured travel time."""
        learning = self.config.learning
        alpha = learning.alpha if learning is not None else 0.0
        t = self.travel_time(direction)
        t = self._clamped(direction, t + alpha * (measured - t))
        if direction == "up":
            self.travel_up_s = t
        else:
            self.travel_down_s = t
        return t

    def next_report(self, now: float) -> float | None:
        """When the position next crosses a multiple of ``position_step`` (at most 1 s away),
        while moving; None when still."""
        travel = self.moving
        if travel is None:
            return None
        step = self.config.position_step
        pos = self.position_at(now)
        moving_from = travel.on_at + self.start_delay(travel.direction)
        rate = 100.0 / self.travel_time(travel.direction)  # % per second
        if travel.direction == "up":
            nxt = (math.floor(pos / step + 1e-9) + 1) * step
            when = moving_from + (nxt - travel.start) / rate
        else:
            nxt = (math.ceil(pos / step - 1e-9) - 1) * step
            when = moving_from + (travel.start - nxt) / rate
        when = max(when, now + 0.001)
        return min(when, now + 1.0)

    # --- what survives a restart ---------------------------------------------------------------
    def saved(self, now: float) -> dict[str, Any]:
        return {"position": round(self.position_at(now), 2), "calibrated": self.calibrated,
                "travel_time_up_s": round(self.travel_up_s, 4),
                "travel_time_down_s": round(self.travel_down_s, 4)}

    @classmethod
    def from_saved(cls, config: CoverConfig, saved: Any) -> CoverModel:
        """A model from what was saved (anything unusable is ignored: defaults)."""
        if not isinstance(saved, dict):
            return cls(config)
        position = saved.get("position")
        if isinstance(position, bool) or not isinstance(position, int | float) \
                or not math.isfinite(position) or not 0 <= position <= 100:
            return cls(config)
        learned = config.learning is not None and config.learning.enabled
        return cls(config, position=float(position),
                   calibrated=saved.get("calibrated") is True,
                   travel_up_s=saved.get("travel_time_up_s") if learned else None,
                   travel_down_s=saved.get("travel_time_down_s") if learned else None)


# --- the hardware side -------------------------------------------------------------------------
_POSITION = Param("position", "float", ge=0, le=100)


class CoverAdapter(DeviceAdapter):
    """Two relays (``up`` opens, ``down`` closes) and optional endstop inputs. The methods
    are carried out by the cover controller on the event loop; the worker only switches."""

    type_name = "Cover"
    Config: ClassVar[Any] = CoverConfig
    kind = "output"
    loop_driven = True  # commands go to the cover controller, not straight to the worker
    capabilities: ClassVar[tuple[str, ...]] = ("cover", "position")
    events: ClassVar[tuple[str, ...]] = ("opened", "closed", "stopped", "endstop_missed")
    methods = {
        "open": Method("open", doc="Open fully (runs on into the endstop)."),
        "close": Method("close", doc="Close fully (runs on into the endstop)."),
        "stop": Method("stop", doc="Stop where it is."),
        "toggle": Method("toggle", doc="Stop if moving, else move the other way than last."),
        "set_position": Method("set_position", (_POSITION,),
                               doc="Move to a position (0 closed, 100 open); the reply comes "
                                   "when it has stopped there."),
        "state": Method("state", writes=False, doc="The current state."),
    }

    def __init__(self, name: str, config: Any, *, simulate: bool, emit: Any) -> None:
        super().__init__(name, config, simulate=simulate, emit=emit)
        self.up: Any = None
        self.down: Any = None
        self.endstop_inputs: dict[str, Any] = {}

    def create(self, factory: Any) -> Any:
        import gpiozero

        cfg = self.config
        self.up = gpiozero.OutputDevice(cfg.up, active_high=cfg.active_high,
                                        initial_value=False, pin_factory=factory)
        try:
            self.down = gpiozero.OutputDevice(cfg.down, active_high=cfg.active_high,
                                              initial_value=False, pin_factory=factory)
            if cfg.endstops is not None:
                for key in ("open", "closed"):
                    line = getattr(cfg.endstops, key)
                    if line is not None:
                        self.endstop_inputs[key] = gpiozero.DigitalInputDevice(
                            line, pull_up=cfg.endstops.pull_up,
                            bounce_time=cfg.endstops.bounce_time, pin_factory=factory)
        except BaseException:
            self.close_parts()
            raise
        return (self.up, self.down)

    def wire(self) -> None:
        for key, dev in self.endstop_inputs.items():
            dev.when_activated = self._endstop(key)

    def _endstop(self, which: str) -> Any:
        def fire() -> None:
            # The switch's own time: the loop converts it (monotonic, the loop's clock).
            self.emit(self.name, f"endstop_{which}", {"at": time.monotonic()})

        return fire

    def drive(self, direction: Direction | None) -> float:
        """Switch the relays: ``up``, ``down`` or ``None`` (both off). The other relay goes
        off before one goes on, and both on together is never left standing. Returns when
        the switching was done (``time.monotonic()``)."""
        up, down = self.up, self.down
        if direction == "up":
            down.off()
            up.on()
        elif direction == "down":
            up.off()
            down.on()
        else:
            up.off()
            down.off()
        done = time.monotonic()
        if up.is_active and down.is_active:  # pragma: no cover - a relay that did not drop
            up.off()
            down.off()
            raise HardwareError(f"{self.name}: both relays were on; both switched off")
        return done

    def active_on_pins(self) -> bool:
        return bool(self.up.is_active or self.down.is_active)

    def endstops_active(self) -> dict[str, bool]:
        return {key: bool(dev.is_active) for key, dev in self.endstop_inputs.items()}

    def state(self) -> dict[str, Any]:
        """The relays as they are (the controller adds the position)."""
        return {"up": int(bool(self.up.is_active)), "down": int(bool(self.down.is_active))}

    def safe(self) -> None:
        """Both relays off; the position is kept by the controller."""
        if self.up is not None:
            self.up.off()
        if self.down is not None:
            self.down.off()

    def close_parts(self) -> None:
        for dev in (*self.endstop_inputs.values(), self.down, self.up):
            if dev is not None:
                try:
                    dev.close()
                except Exception:  # pragma: no cover - closing what did open
                    pass

    def close(self) -> None:
        if self.device is not None and not self.closed:
            self.closed = True
            self.safe()
            self.close_parts()

    def parse_set(self, payload: str) -> tuple[str, dict[str, Any]]:
        """Home Assistant's cover payloads: ``OPEN``, ``CLOSE``, ``STOP``, or a position."""
        word = payload.strip().upper()
        if word == "OPEN":
            return "open", {}
        if word in ("CLOSE", "CLOSED"):
            return "close", {}
        if word == "STOP":
            return "stop", {}
        if word == "TOGGLE":
            return "toggle", {}
        try:
            value = float(word)
        except ValueError:
            raise BadArgument(f"expected OPEN, CLOSE, STOP or a position 0-100, "
                              f"got {payload[:40]!r}") from None
        if not math.isfinite(value) or not 0 <= value <= 100:
            raise BadArgument(f"position must be from 0 to 100, got {payload[:40]!r}")
        return "set_position", {"position": value}

    def catalogue(self) -> dict[str, Any]:
        out = super().catalogue()
        out["device_class"] = self.config.device_class
        return out


ADAPTERS: tuple[type[DeviceAdapter], ...] = (CoverAdapter,)
