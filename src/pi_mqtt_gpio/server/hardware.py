"""HardwareManager: the one hardware worker thread, its FIFO command queue, and the airlock.

- Every hardware call (opening devices, commands, state reads, safe states, closing) runs on
  ONE worker thread, first in first out, so commands execute in the order they arrived.
- gpiozero callbacks arrive on lgpio's threads (or the worker itself for mock pins); they reach
  the event loop only through ``airlock`` (``loop.call_soon_threadsafe``) into an asyncio queue
  that one publisher task drains. Nothing else crosses threads.
- A hardware exception fails that command only (``HARDWARE_ERROR``); the worker lives on.

Making the pin factory is pin_factory.py's; the chip's lines (owners, records, reclaiming
them from a stale instance) are gpio_lines.py's, both re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pi_mqtt_gpio.errors import Busy, GatekeeperError, HardwareError
from pi_mqtt_gpio.server.config import HardwareConfig
from pi_mqtt_gpio.server.devices.base import DeviceAdapter
from pi_mqtt_gpio.server.gpio_lines import (
    LineOwner,
    forget_lines,
    line_consumer,
    line_owners,
    reclaim_stale,
    record_lines,
)
from pi_mqtt_gpio.server.pin_factory import (
    consumer_label,
    find_header_chip,
    make_pin_factory,
    resolve_chip,
)

__all__ = [
    "DeviceEvent",
    "HardwareManager",
    "LineOwner",
    "consumer_label",
    "find_header_chip",
    "line_owners",
    "make_pin_factory",
    "reclaim_stale",
    "resolve_chip",
]

log = logging.getLogger("pi_mqtt_gpio.hardware")


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    device: str
    event: str | None  # None: a state change without a named event (polled inputs)
    state: dict[str, Any]
    ts: float  # wall clock (time.time()) when the edge was seen
    mono: float = 0.0  # time.monotonic() when the edge was seen (gestures, endstops)



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
