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
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pi_mqtt_gpio.errors import Busy, GatekeeperError, HardwareError
from pi_mqtt_gpio.server.config import HardwareConfig
from pi_mqtt_gpio.server.devices.base import DeviceAdapter

__all__ = ["DeviceEvent", "HardwareManager", "find_header_chip", "make_pin_factory"]

log = logging.getLogger("pi_mqtt_gpio.hardware")

# Labels of the GPIO chip that drives the 40-pin header: Pi 5 (RP1), Pi 4, Pi 0-3.
HEADER_CHIP_LABELS = ("pinctrl-rp1", "pinctrl-bcm2712", "pinctrl-bcm2711", "pinctrl-bcm2835")


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    device: str
    event: str | None  # None: a state change without a named event (polled inputs)
    state: dict[str, Any]
    ts: float  # wall clock (time.time()) when the edge was seen


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


def make_pin_factory(hardware: HardwareConfig, simulate: bool) -> Any:
    """A gpiozero pin factory: simulated pins (MockFactory with PWM) or lgpio on a chip."""
    if simulate or hardware.pin_factory == "mock":
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        return MockFactory(pin_class=MockPWMPin)
    from gpiozero.pins.lgpio import LGPIOFactory

    chip = resolve_chip(hardware.chip)
    try:
        return LGPIOFactory(chip=chip)
    except Exception as exc:
        raise HardwareError(f"cannot open /dev/gpiochip{chip}: {exc}") from exc


def line_consumer(factory: Any, line: int) -> str | None:
    """Who holds ``line`` on the factory's chip (lgpio only), e.g. ``"gatekeeper:LED:17"``."""
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
    ) -> None:
        from pi_mqtt_gpio.server.devices import registry

        self.adapters: dict[str, DeviceAdapter] = {
            name: registry[cfg.type](name, cfg, simulate=simulate, emit=self.airlock)
            for name, cfg in devices.items()
        }
        self.simulate = simulate
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
        return {name: a.state() for name, a in self.adapters.items()}

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
        for adapter in self.adapters.values():
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
            if not self.accepting:
                raise Busy("the gatekeeper is shutting down")
            if self._pending >= self._queue_max:
                raise Busy(f"{self._pending} hardware commands are already queued")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending += 1
        self._commands.put((fn, args, future))
        return future

    async def run(self, fn: Callable[..., Any], *args: Any, force: bool = True) -> Any:
        return await self.submit(fn, *args, force=force)

    @property
    def pending(self) -> int:
        return self._pending

    # --- the airlock ----------------------------------------------------------------------------
    def airlock(self, device: str, event: str | None, state: dict[str, Any]) -> None:
        """Called from any thread (gpiozero callbacks): hand the event to the event loop."""
        item = DeviceEvent(device, event, state, time.time())
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
