"""Keeping client-supplied text from flooding the log (an SD card wears out).

``clip`` shortens a client-supplied string (topic, user name, client id) for a log line;
``LogLimiter`` lets each key (a client, an address) log at most ``burst`` lines per
``window`` seconds and says how many it held back when the next window opens. Time is
passed in; memory is bounded by ``max_keys``.
"""

from __future__ import annotations

import logging

__all__ = ["LOG_TEXT_MAX", "LogLimiter", "clip"]

LOG_TEXT_MAX = 80  # characters of a client-supplied string that reach the log


def clip(text: object, limit: int = LOG_TEXT_MAX) -> str:
    """``text`` for a log line: at most ``limit`` characters, then how many were cut."""
    if text is None:
        return "None"
    s = text if isinstance(text, str) else str(text)
    if len(s) <= limit:
        return s
    return f"{s[:limit]}...(+{len(s) - limit} chars)"


class LogLimiter:
    def __init__(self, logger: logging.Logger, *, burst: int = 5, window: float = 10.0,
                 max_keys: int = 1024) -> None:
        self.logger = logger
        self.burst = burst
        self.window = window
        self.max_keys = max_keys
        self._seen: dict[str, list[float]] = {}  # key -> [window start, lines in window]
        self.suppressed = 0

    def allow(self, key: str, now: float) -> bool:
        """Whether a line for ``key`` may be logged now (counts it either way)."""
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window:
            held = int(entry[1]) - self.burst if entry is not None else 0
            if entry is None and len(self._seen) >= self.max_keys:
                self._seen.clear()
            self._seen[key] = [now, 1]
            if held > 0:
                self.suppressed += held
                self.logger.warning("%d more log lines about %s were suppressed", held,
                                    clip(key))
            return True
        entry[1] += 1
        return entry[1] <= self.burst

    def log(self, level: int, key: str, now: float, fmt: str, *args: object) -> None:
        """``logger.log(level, fmt, *args)`` unless ``key`` is over its budget."""
        if self.allow(key, now):
            self.logger.log(level, fmt, *args)
