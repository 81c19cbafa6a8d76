"""The PCA9685 16-channel 12-bit PWM controller (I²C) as gpiozero pins: ``"pwm1:3"`` is
channel 3 (LED3) of expander ``pwm1``. gpiozero's PWMLED, PWMOutputDevice, Servo,
AngularServo, Motor (and LED, OutputDevice: full on or full off) drive them unchanged, through
the same ``ExpanderFactory`` as the I/O expanders.

The chip has one PWM frequency for all 16 channels, set by its prescaler:
``prescale = round(25 MHz / (4096 * frequency)) - 1`` (3..255: 1526 Hz down to 24 Hz), which
is written only while the oscillator sleeps (MODE1 SLEEP), then the chip is woken, given
500 µs and restarted (MODE1 RESTART, when set). A channel's duty cycle is a 12-bit OFF
count with the ON count at 0, written in one 4-byte transfer (MODE1 AI: auto-increment);
0 and 1 use the full-off and full-on bits (bit 4 of LEDn_OFF_H and LEDn_ON_H). A pin's
``frequency`` is the chip's: gpiozero asks for one and gets the chip's (``check-config``
compares the devices' frequencies with it). Channels are outputs only.

The chip is checked once a second (MODE1 read): a chip that stops answering (or a write
that fails) marks its pins failed (``on_failure``); it is set up again with every channel's
last value once it answers, as is a chip found asleep (power-cycled).

``SimulatedPCA9685`` is a register file with the chip's behaviour for ``--simulate``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from pi_mqtt_gpio.server.pins.expander import Chip, ChipPin, OnFailure
from pi_mqtt_gpio.server.sections import DEFAULT_FREQUENCY

__all__ = [
    "CHANNELS",
    "PCA9685",
    "PCA9685Pin",
    "SimulatedPCA9685",
    "counts_for",
    "prescale_for",
]

log = logging.getLogger("pi_mqtt_gpio.expander")

# Registers
MODE1, MODE2, SUBADR1, SUBADR2, SUBADR3, ALLCALLADR = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05
LED0_ON_L = 0x06  # LEDn_ON_L = 0x06 + 4n, then ON_H, OFF_L, OFF_H
ALL_LED_ON_L = 0xFA
PRE_SCALE = 0xFE
# MODE1 bits
RESTART, EXTCLK, AI, SLEEP, ALLCALL = 0x80, 0x40, 0x20, 0x10, 0x01
# MODE2 bits
INVRT, OUTDRV = 0x10, 0x04
FULL = 0x10  # bit 4 of LEDn_ON_H (full on) and LEDn_OFF_H (full off, which wins)

CHANNELS = 16
OSCILLATOR_HZ = 25_000_000
PWM_INTERFACES = frozenset({"gpio", "pwm"})


def prescale_for(frequency: float) -> int:
    """The datasheet's prescale value for an update rate (3..255)."""
    return max(3, min(255, round(OSCILLATOR_HZ / (4096 * frequency)) - 1))


def counts_for(duty: float) -> tuple[int, int]:
    """(ON, OFF) register values for a duty cycle 0..1: the full-off or full-on bit at the
    ends, else ON at 0 and OFF at the 12-bit count."""
    count = round(max(0.0, min(1.0, duty)) * 4096)
    if count <= 0:
        return 0, FULL << 8  # full off
    if count >= 4096:
        return FULL << 8, 0  # full on
    return 0, count


