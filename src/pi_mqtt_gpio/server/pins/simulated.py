"""Simulated pins (``--simulate``): gpiozero's MockFactory with PWM, plus the debounce a real
Pi gives. gpiozero's mock pins ignore ``bounce_time``; on a Pi the lgpio pin factory hands it
to the kernel, which reports an edge once the level has held for ``bounce_time``. These pins
do the same, so a bouncy simulated button gives the events a real one gives (one press, one
release), each ``bounce_time`` after its last bounce.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPin, MockPWMPin

__all__ = ["SimulatedPin", "WiredPin", "simulated_factory"]


class SimulatedPin(MockPWMPin):  # type: ignore[misc]
    """A mock pin whose edges, with a bounce time set, are reported once the level has been
    stable for that long (and only when it differs from the last level reported)."""

    def __init__(self, factory: Any, info: Any) -> None:
        super().__init__(factory, info)
        self._settle_lock = threading.Lock()
        self._settle_timer: threading.Timer | None = None
        self._reported: Any = None
        self._bounce: float | None = self._bounce

    def _set_bounce(self, value: Any) -> None:
        super()._set_bounce(value)
        self._reported = self._state

    def _call_when_changed(self) -> None:
        if not self._bounce:
            super()._call_when_changed()
            return
        with self._settle_lock:
            if self._settle_timer is not None:
                self._settle_timer.cancel()
            timer = threading.Timer(self._bounce, self._settled, (self._state,))
            timer.daemon = True
            self._settle_timer = timer
            timer.start()

    def _settled(self, level: Any) -> None:
        with self._settle_lock:
            self._settle_timer = None
            if self._state != level or level == self._reported:
                return  # it moved again since, or came back to what was reported
            self._reported = level
        if self._when_changed is not None:
            super(MockPin, self)._call_when_changed(time.monotonic(), level)

    def drive_clean(self, level: bool) -> None:
        """A clean edge, reported at once (the simulation methods ``sim_press`` and
        ``sim_release``: a press as the kernel reports it once it settled). ``drive_high``
        and ``drive_low`` are raw contact changes, debounced as above."""
        with self._settle_lock:
            if self._settle_timer is not None:
                self._settle_timer.cancel()
                self._settle_timer = None
            if self._bounce:
                self._reported = level
        bounce: float | None = self._bounce
        self._bounce = None
        try:
            if level:
                self.drive_high()
            else:
                self.drive_low()
        finally:
            self._bounce = bounce

    def close(self) -> None:
        with self._settle_lock:
            if self._settle_timer is not None:
                self._settle_timer.cancel()
                self._settle_timer = None
        super().close()


class WiredPin(SimulatedPin):
    """An output wired to an input (``input_pin``): its level drives the input, as a jumper
    between two header pins does (the loopback watchdog's wire in simulation)."""

    def __init__(self, factory: Any, info: Any, input_pin: Any = None) -> None:
        super().__init__(factory, info)
        self.input_pin = input_pin

    def _change_state(self, value: Any) -> bool:
        wire = self.input_pin
        if wire is not None:
            if value:
                wire.drive_high()
            else:
                wire.drive_low()
        return bool(super()._change_state(value))


def simulated_factory() -> Any:
    return MockFactory(pin_class=SimulatedPin)
