"""Making the gpiozero pin factory: simulated pins (``mock``), or lgpio on the Pi's header
GPIO chip (found by its label) with every claimed line labelled as ours; I/O expanders and
PWM controllers wrapped around it."""

from __future__ import annotations

import glob
import re
from collections.abc import Callable
from typing import Any

from pi_mqtt_gpio.errors import HardwareError
from pi_mqtt_gpio.server.config import HardwareConfig

__all__ = [
    "HEADER_CHIP_LABELS",
    "chip_labels",
    "consumer_label",
    "find_header_chip",
    "make_pin_factory",
    "resolve_chip",
]

# Labels of the GPIO chip that drives the 40-pin header: Pi 5 (RP1), Pi 4, Pi 0-3.
HEADER_CHIP_LABELS = ("pinctrl-rp1", "pinctrl-bcm2712", "pinctrl-bcm2711", "pinctrl-bcm2835")


def chip_labels() -> dict[int, str]:
    """GPIO chips of this machine: number -> label (empty when lgpio cannot open them)."""
    import lgpio

    labels: dict[int, str] = {}
    for path in sorted(glob.glob("/dev/gpiochip*")):
        m = re.match(r".*gpiochip(\d+)$", path)
        if not m:
            continue
        number = int(m.group(1))
        try:
            handle = lgpio.gpiochip_open(number)
        except Exception:
            continue
        try:
            info = lgpio.gpio_get_chip_info(handle)
            labels[number] = str(info[3])
        finally:
            lgpio.gpiochip_close(handle)
    return labels


def find_header_chip(labels: dict[int, str], wanted: tuple[str, ...] = HEADER_CHIP_LABELS
                     ) -> int:
    """The chip whose label names the Pi's header GPIO controller (Pi 5: ``pinctrl-rp1``,
    gpiochip0 on current kernels and gpiochip4 on older ones)."""
    for label in wanted:
        for number, text in sorted(labels.items()):
            if text == label:
                return number
    found = ", ".join(f"gpiochip{n}={t!r}" for n, t in sorted(labels.items())) or "none"
    raise HardwareError(f"no GPIO chip labelled {' or '.join(wanted)} (found: {found}); "
                        f"set hardware.chip to a number or a label")


def resolve_chip(chip: str | int) -> int:
    if isinstance(chip, int):
        return chip
    text = str(chip).strip()
    if text.isdigit():
        return int(text)
    m = re.fullmatch(r"(?:/dev/)?gpiochip(\d+)", text)
    if m:
        return int(m.group(1))
    labels = chip_labels()
    if text == "auto":
        return find_header_chip(labels)
    return find_header_chip(labels, (text,))


def consumer_label(tag: str, role: str, line: int) -> str:
    """``<consumer_tag>:<role>:<line>`` as ``gpioinfo`` shows it (the kernel keeps 31 bytes:
    a long device name is shortened, the tag and the line number are kept)."""
    tail = f":{line}"
    room = 31 - len(tag) - 1 - len(tail)
    return f"{tag}:{role[:max(room, 1)]}{tail}"


class _LabellingLgpio:
    """Stands in for the ``lgpio`` module inside gpiozero's lgpio pin factory: before every
    claim it names the line's consumer (``lgGpioSetUser``, which lgpio's Python binding does
    not expose, called through ctypes). Everything else is lgpio itself."""

    def __init__(self, labels: dict[int, str]) -> None:
        import ctypes

        import lgpio

        self._lgpio = lgpio
        self.labels = labels
        self._lib = ctypes.CDLL(lgpio._lgpio.__file__)
        self._lib.lgGpioSetUser.argtypes = (ctypes.c_int, ctypes.c_char_p)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lgpio, name)

    def _name(self, handle: int, line: int) -> None:
        label = self.labels.get(line)
        if label is not None:
            # gpiochip_open returns handle | chip << 16; the C call wants the handle only.
            self._lib.lgGpioSetUser(handle & 0xFFFF, label.encode())

    def gpio_claim_input(self, handle: int, gpio: int, lFlags: int = 0) -> Any:
        self._name(handle, gpio)
        return self._lgpio.gpio_claim_input(handle, gpio, lFlags)

    def gpio_claim_output(self, handle: int, gpio: int, level: int = 0,
                          lFlags: int = 0) -> Any:
        self._name(handle, gpio)
        return self._lgpio.gpio_claim_output(handle, gpio, level, lFlags)

    def gpio_claim_alert(self, handle: int, gpio: int, eFlags: int, lFlags: int = 0,
                         notify_handle: Any = None) -> Any:
        self._name(handle, gpio)
        if notify_handle is None:
            return self._lgpio.gpio_claim_alert(handle, gpio, eFlags, lFlags)
        return self._lgpio.gpio_claim_alert(handle, gpio, eFlags, lFlags, notify_handle)