class SimulatedPCA9685:
    """A PCA9685 register file with the chip's behaviour: the power-on values, PRE_SCALE
    writable only while SLEEP is set, auto-increment only with MODE1 AI (else every byte of
    a block lands on the first register), RESTART set by going to sleep with a channel
    running and cleared by writing it 1 once awake, ALL_LED_* writing every channel (and
    reading 0)."""

    def __init__(self) -> None:
        self.regs = [0] * 256
        self.regs[MODE1] = SLEEP | ALLCALL
        self.regs[MODE2] = OUTDRV
        self.regs[SUBADR1], self.regs[SUBADR2], self.regs[SUBADR3] = 0xE2, 0xE4, 0xE8
        self.regs[ALLCALLADR] = 0xE0
        self.regs[PRE_SCALE] = 0x1E
        for n in range(CHANNELS):
            self.regs[LED0_ON_L + 4 * n + 3] = FULL  # LEDn_OFF_H: full off
        self.lock = threading.Lock()
        self.answering = True

    def _check(self) -> None:
        if not self.answering:
            raise OSError(121, "Remote I/O error")

    def _write(self, register: int, value: int) -> None:
        value &= 0xFF
        if register == PRE_SCALE:
            if self.regs[MODE1] & SLEEP:
                self.regs[PRE_SCALE] = max(3, value)
            return
        if register == MODE1:
            old = self.regs[MODE1]
            restart = old & RESTART
            if value & SLEEP and not old & SLEEP and self._running():
                restart = RESTART
            elif value & RESTART and not value & SLEEP:
                restart = 0  # writing 1 restarts the channels and clears it
            self.regs[MODE1] = (value & ~RESTART) | restart
            return
        if ALL_LED_ON_L <= register <= ALL_LED_ON_L + 3:
            for n in range(CHANNELS):
                self.regs[LED0_ON_L + 4 * n + register - ALL_LED_ON_L] = value
            return
        if register < 0xFF:
            self.regs[register] = value

    def _running(self) -> bool:
        return any(self.duty(n) > 0 for n in range(CHANNELS))

    def _read(self, register: int) -> int:
        if ALL_LED_ON_L <= register <= ALL_LED_ON_L + 3:
            return 0
        return self.regs[register]

    def _next(self, register: int) -> int:
        return (register + 1) & 0xFF if self.regs[MODE1] & AI else register

    def read_byte_data(self, address: int, register: int) -> int:
        with self.lock:
            self._check()
            return self._read(register)

    def write_byte_data(self, address: int, register: int, value: int) -> None:
        with self.lock:
            self._check()
            self._write(register, value)

    def write_i2c_block_data(self, address: int, register: int, data: Sequence[int]) -> None:
        with self.lock:
            self._check()
            for value in data:
                self._write(register, value)
                register = self._next(register)

    def read_i2c_block_data(self, address: int, register: int, length: int) -> list[int]:
        with self.lock:
            self._check()
            out = []
            for _ in range(length):
                out.append(self._read(register))
                register = self._next(register)
            return out

    # what the outputs do
    def counts(self, n: int) -> tuple[int, int]:
        """Channel n's (ON, OFF) registers."""
        base = LED0_ON_L + 4 * n
        r = self.regs
        return r[base] | (r[base + 1] << 8), r[base + 2] | (r[base + 3] << 8)

    def duty(self, n: int) -> float:
        """Channel n's duty cycle (0 while asleep, as the oscillator is off)."""
        on, off = self.counts(n)
        if off & (FULL << 8):
            return 0.0
        if on & (FULL << 8):
            return 1.0
        return ((off & 0xFFF) - (on & 0xFFF)) % 4096 / 4096

    @property
    def frequency(self) -> float:
        return OSCILLATOR_HZ / (4096 * (self.regs[PRE_SCALE] + 1))

    def close(self) -> None:
        pass


class PCA9685(Chip):
    """One chip: the channels' last counts, writes under one lock, a check once a second."""

    def __init__(self, name: str, config: Any, bus: Any, *,
                 on_failure: OnFailure | None = None) -> None:
        # bus: read_byte_data, write_byte_data, write_i2c_block_data (smbus2.SMBus)
        super().__init__(name, config, bus, on_failure=on_failure)
        self.frequency: float = config.frequency or DEFAULT_FREQUENCY
        self.counts: list[tuple[int, int]] = [counts_for(0.0)] * CHANNELS
        self.pin_class = PCA9685Pin

    @property
    def mode1(self) -> int:
        """MODE1 awake: auto-increment, all-call left as it is at power-on."""
        return AI | ALLCALL

    @property
    def mode2(self) -> int:
        return (INVRT if self.config.invert else 0) | (0 if self.config.open_drain else OUTDRV)

    def start_registers(self) -> None:
        """The datasheet's order: sleep (the prescaler is writable only then), prescale,
        MODE2, every channel, wake, 500 µs for the oscillator, RESTART if it is set."""
        address = self.address
        old = self.bus.read_byte_data(address, MODE1)
        self.bus.write_byte_data(address, MODE1, (old & ~RESTART & ~EXTCLK) | SLEEP | AI)
        self.bus.write_byte_data(address, PRE_SCALE, prescale_for(self.frequency))
        self.bus.write_byte_data(address, MODE2, self.mode2)
        for n in range(CHANNELS):
            self._write_channel(n, self.counts[n])
        self.bus.write_byte_data(address, MODE1, self.mode1)
        time.sleep(0.0005)  # the oscillator's start-up time (datasheet: 500 µs)
        if self.bus.read_byte_data(address, MODE1) & RESTART:
            self.bus.write_byte_data(address, MODE1, self.mode1 | RESTART)

    def _write_channel(self, n: int, counts: tuple[int, int]) -> None:
        on, off = counts
        self.bus.write_i2c_block_data(self.address, LED0_ON_L + 4 * n,
                                      [on & 0xFF, on >> 8, off & 0xFF, off >> 8])

    def set_duty(self, n: int, duty: float) -> None:
        """Write channel n's duty cycle; an OSError marks the chip failed and is raised (the
        command fails)."""
        counts = counts_for(duty)
        try:
            with self.lock:
                self._write_channel(n, counts)
                self.counts[n] = counts
        except OSError as exc:
            self._fail(exc)
            raise

    def _watch(self) -> None:
        """Once a second: is the chip there and awake? Set it up again when it answers
        after a failure, or was found asleep (it lost power)."""
        while not self._stop.wait(1.0):
            try:
                with self.lock:
                    asleep = bool(self.bus.read_byte_data(self.address, MODE1) & SLEEP)
                    if self.failed or asleep:
                        self.start_registers()
            except OSError as exc:
                self._fail(exc)
                continue
            if asleep and not self.failed:
                log.warning("expander %s was found asleep (reset?): set up again", self.name)
            self._answers_again()


