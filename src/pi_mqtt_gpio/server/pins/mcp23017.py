"""MCP23017 I²C expanders as gpiozero pins: ``"io1:3"`` is pin 3 (GPA3) of expander ``io1``,
(PCF8574/PCF8575: ``pcf857x.py``, the same pins on another chip driver; the PCA9685's PWM
channels: ``pca9685.py``),
``"io1:8"`` is GPB0. Every gpiozero input and output type (and so gestures, bindings,
safety, Home Assistant) works on them unchanged, through ``ExpanderFactory``: a gpiozero pin
factory that hands out expander pins by name and everything else from the board's factory
(``expander.py``: what the expander drivers share).

The chip is driven through the kernel's I²C character device with ``smbus2``; registers in
the default bank layout (IOCON.BANK = 0). Inputs: pull-ups (GPPU), polarity is gpiozero's,
interrupt-on-change (GPINTEN, INTCON = 0: against the previous value) read back from
INTF/INTCAP when the chip's INT line (a GPIO of the board, active low) falls; without an
interrupt line the GPIO registers are polled. An expander that stops answering marks its
pins failed (``on_failure``) and is retried every second until it answers again.

``SimulatedMCP23017`` is a register file with the chip's behaviour for ``--simulate``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pi_mqtt_gpio.server.pins.expander import (
    DigitalExpander,
    ExpanderFactory,
    ExpanderPin,
    OnFailure,
    parse_pin,
)
from pi_mqtt_gpio.server.sections import ExpanderConfig

__all__ = [
    "MCP23017",
    "ExpanderConfig",
    "ExpanderFactory",
    "ExpanderPin",
    "SimulatedMCP23017",
    "parse_pin",
]

# Registers (IOCON.BANK = 0): A at even addresses, B at the next one.
IODIR, IPOL, GPINTEN, DEFVAL, INTCON, IOCON, GPPU, INTF, INTCAP, GPIO, OLAT = (
    0x00, 0x02, 0x04, 0x06, 0x08, 0x0A, 0x0C, 0x0E, 0x10, 0x12, 0x14)


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


class MCP23017(DigitalExpander):
    """One chip: its registers, two 8-bit ports (A: pins 0-7, B: 8-15) each."""

    REGISTERS = {"iodir": IODIR, "gppu": GPPU, "olat": OLAT, "gpinten": GPINTEN}

    def __init__(self, name: str, config: ExpanderConfig, bus: Bus, *,
                 on_failure: OnFailure | None = None) -> None:
        super().__init__(name, config, bus, on_failure=on_failure)

    # --- registers -----------------------------------------------------------------------------
    def _write16(self, register: int, value: int) -> None:
        self.bus.write_byte_data(self.address, register, value & 0xFF)
        self.bus.write_byte_data(self.address, register + 1, (value >> 8) & 0xFF)

    def _read16(self, register: int) -> int:
        low = self.bus.read_byte_data(self.address, register)
        high = self.bus.read_byte_data(self.address, register + 1)
        self.reads += 1
        return int(low | (high << 8))

    def _setup(self) -> None:
        """All inputs, no pull-ups, interrupts mirrored and active low, on change."""
        self.bus.write_byte_data(self.address, IOCON, 0x40)  # MIRROR: INTA = INTB
        self._write16(IPOL, 0)
        self._write16(INTCON, 0)
        self._write16(IODIR, self.iodir)
        self._write16(GPPU, self.gppu)
        self._write16(GPINTEN, self.gpinten)
        self._write16(OLAT, self.olat)
        self.last = self._levels()

    def start_registers(self) -> None:
        self.bus.write_byte_data(self.address, IOCON, 0x40)
        self._write16(IODIR, self.iodir)
        self._write16(GPPU, self.gppu)
        self._write16(GPINTEN, self.gpinten)
        self._write16(OLAT, self.olat)

    def _levels(self) -> int:
        return self._read16(GPIO)

    def _interrupt_levels(self) -> int:
        """What changed (INTF/INTCAP, which releases INT), then the current levels."""
        self._read16(INTF)
        self._read16(INTCAP)
        return self._read16(GPIO)

    def _write_bit(self, attr: str, n: int) -> None:
        port = n // 8
        self.bus.write_byte_data(self.address, self.REGISTERS[attr] + port,
                                 (getattr(self, attr) >> (8 * port)) & 0xFF)
