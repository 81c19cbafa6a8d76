"""Button gestures from debounced presses and releases: ``single``, ``double``,
``long_start`` and ``long_end``. A pure state machine: the caller passes the time with each
press, release and ``tick()``, and asks ``next_deadline()`` when to tick next.

- One click gives exactly one ``single``, once the double-click window after its release has
  passed; two clicks within the window give one ``double`` and no ``single``.
- A hold gives ``long_start`` once, when it has lasted ``long_press_s``, and its release
  ``long_end`` once (no click). A click followed by a hold gives ``single`` then the hold.
- Deadlines are inclusive: a hold released exactly at ``long_press_s`` is a long press; a
  second press exactly ``double_click_s`` after the release is a new first click.
"""

from __future__ import annotations

__all__ = ["GestureRecognizer"]


class GestureRecognizer:
    def __init__(self, *, double_click_s: float = 0.3, long_press_s: float = 0.8) -> None:
        self.double_click_s = double_click_s
        self.long_press_s = long_press_s
        self._pressed = False
        self._long = False  # the current hold has become a long press
        self._clicks = 0  # completed clicks waiting for the double-click window
        self._long_at: float | None = None
        self._single_at: float | None = None

    def next_deadline(self) -> float | None:
        """When ``tick()`` has something to decide (None: nothing pending)."""
        deadlines = [t for t in (self._long_at, self._single_at) if t is not None]
        return min(deadlines) if deadlines else None

    def tick(self, now: float) -> list[str]:
        """Gestures whose time has come."""
        out: list[str] = []
        if self._single_at is not None and now >= self._single_at:
            self._single_at = None
            self._clicks = 0
            out.append("single")
        if self._long_at is not None and now >= self._long_at:
            self._long_at = None
            if self._clicks:  # a click, then a hold: the click stands on its own
                self._clicks = 0
                self._single_at = None
                out.append("single")
            self._long = True
            out.append("long_start")
        return out

    def press(self, now: float) -> list[str]:
        out = self.tick(now)
        if self._pressed:
            return out  # a second press without a release (debounce upstream): ignored
        self._pressed = True
        self._long = False
        self._single_at = None  # the window is answered by this press
        self._long_at = now + self.long_press_s
        return out

    def release(self, now: float) -> list[str]:
        out = self.tick(now)
        if not self._pressed:
            return out
        self._pressed = False
        self._long_at = None
        if self._long:
            self._long = False
            out.append("long_end")
            return out
        self._clicks += 1
        if self._clicks >= 2:
            self._clicks = 0
            out.append("double")
        else:
            self._single_at = now + self.double_click_s
        return out
