"""HardwareManager: the one hardware worker thread, its FIFO command queue, and the airlock.

- Every hardware call (opening devices, commands, state reads, safe states, closing) runs on
  ONE worker thread, first in first out, so commands execute in the order they arrived.
- gpiozero callbacks arrive on lgpio's threads (or the worker itself for mock pins); they reach
  the event loop only through ``airlock`` (``loop.call_soon_threadsafe``) into an asyncio queue
  that one publisher task drains. Nothing else crosses threads.
- A hardware exception fails that command only (``HARDWARE_ERROR``); the worker lives on.

Also here: making the pin factory (``lgpio`` on a Pi, ``mock`` in simulation) and finding the
Pi's header GPIO chip by its label.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import queue
import re
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pi_mqtt_gpio.errors import Busy, GatekeeperError, HardwareError
from pi_mqtt_gpio.server.config import HardwareConfig
from pi_mqtt_gpio.server.devices.base import DeviceAdapter

__all__ = [
    "DeviceEvent",
    "HardwareManager",
    "LineOwner",
    "consumer_label",
    "find_header_chip",
    "line_owners",
    "make_pin_factory",
    "reclaim_stale",
]

log = logging.getLogger("pi_mqtt_gpio.hardware")

# Labels of the GPIO chip that drives the 40-pin header: Pi 5 (RP1), Pi 4, Pi 0-3.
HEADER_CHIP_LABELS = ("pinctrl-rp1", "pinctrl-bcm2712", "pinctrl-bcm2711", "pinctrl-bcm2835")


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    device: str
    event: str | None  # None: a state change without a named event (polled inputs)
    state: dict[str, Any]
    ts: float  # wall clock (time.time()) when the edge was seen
    mono: float = 0.0  # time.monotonic() when the edge was seen (gestures, endstops)


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
    from pi_mqtt_gpio.server.pins.mcp23017 import (
        MCP23017,
        ExpanderFactory,
        SimulatedMCP23017,
    )
    from pi_mqtt_gpio.server.pins.pca9685 import PCA9685, SimulatedPCA9685
    from pi_mqtt_gpio.server.pins.pcf857x import PCF857x, SimulatedPCF857x, SMBusPort

    chips: dict[str, Any] = {}
    try:
        for name, cfg in expanders.items():
            pwm = cfg.type == "PCA9685"
            pcf = cfg.type in ("PCF8574", "PCF8575")
            width = 1 if cfg.type == "PCF8574" else 2
            if simulate or hardware.pin_factory == "mock":
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
            chips[name] = chip_class(name, cfg, bus, on_failure=on_expander_failure)
        factory = ExpanderFactory(base, chips)
        for name, chip in chips.items():
            try:
                chip.start()
            except OSError as exc:
                raise HardwareError(f"expander {name} (I2C bus {chip.config.bus}, address "
                                    f"0x{chip.address:02x}) does not answer: {exc}") from exc
            if isinstance(chip, PCA9685):
                continue  # outputs only: no interrupt
            if isinstance(chip.bus, SimulatedMCP23017 | SimulatedPCF857x):
                chip.bus.on_interrupt = chip.interrupt
            elif chip.config.interrupt is not None:
                _interrupt_line(base, chip)
        return factory
    except BaseException:
        for chip in chips.values():
            chip.close()
        base.close()
        raise


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


@dataclass(frozen=True, slots=True)
class LineOwner:
    line: int
    name: str
    used: bool
    consumer: str
    ours: bool

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "name": self.name, "used": self.used,
                "consumer": self.consumer, "owner": "ours" if self.ours else
                ("foreign" if self.used else None)}


def line_owners(chip: int, tag: str) -> list[LineOwner]:
    """Every line of ``/dev/gpiochip<chip>``: used or free, consumer, ours or foreign."""
    import lgpio

    handle = lgpio.gpiochip_open(chip)
    try:
        count = int(lgpio.gpio_get_chip_info(handle)[1])
        owners = []
        for line in range(count):
            _, _, flags, name, user = lgpio.gpio_get_line_info(handle, line)
            consumer = str(user or "")
            used = bool(consumer) or bool(int(flags) & 1)  # LG_KERNEL_USED
            owners.append(LineOwner(line, str(name or ""), used, consumer,
                                    consumer.startswith(f"{tag}:")))
        return owners
    finally:
        lgpio.gpiochip_close(handle)


def _records_dir() -> Path:
    """Where each instance notes which lines it holds (its PID per line): systemd's
    RuntimeDirectory when set, else /run/pi-mqtt-gatekeeper, else the temp directory."""
    for base in (os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0],
                 "/run/pi-mqtt-gatekeeper",
                 os.path.join(tempfile.gettempdir(), f"pi-mqtt-gatekeeper-{os.getuid()}")):
        if not base:
            continue
        path = Path(base) / "lines"
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            return path
        except OSError:
            continue
    raise HardwareError("no writable directory for the line records")


def record_lines(chip: int, lines: list[int]) -> None:
    """Note this process as the holder of ``lines`` (read by a later instance's reclaim)."""
    directory = _records_dir()
    for line in lines:
        (directory / f"gpiochip{chip}-{line}").write_text(f"{os.getpid()}\n")


def forget_lines(chip: int, lines: list[int]) -> None:
    directory = _records_dir()
    for line in lines:
        record = directory / f"gpiochip{chip}-{line}"
        with contextlib.suppress(OSError, ValueError):
            if int(record.read_text().strip()) == os.getpid():
                record.unlink()


def _recorded_holder(chip: int, line: int) -> int | None:
    try:
        pid = int((_records_dir() / f"gpiochip{chip}-{line}").read_text().strip())
    except (OSError, ValueError, HardwareError):
        return None
    if pid == os.getpid() or not Path(f"/proc/{pid}").exists():
        return None
    try:  # it must still have the chip open
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == f"/dev/gpiochip{chip}":
                    return pid
    except OSError:
        return None
    return None


def reclaim_stale(chip: int, lines: list[int], tag: str, wait: float = 5.0) -> list[str]:
    """``hardware.reclaim_on_busy``: lines held under our consumer tag by a stale earlier
    instance are freed by stopping that process only (SIGTERM, then SIGKILL) — the one its
    own line records name. A foreign consumer is never touched: the error names it."""
    done: list[str] = []
    owners = {o.line: o for o in line_owners(chip, tag)}
    stale: dict[int, list[int]] = {}
    for line in lines:
        owner = owners.get(line)
        if owner is None or not owner.used:
            continue
        if not owner.ours:
            raise HardwareError(f"GPIO{line} is held by a foreign consumer {owner.consumer!r}; "
                                f"not touching it")
        pid = _recorded_holder(chip, line)
        if pid is None:
            raise HardwareError(f"GPIO{line} is held as {owner.consumer!r} but no earlier "
                                f"gatekeeper recorded it; not touching it")
        stale.setdefault(pid, []).append(line)
    for pid, held in stale.items():
        for sig in (signal.SIGTERM, signal.SIGKILL):
            log.warning("GPIO%s held by a stale gatekeeper (pid %d): sending %s",
                        ",".join(map(str, held)), pid, sig.name)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            end = time.monotonic() + wait
            while time.monotonic() < end:
                now = {o.line: o for o in line_owners(chip, tag)}
                if not any(now[line].used for line in held if line in now):
                    break
                time.sleep(0.05)
            else:
                continue
            done.append(f"stopped pid {pid} ({sig.name}) holding GPIO"
                        f"{','.join(map(str, held))}")
            break
        else:
            raise HardwareError(f"GPIO{held[0]} is still held after SIGKILL to pid {pid}")
    return done


def line_consumer(factory: Any, line: int) -> str | None:
    """Who holds ``line`` on the factory's chip (lgpio only), e.g. ``"gatekeeper:lamp:17"``."""
    handle = getattr(factory, "_handle", None)
    if handle is None:
        return None
    try:
        import lgpio

        info = lgpio.gpio_get_line_info(handle, line)
        return str(info[4]) or None
    except Exception:
        return None


class HardwareManager:
    def __init__(
        self,
        devices: dict[str, Any],
        factory_fn: Callable[[], Any],
        *,
        simulate: bool,
        queue_max: int = 256,
        event_max: int = 10_000,
        hardware: HardwareConfig | None = None,
    ) -> None:
        from pi_mqtt_gpio.server.devices import registry

        self.adapters: dict[str, DeviceAdapter] = {
            name: registry[cfg.type](name, cfg, simulate=simulate, emit=self.airlock)
            for name, cfg in devices.items()
        }
        self.simulate = simulate
        self.hardware = hardware or HardwareConfig()
        self._factory_fn = factory_fn
        self.factory: Any = None
        # SimpleQueue: a C-level FIFO whose get() wakes the worker faster than queue.Queue.
        self._commands: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...],
                                                asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._queue_max = queue_max
        self._pending = 0  # commands queued or running (loop thread only)
        self.events: asyncio.Queue[DeviceEvent] = asyncio.Queue(event_max)
        self.events_dropped = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.accepting = False

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> dict[str, dict[str, Any]]:
        """Start the worker, open every device, drive outputs to their safe state; returns
        the initial state of every device."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._work, name="hardware-worker", daemon=True)
        self._thread.start()
        try:
            states: dict[str, dict[str, Any]] = await self.run(self._open_all)
        except BaseException:
            self._commands.put(None)
            raise
        self.accepting = True
        return states

    def _open_all(self) -> dict[str, dict[str, Any]]:
        from gpiozero import Device

        self.factory = self._factory_fn()
        # Some gpiozero paths (software SPI) use the global default factory; we are the
        # process's only gpiozero user, so make ours the default too.
        Device.pin_factory = self.factory
        opened: list[DeviceAdapter] = []
        try:
            chip = getattr(self.factory, "chip", None)
            if chip is not None and self.hardware.reclaim_on_busy:
                for done in reclaim_stale(int(chip), self._lines(), self.hardware.consumer_tag):
                    log.warning("reclaim: %s", done)
            for adapter in self.adapters.values():
                try:
                    adapter.open(self.factory)
                except GatekeeperError:
                    raise
                except Exception as exc:
                    raise HardwareError(self._explain(adapter, exc)) from exc
                opened.append(adapter)
                if adapter.kind == "output":
                    adapter.safe()
        except BaseException:
            for adapter in reversed(opened):
                with contextlib.suppress(Exception):
                    adapter.close()
            self._close_factory()
            raise
        if chip is not None:
            record_lines(int(chip), self._lines())
        return {name: a.state() for name, a in self.adapters.items()}

    def _lines(self) -> list[int]:
        """The board's GPIO lines the devices use (expander pins are not the board's)."""
        return sorted({line for a in self.adapters.values() for _k, line, _s in a.config.lines()
                       if isinstance(line, int)})

    def inventory(self) -> dict[str, Any]:
        """GPIO line ownership for ``{root}/system/health`` (runs on the worker)."""
        chip = getattr(self.factory, "chip", None)
        if chip is None:  # simulated pins: only our own lines exist
            lines = sorted({(line, name) for name, a in self.adapters.items()
                            for _k, line, _s in a.config.lines() if isinstance(line, int)})
            return {"chip": "mock", "lines": [
                {"line": line, "name": f"GPIO{line}", "used": True,
                 "consumer": consumer_label(self.hardware.consumer_tag, name, line),
                 "owner": "ours"} for line, name in lines]}
        owners = line_owners(int(chip), self.hardware.consumer_tag)
        return {"chip": f"gpiochip{chip}", "lines": [o.to_json() for o in owners]}

    def _explain(self, adapter: DeviceAdapter, exc: Exception) -> str:
        text = f"{adapter.name} ({adapter.type_name}): {exc}"
        if "busy" in str(exc).lower():
            for _key, line, _shared in adapter.config.lines():
                owner = line_consumer(self.factory, line)
                if owner:
                    text += f"; GPIO{line} is held by {owner!r}"
        return text

    async def stop(self) -> dict[str, dict[str, Any]]:
        """Refuse new commands, drive every output to its safe state, release the lines."""
        self.accepting = False
        states: dict[str, dict[str, Any]] = {}
        if self._thread is None:
            return states
        try:
            states = await asyncio.wait_for(self.run(self._close_all, force=True), 1.5)
        except (TimeoutError, GatekeeperError) as exc:
            log.error("shutting the hardware down: %s", exc)
        self._commands.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 1.0)
        return states

    def _close_all(self) -> dict[str, dict[str, Any]]:
        states: dict[str, dict[str, Any]] = {}
        # Outputs whose safe state is off first: one whose safe state is on (safe_state: on)
        # never goes on while an interlock partner is still on.
        for adapter in sorted(self.adapters.values(), key=lambda a: a.safe_active()):
            try:
                if adapter.kind == "output" and adapter.device is not None:
                    adapter.safe()
                    states[adapter.name] = adapter.state()
            except Exception:
                log.exception("safe state of %s failed", adapter.name)
        for adapter in self.adapters.values():
            try:
                adapter.close()
            except Exception:
                log.exception("closing %s failed", adapter.name)
        self._close_factory()
        return states

    def _close_factory(self) -> None:
        chip = getattr(self.factory, "chip", None)
        if chip is not None:
            with contextlib.suppress(Exception):
                forget_lines(int(chip), self._lines())
        if self.factory is not None:
            with contextlib.suppress(Exception):
                self.factory.close()
            self.factory = None

    # --- the worker -----------------------------------------------------------------------------
    def _work(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            item = self._commands.get()
            if item is None:
                return
            fn, args, future = item
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn(*args)
            except GatekeeperError as exc:
                error = exc
            except Exception as exc:
                log.exception("hardware command failed")
                error = HardwareError(f"{type(exc).__name__}: {exc}")
            try:
                loop.call_soon_threadsafe(self._resolve, future, result, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return

    def _resolve(self, future: asyncio.Future[Any], result: Any, error: BaseException | None
                 ) -> None:
        self._pending -= 1
        if future.done():
            return  # timed out or cancelled meanwhile
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def submit(self, fn: Callable[..., Any], *args: Any, force: bool = False
               ) -> asyncio.Future[Any]:
        """Queue ``fn(*args)`` for the worker (FIFO) and return a future for its result.
        Must be called on the event loop thread; ordering is the order of calls."""
        assert self._loop is not None, "HardwareManager not started"
        if not force:
            self.admit()
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending += 1
        self._commands.put((fn, args, future))
        return future

    def admit(self) -> None:
        """Raise ``Busy`` when a command may not be queued now (shutting down, queue full)."""
        if not self.accepting:
            raise Busy("the gatekeeper is shutting down")
        if self._pending >= self._queue_max:
            raise Busy(f"{self._pending} hardware commands are already queued")

    async def run(self, fn: Callable[..., Any], *args: Any, force: bool = True) -> Any:
        return await self.submit(fn, *args, force=force)

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def queue_max(self) -> int:
        """Commands that may wait for the worker at once (more are refused BUSY)."""
        return self._queue_max

    @property
    def worker_alive(self) -> bool:
        """Whether the hardware worker thread is running."""
        return self._thread is not None and self._thread.is_alive()

    # --- the airlock ----------------------------------------------------------------------------
    def airlock(self, device: str, event: str | None, state: dict[str, Any]) -> None:
        """Called from any thread (gpiozero callbacks): hand the event to the event loop."""
        item = DeviceEvent(device, event, state, time.time(), time.monotonic())
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._enqueue, item)
        except RuntimeError:
            pass  # loop closed during shutdown

    def _enqueue(self, item: DeviceEvent) -> None:
        try:
            self.events.put_nowait(item)
        except asyncio.QueueFull:
            self.events_dropped += 1
            if self.events_dropped % 1000 == 1:
                log.warning("event queue full: dropped %d events (is an input flapping?)",
                            self.events_dropped)
