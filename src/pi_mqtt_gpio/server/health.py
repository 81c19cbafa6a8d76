"""The node's health: retained ``{root}/system/health`` (``ok`` / ``degraded`` / ``failed``,
the problems that make it so, the GPIO line ownership), published every minute and at once
when a problem appears or goes away (an expander or a sensor stops answering, the watchdog's
loop, the broker ACL's probe)."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
from collections.abc import Callable, Mapping
from typing import Any

from pi_mqtt_gpio.payloads import HealthDoc, HealthStatus, State
from pi_mqtt_gpio.server.devices.sensors import SensorAdapter
from pi_mqtt_gpio.server.hardware import DeviceEvent, HardwareManager
from pi_mqtt_gpio.server.twin import Twin, dumps, utc_ts
from pi_mqtt_gpio.server.watchdog import Watchdog
from pi_mqtt_gpio.topics import Topics

__all__ = ["EXPANDER_DEVICE", "Health", "trim_memory"]

log = logging.getLogger("pi_mqtt_gpio.daemon")

HEALTH_INTERVAL_S = 60.0
EXPANDER_DEVICE = "__expander__"  # the airlock name of expander failures (never a device)
SIMULATED_WARNING_ROUNDS = 60  # health rounds between two "pins are simulated" warnings (1 h)

BrokerAcl = Callable[[], tuple[str, str | None]]  # the broker ACL probe's state and reason


class Health:
    """What the health says, and when it is published. ``devices``: the config's devices
    (which of them an expander's failure makes unavailable)."""

    def __init__(self, topics: Topics, hw: HardwareManager, twin: Twin,
                 devices: Mapping[str, Any], *, simulate: bool,
                 simulated_by_config: bool) -> None:
        self.topics = topics
        self.hw = hw
        self.twin = twin
        self.devices = devices
        self.simulate = simulate
        # Simulated pins that nobody asked for on the command line: a production config
        # that still says pin_factory: mock. Said at start and every hour.
        self.simulated_by_config = simulated_by_config
        self.watchdog: Watchdog | None = None
        self.broker_acl: BrokerAcl | None = None  # external mode: the ACL probe's state
        self.expander_problems: dict[str, str] = {}
        self.sensor_problems: dict[str, str] = {}  # a sensor that stopped answering -> why
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    # --- publishing ---------------------------------------------------------------------------
    async def publish(self) -> None:
        """Retained ``{root}/system/health``: ``ok`` / ``degraded`` / ``failed`` and the GPIO
        line ownership. ``failed``: the hardware worker is gone or does not answer within
        5 s; ``degraded``: events were dropped, the command queue is over half full, or the
        inventory could not be read."""
        status, problems, gpio = await self._gpio()
        others = self._problems()
        if others and status == "ok":
            status = "degraded"
        problems.extend(others)
        if status == "ok":
            status, problems = self._load(problems)
        acl = self.broker_acl() if self.broker_acl is not None else ("unchecked", None)
        if acl[0] == "failed":
            if status == "ok":
                status = "degraded"
            problems.append(f"every command is refused: {acl[1]}")
        doc: HealthDoc = {"status": status, "problems": problems, "ts": utc_ts(), "gpio": gpio,
               "watchdog": self.watchdog.describe() if self.watchdog is not None else None,
               "simulated": self.simulate,
               "events_dropped": self.hw.events_dropped, "commands_queued": self.hw.pending}
        if self.broker_acl is not None:
            doc["broker_acl"] = {"probe": acl[0], "reason": acl[1]}
        self.twin.publish(self.topics.health, dumps(doc), 1, True)

    async def _gpio(self) -> tuple[HealthStatus, list[str], dict[str, object]]:
        """The status the hardware worker allows, its problems, the line inventory."""
        if not self.hw.worker_alive:
            return "failed", ["hardware worker not running"], {}
        try:
            gpio = await asyncio.wait_for(self.hw.submit(self.hw.inventory, force=True), 5)
        except TimeoutError:
            return "failed", ["hardware worker did not answer within 5 s"], {}
        except Exception as exc:
            return "degraded", [f"GPIO inventory: {exc}"], {"error": str(exc)}
        return "ok", [], gpio

    def _problems(self) -> list[str]:
        """Expanders and sensors not answering, the watchdog's loop broken."""
        problems = [*self.expander_problems.values(), *self.sensor_problems.values()]
        if self.watchdog is not None and self.watchdog.problem() is not None:
            problems.append(self.watchdog.problem() or "")
        return problems

    def _load(self, problems: list[str]) -> tuple[HealthStatus, list[str]]:
        """An otherwise healthy node that drops events or has a long hardware queue."""
        if self.hw.events_dropped:
            return "degraded", [*problems, f"{self.hw.events_dropped} input events dropped"]
        if self.hw.pending > self.hw.queue_max // 2:
            return "degraded", [*problems, f"{self.hw.pending} hardware commands queued"]
        return "ok", problems

    def now(self) -> None:
        """Publish the health at once (a problem appeared or went away)."""
        task = asyncio.ensure_future(self.publish())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def warn_simulated(self) -> None:
        if self.simulated_by_config:
            log.warning("the pins are SIMULATED (hardware.pin_factory: mock, no --simulate): "
                        "nothing on the header moves")

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _loop(self, interval: float = HEALTH_INTERVAL_S) -> None:
        rounds = 0
        while True:
            if rounds and rounds % SIMULATED_WARNING_ROUNDS == 0:
                self.warn_simulated()
            rounds += 1
            await self.publish()
            await asyncio.to_thread(malloc_trim)  # freed heap back to the OS, off the loop
            await asyncio.sleep(interval)

    # --- problems -----------------------------------------------------------------------------
    def expander_failure(self, name: str, problem: str | None) -> None:
        """An expander stopped answering (problem) or answers again (None); from its
        thread, through the airlock."""
        self.hw.airlock(EXPANDER_DEVICE, name, {"problem": problem})

    def expander_event(self, ev: DeviceEvent) -> bool:
        """Its devices' states say unavailable (or are read again), the health says why."""
        name, problem = ev.event or "", ev.state.get("problem")
        if problem:
            self.expander_problems[name] = str(problem)
        else:
            self.expander_problems.pop(name, None)
        for device, cfg in self.devices.items():
            if not any(isinstance(line, str) and line.partition(":")[0] == name
                       for _k, line, _s in cfg.lines()):
                continue
            if problem:
                doc = self.twin.states.get(device, {})
                state = {k: v for k, v in doc.items() if k != "ts"}
                self.twin.state(device, {**state, "available": False,
                                         "error": str(problem)})
            else:
                self.twin.refresh_later(device, 0.0)
        self.now()
        return True

    def sensor_state(self, device: str, doc: State, _again: bool) -> None:
        """A sensor published ``available: false`` (its error is a problem of the node's
        health) or answers again."""
        if not isinstance(self.hw.adapters.get(device), SensorAdapter):
            return
        problem = None if doc.get("available", True) else \
            f"sensor {device}: {doc.get('error') or 'not answering'}"
        if problem == self.sensor_problems.get(device):
            return
        if problem is None:
            self.sensor_problems.pop(device, None)
        else:
            self.sensor_problems[device] = problem
        self.now()


# --- memory -------------------------------------------------------------------------------------
_M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc malloc.h)
_MMAP_THRESHOLD = 128 * 1024


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def malloc_trim() -> None:
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def trim_memory() -> None:
    """Give the memory freed after start-up (config parsing, imports) back to the OS, and
    move what is left out of the collector's way: later collections then only walk objects
    made while serving, which keeps their pauses short (edge latency p99).

    glibc's mmap threshold is fixed at 128 KiB: by default it grows after a large block is
    freed, and then large payloads (a client's 255 KiB messages) come from the heap, which
    does not shrink after they are gone; fixed, they are mapped and unmapped, so the memory
    a burst of large messages took comes back when they are delivered or dropped."""
    gc.collect()
    gc.freeze()
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    malloc_trim()
