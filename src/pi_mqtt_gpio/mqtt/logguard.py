"""Keeping client-supplied text from flooding the log (an SD card wears out).

``clip`` shortens a client-supplied string (topic, user name, client id) for a log line;
``LogLimiter`` lets each key (a client, an address) log at most ``burst`` lines per
``window`` seconds and says how many it held back when the next window opens; with
``total`` the lines of all keys together are held to ``total`` per ``window`` as well (a
flood from many addresses logs no more than one from a few), and what that held back is
said in one line when the next window opens. Time is passed in; memory is bounded by
``max_keys``.
"""

from __future__ import annotations

import logging

__all__ = ["LOG_TEXT_MAX", "LOG_TOTAL", "LogLimiter", "clip"]

LOG_TEXT_MAX = 80  # characters of a client-supplied string that reach the log
LOG_TOTAL = 20  # lines of one kind per window across all addresses (the transports' logs)


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
                 max_keys: int = 1024, total: int | None = None) -> None:
        self.logger = logger
        self.burst = burst
        self.window = window
        self.max_keys = max_keys
        self.total = total  # lines of all keys together per window (None: no such cap)
        self._seen: dict[str, list[float]] = {}  # key -> [window start, lines in window]
        self.suppressed = 0
        self._all_start = float("-inf")
        self._all_lines = 0  # lines of all keys in the window that began at _all_start
        self._all_held = 0  # held back by ``total`` in it
        self._all_keys: set[str] = set()  # keys of those (at most a few are named)

    def _take(self, key: str, now: float) -> bool:
        """One line of the ``total`` budget (True: there was one)."""
        if self.total is None:
            return True
        if now - self._all_start >= self.window:
            held, keys = self._all_held, len(self._all_keys)
            self._all_start, self._all_lines, self._all_held = now, 0, 0
            self._all_keys = set()
            if held:
                self.suppressed += held
                self.logger.warning("%d more log lines about %d sources were suppressed "
                                    "(at most %d lines in %g s in all)", held, keys,
                                    self.total, self.window)
        if self._all_lines < self.total:
            self._all_lines += 1
            return True
        self._all_held += 1
        if len(self._all_keys) < self.max_keys:
            self._all_keys.add(key)
        return False

    def allow(self, key: str, now: float) -> bool:
        """Whether a line for ``key`` may be logged now (counts it either way)."""
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window:
            held = int(entry[1]) - self.burst if entry is not None else 0
            if entry is None and len(self._seen) >= self.max_keys:
                self._seen.clear()
            self._seen[key] = [now, 1]
            if held > 0:
                if self._take(key, now):
                    self.suppressed += held
                    self.logger.warning("%d more log lines about %s were suppressed", held,
                                        clip(key))
                else:
                    self._all_held += held - 1  # said in the next window's summary
            return self._take(key, now)
        entry[1] += 1
        return entry[1] <= self.burst and self._take(key, now)

    def log(self, level: int, key: str, now: float, fmt: str, *args: object) -> None:
        """``logger.log(level, fmt, *args)`` unless ``key`` is over its budget."""
        if self.allow(key, now):
            self.logger.log(level, fmt, *args)
