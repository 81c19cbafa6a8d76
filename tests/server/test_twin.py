"""The twin on its own: what it publishes (retained states, events with sequence numbers,
the catalogue, the status) and how it keeps current (the event queue, polled devices, a
refresh after a blink), through a worker without a thread (tests/server/sync_worker.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pi_mqtt_gpio.payloads import Catalogue
from pi_mqtt_gpio.server.hardware import DeviceEvent
from pi_mqtt_gpio.server.twin import Twin, utc_ts
from pi_mqtt_gpio.topics import Topics
from tests.payload_shape import conforms
from tests.server.sync_worker import SyncWorker, settle

DEVICES = """\
  led: {type: LED, pin: 17}
  button: {type: Button, pin: 4}
"""
TOPICS = Topics("gk", "n")

Published = list[tuple[str, Any, int, bool]]  # topic, decoded payload, qos, retain


def run(test: Callable[[Twin, SyncWorker, Published], Awaitable[None]]) -> None:
    async def main() -> None:
        hw = SyncWorker.from_yaml(DEVICES)
        out: Published = []

        def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
            try:
                doc: Any = json.loads(payload)
            except ValueError:
                doc = payload
            out.append((topic, doc, qos, retain))

        twin = Twin(TOPICS, hw, publish)
        await hw.start()
        try:
            await test(twin, hw, out)
        finally:
            await twin.stop()
            await hw.stop()

    asyncio.run(main())


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


def state_topic(name: str) -> str:
    return TOPICS.device(name, "state")


def test_a_state_is_published_once_per_change() -> None:
    async def test(twin: Twin, hw: SyncWorker, out: Published) -> None:
        changed: list[str] = []
        heard: list[tuple[str, bool]] = []
        twin.on_change = changed.append
        twin.listeners.append(lambda name, doc, again: heard.append((name, again)))
        first = twin.state("led", {"value": 0})
        assert out == [(state_topic("led"), first, 1, True)] and "ts" in first
        assert twin.state("led", {"value": 0}) is first  # the same: not again
        assert len(out) == 1
        twin.state("led", {"value": 0}, force=True)  # unless forced
        twin.state("led", {"value": 1})
        assert [doc["value"] for _t, doc, _q, _r in out] == [0, 0, 1]
        assert changed == ["led"] * 3
        assert heard == [("led", False), ("led", True), ("led", False)]
        assert twin.states["led"]["value"] == 1

    run(test)


def test_a_failing_listener_does_not_stop_the_others() -> None:
    async def test(twin: Twin, hw: SyncWorker, out: Published) -> None:
        heard: list[str] = []

        def broken(name: str, doc: dict[str, Any], again: bool) -> None:
            raise RuntimeError("boom")

        twin.listeners += [broken, lambda name, doc, again: heard.append(name)]
        twin.state("led", {"value": 1})
        assert heard == ["led"] and len(out) == 1

    run(test)


def test_a_given_document_and_time_stamp_are_published_as_they_are() -> None:
    async def test(twin: Twin, hw: SyncWorker, out: Published) -> None:
        doc = twin.stamp({"value": 1}, 0.0)
        assert doc == {"value": 1, "ts": "1970-01-01T00:00:00.000Z"}
        assert twin.state("led", {"value": 1}, doc=doc) is doc
        twin.state("button", {"value": 0}, ts=1.5)
        assert out[-1][1]["ts"] == utc_ts(1.5) == "1970-01-01T00:00:01.500Z"

    run(test)


def test_events_are_numbered_per_device_and_carry_the_state() -> None:
    async def test(twin: Twin, hw: SyncWorker, out: Published) -> None:
        twin.event(DeviceEvent("button", "pressed", {"value": 1}, 0.0))
        twin.notice("button", "lockout", {"until": "x"})
        twin.notice("led", "max_on", {})
        twin.event(DeviceEvent("button", None, {"value": 0}, 0.0))  # a state, no event
        events = [(t, d) for t, d, _q, retain in out if not retain]
        assert [(t.rsplit("/", 2)[1], d["event"], d["seq"]) for t, d in events] == [
            ("button", "pressed", 1), ("button", "lockout", 2), ("led", "max_on", 1)]
        assert events[0][1]["value"] == 1 and events[1][1]["until"] == "x"
        assert [d["value"] for t, d, _q, _r in out if t == state_topic("button")] == [1, 0]

    run(test)


def test_intercepted_events_are_not_published_and_observers_see_the_rest() -> None:
    async def test(twin: Twin, hw: SyncWorker, out: Published) -> None:
        seen: list[str | None] = []
        twin.intercept["button"] = lambda ev: ev.event == "held"
        twin.observe["button"] = lambda ev: seen.append(ev.event)
        twin.event(DeviceEvent("button", "held", {"value": 1}, 0.0))
        assert out == [] and seen == []  # consumed: neither published nor observed
        twin.event(DeviceEvent("button", "pressed", {"value": 1}, 0.0))
        assert seen == ["pressed"] and len(out) == 2

    run(test)


def test_catalogue_and_status() -> None:
    async def test(twin: Twin, hw: SyncWorker, out: Published) -> None:
        twin.catalogue()
        twin.status(True)
        twin.status(False)
        (topic, doc, qos, retain), online, offline = out
        assert (topic, qos, retain) == (TOPICS.devices, 1, True)
        assert doc["node_id"] == "n" and doc["root"] == "gk/n" and doc["simulated"] is True
        assert doc["broker"] == "embedded"
        led = next(d for d in doc["devices"] if d["name"] == "led")
        assert led["topics"]["call"] == TOPICS.device("led", "call")
        assert led["state_topic"] == state_topic("led") and "history" not in led["topics"]
        assert online == (TOPICS.status, b"online", 1, True)
        assert offline == (TOPICS.status, b"offline", 1, True)

    run(test)


def test_hardware_events_are_published_in_order_and_the_rest_at_stop() -> None:
    async def test(twin: Twin, hw: SyncWorker, out: Published) -> None:
        twin.start()
        hw.airlock("button", "pressed", {"value": 1})
        hw.airlock("button", "released", {"value": 0})
        await until(lambda: len(out) == 4)
        assert [d.get("event") for _t, d, _q, _r in out] == ["pressed", None, "released", None]
        await twin.stop()
        hw.events.put_nowait(DeviceEvent("button", "pressed", {"value": 1}, 0.0))
        await twin.stop()  # what the callbacks reported until the lines were released
        assert out[-2][1]["event"] == "pressed"

    run(test)


def test_a_failing_intercept_does_not_stop_the_drain_at_stop() -> None:
    async def test(twin: Twin, hw: SyncWorker, out: Published) -> None:
        def broken(ev: DeviceEvent) -> bool:
            raise RuntimeError("boom")

        twin.intercept["led"] = broken
        hw.events.put_nowait(DeviceEvent("led", None, {"value": 1}, 0.0))
        hw.events.put_nowait(DeviceEvent("button", "pressed", {"value": 1}, 0.0))
        await twin.stop()
        assert [t for t, _d, _q, retain in out if not retain] == [TOPICS.device("button",
                                                                                "event")]

    run(test)


class _Polled:
    """A device whose state is sampled (like a light sensor) or read by itself (a sensor's
    ``poll_state``)."""

    kind = "input"
    device = None

    def __init__(self, name: str, values: list[Any], *, delta: float = 0.0,
                 sensor: bool = False) -> None:
        self.name = name
        self.values = values
        self.poll_interval = 0.001
        self.poll_delta = delta
        if sensor:
            self.poll_state = self._next_doc

    def state(self) -> dict[str, Any]:
        value = self.values.pop(0) if len(self.values) > 1 else self.values[0]
        if isinstance(value, Exception):
            raise value
        return {"value": value}

    def safe_active(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def _next_doc(self) -> dict[str, Any] | None:
        value = self.values.pop(0) if len(self.values) > 1 else self.values[0]
        return None if value is None else {"value": value}


def test_a_sampled_value_is_published_when_it_moved_by_its_delta() -> None:
    async def test(twin: Twin, hw: SyncWorker, out: Published) -> None:
        hw.adapters["light"] = _Polled("light", [0.5, 0.51, OSError("gone"), 0.6, 0.6, 0.2],
                                       delta=0.05)  # type: ignore[assignment]
        twin.start()
        await until(lambda: len(out) == 3)
        assert [d["value"] for _t, d, _q, _r in out] == [0.5, 0.6, 0.2]  # 0.51: too little

    run(test)


def test_a_sensor_says_itself_what_to_publish() -> None:
    async def test(twin: Twin, hw: SyncWorker, out: Published) -> None:
        hw.adapters["temp"] = _Polled("temp", [20, None, 20, None, 21],
                                      sensor=True)  # type: ignore[assignment]
        twin.start()
        await until(lambda: len(out) >= 3)
        # None: nothing this time; a document: published even when unchanged (its heartbeat)
        assert [d["value"] for _t, d, _q, _r in out[:3]] == [20, 20, 21]

    run(test)


def test_refresh_later_reads_the_state_again_once() -> None:
    async def test(twin: Twin, hw: SyncWorker, out: Published) -> None:
        twin.state("led", {"value": 1})
        twin.refresh_later("led", 10.0)
        twin.refresh_later("led", 0.0)  # replaces the first
        await until(lambda: len(out) == 2)
        assert out[-1][1]["value"] == 0 and hw.ran.count("state") == 1
        await asyncio.sleep(0)
        await settle()
        assert len(out) == 2

    run(test)


def test_the_catalogue_has_the_shape_of_the_payload_types() -> None:
    async def test(twin: Twin, hw: SyncWorker, out: Published) -> None:
        twin.catalogue()
        (topic, doc, _qos, _retain), = out
        assert topic == TOPICS.devices
        conforms(doc, Catalogue)
        assert [d["name"] for d in doc["devices"]] == ["led", "button"]
        wrong = {**doc, "devices": [{**doc["devices"][0], "kind": 1}]}
        with pytest.raises(AssertionError, match="kind"):
            conforms(wrong, Catalogue)

    run(test)
