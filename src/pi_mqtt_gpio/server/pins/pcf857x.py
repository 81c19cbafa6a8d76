"""PCF8574 (8 pins) and PCF8575 (16 pins) I²C expanders as gpiozero pins, like the MCP23017
(``"io2:5"``): the same ``DigitalExpander``, ``ExpanderPin`` and ``ExpanderFactory``
(``expander.py``), another chip underneath.

These chips have no registers: one write sets the port latch, one read returns the pins'
levels (one byte, or two, low port first). Their pins are quasi-bidirectional: a latch bit
of 0 drives the pin low; a 1 lets a weak current source pull it high, so an input is a pin
whose latch bit is 1 (it reads what the outside drives, or high), and an output high is the
same weak high. Pull-downs do not exist; a "floating" input is pulled up as well. The INT
output (open drain, active low) falls on any input change and clears when the port is read.

``SimulatedPCF857x`` is the port with that behaviour for ``--simulate``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pi_mqtt_gpio.server.pins.expander import DigitalExpander, OnFailure
from pi_mqtt_gpio.server.sections import ExpanderConfig

__all__ = ["PCF857x", "SMBusPort", "SimulatedPCF857x", "pins_of"]


def pins_of(kind: str) -> int:
    """How many pins an expander type has."""
    return 8 if kind == "PCF8574" else 16


class SMBusPort:
    """The chip's plain I²C reads and writes on an ``smbus2.SMBus`` (no register byte)."""

    def __init__(self, bus: Any, width: int) -> None:
        self.bus = bus
        self.width = width

    def read_port(self, address: int) -> int:
        if self.width == 1:
            return int(self.bus.read_byte(address))
        from smbus2 import i2c_msg

        msg = i2c_msg.read(address, 2)
        self.bus.i2c_rdwr(msg)
        low, high = bytes(msg)
        return int(low | (high << 8))

    def write_port(self, address: int, value: int) -> None:
        if self.width == 1:
            self.bus.write_byte(address, value & 0xFF)
            return
        from smbus2 import i2c_msg

        self.bus.i2c_rdwr(i2c_msg.write(address, [value & 0xFF, (value >> 8) & 0xFF]))

    def close(self) -> None:
        self.bus.close()


class SimulatedPCF857x:
    """A PCF8574/PCF8575 port: pins whose latch bit is 0 read low; the others read what the
    outside drives, or high (the weak pull-up). A change of an input raises INT until the
    port is read."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.count = 8 * width
        self.latch = (1 << self.count) - 1  # power-on: every pin high (an input)
        self.outside: list[int | None] = [None] * self.count
        self.lock = threading.Lock()
        self.on_interrupt: Callable[[], None] | None = None
        self.answering = True
        self.int_low = False

    def _pins(self) -> int:
        value = 0
        for n in range(self.count):
            bit = 1 << n
            if not self.latch & bit:
                continue  # driven low
            level = self.outside[n]
            if level is None or level:
                value |= bit
        return value

    def read_port(self, address: int) -> int:
        with self.lock:
            if not self.answering:
                raise OSError(121, "Remote I/O error")
            self.int_low = False
            return self._pins()

    def write_port(self, address: int, value: int) -> None:
        with self.lock:
            if not self.answering:
                raise OSError(121, "Remote I/O error")
            self.latch = value & ((1 << self.count) - 1)

    def drive(self, n: int, level: bool | None) -> None:
        """The outside world drives pin ``n`` (None: lets go)."""
        with self.lock:
            before = self._pins()
            self.outside[n] = None if level is None else int(level)
            changed = bool((before ^ self._pins()) & (1 << n))
            if changed:
                self.int_low = True
        if changed and self.on_interrupt is not None:
            self.on_interrupt()

    def close(self) -> None:
        pass


class PCF857x(DigitalExpander):
    """One PCF8574/PCF8575: the digital expander's pin bookkeeping, polling, interrupt and
    failure handling, with the port read and written instead of registers."""

    def __init__(self, name: str, config: ExpanderConfig, bus: Any, *,
                 on_failure: OnFailure | None = None) -> None:
        super().__init__(name, config, bus, on_failure=on_failure, count=pins_of(config.type))
        self.port: Any = bus  # read_port / write_port (SMBusPort or SimulatedPCF857x)
        self.mask = self.iodir

    def _latch(self) -> int:
        """Outputs low where their latch says so; inputs (and outputs high) are 1."""
        return (self.olat | self.iodir) & self.mask

    def _levels(self) -> int:
        """The port (a read also releases INT)."""
        value = int(self.port.read_port(self.address)) & self.mask
        self.reads += 1
        return value

    def start_registers(self) -> None:
        self.port.write_port(self.address, self._latch())

    def _write_bit(self, attr: str, n: int) -> None:
        if attr in ("olat", "iodir"):  # pull-ups are always there; edges are ours
            self.port.write_port(self.address, self._latch())
