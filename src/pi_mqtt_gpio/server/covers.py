"""The event-loop side of time-based covers: one ``CoverController`` per ``Cover`` device.

It carries out ``open``, ``close``, ``stop``, ``toggle`` and ``set_position`` one at a time,
in the order they arrived, and

- switches the relays through the hardware worker (``CoverAdapter.drive``), each switching
  admitted by the safety guards first: every relay is guarded on its own (``<cover>/up``,
  ``<cover>/down``: spacing, flapping) and the two are interlocked, as is the cover with
  whatever the config interlocks it with;
- reverses by stopping, waiting ``direction_change_pause_s``, then starting the other relay;
- switches the relay off when the computed run time is over (a timer on the loop's clock,
  started from the moment the worker switched the relay on), or when an endstop closes;
- publishes the state when a movement starts and ends and on every ``position_step``
  crossed while moving (at least once a second);
- answers ``set_position`` when the cover has stopped at its target, or with ``BUSY`` naming
  what interrupted it (``stop``, ``reverse``, ``new_target``, ``safe_state``).

The clock and the timer are injectable (``clock``, ``call_at``): tests drive a 22 s travel
with a hand-advanced clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from pi_mqtt_gpio.errors import Busy, GatekeeperError, RateLimited
from pi_mqtt_gpio.server.devices.cover import CoverAdapter, CoverConfig, CoverModel, Direction

__all__ = ["CoverController"]

log = logging.getLogger("pi_mqtt_gpio.cover")

OnState = Callable[[str, dict[str, Any]], None]  # (device, state) -> publish
OnEvent = Callable[[str, str, dict[str, Any]], None]  # (device, event, extra) -> publish
Result = tuple[Any, dict[str, Any]]  # what a command's future resolves to: (result, state)


class CoverController:
    def __init__(self, adapter: CoverAdapter, hw: Any, guards: Any, *,
                 on_state: OnState, on_event: OnEvent,
                 clock: Callable[[], float] | None = None,
                 call_at: Callable[..., Any] | None = None,
                 worker_clock: Callable[[], float] = time.monotonic) -> None:
        self.adapter = adapter
        self.name = adapter.name
        self.config = adapter.config
        self.hw = hw
        self.guards = guards
        self.on_state = on_state
        self.on_event = on_event
        self._clock = clock
        self._call_at = call_at
        self._worker_clock = worker_clock
        self.model = CoverModel(adapter.config)
        self._queue: deque[tuple[str, dict[str, Any], asyncio.Future[Result] | None]] = deque()
        # A queued command's second admission (rights, leases), and the running one's.
        self._rechecks: dict[asyncio.Future[Result], Callable[[], None]] = {}
        self._recheck: Callable[[], None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._waiter: tuple[asyncio.Future[Result], float] | None = None  # set_position
        self._off_timer: Any = None
        self._report_timer: Any = None
        self._movement = 0  # generation of the current movement (stale timers do nothing)
        self.relays: dict[str, int] = {"up": 0, "down": 0}
        self._last_off: tuple[Direction, float] | None = None  # the last relay to go off
        self._last_command: float | None = None  # the last command accepted (rate limit)
        self.halted = False

    # --- time ----------------------------------------------------------------------------------
    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()

    def _at(self, when: float, fn: Callable[..., None], *args: Any) -> Any:
        if self._call_at is not None:
            return self._call_at(when, fn, *args)
        return asyncio.get_running_loop().call_at(when, fn, *args)

    async def _sleep_until(self, when: float) -> None:
        if when <= self.now():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        def wake() -> None:
            if not future.done():
                future.set_result(None)

        handle = self._at(when, wake)
        try:
            await future
        finally:
            handle.cancel()

    def _from_worker(self, t_worker: float) -> float:
        """A time the worker read (``time.monotonic()``) on this controller's clock."""
        return self.now() - max(0.0, self._worker_clock() - t_worker)

    # --- what it is ----------------------------------------------------------------------------
    def restore(self, saved: Any) -> None:
        """The position (and learned travel times) saved before a restart."""
        self.model = CoverModel.from_saved(self.config, saved)

    def saved(self) -> dict[str, Any]:
        return self.model.saved(self.now())

    def state(self) -> dict[str, Any]:
        model = self.model
        now = self.now()
        pos = model.position_at(now)
        travel = model.moving
        if travel is not None:
            label = "opening" if travel.direction == "up" else "closing"
        elif pos >= 100:
            label = "open"
        elif pos <= 0:
            label = "closed"
        else:
            label = "stopped"
        position = round(pos)
        out: dict[str, Any] = {
            "position": position, "value": position, "is_active": travel is not None,
            "state": label, "target": None if travel is None else round(travel.target),
            "calibrated": model.calibrated, "up": self.relays["up"],
            "down": self.relays["down"],
        }
        learning = self.config.learning
        if learning is not None and learning.enabled:
            out["travel_time_up_s"] = round(model.travel_up_s, 3)
            out["travel_time_down_s"] = round(model.travel_down_s, 3)
        return out

    def expected(self, method: str, kwargs: dict[str, Any]) -> float:
        """The longest a command may take before its reply (beyond the usual timeout)."""
        cfg: CoverConfig = self.config
        slack: float = cfg.direction_change_pause_s + max(cfg.start_delay_up_s,
                                                   cfg.start_delay_down_s) + 1.0
        if method != "set_position":
            return slack
        longest = max(self.model.travel_up_s, self.model.travel_down_s)
        return slack + longest + float(cfg.endstop_overrun_s) + 1.0

    # --- commands (event loop) ----------------------------------------------------------------
    def command(self, method: str, kwargs: dict[str, Any], *,
                recheck: Callable[[], None] | None = None) -> asyncio.Future[Result]:
        """Queue a checked command; the future resolves to (result, state). ``recheck``
        (the sender's rights and leases) runs again just before a relay is switched on
        for it, after whatever it waited for (a reversal's pause, relay spacing)."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        if method == "state":
            future.set_result((None, self.state()))
            return future
        if len(self._queue) >= MAX_QUEUED:
            raise Busy(f"{len(self._queue)} commands for {self.name} are already waiting")
        if method != "stop":  # a stop is never refused (but it queues like any command)
            self._rate_limit()
        self._queue.append((method, kwargs, future))
        if recheck is not None:
            self._rechecks[future] = recheck
        self._kick()
        return future

    def _rate_limit(self) -> None:
        """The cover's ``min_command_interval_s`` between two commands that move it
        (raises ``RATE_LIMITED`` with ``retry_after``)."""
        guard = self.guards.policy.guards.get(f"{self.name}/commands")
        interval = guard.min_command_interval_s if guard is not None else 0.0
        now = self.now()
        if interval and self._last_command is not None:
            wait = self._last_command + interval - now
            if wait > 0:
                raise RateLimited(f"{self.name} takes one command every {interval:g} s",
                                  retry_after=wait)
        self._last_command = now

    def safe(self, reason: str) -> asyncio.Future[Result]:
        """Stop now (a lease ended, shutdown), ahead of anything queued; position kept."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.appendleft(("_safe", {"reason": reason}, future))
        self._kick()
        return future

    async def halt(self) -> None:
        """Shutdown: stop, refuse what is queued, no more movements."""
        self.halted = True
        with contextlib.suppress(GatekeeperError):
            await self.safe("shutdown")
        for _method, _kwargs, future in self._queue:
            if future is not None and not future.done():
                future.set_exception(Busy("the gatekeeper is shutting down"))
        self._queue.clear()
        self._rechecks.clear()

    def endstop(self, which: str, at_worker: float) -> None:
        """An endstop input became active (its time as the worker read it)."""
        self._queue.appendleft(("_endstop", {"which": which, "at": self._from_worker(
            at_worker)}, None))
        self._kick()

    def _kick(self) -> None:
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run(),
                                                                  name=f"cover-{self.name}")

    async def _run(self) -> None:
        while self._queue:
            method, kwargs, future = self._queue.popleft()
            self._recheck = self._rechecks.pop(future, None) if future is not None else None
            try:
                result = await self._handle(method, kwargs, future)
            except GatekeeperError as exc:
                if future is not None and not future.done():
                    future.set_exception(exc)
                continue
            except Exception as exc:  # pragma: no cover - a bug must not wedge the cover
                log.exception("cover %s: %s failed", self.name, method)
                if future is not None and not future.done():
                    future.set_exception(GatekeeperError(f"internal error: {exc}"))
                continue
            if future is not None and not future.done() and result is not _LATER:
                future.set_result((result, self.state()))

    async def _handle(self, method: str, kwargs: dict[str, Any],
                      future: asyncio.Future[Result] | None) -> Any:
        model = self.model
        if method == "_safe":
            await self._stop(arrived=False, why="safe_state")
            return None
        if method == "_arrive":
            if kwargs["movement"] == self._movement and model.moving is not None:
                await self._arrive()
            return None
        if method == "_endstop":
            await self._endstop(kwargs["which"], kwargs["at"])
            return None
        if self.halted:
            raise Busy("the gatekeeper is shutting down")
        if method == "stop":
            await self._stop(arrived=False, why="stop")
            return None
        if method == "toggle":
            if model.moving is not None:
                await self._stop(arrived=False, why="stop")
                return None
            last = model.last_direction
            if last is None:
                target = 100.0 if model.position < 100 else 0.0
            else:
                target = 0.0 if last == "up" else 100.0
            await self._move(target)
            return None
        if method == "open":
            await self._move(100.0)
            return None
        if method == "close":
            await self._move(0.0)
            return None
        if method == "set_position":
            target = float(kwargs["position"])
            waiting = await self._move(target)
            if waiting and future is not None:
                self._waiter = (future, target)
                return _LATER
            return {"position": round(model.position_at(self.now()))}
        raise GatekeeperError(f"cover has no method {method!r}")  # pragma: no cover

    # --- movements -----------------------------------------------------------------------------
    async def _move(self, target: float) -> bool:
        """Go to ``target``; True when a movement is under way (False: already there)."""
        model = self.model
        now = self.now()
        pos = model.position_at(now)
        travel = model.moving
        if travel is not None:
            direction = model.direction_to(pos, target)
            if travel.direction == direction and pos != target:
                self._interrupt("new_target", pos)
                off_at = model.retarget(target, now)
                self._arm_off(off_at)
                self._publish()
                return True
            # The other way (or here): stop, then (in _start) pause and start the other.
            await self._stop(arrived=False, why="reverse")
            pos = model.position
            if pos == target:
                return False
        elif pos == target and (target not in (0.0, 100.0) or model.calibrated):
            return False
        if pos == target:  # at an end but not calibrated: run into the stop to be sure
            direction = "up" if target == 100.0 else "down"
        else:
            direction = model.direction_to(pos, target)
        self._interrupt("new_target", pos)
        await self._start(direction, target)
        return True

    async def _start(self, direction: Direction, target: float) -> None:
        line = f"{self.name}/{direction}"
        last = self._last_off
        if last is not None and last[0] != direction:
            # The motor gets direction_change_pause_s between one direction and the other,
            # whether the reversal was one command or a stop and then the other way.
            await self._sleep_until(last[1] + self.config.direction_change_pause_s)
            if self.halted:
                raise Busy("the gatekeeper is shutting down")
        # Admitted by the safety layer before anything moves: the relay (spacing, flapping,
        # the other relay: interlocked) and the cover (the config's interlocks).
        at, _edge = self.guards.admit_value(self.name, 1)
        try:
            line_at, _ = self.guards.admit_value(line, 1)
        except GatekeeperError:
            self.guards.known(self.name, 0)
            raise
        when = max(at or 0.0, line_at or 0.0)
        if when:
            await self._sleep_until(when)
        fn, args = self.guards.interlock_checked(self.name, self.adapter.drive, (direction,))
        try:
            if self._recheck is not None:  # the sender may still do this, now?
                self._recheck()
            t_worker = await self.hw.submit(fn, *args)
        except GatekeeperError:
            self.guards.known(self.name, 0)
            self.guards.known(line, 0)
            raise
        self.guards.executed(self.name, True)
        on_at = self._from_worker(t_worker)
        self.relays = {"up": int(direction == "up"), "down": int(direction == "down")}
        self._movement += 1
        off_at = self.model.begin(direction, target, on_at)
        self._arm_off(off_at)
        self._arm_report()
        self._publish()

    def _arm_off(self, off_at: float) -> None:
        if self._off_timer is not None:
            self._off_timer.cancel()
        movement = self._movement
        self._off_timer = self._at(off_at, self._arrival_due, movement)

    def _arrival_due(self, movement: int) -> None:
        self._off_timer = None
        self._queue.appendleft(("_arrive", {"movement": movement}, None))
        self._kick()

    def _arm_report(self) -> None:
        if self._report_timer is not None:
            self._report_timer.cancel()
            self._report_timer = None
        when = self.model.next_report(self.now())
        if when is not None:
            self._report_timer = self._at(when, self._report, self._movement)

    def _report(self, movement: int) -> None:
        self._report_timer = None
        if movement != self._movement or self.model.moving is None:
            return
        self._publish()
        self._arm_report()

    async def _switch_off(self) -> float:
        """Both relays off through the guards (never refused; relay spacing may delay it);
        returns when they went off, on this controller's clock."""
        travel = self.model.moving
        direction = travel.direction if travel is not None else None
        when = 0.0
        if direction is not None:
            line_at, _ = self.guards.admit_value(f"{self.name}/{direction}", 0)
            at, _ = self.guards.admit_value(self.name, 0)
            when = max(line_at or 0.0, at or 0.0)
        if when:
            await self._sleep_until(when)
        t_worker = await self.hw.submit(self.adapter.drive, None, force=True)
        self.guards.executed(self.name, False)
        self.relays = {"up": 0, "down": 0}
        off_at = self._from_worker(t_worker)
        if direction is not None:
            self._last_off = (direction, off_at)
        return off_at

    def _cancel_timers(self) -> None:
        for timer in (self._off_timer, self._report_timer):
            if timer is not None:
                timer.cancel()
        self._off_timer = self._report_timer = None

    async def _stop(self, *, arrived: bool, why: str) -> None:
        model = self.model
        if model.moving is None:
            self._interrupt(why, model.position)
            if why == "safe_state" and any(self.relays.values()):  # pragma: no cover
                await self._switch_off()
            return
        self._cancel_timers()
        self._movement += 1
        off_at = await self._switch_off()
        pos = model.end(off_at, arrived=arrived)
        self._interrupt(why, pos)
        self._publish()
        if why in ("stop", "safe_state"):
            self.on_event(self.name, "stopped", {"position": round(pos), "reason": why})

    async def _arrive(self) -> None:
        model = self.model
        travel = model.moving
        assert travel is not None
        target = travel.target
        self._cancel_timers()
        self._movement += 1
        off_at = await self._switch_off()
        missed = False
        end = {100.0: "open", 0.0: "closed"}.get(target)
        if end is not None and end in self.adapter.endstop_inputs:
            active = await self.hw.submit(self.adapter.endstops_active, force=True)
            missed = not active.get(end, False)
        pos = model.end(off_at, arrived=True)
        self._publish()
        if missed:
            log.warning("cover %s ran its full time to %s but the %s endstop did not close",
                        self.name, end, end)
            self.on_event(self.name, "endstop_missed", {"endstop": end})
        if end is not None:
            self.on_event(self.name, "opened" if end == "open" else "closed",
                          {"position": round(pos)})
        self._resolve_waiter(pos)

    async def _endstop(self, which: str, at: float) -> None:
        model = self.model
        travel = model.moving
        toward = "up" if which == "open" else "down"
        if travel is not None and travel.direction != toward:
            return  # the other end's switch while leaving it (bounce): nothing to do
        if travel is not None:
            self._cancel_timers()
            self._movement += 1
            await self._switch_off()
        learned = model.endstop("open" if which == "open" else "closed", at)
        if learned is not None:
            log.info("cover %s: travel time %s learned: %.3f s", self.name, toward, learned)
        self._publish()
        if travel is not None:
            self.on_event(self.name, "opened" if which == "open" else "closed",
                          {"position": round(model.position), "endstop": True})
            if self._waiter is not None and self._waiter[1] == model.position:
                self._resolve_waiter(model.position)
            else:
                self._interrupt("endstop", model.position)

    # --- replies to set_position ---------------------------------------------------------------
    def _resolve_waiter(self, pos: float) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter[0].done():
            waiter[0].set_result(({"position": round(pos)}, self.state()))

    def _interrupt(self, why: str, pos: float) -> None:
        """A set_position still waiting is answered: what interrupted it, and where."""
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter[0].done():
            return
        future, target = waiter
        what = {"stop": "stopped by stop()", "reverse": "reversed by a command the other way",
                "new_target": "superseded by a new target",
                "safe_state": "stopped: the cover went to its safe state",
                "endstop": "stopped by an endstop"}.get(why, why)
        future.set_exception(Busy(
            f"set_position({target:g}) interrupted at {round(pos)}: {what}",
            details={"interrupted_by": why, "position": round(pos)}))

    def _publish(self) -> None:
        self.on_state(self.name, self.state())


_LATER = object()  # a handler's result: the reply comes later (set_position)
MAX_QUEUED = 32  # commands waiting for one cover; more are refused BUSY (a flood of stops)
