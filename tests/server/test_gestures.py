"""Button gestures with injected time: (kind, time) steps in, gestures out; each boundary
exactly at the limit and 1 ms before it."""

from __future__ import annotations

import pytest

from pi_mqtt_gpio.server.devices.gestures import GestureRecognizer

MS = 0.001
D, L = 0.3, 0.8  # double_click_s, long_press_s


def play(steps: list[tuple[str, float]], until: float = 10.0) -> list[tuple[str, float]]:
    """Run press/release steps, ticking at every deadline as a timer would."""
    g = GestureRecognizer(double_click_s=D, long_press_s=L)
    out: list[tuple[str, float]] = []
    for kind, at in [*steps, ("end", until)]:
        while (deadline := g.next_deadline()) is not None and deadline <= at:
            out += [(e, deadline) for e in g.tick(deadline)]
        if kind == "press":
            out += [(e, at) for e in g.press(at)]
        elif kind == "release":
            out += [(e, at) for e in g.release(at)]
    return out


@pytest.mark.parametrize(("steps", "expected"), [
    # one click: exactly one single, after the window
    ([("press", 0), ("release", 0.1)], [("single", 0.1 + D)]),
    # two clicks, the second press 1 ms inside the window: one double, no single
    ([("press", 0), ("release", 0.1), ("press", 0.1 + D - MS), ("release", 0.5)],
     [("double", 0.5)]),
    # the second press exactly at the end of the window: two singles
    ([("press", 0), ("release", 0.1), ("press", 0.1 + D), ("release", 0.5)],
     [("single", 0.1 + D), ("single", 0.5 + D)]),
    # a hold: long_start once at long_press_s, long_end once at the release
    ([("press", 0), ("release", 2.0)], [("long_start", L), ("long_end", 2.0)]),
    # released exactly at long_press_s: a long press
    ([("press", 0), ("release", L)], [("long_start", L), ("long_end", L)]),
    # released 1 ms before: a click
    ([("press", 0), ("release", L - MS)], [("single", L - MS + D)]),
    # a click, then a hold: the click, then the hold
    ([("press", 0), ("release", 0.1), ("press", 0.2), ("release", 1.5)],
     [("single", 0.2 + L), ("long_start", 0.2 + L), ("long_end", 1.5)]),
    # three quick clicks: a double, then a single
    ([("press", 0), ("release", 0.05), ("press", 0.1), ("release", 0.15), ("press", 0.2),
      ("release", 0.25)], [("double", 0.15), ("single", 0.25 + D)]),
    # a repeated press without a release (bounce that got through) changes nothing
    ([("press", 0), ("press", 0.01), ("release", 0.1)], [("single", 0.1 + D)]),
])
def test_gesture_table(steps: list[tuple[str, float]], expected: list[tuple[str, float]]
                       ) -> None:
    got = play(steps)
    assert [e for e, _ in got] == [e for e, _ in expected]
    assert [t for _, t in got] == pytest.approx([t for _, t in expected])


def test_nothing_pending_when_idle() -> None:
    g = GestureRecognizer()
    assert g.next_deadline() is None and g.tick(100.0) == [] and g.release(1.0) == []
