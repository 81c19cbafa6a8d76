"""The GPIO loopback watchdog: an output line wired to an input line. The gatekeeper toggles
the output every ``period_s`` and expects each edge back on the input; no edge for
``stale_s`` means the GPIO path is not working (a dead line, a stuck chip, a driver that
stopped delivering edges, a hardware worker that stopped switching), and
``{root}/system/health`` goes ``degraded`` naming the two lines, at once; the next edge brings
it back to ``ok``.

- ``LoopbackWatch`` is the pure part: time passed in, ``ok``/``degraded`` out.
- ``Watchdog`` runs it on the event loop: the toggling goes through the hardware worker like
  every write; the input's edges come through the airlock like every input's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from pi_mqtt_gpio.server.sections import WatchdogConfig

__all__ = ["WATCHDOG_DEVICE", "LoopbackWatch", "Watchdog", "WatchdogConfig"]

log = logging.getLogger("pi_mqtt_gpio.watchdog")

WATCHDOG_DEVICE = "__watchdog__"  # the airlock name of its input's edges (never a device)
class LoopbackWatch:
    """Whether edges keep coming back: ``degraded`` once none came for ``stale_s``."""

    def __init__(self, stale_s: float) -> None:
        self.stale_s = stale_s
        self.last_edge: float | None = None
        self.started: float | None = None
        self.edges = 0

    def start(self, now: float) -> None:
        self.started = now

    def edge(self, now: float) -> None:
        self.last_edge = now
        self.edges += 1

    def status(self, now: float) -> str:
        since = self.last_edge if self.last_edge is not None else self.started
        if since is None or now - since < self.stale_s:
            return "ok"
        return "degraded"

    def deadline(self) -> float | None:
        """When the status turns ``degraded`` if no edge comes before."""
        since = self.last_edge if self.last_edge is not None else self.started
        return None if since is None else since + self.stale_s


class Watchdog:
    def __init__(self, config: WatchdogConfig, hw: Any, *, simulate: bool,
                 on_change: Callable[[], None]) -> None:
        self.config = config
        self.hw = hw
        self.simulate = simulate
        self.on_change = on_change  # the status changed: publish the health now
        self.watch = LoopbackWatch(config.stale_s)
        self.status = "ok"
        self._out: Any = None
        self._in: Any = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    # --- the worker side -----------------------------------------------------------------------
    def _open(self) -> None:
        """On the hardware worker: claim the two lines (in simulation the output drives the
        input through a simulated wire)."""
        import gpiozero

        factory = self.hw.factory
        cfg = self.config
        if self.simulate:
            from pi_mqtt_gpio.server.pins.simulated import WiredPin

            in_pin = factory.pin(cfg.in_)
            factory.pin(cfg.out, pin_class=WiredPin, input_pin=in_pin)
        self._in = gpiozero.DigitalInputDevice(cfg.in_, pull_up=False, pin_factory=factory)
        self._out = gpiozero.DigitalOutputDevice(cfg.out, pin_factory=factory)
        self._in.when_activated = self._edge
        self._in.when_deactivated = self._edge

    def _edge(self) -> None:  # gpiozero's thread (or the worker, for mock pins)
        self.hw.airlock(WATCHDOG_DEVICE, "edge", {"at": time.monotonic()})

    def _toggle(self) -> None:
        self._out.toggle()

    def _close(self) -> None:
        for dev in (self._out, self._in):
            if dev is not None:
                dev.close()
        self._out = self._in = None

    def cut(self) -> None:
        """Simulation and tests: cut the simulated wire (the input stops following)."""
        if self._out is not None:
            self._out.pin.input_pin = None

    # --- the loop side -------------------------------------------------------------------------
    async def start(self) -> None:
        await self.hw.run(self._open)
        self.watch.start(asyncio.get_running_loop().time())
        self._task = asyncio.create_task(self._run(), name="watchdog")
        self._arm()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.period_s)
            try:
                await self.hw.submit(self._toggle, force=True)
            except Exception as exc:  # the worker is gone or refuses: edges will stop
                log.warning("watchdog: toggling GPIO%d failed: %s", self.config.out, exc)

    def edge(self, at_worker: float | None = None) -> None:
        """An edge came back (through the airlock)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if at_worker is not None:
            now -= max(0.0, time.monotonic() - at_worker)
        self.watch.edge(now)
        self._arm()
        self._update()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        deadline = self.watch.deadline()
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline + 0.001, self._update)

    def _update(self) -> None:
        status = self.watch.status(asyncio.get_running_loop().time())
        if status != self.status:
            self.status = status
            if status == "ok":
                log.info("watchdog: edges on GPIO%d are back", self.config.in_)
            else:
                log.warning("watchdog: no edge on GPIO%d (looped from GPIO%d) for %g s",
                            self.config.in_, self.config.out, self.config.stale_s)
            self.on_change()

    def problem(self) -> str | None:
        if self.status == "ok":
            return None
        return (f"watchdog: no edge on GPIO{self.config.in_} (looped from "
                f"GPIO{self.config.out}) for {self.config.stale_s:g} s")

    def describe(self) -> dict[str, Any]:
        return {"status": self.status, "out": self.config.out, "in": self.config.in_,
                "edges": self.watch.edges, "period_s": self.config.period_s,
                "stale_s": self.config.stale_s}

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
        try:
            await self.hw.run(self._close)
        except Exception:  # pragma: no cover - the worker is already gone
            pass
