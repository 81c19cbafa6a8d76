"""The last hour of every sensor's published readings, kept by the gatekeeper so that a
dashboard opened later can draw it.

One ring per sensor device holds rows of (time, its values): at most one row per ``step``
seconds (``max(interval, 10 s)``; a newer reading in the same step replaces the row, so the
last row is always the latest reading), rows older than an hour dropped, and never more
than ``WINDOW_S / step + 1`` rows (361 at most). A reading of a sensor that does not answer
is a row of nulls (a gap in the chart). The rings live in memory only: a restart starts
them empty.

The history is readable two ways, both as the same document::

    {"step": 10, "window": 3600, "units": {"temperature": "°C"}, "t0": 1733430000.0,
     "t": [0, 10.1, 20.0], "values": {"temperature": [21.4, 21.45, null]}, "ts": "...Z"}

(``t``: seconds after ``t0``, epoch seconds; one entry per row, each value list aligned
with it):

- retained on ``{root}/device/<name>/history``, published at the first reading and then at
  most once a minute (whoever may read the node's states may read it: viewers too);
- fresh from the device's read-only ``history`` method (``since_s``: only the last so many
  seconds), for a caller that may call the device.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pi_mqtt_gpio.server.twin import Publish, dumps, utc_ts
from pi_mqtt_gpio.topics import Topics

__all__ = ["MIN_STEP_S", "PUBLISH_EVERY_S", "WINDOW_S", "Ring", "SensorHistory"]

WINDOW_S = 3600.0  # how far back the rings reach
MIN_STEP_S = 10.0  # the finest resolution kept: 360 rows an hour
PUBLISH_EVERY_S = 60.0  # the retained document, at most this often

Row = tuple[float, tuple[float | None, ...]]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class Ring:
    """The bounded history of one sensor: rows of (epoch seconds, values in ``keys`` order)."""

    def __init__(self, keys: Iterable[str], units: Mapping[str, str], step: float,
                 window: float = WINDOW_S) -> None:
        self.keys = tuple(keys)
        self.units = dict(units)
        self.step = max(float(step), 1e-3)
        self.window = float(window)
        self.rows: deque[Row] = deque(maxlen=math.ceil(self.window / self.step) + 1)

    def add(self, t: float, values: Mapping[str, Any]) -> None:
        """A reading at ``t``: a new row, or the latest of its step replacing the last row."""
        row = (t, tuple(_number(values.get(k)) for k in self.keys))
        rows = self.rows
        if rows and t < rows[-1][0]:
            rows.clear()  # the clock was set back: what is kept would be out of order
        if rows and math.floor(rows[-1][0] / self.step) == math.floor(t / self.step):
            rows[-1] = row
        else:
            rows.append(row)
        self.prune(t)

    def prune(self, now: float) -> None:
        rows = self.rows
        while rows and rows[0][0] < now - self.window:
            rows.popleft()

    def doc(self, now: float, since_s: float | None = None) -> dict[str, Any]:
        """The rows of the last ``since_s`` seconds (default: the whole window)."""
        since = self.window if since_s is None else min(float(since_s), self.window)
        rows = [r for r in self.rows if r[0] >= now - since]
        t0 = round(rows[0][0], 1) if rows else round(now, 1)
        return {
            "step": self.step, "window": self.window, "units": self.units, "t0": t0,
            "t": [round(r[0] - t0, 1) for r in rows],
            "values": {k: [r[1][i] for r in rows] for i, k in enumerate(self.keys)},
            "ts": utc_ts(now),
        }


class SensorHistory:
    """The rings of a node's sensors, fed with every state the twin publishes (a listener of
    the twin: the event loop), read by the ``history`` method on the hardware worker."""

    def __init__(self, topics: Topics, publish: Publish,
                 clock: Callable[[], float] = time.time) -> None:
        self.topics = topics
        self.publish = publish
        self.clock = clock
        self.rings: dict[str, Ring] = {}
        self._published: dict[str, float] = {}  # device -> when its document went out
        self._lock = threading.Lock()

    def add_sensor(self, name: str, keys: Iterable[str], units: Mapping[str, str],
                   interval: float) -> None:
        self.rings[name] = Ring(keys, units, max(float(interval), MIN_STEP_S))

    def record(self, device: str, doc: dict[str, Any], _again: bool = False) -> None:
        """A twin listener: ``doc`` was published as ``device``'s state."""
        ring = self.rings.get(device)
        if ring is None:
            return
        now = self.clock()
        with self._lock:
            ring.add(now, doc)
            last = self._published.get(device)
            if last is not None and now - last < PUBLISH_EVERY_S:
                return
            self._published[device] = now
            payload = dumps(ring.doc(now))
        self.publish(self.topics.device(device, "history"), payload, 1, True)

    def doc(self, device: str, since_s: float | None = None) -> dict[str, Any]:
        """The history of ``device`` now (any thread)."""
        ring = self.rings[device]
        now = self.clock()
        with self._lock:
            ring.prune(now)
            return ring.doc(now, since_s)
