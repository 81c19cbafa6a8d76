"""Hardware safety guards as pure policy: relay spacing, command rate limits, flap lockout,
interlocks and the longest time an output may stay on. No I/O, no clock reads, no threads:
the caller passes the time and the intended change, and gets an answer.

For each write the caller asks ``check()`` with what the command would leave the device at
(``value``: its predicted value; ``active``: whether that is "on"), and gets

- ``Allow(at)``: queue it now (``at`` is now);
- ``Delay(at)``: queue it at ``at`` (a relay edge sooner than ``min_relay_interval_s`` after
  the previous one, or a command behind one that is already delayed: commands to one device
  run in the order they arrived, and no edge is dropped);
- ``Refuse(code, message, retry_after)``: ``RATE_LIMITED``, ``SAFETY_LOCKOUT`` or
  ``INTERLOCKED``.

and then ``commit()`` s an allowed or delayed command, so that the next check sees the state
the worker *will* have reached (two commands queued back to back cannot both pass an
interlock). Switching off is never refused by an interlock, a rate limit or a lockout: a
device can always be made safe.

For interlocks a member counts as active from the moment a command that makes it active is
accepted until its turn off has *executed* on the pin (``executed()``): a turn off that
relay spacing holds back does not free the group early.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "GUARDED_TYPES",
    "LINE_GUARDED_TYPES",
    "Allow",
    "Delay",
    "Guard",
    "Refuse",
    "SafetyPolicy",
    "Verdict",
    "guards_for",
    "line_interlocks",
]


@dataclass(frozen=True, slots=True)
class Guard:
    """The effective guards of one device (global defaults overridden by its own)."""

    min_relay_interval_s: float = 0.5
    min_command_interval_s: float = 0.2
    flap_window_s: float = 10.0
    flap_max_edges: int = 8
    flap_lockout_s: float = 15.0
    max_on_s: float | None = None

    @property
    def all_off(self) -> bool:
        return (not self.min_relay_interval_s and not self.min_command_interval_s
                and not self.flap_lockout_s and self.max_on_s is None)


@dataclass(frozen=True, slots=True)
class Allow:
    at: float


@dataclass(frozen=True, slots=True)
class Delay:
    at: float


@dataclass(frozen=True, slots=True)
class Refuse:
    code: str  # RATE_LIMITED | SAFETY_LOCKOUT | INTERLOCKED
    message: str
    retry_after: float


Verdict = Allow | Delay | Refuse


@dataclass(slots=True)
class _Device:
    value: Any = 0  # the value the worker will have reached once its queue has run
    active: bool = False
    last_write: float | None = None  # when the last write was accepted
    last_edge: float | None = None  # when the last commanded edge runs (maybe in the future)
    queued_until: float = float("-inf")  # the last delayed command's time
    edges: deque[float] = field(default_factory=deque)  # commanded changes in the window
    lockout_until: float | None = None
    on_pin: bool = False  # active on the hardware, as the last executed command left it
    ran: Any = 0  # ... and the value it left


class SafetyPolicy:
    def __init__(self, guards: dict[str, Guard], interlocks: list[frozenset[str]]) -> None:
        self.guards = guards  # guarded devices only
        self.interlocks = interlocks
        self._devices: dict[str, _Device] = {}

    # --- state the caller tells us -------------------------------------------------------------
    def known(self, device: str, value: Any, active: bool) -> None:
        """The device's actual value (at start, and after anything not commanded: a blink
        ending, a safe state). Ignored while commands for it are still queued ahead."""
        dev = self._dev(device)
        dev.value, dev.active = value, active
        dev.ran, dev.on_pin = value, active

    def executed(self, device: str, active: bool, value: Any = ...) -> None:
        """A command for ``device`` ran on the worker and left it ``active`` (or not), at
        ``value`` when known."""
        dev = self._dev(device)
        dev.on_pin = active
        if value is not ...:  # (a value may be None: a detached servo)
            dev.ran = value

    def resync(self, device: str) -> None:
        """What was predicted for commands that never ran is forgotten: the device is as
        its last executed command left it."""
        dev = self._dev(device)
        dev.value, dev.active = dev.ran, dev.on_pin

    def _dev(self, device: str) -> _Device:
        dev = self._devices.get(device)
        if dev is None:
            dev = self._devices[device] = _Device()
        return dev

    def predicted(self, device: str) -> tuple[Any, bool]:
        """What the device will be once every accepted command has run."""
        dev = self._dev(device)
        return dev.value, dev.active

    def lockout_until(self, device: str, now: float) -> float | None:
        dev = self._devices.get(device)
        if dev is None or dev.lockout_until is None or dev.lockout_until <= now:
            return None
        return dev.lockout_until

    def lock_out(self, device: str, until: float) -> None:
        """Put a lockout in force (one that was in force before a restart)."""
        self._dev(device).lockout_until = until

    def lockouts(self, now: float) -> dict[str, float]:
        """The lockouts in force: device -> until."""
        return {name: dev.lockout_until for name, dev in self._devices.items()
                if dev.lockout_until is not None and dev.lockout_until > now}

    def clear_lockout(self, device: str) -> bool:
        """Lift a lockout (the ``manage`` right); True if there was one."""
        dev = self._devices.get(device)
        if dev is None or dev.lockout_until is None:
            return False
        dev.lockout_until = None
        dev.edges.clear()
        return True

    # --- the decision --------------------------------------------------------------------------
    def check(self, device: str, value: Any, active: bool, now: float) -> Verdict:
        """May a write that leaves ``device`` at ``value`` (``active``) run, and when?"""
        dev = self._dev(device)
        change = value != dev.value
        switching_off = not active  # leaves it off: never refused (it can always go safe)
        interlock = self._interlock(device, active, change, now)
        if interlock is not None:
            return interlock
        guard = self.guards.get(device)
        if guard is None:
            return Allow(now)
        if dev.lockout_until is not None and now < dev.lockout_until and not switching_off:
            return Refuse("SAFETY_LOCKOUT", f"{device} is locked out after flapping "
                          f"({guard.flap_max_edges} changes in {guard.flap_window_s:g} s)",
                          dev.lockout_until - now)
        if guard.min_command_interval_s and dev.last_write is not None and not switching_off:
            wait = dev.last_write + guard.min_command_interval_s - now
            if wait > 0:
                return Refuse("RATE_LIMITED", f"{device} takes one command every "
                              f"{guard.min_command_interval_s:g} s", wait)
        at = max(now, dev.queued_until)
        if change and guard.min_relay_interval_s and dev.last_edge is not None:
            at = max(at, dev.last_edge + guard.min_relay_interval_s)
        if change and guard.flap_lockout_s and not switching_off:
            window = [t for t in dev.edges if t > at - guard.flap_window_s]
            if len(window) >= guard.flap_max_edges:
                dev.lockout_until = now + guard.flap_lockout_s
                dev.edges.clear()  # the lockout is the penalty: the count starts again after it
                return Refuse("SAFETY_LOCKOUT", f"{device} changed {len(window)} times in "
                              f"{guard.flap_window_s:g} s: locked out for "
                              f"{guard.flap_lockout_s:g} s", guard.flap_lockout_s)
        return Allow(now) if at <= now else Delay(at)

    def _interlock(self, device: str, active: bool, change: bool, now: float
                   ) -> Refuse | None:
        if not active or (not change and self._dev(device).active):
            return None
        for group in self.interlocks:
            if device not in group:
                continue
            # Active: will be (accepted commands), or still is on the pin (its off is queued
            # or held back by spacing and has not run yet).
            others = sorted(d for d in group if d != device
                            and (self._dev(d).active or self._dev(d).on_pin))
            if others:
                pending_off = [self._dev(d).queued_until for d in others
                               if not self._dev(d).active]
                wait = max(pending_off, default=now) - now
                return Refuse("INTERLOCKED", f"{device} may not be active together with "
                              f"{', '.join(others)} (interlocked)",
                              round(max(wait, 0.0), 3))
        return None

    def interlock_refusal(self, device: str, now: float) -> Refuse | None:
        """Whether switching ``device`` on now would meet an active interlock partner."""
        return self._interlock(device, True, True, now)

    def interlocked_with(self, device: str) -> frozenset[str]:
        """Every other member of the interlock groups ``device`` belongs to."""
        return frozenset(d for group in self.interlocks if device in group
                         for d in group if d != device)

    def commit(self, device: str, value: Any, active: bool, verdict: Verdict,
               now: float) -> None:
        """Record an allowed or delayed write: from now on ``device`` counts as ``value``."""
        if isinstance(verdict, Refuse):
            return
        dev = self._dev(device)
        guard = self.guards.get(device)
        if value != dev.value:
            dev.last_edge = verdict.at
            if guard is not None:
                dev.edges.append(verdict.at)
                while dev.edges and dev.edges[0] <= verdict.at - guard.flap_window_s:
                    dev.edges.popleft()
        dev.last_write = now
        if isinstance(verdict, Delay):
            dev.queued_until = verdict.at
        dev.value, dev.active = value, active


# Relay-like outputs are guarded by default; LEDs, PWM, buzzers and servos only with their own
# ``safety:`` block (so blink and fast dimming keep working).
GUARDED_TYPES = frozenset({"OutputDevice", "DigitalOutputDevice", "Motor", "PhaseEnableMotor",
                           "Cover"})
_KEYS = ("min_relay_interval_s", "min_command_interval_s", "flap_window_s", "flap_max_edges",
         "flap_lockout_s", "max_on_s")


def guards_for(defaults: Any, devices: dict[str, Any]) -> dict[str, Guard]:
    """The effective guard of every guarded device: ``defaults`` (the ``safety:`` section)
    overridden key by key by the device's own ``safety:`` block."""
    out: dict[str, Guard] = {}
    for name, dev in devices.items():
        own = getattr(dev, "safety", None)
        if dev.type not in GUARDED_TYPES and own is None:
            continue
        values = {key: getattr(defaults, key) for key in _KEYS}
        if own is not None:
            values.update({key: getattr(own, key) for key in _KEYS
                           if getattr(own, key) is not None})
        if dev.type in LINE_GUARDED_TYPES:
            # A cover: each relay is guarded on its own (spacing, flapping); its runs are
            # bounded by its travel times, so max_on_s does not apply; the rate limit is
            # on the cover's commands (its controller), not on the relay writes they cause.
            values["max_on_s"] = None
            rate = values["min_command_interval_s"]
            values["min_command_interval_s"] = 0.0
            for line in LINE_GUARDED_TYPES[dev.type]:
                out[f"{name}/{line}"] = Guard(**values)
            out[f"{name}/commands"] = Guard(min_relay_interval_s=0.0,
                                            min_command_interval_s=rate, flap_lockout_s=0.0)
        else:
            out[name] = Guard(**values)
    return out


# Devices with several relays guarded line by line, and interlocked with each other.
LINE_GUARDED_TYPES: dict[str, tuple[str, ...]] = {"Cover": ("up", "down")}


def line_interlocks(devices: dict[str, Any]) -> list[frozenset[str]]:
    """The built-in interlocks: a cover's two relays are never on together."""
    return [frozenset(f"{name}/{line}" for line in LINE_GUARDED_TYPES[dev.type])
            for name, dev in devices.items() if dev.type in LINE_GUARDED_TYPES]
