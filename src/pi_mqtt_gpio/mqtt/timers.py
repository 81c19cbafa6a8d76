"""A deadline heap on the broker's clock (time is passed in; nothing here reads a clock)."""

from __future__ import annotations

import heapq
import itertools
from typing import Any

__all__ = ["Timers"]


class Timers:
    """Deadlines with a payload. Entries are never removed early: whoever pops one checks
    whether it still applies (lazy cancellation keeps every push O(log n))."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()

    def push(self, when: float, kind: str, ref: Any) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, ref))

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[tuple[str, Any]]:
        due: list[tuple[str, Any]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, kind, ref = heapq.heappop(heap)
            due.append((kind, ref))
        return due

    def __len__(self) -> int:
        return len(self._heap)
