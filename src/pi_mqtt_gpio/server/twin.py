"""The digital twin: retained device states, the device catalogue, events with sequence
numbers, and the gatekeeper's status, all published through the in-process MQTT client.

It also keeps the twin current where gpiozero has no callback: inputs whose value drifts
(light, distance, ADCs) are sampled every ``publish_interval`` on the hardware worker,
sensors (``poll_state``) are read every ``interval`` and say themselves what to publish, and
outputs running a finite background activity (``blink(n=3)``) are read again when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from pi_mqtt_gpio.payloads import Catalogue, CatalogueEntry, DeviceTopics, State
from pi_mqtt_gpio.server.hardware import DeviceEvent, HardwareManager
from pi_mqtt_gpio.topics import Topics
from pi_mqtt_gpio.version import package_version

__all__ = ["Publish", "Twin", "utc_ts"]

log = logging.getLogger("pi_mqtt_gpio.twin")

Publish = Callable[[str, bytes, int, bool], None]  # topic, payload, qos, retain


_ts_second = -1
_ts_prefix = ""


def _same_state(published: State, state: State) -> bool:
    """Whether ``state`` says what ``published`` said (``ts`` aside)."""
    keys = state.keys() - {"ts"}
    return keys == published.keys() - {"ts"} and all(published[k] == state[k] for k in keys)


def utc_ts(t: float | None = None) -> str:
    """ISO 8601 UTC with milliseconds: ``2026-11-21T17:40:00.123Z``. The date-time part is
    formatted once per second (this runs for every state, event and audit entry)."""
    global _ts_second, _ts_prefix
    if t is None:
        t = time.time()
    second = int(t)
    if second != _ts_second:
        _ts_prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _ts_second = second
    return f"{_ts_prefix}{int((t - second) * 1000):03d}Z"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


class Twin:
    def __init__(self, topics: Topics, hw: HardwareManager, publish: Publish) -> None:
        self.topics = topics
        self.hw = hw
        self.publish = publish
        self.states: dict[str, State] = {}
        self.seq: dict[str, int] = dict.fromkeys(hw.adapters, 0)
        self._tasks: list[asyncio.Task[None]] = []
        self._refresh: dict[str, asyncio.TimerHandle] = {}
        self.on_change: Callable[[str], None] | None = None  # a device's state was published
        # Also told of every published state: (device, document, published again unchanged)
        self.listeners: list[Callable[[str, State, bool], None]] = []
        # "external": callers append their user name to command topics (fleet mode)
        self.broker_mode = "embedded"
        # Device -> who looks at its events first (a cover's endstops, a button's gestures);
        # True: consumed, not published as it is.
        self.intercept: dict[str, Callable[[DeviceEvent], bool]] = {}
        # Device -> who looks at its events after they were published (gestures, bindings).
        self.observe: dict[str, Callable[[DeviceEvent], None]] = {}

    # --- publishing -----------------------------------------------------------------------------
    def status(self, online: bool) -> None:
        self.publish(self.topics.status, b"online" if online else b"offline", 1, True)

    def catalogue(self) -> None:
        devices: list[CatalogueEntry] = []
        for name, adapter in self.hw.adapters.items():
            entry = cast(CatalogueEntry, adapter.catalogue())  # all but the topics
            topics: DeviceTopics = {
                "state": self.topics.device(name, "state"),
                "event": self.topics.device(name, "event"),
                "set": self.topics.device(name, "set"),
                "call": self.topics.device(name, "call"),
            }
            if "history" in entry["methods"]:  # a sensor's last hour (server/history.py)
                topics["history"] = self.topics.device(name, "history")
            entry["topics"] = topics
            entry["state_topic"] = topics["state"]
            devices.append(entry)
        doc: Catalogue = {"node_id": self.topics.node_id, "root": self.topics.root,
               "simulate": self.hw.simulate, "simulated": self.hw.simulate,
               "version": package_version(), "broker": self.broker_mode, "devices": devices}
        self.publish(self.topics.devices, dumps(doc), 1, True)

    @staticmethod
    def stamp(state: State, ts: float | None = None) -> State:
        """``state`` with its time stamp, as it is published."""
        doc = dict(state)
        doc["ts"] = utc_ts(ts)
        return doc

    def state(self, name: str, state: State, ts: float | None = None,
              doc: State | None = None, *, force: bool = False) -> State:
        """Publish ``state`` (retained) and remember it; returns what was published. A state
        equal to the last one published (time stamp aside) is not published again unless
        ``force``: one change, one message, whichever paths report it (a call's reply and
        the input edge it caused)."""
        old = self.states.get(name)
        if not force and old is not None and _same_state(old, state):
            return old
        if doc is None:
            doc = self.stamp(state, ts)
        self.states[name] = doc
        self.publish(self.topics.device(name, "state"), dumps(doc), 1, True)
        if self.on_change is not None:
            self.on_change(name)
        for listener in self.listeners:
            try:
                listener(name, doc, force)
            except Exception:
                log.exception("a listener of %s's state failed", name)
        return doc

    def notice(self, device: str, event: str, extra: State) -> None:
        """An event of the gatekeeper's own about a device (``lockout``, ``max_on``)."""
        self.seq[device] = seq = self.seq.get(device, 0) + 1
        doc = {"event": event, "seq": seq, "ts": utc_ts(), **extra}
        self.publish(self.topics.device(device, "event"), dumps(doc), 1, False)

    def event(self, ev: DeviceEvent) -> None:
        hook = self.intercept.get(ev.device)
        if hook is not None and hook(ev):
            return
        if ev.event is not None:
            self.seq[ev.device] = seq = self.seq.get(ev.device, 0) + 1
            doc = {"event": ev.event, "seq": seq, "ts": utc_ts(ev.ts), **ev.state}
            self.publish(self.topics.device(ev.device, "event"), dumps(doc), 1, False)
        self.state(ev.device, ev.state, ev.ts)
        observer = self.observe.get(ev.device)
        if observer is not None:
            observer(ev)

    # --- keeping it current ---------------------------------------------------------------------
    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._drain(), name="twin-events"))
        for name, adapter in self.hw.adapters.items():
            interval = getattr(adapter, "poll_interval", None)
            if interval:
                self._tasks.append(asyncio.create_task(self._poll(name, interval),
                                                       name=f"poll-{name}"))

    async def stop(self) -> None:
        for handle in self._refresh.values():
            handle.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        # Publish what the callbacks reported until the lines were released.
        while not self.hw.events.empty():
            self._publish_event(self.hw.events.get_nowait())

    async def _drain(self) -> None:
        """The one publisher task: hardware events, in the order the airlock received them."""
        events = self.hw.events
        while True:
            self._publish_event(await events.get())

    def _publish_event(self, ev: DeviceEvent) -> None:
        """One event; a failure (an intercept's, an observer's) is logged and the next one
        is published all the same."""
        try:
            self.event(ev)
        except Exception:
            log.exception("publishing %s of %s failed", ev.event, ev.device)

    async def _poll(self, name: str, interval: float) -> None:
        adapter = self.hw.adapters[name]
        delta = float(getattr(adapter, "poll_delta", 0.0))
        poll_state = getattr(adapter, "poll_state", None)  # a sensor decides for itself
        while True:
            await asyncio.sleep(interval)
            if poll_state is not None:
                try:
                    doc = await self.hw.submit(poll_state, force=True)
                except Exception as exc:
                    log.warning("reading %s failed: %s", name, exc)
                    continue
                if doc is not None:
                    self.state(name, doc, force=True)  # a change, or the heartbeat
                continue
            try:
                state = await self.hw.submit(adapter.state, force=True)
            except Exception as exc:
                log.warning("reading %s failed: %s", name, exc)
                continue
            last = self.states.get(name, {}).get("value")
            value = state.get("value")
            if (last is None or value is None or not isinstance(value, int | float)
                    or (abs(value - last) >= delta and value != last)):
                self.state(name, state)

    def refresh_later(self, name: str, seconds: float) -> None:
        """Read and publish ``name``'s state again after ``seconds`` (a blink has ended)."""
        old = self._refresh.pop(name, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._refresh[name] = loop.call_later(seconds + 0.05, self._do_refresh, name)

    def _do_refresh(self, name: str) -> None:
        self._refresh.pop(name, None)
        adapter = self.hw.adapters[name]
        try:
            future = self.hw.submit(adapter.state, force=True)
        except Exception:
            return
        future.add_done_callback(
            lambda f: self.state(name, f.result())
            if not f.cancelled() and f.exception() is None else None)
