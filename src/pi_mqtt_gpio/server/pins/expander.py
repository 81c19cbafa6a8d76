"""What every expander driver shares: pin names (``"io1:3"``), the chip base (one lock, a
watch thread, failing once until it answers again: ``Chip``), the digital I/O expander with
its pins' bookkeeping (direction, latch, pull-ups, edges, polling and the interrupt line:
``DigitalExpander``), its gpiozero pin (``ExpanderPin``) and the pin factory that hands out
expander pins by name (``ExpanderFactory``).

``MCP23017`` (registers) and ``PCF857x`` (one port) are digital expanders; the ``PCA9685``'s
PWM channels are a ``Chip`` with pins of their own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import MethodType
from typing import Any
from weakref import ReferenceType, WeakMethod, ref

__all__ = [
    "Chip",
    "ChipPin",
    "DigitalExpander",
    "ExpanderFactory",
    "ExpanderPin",
    "ExpanderPinInfo",
    "parse_pin",
]

log = logging.getLogger("pi_mqtt_gpio.expander")

OnFailure = Callable[[str, str | None], None]  # (expander, problem or None when it answers)


def parse_pin(value: Any) -> tuple[str, int] | None:
    """``"io1:3"`` -> (``"io1"``, 3); None for anything that is not an expander pin."""
    if not isinstance(value, str) or ":" not in value:
        return None
    name, _, number = value.partition(":")
    if not name or not number.isdigit() or not 0 <= int(number) <= 15:
        return None
    return name, int(number)


class Chip:
    """What every expander chip driver shares: its bus and address, one lock, a thread that
    watches it (``_watch``), and failing once (a clear log line, the pins marked failed
    through ``on_failure``) until it answers again."""

    def __init__(self, name: str, config: Any, bus: Any, *,
                 on_failure: OnFailure | None = None) -> None:
        self.name = name
        self.config = config
        self.bus = bus
        self.address: int = config.address
        self.lock = threading.RLock()
        self.pins: dict[int, Any] = {}
        self.failed: str | None = None
        self.on_failure = on_failure
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Set the chip up and start watching it."""
        with self.lock:
            self._setup()
        self._thread = threading.Thread(target=self._watch, name=f"expander-{self.name}",
                                        daemon=True)
        self._thread.start()

    def _setup(self) -> None:
        self.start_registers()

    def start_registers(self) -> None:  # pragma: no cover - each chip's own
        raise NotImplementedError

    def _watch(self) -> None:  # pragma: no cover - each chip's own
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self._release()
        close = getattr(self.bus, "close", None)
        if close is not None:
            close()

    def _release(self) -> None:
        """What a chip holds besides its bus, let go at ``close``."""

    def _fail(self, exc: OSError) -> None:
        if self.failed is None:
            self.failed = f"expander {self.name} (I2C bus {self.config.bus}, address " \
                          f"0x{self.address:02x}) does not answer: {exc}"
            log.error("%s", self.failed)
            if self.on_failure is not None:
                self.on_failure(self.name, self.failed)

    def _answers_again(self) -> None:
        if self.failed:
            log.warning("expander %s answers again", self.name)
            self.failed = None
            if self.on_failure is not None:
                self.on_failure(self.name, None)


