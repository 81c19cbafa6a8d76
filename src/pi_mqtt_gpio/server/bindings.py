"""Local bindings: a button's gestures and events act on devices inside the gatekeeper,
network or not.

- ``ButtonGestures`` feeds a button's debounced presses and releases (gpiozero's
  ``bounce_time`` has already applied) to its ``GestureRecognizer`` on the event loop, with
  the time each edge was seen, ticks it when a window closes, and publishes ``single``,
  ``double``, ``long_start`` and ``long_end`` on the button's event topic.
- ``Bindings`` turns a button's gesture or event into its configured action. A device
  action goes through the same path as an RPC call (validation, safety, interlocks, leases,
  audit) as principal ``local:<button>``; so does a ``publish`` to one of this node's own
  ``set``/``call`` topics. Any other ``publish`` goes out through the gatekeeper's own
  client, or waits in ``PublishQueue`` while the broker link is down.
- ``PublishQueue``: at most ``max`` actions, each dropped after ``max_age_s``; time passed in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pi_mqtt_gpio.server.devices.actions import (
    BUTTON_EVENTS,
    GESTURES,
    BindingConfig,
    GesturesConfig,
    PublishConfig,
)
from pi_mqtt_gpio.server.devices.gestures import GestureRecognizer
from pi_mqtt_gpio.server.sections import BindingsQueueConfig

__all__ = [
    "BUTTON_EVENTS",
    "GESTURES",
    "BindingConfig",
    "Bindings",
    "BindingsQueueConfig",
    "ButtonGestures",
    "GesturesConfig",
    "PublishConfig",
    "PublishQueue",
]

log = logging.getLogger("pi_mqtt_gpio.bindings")

@dataclass(frozen=True, slots=True)
class QueuedPublish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    at: float  # when the binding fired


class PublishQueue:
    """Publishes that wait for the broker link: oldest dropped first when full, each
    dropped when older than ``max_age_s``. Pure: the caller passes the time."""

    def __init__(self, *, max_items: int = 200, max_age_s: float = 30.0) -> None:
        self.max_items = max_items
        self.max_age_s = max_age_s
        self._items: deque[QueuedPublish] = deque()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: QueuedPublish, now: float) -> None:
        self._expire(now)
        if len(self._items) >= self.max_items:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)

    def take(self, now: float) -> list[QueuedPublish]:
        """Everything still young enough, oldest first (the queue is then empty)."""
        self._expire(now)
        out = list(self._items)
        self._items.clear()
        return out

    def _expire(self, now: float) -> None:
        while self._items and now - self._items[0].at > self.max_age_s:
            self._items.popleft()
            self.dropped += 1


class ButtonGestures:
    """One button's gesture recognizer on the event loop."""

    def __init__(self, button: str, config: GesturesConfig, *,
                 emit: Callable[[str, str], None],
                 clock: Callable[[], float] | None = None,
                 call_at: Callable[..., Any] | None = None) -> None:
        self.button = button
        self.recognizer = GestureRecognizer(double_click_s=config.double_click_s,
                                            long_press_s=config.long_press_s)
        self.emit = emit  # (button, gesture)
        self._clock = clock
        self._call_at = call_at
        self._timer: Any = None

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def edge(self, pressed: bool, at: float) -> None:
        """A debounced press or release, seen at ``at`` (this object's clock)."""
        recognizer = self.recognizer
        gestures = recognizer.press(at) if pressed else recognizer.release(at)
        self._fire(gestures)
        self._arm()

    def _tick(self) -> None:
        self._timer = None
        self._fire(self.recognizer.tick(self._now()))
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.recognizer.next_deadline()
        if deadline is None:
            return
        if self._call_at is not None:
            self._timer = self._call_at(deadline, self._tick)
        else:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._tick)

    def _fire(self, gestures: list[str]) -> None:
        for gesture in gestures:
            self.emit(self.button, gesture)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


LocalCall = Callable[[str, str, str, list[Any], dict[str, Any]], None]
LocalSet = Callable[[str, str, str, bytes], bool]  # (principal, topic, ...) -> handled
Send = Callable[[str, bytes, int, bool], None]


class Bindings:
    """What each button's gestures and events do."""

    def __init__(self, bindings: dict[str, dict[str, BindingConfig]], *,
                 call: LocalCall, local_publish: LocalSet, send: Send,
                 link_up: Callable[[], bool] = lambda: True,
                 queue: PublishQueue | None = None) -> None:
        self.bindings = bindings  # button -> trigger -> action
        self.call = call  # (principal, device, method, args, kwargs): the RPC path
        self.local_publish = local_publish  # a publish to this node's own commands
        self.send = send
        self.link_up = link_up
        self.queue = queue or PublishQueue()
        self.fired = 0

    def has(self, button: str) -> bool:
        return button in self.bindings

    def trigger(self, button: str, trigger: str) -> None:
        """``button`` did ``trigger`` (a gesture or an event): run its binding, if any."""
        action = self.bindings.get(button, {}).get(trigger)
        if action is None:
            return
        self.fired += 1
        principal = f"local:{button}"
        if action.device is not None and action.method is not None:
            self.call(principal, action.device, action.method, list(action.args or []),
                      dict(action.kwargs or {}))
            return
        publish = action.publish
        assert publish is not None
        payload = publish.payload.encode()
        if self.local_publish(principal, publish.topic, trigger, payload):
            return
        now = time.monotonic()
        if self.link_up():
            self.send(publish.topic, payload, publish.qos, publish.retain)
        else:
            log.info("broker link down: %s %s publish to %s queued", button, trigger,
                     publish.topic)
            self.queue.put(QueuedPublish(publish.topic, payload, publish.qos,
                                         publish.retain, now), now)

    def link_restored(self) -> int:
        """The broker link is back: send what waited (and is young enough)."""
        items = self.queue.take(time.monotonic())
        for item in items:
            self.send(item.topic, item.payload, item.qos, item.retain)
        return len(items)