def make_pin_factory(hardware: HardwareConfig, simulate: bool,
                     labels: dict[int, str] | None = None, *,
                     expanders: dict[str, Any] | None = None,
                     on_expander_failure: Callable[[str, str | None], None] | None = None
                     ) -> Any:
    """A gpiozero pin factory: simulated pins (MockFactory with PWM) or lgpio on a chip,
    with every claimed line labelled ``labels[line]``; with I/O expanders (and PCA9685 PWM
    controllers), wrapped so that their pins (``io1:3``, ``pwm1:0``) come from them
    (simulated register files under simulation)."""
    base = _board_factory(hardware, simulate, labels)
    if not expanders:
        return base
    from pi_mqtt_gpio.server.pins.mcp23017 import ExpanderFactory

    simulated = simulate or hardware.pin_factory == "mock"
    chips: dict[str, Any] = {}
    try:
        for name, cfg in expanders.items():
            chips[name] = _expander(name, cfg, simulated, on_expander_failure)
        factory = ExpanderFactory(base, chips)
        for name, chip in chips.items():
            _start_expander(base, name, chip)
        return factory
    except BaseException:
        for chip in chips.values():
            chip.close()
        base.close()
        raise


def _expander(name: str, cfg: Any, simulated: bool,
              on_failure: Callable[[str, str | None], None] | None) -> Any:
    """An expander chip on its I2C bus (a simulated register file under simulation)."""
    from pi_mqtt_gpio.server.pins.mcp23017 import MCP23017, SimulatedMCP23017
    from pi_mqtt_gpio.server.pins.pca9685 import PCA9685, SimulatedPCA9685
    from pi_mqtt_gpio.server.pins.pcf857x import PCF857x, SimulatedPCF857x, SMBusPort

    pwm = cfg.type == "PCA9685"
    pcf = cfg.type in ("PCF8574", "PCF8575")
    width = 1 if cfg.type == "PCF8574" else 2
    if simulated:
        bus: Any = SimulatedPCA9685() if pwm else SimulatedPCF857x(width) if pcf \
            else SimulatedMCP23017()
    else:
        from smbus2 import SMBus

        try:
            bus = SMBus(cfg.bus)
        except OSError as exc:
            raise HardwareError(f"expander {name}: cannot open /dev/i2c-{cfg.bus}: "
                                f"{exc.strerror} (is I2C enabled?)") from exc
        if pcf:
            bus = SMBusPort(bus, width)
    chip_class: Any = PCA9685 if pwm else PCF857x if pcf else MCP23017
    return chip_class(name, cfg, bus, on_failure=on_failure)


def _start_expander(base: Any, name: str, chip: Any) -> None:
    """Start talking to the chip; an I/O expander's changes are then signalled by its
    interrupt line (or the simulated chip itself)."""
    from pi_mqtt_gpio.server.pins.mcp23017 import SimulatedMCP23017
    from pi_mqtt_gpio.server.pins.pca9685 import PCA9685
    from pi_mqtt_gpio.server.pins.pcf857x import SimulatedPCF857x

    try:
        chip.start()
    except OSError as exc:
        raise HardwareError(f"expander {name} (I2C bus {chip.config.bus}, address "
                            f"0x{chip.address:02x}) does not answer: {exc}") from exc
    if isinstance(chip, PCA9685):
        return  # outputs only: no interrupt
    if isinstance(chip.bus, SimulatedMCP23017 | SimulatedPCF857x):
        chip.bus.on_interrupt = chip.interrupt
    elif chip.config.interrupt is not None:
        _interrupt_line(base, chip)


def _interrupt_line(base: Any, chip: Any) -> None:
    """The chip's INT output (open drain, active low) on a board GPIO: a fall means a change
    on an input; the chip is read then (its polling thread only checks it still answers)."""
    import gpiozero

    line = gpiozero.DigitalInputDevice(chip.config.interrupt, pull_up=True, pin_factory=base)
    line.when_activated = chip.interrupt
    chip.interrupt_device = line
    if line.is_active:  # already low: a change is waiting
        chip.interrupt()


def _board_factory(hardware: HardwareConfig, simulate: bool,
                   labels: dict[int, str] | None = None) -> Any:
    if simulate or hardware.pin_factory == "mock":
        from pi_mqtt_gpio.server.pins.simulated import simulated_factory

        return simulated_factory()
    import gpiozero.pins.lgpio as gz_lgpio
    from gpiozero.pins.lgpio import LGPIOFactory

    if labels:
        gz_lgpio.lgpio = _LabellingLgpio(labels)
    chip = resolve_chip(hardware.chip)
    try:
        return LGPIOFactory(chip=chip)
    except Exception as exc:
        raise HardwareError(f"cannot open /dev/gpiochip{chip}: {exc}") from exc