class DigitalExpander(Chip):
    """A chip of digital inputs and outputs: the pins' direction (``iodir``, 1: input),
    output latch (``olat``), pull-ups (``gppu``) and wanted edges (``gpinten``) as bit masks,
    reads and writes under one lock, edges found by polling or when the chip's INT line
    falls. A chip says how its levels are read and a changed bit is written."""

    def __init__(self, name: str, config: Any, bus: Any, *,
                 on_failure: OnFailure | None = None, count: int = 16) -> None:
        super().__init__(name, config, bus, on_failure=on_failure)
        self.pins: dict[int, ExpanderPin] = {}
        self.count = count
        self.iodir = (1 << count) - 1
        self.gppu = 0
        self.olat = 0
        self.gpinten = 0
        self.last = 0  # the levels last read
        self.reads = 0
        self.interrupt_device: Any = None  # the INT line's input, when wired

    def _setup(self) -> None:
        self.start_registers()
        self.last = self._levels()

    def _levels(self) -> int:  # pragma: no cover - each chip's own
        """Every pin's level, one bit each (called under the lock)."""
        raise NotImplementedError

    def _interrupt_levels(self) -> int:
        """The levels once INT fell (a chip may read what latched it first)."""
        return self._levels()

    def _write_bit(self, attr: str, n: int) -> None:  # pragma: no cover - each chip's own
        """Write the mask ``attr`` after its bit ``n`` changed (under the lock)."""
        raise NotImplementedError

    def _release(self) -> None:
        if self.interrupt_device is not None:
            self.interrupt_device.close()
            self.interrupt_device = None

    def set_bit(self, attr: str, n: int, on: bool) -> None:
        with self.lock:
            value = getattr(self, attr)
            value = value | (1 << n) if on else value & ~(1 << n)
            setattr(self, attr, value)
            self._write_bit(attr, n)

    def level(self, n: int) -> bool:
        with self.lock:
            if not self.iodir & (1 << n):
                return bool(self.olat & (1 << n))
            value = self._levels()
        self._changed(value)
        return bool(value & (1 << n))

    # --- edges ---------------------------------------------------------------------------------
    def interrupt(self) -> None:
        """The INT line fell: read the levels."""
        try:
            with self.lock:
                value = self._interrupt_levels()
        except OSError as exc:
            self._fail(exc)
            return
        self._changed(value)

    def _watch(self) -> None:
        """Poll the inputs (no interrupt line), or only check the chip still answers (with
        one), and retry a chip that stopped answering once a second."""
        while not self._stop.is_set():
            interval = 1.0 if (self.config.interrupt is not None or self.failed) \
                else self.config.poll_interval_s
            if self._stop.wait(interval):
                return
            if not (self.gpinten or self.failed) and self.config.interrupt is None:
                continue  # no input wants edges: nothing to poll
            try:
                with self.lock:
                    if self.failed:
                        self.start_registers()
                    value = self._levels()
            except OSError as exc:
                self._fail(exc)
                continue
            self._answers_again()
            self._changed(value)

    def _changed(self, value: int) -> None:
        with self.lock:
            changed = (value ^ self.last) & self.iodir & self.gpinten
            self.last = value
        if not changed:
            return
        ticks = time.monotonic()
        for n in range(16):
            if changed & (1 << n) and n in self.pins:
                self.pins[n].edge(ticks, bool(value & (1 << n)))


@dataclass(frozen=True, slots=True)
class ExpanderPinInfo:
    name: str
    names: frozenset[str]
    pull: str = ""
    interfaces: frozenset[str] = frozenset({"gpio"})
    number: int = -1


class ChipPin:
    """What a gpiozero pin on any chip has: its name (``io1:3``), its factory and chip."""

    def __init__(self, factory: Any, chip: Any, n: int,
                 interfaces: frozenset[str] = frozenset({"gpio"})) -> None:
        self._factory = factory
        self.n = n
        name = f"{chip.name}:{n}"
        self._info = ExpanderPinInfo(name, frozenset({name}), interfaces=interfaces)

    @property
    def info(self) -> ExpanderPinInfo:
        return self._info

    @property
    def factory(self) -> Any:
        return self._factory

    def __repr__(self) -> str:
        return self._info.name