class PCA9685Pin(ChipPin):
    """A gpiozero pin on a PCA9685 channel: output only; ``frequency`` None is a plain
    output (full on or off), a number turns PWM on at the chip's frequency, where
    ``state`` is the duty cycle."""

    def __init__(self, factory: Any, chip: PCA9685, n: int) -> None:
        super().__init__(factory, chip, n, PWM_INTERFACES)
        self.chip = chip
        self._function = "output"
        self._pwm = False
        self._state: float = 0.0
        chip.pins[n] = self

    def _output_only(self, what: str) -> Exception:
        from gpiozero.exc import PinInvalidFunction

        error: Exception = PinInvalidFunction(f"{self!r} is a PCA9685 PWM channel: output "
                                              f"only, no {what}")
        return error

    def close(self) -> None:
        """The channel goes off."""
        self._pwm = False
        if self._state:
            try:
                self.chip.set_duty(self.n, 0.0)
            except OSError:
                pass  # the chip is failed; it starts with every channel off
            self._state = 0.0
        self.chip.pins.pop(self.n, None)

    def output_with_state(self, state: Any) -> None:
        self.function = "output"
        self.state = state

    def input_with_pull(self, pull: str) -> None:
        raise self._output_only("input")

    @property
    def function(self) -> str:
        return self._function

    @function.setter
    def function(self, value: str) -> None:
        if value != "output":
            raise self._output_only(f"{value} function")

    @property
    def state(self) -> float:
        return self._state if self._pwm else float(bool(self._state))

    @state.setter
    def state(self, value: Any) -> None:
        duty = float(value) if self._pwm else float(bool(value))
        if not 0 <= duty <= 1:
            from gpiozero.exc import PinInvalidState

            raise PinInvalidState(f"{self!r}: a duty cycle is 0 to 1, not {value!r}")
        self.chip.set_duty(self.n, duty)
        self._state = duty

    @property
    def pull(self) -> str:
        return "floating"

    @pull.setter
    def pull(self, value: str) -> None:
        if value != "floating":
            raise self._output_only("pull-up or pull-down")

    @property
    def frequency(self) -> float | None:
        """The chip's frequency while PWM is on (every channel has the chip's)."""
        return self.chip.frequency if self._pwm else None

    @frequency.setter
    def frequency(self, value: float | None) -> None:
        if value is None:
            if self._pwm:
                self._pwm = False
                self.state = 0  # PWM off: the channel goes off (a Servo detaches)
            return
        self._pwm = True

    @property
    def bounce(self) -> None:
        return None

    @bounce.setter
    def bounce(self, value: Any) -> None:
        if value is not None:
            raise self._output_only("edge detection")

    @property
    def edges(self) -> str:
        return "none"

    @edges.setter
    def edges(self, value: str) -> None:
        if value != "none":
            raise self._output_only("edge detection")

    @property
    def when_changed(self) -> None:
        return None

    @when_changed.setter
    def when_changed(self, value: Any) -> None:
        if value is not None:
            raise self._output_only("edge detection")
