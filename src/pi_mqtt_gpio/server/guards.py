"""The safety policy (``safety.py``) applied on the event loop: every write to an output is
admitted, delayed or refused before it is queued; delayed commands run in order at their
time; a lockout shows in the device's state and as an event; an output on for longer than
``max_on_s`` is driven to its safe state. Time is the loop's clock."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from pi_mqtt_gpio.errors import GatekeeperError, Interlocked, error_for
from pi_mqtt_gpio.server.devices.base import DeviceAdapter, is_active
from pi_mqtt_gpio.server.hardware import HardwareManager
from pi_mqtt_gpio.server.safety import Allow, Delay, Refuse, SafetyPolicy
from pi_mqtt_gpio.server.twin import utc_ts

__all__ = ["Guards"]

log = logging.getLogger("pi_mqtt_gpio.safety")

Notify = Callable[[str, str, dict[str, Any]], None]  # (device, event, extra) -> publish


class Guards:
    def __init__(self, policy: SafetyPolicy, hw: HardwareManager, *,
                 on_event: Notify, on_state: Callable[[str], None],
                 make_safe: Callable[[DeviceAdapter], Any],
                 on_safe: Callable[[str, dict[str, Any]], object] = lambda name, state: None
                 ) -> None:
        self.policy = policy
        self.hw = hw
        self.on_event = on_event  # publishes {"event": ...} for a device
        self.on_state = on_state  # republishes a device's state (lockout shown or lifted)
        self.make_safe = make_safe  # the worker function that drives a device safe
        self.on_safe = on_safe  # publishes the state a safe state left (the twin)
        self._later: dict[str, deque[tuple[float, Callable[[], None]]]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._max_on: dict[str, asyncio.TimerHandle] = {}
        self._lockout_timers: dict[str, asyncio.TimerHandle] = {}
        # When each spaced relay's last edge ran (time.monotonic()): read and written only by
        # the hardware worker thread, inside ``_spaced``.
        self._spacing: dict[str, float] = {}
        self._outstanding: dict[str, int] = {}  # admitted commands not finished, per device

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def start(self, states: dict[str, dict[str, Any]]) -> None:
        """What the outputs are at start (their safe states)."""
        for name, state in states.items():
            self.policy.known(name, state.get("value"), _on_pins(state))

    # --- admission -----------------------------------------------------------------------------
    def admit(self, adapter: DeviceAdapter, method: str, kwargs: dict[str, Any]
              ) -> tuple[float | None, bool, bool]:
        """Check a write; raise the refusal, or return when it may run (None: now), whether
        it is an edge (a change of value) and whether it leaves the device active."""
        current, _active = self.policy.predicted(adapter.name)
        value = adapter.predict(method, kwargs, current)
        at, edge = self.admit_value(adapter.name, value)
        return at, edge, is_active(value)

    def admit_value(self, name: str, value: Any) -> tuple[float | None, bool]:
        """Check a write that leaves ``name`` at ``value``: a device, or one line of a
        device that has several (a cover's relays are ``<cover>/up`` and ``<cover>/down``)."""
        current, _active = self.policy.predicted(name)
        active = is_active(value)
        now = self._now()
        verdict = self.policy.check(name, value, active, now)
        if isinstance(verdict, Refuse):
            if verdict.code == "SAFETY_LOCKOUT" and name not in self._lockout_timers:
                self._locked_out(name, now)
            raise error_for(verdict.code, verdict.message, retry_after=verdict.retry_after)
        self.policy.commit(name, value, active, verdict, now)
        return (verdict.at if isinstance(verdict, Delay) else None), value != current

    def known(self, name: str, value: Any) -> None:
        """What a device or line is now (after a write that did not go through ``ran``)."""
        self.policy.known(name, value, is_active(value))

    def submit(self, name: str, at: float | None, edge: bool, fn: Callable[..., Any],
               *args: Any, active: bool = True, activates: Callable[[], bool] | None = None,
               recheck: Callable[[], None] | None = None, force: bool = False
               ) -> asyncio.Future[Any]:
        """Queue ``fn`` on the hardware worker now, or at ``at`` behind the device's other
        delayed commands (in the order they were admitted). An edge of a spaced relay also
        waits on the worker, to the microsecond, for the spacing since the last edge ran (the
        loop's timer is only as exact as its millisecond clock).

        Admission at execution. Whether the command leaves the device active is asked on
        the worker, against the pins as they are then (``activates()``; else ``active``,
        what the policy predicted). Such a command runs only if no other member of its
        interlocks is active on its pins at that moment (the worker is the one thread that
        changes pins), and, when it was held back (spacing, or behind a command that is),
        only if ``recheck()`` (the sender's rights and leases as they are when it is handed
        to the worker) did not raise. A command that leaves the device inactive (towards
        safe) always runs. ``force``: past the hardware queue's limit (a turn towards safe
        must not be refused BUSY by a flood of other commands)."""
        activates = activates or (lambda: active)
        verdict: list[GatekeeperError | None] = [None]  # the recheck's, set at hand-over
        if recheck is not None:
            fn, args = _admitted, (verdict, activates, fn, args)
        fn, args = self.interlock_checked(name, fn, args, activates)
        guard = self.policy.guards.get(name)
        if edge and guard is not None and guard.min_relay_interval_s:
            fn, args = _spaced, (self._spacing, name, guard.min_relay_interval_s, fn, args)
        future = self._submit(name, at, fn, args, recheck, verdict, force)
        self._outstanding[name] = self._outstanding.get(name, 0) + 1
        future.add_done_callback(lambda f: self._finished(name, f))
        return future

    def interlock_checked(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                          activates: Callable[[], bool] = lambda: True
                          ) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """``fn(*args)`` wrapped, when ``name`` is interlocked with other devices, so that
        the worker refuses it, when it would leave ``name`` active (``activates()``), while
        one of them is active on its pins."""
        others = tuple(self.hw.adapters[d] for d in self.policy.interlocked_with(name)
                       if d in self.hw.adapters)
        if not others:
            return fn, args
        return _interlock_checked, (others, name, activates, fn, args)

    def executed(self, name: str, active: bool) -> None:
        """A command for ``name`` that did not go through ``submit`` (a cover's relays) ran
        and left it ``active`` or not."""
        self.policy.executed(name, active)

    def _finished(self, name: str, future: asyncio.Future[Any]) -> None:
        left = self._outstanding.get(name, 1) - 1
        if left > 0:
            self._outstanding[name] = left
        else:
            self._outstanding.pop(name, None)
        if (future.cancelled() or future.exception() is not None) and not self.pending(name):
            # A command that did not run (refused at execution, failed, cancelled): what
            # the policy predicted for it never happened; the device is as it last ran.
            self.policy.resync(name)

    def _submit(self, name: str, at: float | None, fn: Callable[..., Any],
                args: tuple[Any, ...], recheck: Callable[[], None] | None,
                verdict: list[GatekeeperError | None], force: bool
                ) -> asyncio.Future[Any]:
        queue = self._later.get(name)
        if at is None and not queue:
            return self.hw.submit(fn, *args, force=force)
        outer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def run() -> None:
            if outer.done():
                return
            if recheck is not None:
                try:
                    recheck()
                except GatekeeperError as exc:
                    verdict[0] = exc  # refused on the worker unless it goes towards safe
            try:
                inner = self.hw.submit(fn, *args, force=True)
            except GatekeeperError as exc:
                outer.set_exception(exc)
                return
            inner.add_done_callback(lambda f: _chain(f, outer))

        when = at if at is not None else (queue[-1][0] if queue else self._now())
        self._later.setdefault(name, deque()).append((when, run))
        self._arm(name)
        return outer

    def _arm(self, name: str) -> None:
        queue = self._later.get(name)
        if not queue or name in self._timers:
            return
        loop = asyncio.get_running_loop()
        self._timers[name] = loop.call_at(queue[0][0], self._fire, name)

    def _fire(self, name: str) -> None:
        self._timers.pop(name, None)
        queue = self._later.get(name)
        now = self._now()
        while queue and queue[0][0] <= now:
            queue.popleft()[1]()
        if queue:
            self._arm(name)
        else:
            self._later.pop(name, None)

    def pending(self, name: str) -> bool:
        """Commands for ``name`` admitted and not finished (delayed or on the worker)."""
        return bool(self._outstanding.get(name)) or bool(self._later.get(name))

    # --- after a command ran -------------------------------------------------------------------
    def ran(self, adapter: DeviceAdapter, state: dict[str, Any]) -> None:
        """A command finished: resynchronise (when nothing else is queued for the device) and
        (re)arm the max_on timer."""
        name = adapter.name
        value = state.get("value")
        on_pin = _on_pins(state)
        self.policy.executed(name, on_pin, value)
        if not self.pending(name):
            self.policy.known(name, value, on_pin)
        guard = self.policy.guards.get(name)
        if guard is None or guard.max_on_s is None:
            return
        timer = self._max_on.get(name)
        if is_active(value):
            if timer is None:
                self._max_on[name] = asyncio.get_running_loop().call_later(
                    guard.max_on_s, self._max_on_fired, adapter)
        elif timer is not None:
            timer.cancel()
            del self._max_on[name]

    def observed(self, name: str, state: dict[str, Any]) -> None:
        """The twin published ``name``'s state, whoever read it (a blink that ended, a
        refresh): with no command of its own pending, that is what the device is."""
        if "value" in state and not self.pending(name):
            self.policy.known(name, state["value"], _on_pins(state))

    def _max_on_fired(self, adapter: DeviceAdapter) -> None:
        name = adapter.name
        self._max_on.pop(name, None)
        guard = self.policy.guards[name]
        log.warning("%s was on for %g s (max_on_s): driving it to its safe state", name,
                    guard.max_on_s or 0)
        self.safe(adapter, "max_on")

    def safe(self, adapter: DeviceAdapter, reason: str) -> asyncio.Future[Any] | None:
        """Drive ``adapter`` to its safe state through the policy (switching off is never
        refused; relay spacing may delay it; a full hardware queue does not refuse it),
        publish the state it left (the twin follows every change, whoever made it), then
        say why as an event. A safe state that is "on" (``safe_state: on``) is checked
        against the interlocks like any turn on: it waits for no one, it is refused."""
        name = adapter.name
        on = adapter.safe_active()
        try:
            if on:  # not a rate limit or a lockout: only the interlocks may refuse it
                refused = self.policy.interlock_refusal(name, self._now())
                if refused is not None:
                    raise error_for(refused.code, refused.message)
                edge = self.policy.predicted(name)[0] != 1
                self.policy.commit(name, 1, True, Allow(self._now()), self._now())
                at = None
            else:
                at, edge, _active = self.admit(adapter, "off", {})
            future = self.submit(name, at, edge, self.make_safe, adapter, active=on,
                                 force=True)
        except GatekeeperError as exc:
            log.error("safe state of %s refused: %s", name, exc.message)
            return None

        def done(f: asyncio.Future[Any]) -> None:
            if f.cancelled() or f.exception() is not None:
                return
            state = f.result()
            self.ran(adapter, state)
            self.on_safe(name, self.decorate(name, state))
            if reason == "max_on":
                self.on_event(name, "max_on", {})

        future.add_done_callback(done)
        return future

    # --- lockouts ------------------------------------------------------------------------------
    def lockout_until(self, name: str) -> float | None:
        """The end of a lockout of the device or of one of its lines (``<name>/...``)."""
        now = self._now()
        ends = [until for line, until in self.policy.lockouts(now).items()
                if line == name or line.startswith(name + "/")]
        return max(ends) if ends else None

    def decorate(self, name: str, state: dict[str, Any]) -> dict[str, Any]:
        """``state`` with ``lockout_until`` while the device is locked out."""
        until = self.lockout_until(name)
        if until is None:
            return state
        return {**state, "lockout_until": utc_ts(time.time() + (until - self._now()))}

    def _locked_out(self, name: str, now: float) -> None:
        until = self.policy.lockout_until(name, now)
        if until is None:
            return
        log.warning("%s locked out for %.0f s after flapping", name, until - now)
        device, _, line = name.partition("/")  # a line of a device: the device says it
        extra = {"lockout_until": self.decorate(device, {}).get("lockout_until")}
        if line:
            extra["line"] = line
        self.on_event(device, "lockout", extra)
        self.on_state(device)
        loop = asyncio.get_running_loop()
        self._lockout_timers[name] = loop.call_at(until, self._lockout_over, name)

    def _lockout_over(self, name: str) -> None:
        self._lockout_timers.pop(name, None)
        self.on_state(name.partition("/")[0])

    def lockouts_wall(self) -> dict[str, float]:
        """The lockouts in force, device -> wall-clock end (for the state file)."""
        now, wall = self._now(), time.time()
        return {name: wall + (until - now) for name, until in self.policy.lockouts(now).items()}

    def restore_lockouts(self, lockouts: dict[str, float]) -> None:
        """Lockouts saved before a restart stay in force until their end."""
        now, wall = self._now(), time.time()
        for name, end in lockouts.items():
            if name in self.policy.guards and isinstance(end, int | float) and end > wall:
                self.policy.lock_out(name, now + (end - wall))
                self._lockout_timers[name] = asyncio.get_running_loop().call_at(
                    now + (end - wall), self._lockout_over, name)
                self.on_state(name.partition("/")[0])

    def clear_lockout(self, name: str) -> bool:
        """Lift the lockout of a device and of its lines."""
        cleared = False
        for line in [name, *(g for g in self.policy.guards if g.startswith(name + "/"))]:
            cleared = self.policy.clear_lockout(line) or cleared
            timer = self._lockout_timers.pop(line, None)
            if timer is not None:
                timer.cancel()
        if cleared:
            self.on_state(name)
        return cleared


def _on_pins(state: dict[str, Any]) -> bool:
    """Whether a device's state means active on its pins (a blink counts while it runs)."""
    return is_active(state.get("value")) or bool(state.get("blinking"))


def _admitted(verdict: list[GatekeeperError | None], activates: Callable[[], bool],
              fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """Runs on the hardware worker: a held-back command whose second admission refused it
    is refused now, unless it leaves the device inactive (a turn towards safe always
    runs; a toggle's direction is known only here)."""
    refused = verdict[0]
    if refused is not None and activates():
        raise refused
    return fn(*args)


def _interlock_checked(others: tuple[DeviceAdapter, ...], name: str,
                       activates: Callable[[], bool], fn: Callable[..., Any],
                       args: tuple[Any, ...]) -> Any:
    """Runs on the hardware worker, the only thread that changes pins: a command that makes
    ``name`` active runs only while no other member of its interlocks is active on its
    pins; otherwise it is refused ``INTERLOCKED`` and nothing moves."""
    if not activates():
        return fn(*args)
    on = sorted(o.name for o in others if o.device is not None and o.active_on_pins())
    if on:
        raise Interlocked(f"{name} may not be active together with {', '.join(on)} "
                          f"(interlocked; checked as it was about to run)")
    return fn(*args)


def _spaced(last_edges: dict[str, float], name: str, interval: float,
            fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """Runs on the hardware worker: wait out what is left of the spacing (usually well under
    a millisecond: the loop already delayed the command; more only when the worker itself
    ran the previous edge late), run, note the edge's time."""
    last = last_edges.get(name)
    if last is not None:
        wait = last + interval - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, interval))
    try:
        return fn(*args)
    finally:
        last_edges[name] = time.monotonic()


def _chain(inner: asyncio.Future[Any], outer: asyncio.Future[Any]) -> None:
    if outer.done():
        return
    if inner.cancelled():
        outer.cancel()
    elif inner.exception() is not None:
        outer.set_exception(inner.exception())  # type: ignore[arg-type]
    else:
        outer.set_result(inner.result())