class ExpanderPin(ChipPin):
    """A gpiozero pin on an expander (gpiozero's ``Pin`` interface: function, state, pull,
    bounce, edges, when_changed)."""

    def __init__(self, factory: Any, chip: DigitalExpander, n: int) -> None:
        super().__init__(factory, chip, n)
        self.chip = chip
        self._function = "input"
        self._pull = "floating"
        self._bounce: float | None = None
        self._edges = "both"
        self._when_changed: ReferenceType[Any] | None = None
        self._last_edge = 0.0
        chip.pins[n] = self

    def close(self) -> None:
        self.when_changed = None
        self.function = "input"
        self.chip.pins.pop(self.n, None)

    def output_with_state(self, state: Any) -> None:
        self.chip.set_bit("olat", self.n, bool(state))  # the latch first: no glitch
        self.function = "output"

    def input_with_pull(self, pull: str) -> None:
        self.function = "input"
        self.pull = pull

    # function
    @property
    def function(self) -> str:
        return self._function

    @function.setter
    def function(self, value: str) -> None:
        if value not in ("input", "output"):
            from gpiozero.exc import PinInvalidFunction

            raise PinInvalidFunction(f"{self!r} can only be input or output, not {value!r}")
        self._function = value
        self.chip.set_bit("iodir", self.n, value == "input")

    # state
    @property
    def state(self) -> int:
        return int(self.chip.level(self.n))

    @state.setter
    def state(self, value: Any) -> None:
        if self._function != "output":
            from gpiozero.exc import PinSetInput

            raise PinSetInput(f"cannot set the state of input {self!r}")
        self.chip.set_bit("olat", self.n, bool(value))

    # pull (the MCP23017 has pull-ups only)
    @property
    def pull(self) -> str:
        return self._pull

    @pull.setter
    def pull(self, value: str) -> None:
        if value == "down":
            from gpiozero.exc import PinFixedPull

            raise PinFixedPull(f"{self!r}: an {self.chip.config.type} has pull-ups only "
                               f"(pull_up: true, or a floating input with active_state)")
        self._pull = value
        self.chip.set_bit("gppu", self.n, value == "up")

    # frequency: no PWM on an expander
    @property
    def frequency(self) -> None:
        return None

    @frequency.setter
    def frequency(self, value: Any) -> None:
        if value is not None:
            from gpiozero.exc import PinPWMUnsupported

            raise PinPWMUnsupported(f"{self!r} has no PWM")

    # bounce (applied in software: edges within bounce of the last one are ignored)
    @property
    def bounce(self) -> float | None:
        return self._bounce

    @bounce.setter
    def bounce(self, value: float | None) -> None:
        self._bounce = None if value is None else float(value)

    @property
    def edges(self) -> str:
        return self._edges

    @edges.setter
    def edges(self, value: str) -> None:
        self._edges = value

    # when_changed
    @property
    def when_changed(self) -> Any:
        return None if self._when_changed is None else self._when_changed()

    @when_changed.setter
    def when_changed(self, value: Any) -> None:
        if value is None:
            self._when_changed = None
            self.chip.set_bit("gpinten", self.n, False)
            return
        self._when_changed = WeakMethod(value) if isinstance(value, MethodType) else ref(value)
        self.chip.set_bit("gpinten", self.n, True)

    def edge(self, ticks: float, level: bool) -> None:
        if self._edges == "none" or (self._edges == "rising" and not level) \
                or (self._edges == "falling" and level):
            return
        if self._bounce and ticks - self._last_edge < self._bounce:
            return
        self._last_edge = ticks
        method = self.when_changed
        if method is not None:
            method(ticks, int(level))

    # simulation
    def drive_high(self) -> None:
        self._simulated().drive(self.n, True)

    def drive_low(self) -> None:
        self._simulated().drive(self.n, False)

    def _simulated(self) -> Any:
        bus = self.chip.bus
        if not hasattr(bus, "drive"):  # a simulated chip (MCP23017 or PCF857x)
            raise RuntimeError(f"{self!r} is a real expander pin: it cannot be driven")
        return bus


class ExpanderFactory:
    """gpiozero's pin factory interface: expander pins by name (``io1:3``), everything else
    from the board's factory (lgpio, or the simulated pins). A chip's ``pin_class`` (the
    PCA9685's PWM channels) makes its pins, else they are ``ExpanderPin``."""

    def __init__(self, base: Any, chips: dict[str, Any]) -> None:
        self.base = base
        self.chips = chips
        self._pins: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)

    def pin(self, spec: Any, **kwargs: Any) -> Any:
        parsed = parse_pin(spec)
        if parsed is None or parsed[0] not in self.chips:
            return self.base.pin(spec, **kwargs)
        name = f"{parsed[0]}:{parsed[1]}"
        pin = self._pins.get(name)
        if pin is None:
            chip = self.chips[parsed[0]]
            pin_class = getattr(chip, "pin_class", ExpanderPin)
            pin = self._pins[name] = pin_class(self, chip, parsed[1])
        return pin

    def close(self) -> None:
        for chip in self.chips.values():
            chip.close()
        self.base.close()
