"""MCP23017 I²C expanders as gpiozero pins: ``"io1:3"`` is pin 3 (GPA3) of expander ``io1``,
(PCF8574/PCF8575: ``pcf857x.py``, the same pins on another chip driver; the PCA9685's PWM
channels: ``pca9685.py``),
``"io1:8"`` is GPB0. Every gpiozero input and output type (and so gestures, bindings,
safety, Home Assistant) works on them unchanged, through ``ExpanderFactory``: a gpiozero pin
factory that hands out expander pins by name and everything else from the board's factory.

The chip is driven through the kernel's I²C character device with ``smbus2``; registers in
the default bank layout (IOCON.BANK = 0). Inputs: pull-ups (GPPU), polarity is gpiozero's,
interrupt-on-change (GPINTEN, INTCON = 0: against the previous value) read back from
INTF/INTCAP when the chip's INT line (a GPIO of the board, active low) falls; without an
interrupt line the GPIO registers are polled. An expander that stops answering marks its
pins failed (``on_failure``) and is retried every second until it answers again.

``SimulatedMCP23017`` is a register file with the chip's behaviour for ``--simulate``.
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

from pi_mqtt_gpio.server.sections import ExpanderConfig

__all__ = [
    "MCP23017",
    "ExpanderConfig",
    "ExpanderFactory",
    "SimulatedMCP23017",
    "parse_pin",
]

log = logging.getLogger("pi_mqtt_gpio.expander")

# Registers (IOCON.BANK = 0): A at even addresses, B at the next one.
IODIR, IPOL, GPINTEN, DEFVAL, INTCON, IOCON, GPPU, INTF, INTCAP, GPIO, OLAT = (
    0x00, 0x02, 0x04, 0x06, 0x08, 0x0A, 0x0C, 0x0E, 0x10, 0x12, 0x14)


def parse_pin(value: Any) -> tuple[str, int] | None:
    """``"io1:3"`` -> (``"io1"``, 3); None for anything that is not an expander pin."""
    if not isinstance(value, str) or ":" not in value:
        return None
    name, _, number = value.partition(":")
    if not name or not number.isdigit() or not 0 <= int(number) <= 15:
        return None
    return name, int(number)


class Bus:
    """What the chip driver needs of an SMBus (smbus2.SMBus has it)."""

    def read_byte_data(self, address: int, register: int) -> int:  # pragma: no cover
        raise NotImplementedError

    def write_byte_data(self, address: int, register: int, value: int) -> None:  # pragma: no cover
        raise NotImplementedError


class SimulatedMCP23017(Bus):
    """An MCP23017 register file with the chip's behaviour: GPIO reads the pins (outputs
    from OLAT, inputs from the outside level, with pull-ups), a change on an input with
    GPINTEN set latches INTF and INTCAP until INTCAP or GPIO is read."""

    def __init__(self) -> None:
        self.regs = [0] * 0x16
        self.regs[IODIR] = self.regs[IODIR + 1] = 0xFF
        self.outside: list[int | None] = [None] * 16  # driven levels; None: floating
        self.lock = threading.Lock()
        self.on_interrupt: Callable[[], None] | None = None
        self.answering = True

    def _pins(self) -> int:
        value = 0
        for n in range(16):
            port, bit = n // 8, 1 << (n % 8)
            if not self.regs[IODIR + port] & bit:
                level = bool(self.regs[OLAT + port] & bit)
            elif self.outside[n] is not None:
                level = bool(self.outside[n])
            else:
                level = bool(self.regs[GPPU + port] & bit)  # pulled up, or reads low
            if level:
                value |= 1 << n
        return value

    def read_byte_data(self, address: int, register: int) -> int:
        with self.lock:
            if not self.answering:
                raise OSError(121, "Remote I/O error")
            port = register & 1
            if register in (GPIO, GPIO + 1):
                self.regs[INTF + port] = 0  # reading GPIO or INTCAP clears the interrupt
                return (self._pins() >> (8 * port)) & 0xFF
            if register in (INTCAP, INTCAP + 1):
                value = self.regs[register]
                self.regs[INTF + port] = 0
                return value
            return self.regs[register]

    def write_byte_data(self, address: int, register: int, value: int) -> None:
        with self.lock:
            if not self.answering:
                raise OSError(121, "Remote I/O error")
            if register in (GPIO, GPIO + 1):
                register += OLAT - GPIO
            self.regs[register] = value & 0xFF

    def drive(self, n: int, level: bool | None) -> None:
        """The outside world drives pin ``n`` (None: lets go)."""
        fire = False
        with self.lock:
            before = self._pins()
            self.outside[n] = None if level is None else int(level)
            after = self._pins()
            port, bit = n // 8, 1 << (n % 8)
            if (before ^ after) & (1 << n) and self.regs[GPINTEN + port] & bit:
                self.regs[INTF + port] |= bit
                self.regs[INTCAP + port] = (after >> (8 * port)) & 0xFF
                fire = True
        if fire and self.on_interrupt is not None:
            self.on_interrupt()


class Chip:
    """What every expander chip driver shares: failing once (a clear log line, the pins
    marked failed through ``on_failure``) until it answers again."""

    name: str
    config: Any
    address: int
    failed: str | None
    on_failure: Callable[[str, str | None], None] | None

    def _fail(self, exc: OSError) -> None:
        if self.failed is None:
            self.failed = f"expander {self.name} (I2C bus {self.config.bus}, address " \
                          f"0x{self.address:02x}) does not answer: {exc}"
            log.error("%s", self.failed)
            if self.on_failure is not None:
                self.on_failure(self.name, self.failed)


class MCP23017(Chip):
    """One chip: register cache, reads and writes under one lock, edge detection."""

    def __init__(self, name: str, config: ExpanderConfig, bus: Bus, *,
                 on_failure: Callable[[str, str | None], None] | None = None) -> None:
        self.name = name
        self.config = config
        self.bus = bus
        self.address = config.address
        self.lock = threading.RLock()
        self.pins: dict[int, ExpanderPin] = {}
        self.iodir = 0xFFFF
        self.gppu = 0
        self.olat = 0
        self.gpinten = 0
        self.last = 0  # the levels last read
        self.failed: str | None = None
        self.on_failure = on_failure  # (expander, problem or None when it answers again)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reads = 0
        self.interrupt_device: Any = None  # the INT line's input, when wired

    # --- registers -----------------------------------------------------------------------------
    def _write16(self, register: int, value: int) -> None:
        self.bus.write_byte_data(self.address, register, value & 0xFF)
        self.bus.write_byte_data(self.address, register + 1, (value >> 8) & 0xFF)

    def _read16(self, register: int) -> int:
        low = self.bus.read_byte_data(self.address, register)
        high = self.bus.read_byte_data(self.address, register + 1)
        self.reads += 1
        return low | (high << 8)

    def start(self) -> None:
        """Configure the chip (all inputs, no pull-ups, interrupts mirrored and active low)
        and start watching the inputs."""
        with self.lock:
            self.bus.write_byte_data(self.address, IOCON, 0x40)  # MIRROR: INTA = INTB
            self._write16(IPOL, 0)
            self._write16(INTCON, 0)
            self._write16(IODIR, self.iodir)
            self._write16(GPPU, self.gppu)
            self._write16(GPINTEN, self.gpinten)
            self._write16(OLAT, self.olat)
            self.last = self._read16(GPIO)
        self._thread = threading.Thread(target=self._watch, name=f"expander-{self.name}",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self.interrupt_device is not None:
            self.interrupt_device.close()
            self.interrupt_device = None
        close = getattr(self.bus, "close", None)
        if close is not None:
            close()

    def set_bit(self, attr: str, register: int, n: int, on: bool) -> None:
        with self.lock:
            value = getattr(self, attr)
            value = value | (1 << n) if on else value & ~(1 << n)
            setattr(self, attr, value)
            port = n // 8
            self.bus.write_byte_data(self.address, register + port,
                                     (value >> (8 * port)) & 0xFF)

    def level(self, n: int) -> bool:
        with self.lock:
            if not self.iodir & (1 << n):
                return bool(self.olat & (1 << n))
            value = self._read16(GPIO)
        self._changed(value)
        return bool(value & (1 << n))

    # --- edges ---------------------------------------------------------------------------------
    def interrupt(self) -> None:
        """The INT line fell: read what changed (INTF/INTCAP), then the current levels."""
        try:
            with self.lock:
                self._read16(INTF)
                self._read16(INTCAP)
                value = self._read16(GPIO)
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
                    value = self._read16(GPIO)
            except OSError as exc:
                self._fail(exc)
                continue
            if self.failed:
                log.warning("expander %s answers again", self.name)
                self.failed = None
                if self.on_failure is not None:
                    self.on_failure(self.name, None)
            self._changed(value)

    def start_registers(self) -> None:
        self.bus.write_byte_data(self.address, IOCON, 0x40)
        self._write16(IODIR, self.iodir)
        self._write16(GPPU, self.gppu)
        self._write16(GPINTEN, self.gpinten)
        self._write16(OLAT, self.olat)

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


class ExpanderPin:
    """A gpiozero pin on an expander (gpiozero's ``Pin`` interface: function, state, pull,
    bounce, edges, when_changed)."""

    def __init__(self, factory: Any, chip: MCP23017, n: int) -> None:
        self._factory = factory
        self.chip = chip
        self.n = n
        name = f"{chip.name}:{n}"
        self._info = ExpanderPinInfo(name, frozenset({name}))
        self._function = "input"
        self._pull = "floating"
        self._bounce: float | None = None
        self._edges = "both"
        self._when_changed: ReferenceType[Any] | None = None
        self._last_edge = 0.0
        chip.pins[n] = self

    @property
    def info(self) -> ExpanderPinInfo:
        return self._info

    @property
    def factory(self) -> Any:
        return self._factory

    def __repr__(self) -> str:
        return self._info.name

    def close(self) -> None:
        self.when_changed = None
        self.function = "input"
        self.chip.pins.pop(self.n, None)

    def output_with_state(self, state: Any) -> None:
        self.chip.set_bit("olat", OLAT, self.n, bool(state))  # the latch first: no glitch
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
        self.chip.set_bit("iodir", IODIR, self.n, value == "input")

    # state
    @property
    def state(self) -> int:
        return int(self.chip.level(self.n))

    @state.setter
    def state(self, value: Any) -> None:
        if self._function != "output":
            from gpiozero.exc import PinSetInput

            raise PinSetInput(f"cannot set the state of input {self!r}")
        self.chip.set_bit("olat", OLAT, self.n, bool(value))

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
        self.chip.set_bit("gppu", GPPU, self.n, value == "up")

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
            self.chip.set_bit("gpinten", GPINTEN, self.n, False)
            return
        self._when_changed = WeakMethod(value) if isinstance(value, MethodType) else ref(value)
        self.chip.set_bit("gpinten", GPINTEN, self.n, True)

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
