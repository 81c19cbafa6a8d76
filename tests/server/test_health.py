"""The node's health on its own: which problems make it ``degraded`` or ``failed`` and what
it says, through a worker without a thread (tests/server/sync_worker.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pi_mqtt_gpio.server.hardware import DeviceEvent
from pi_mqtt_gpio.server.health import EXPANDER_DEVICE, Health
from pi_mqtt_gpio.server.twin import Twin
from pi_mqtt_gpio.topics import Topics
from tests.server.sync_worker import SyncWorker

DEVICES = """\
  led: {type: LED, pin: 17}
  relay: {type: OutputDevice, pin: 18}
"""
TOPICS = Topics("gk", "n")


class _Watchdog:
    def __init__(self, problem: str | None) -> None:
        self._problem = problem

    def problem(self) -> str | None:
        return self._problem

    def describe(self) -> dict[str, Any]:
        return {"status": "stale" if self._problem else "ok"}


def run(test: Callable[[Health, SyncWorker, list[tuple[str, Any]]], Awaitable[None]]) -> None:
    async def main() -> None:
        hw = SyncWorker.from_yaml(DEVICES)
        out: list[tuple[str, Any]] = []

        def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
            out.append((topic, json.loads(payload)))

        twin = Twin(TOPICS, hw, publish)
        health = Health(TOPICS, hw, twin, {}, simulate=True, simulated_by_config=False)
        await hw.start()
        try:
            await test(health, hw, out)
        finally:
            await hw.stop()

    asyncio.run(main())


async def _doc(health: Health, out: list[tuple[str, Any]]) -> dict[str, Any]:
    out.clear()
    await health.publish()
    ((topic, doc),) = out
    assert topic == TOPICS.health
    result: dict[str, Any] = doc
    return result


def test_ok() -> None:
    async def test(health: Health, hw: SyncWorker, out: list[tuple[str, Any]]) -> None:
        doc = await _doc(health, out)
        assert (doc["status"], doc["problems"]) == ("ok", [])
        assert doc["gpio"]["chip"] == "mock" and doc["simulated"] is True
        assert doc["watchdog"] is None and "broker_acl" not in doc

    run(test)


def test_problems_in_their_order_make_it_degraded() -> None:
    async def test(health: Health, hw: SyncWorker, out: list[tuple[str, Any]]) -> None:
        health.expander_problems["io1"] = "expander io1 does not answer"
        health.sensor_problems["temp"] = "sensor temp: not answering"
        health.watchdog = _Watchdog("watchdog: no edge")  # type: ignore[assignment]
        health.broker_acl = lambda: ("failed", "guest may publish")
        hw.events_dropped = 3  # a degraded node does not also say this
        doc = await _doc(health, out)
        assert doc["status"] == "degraded"
        assert doc["problems"] == ["expander io1 does not answer", "sensor temp: not answering",
                                   "watchdog: no edge",
                                   "every command is refused: guest may publish"]
        assert doc["broker_acl"] == {"probe": "failed", "reason": "guest may publish"}
        assert doc["watchdog"] == {"status": "stale"}

    run(test)


@pytest.mark.parametrize(("dropped", "pending", "problem"), [
    (5, 0, "5 input events dropped"),
    (0, 129, "129 hardware commands queued"),
    (5, 129, "5 input events dropped"),  # one of them is said
])
def test_load_makes_an_otherwise_healthy_node_degraded(dropped: int, pending: int,
                                                       problem: str) -> None:
    async def test(health: Health, hw: SyncWorker, out: list[tuple[str, Any]]) -> None:
        hw.events_dropped, hw._pending = dropped, pending
        doc = await _doc(health, out)
        assert (doc["status"], doc["problems"]) == ("degraded", [problem])
        assert (doc["events_dropped"], doc["commands_queued"]) == (dropped, pending)

    run(test)


def test_a_broker_acl_not_checked_yet_is_no_problem() -> None:
    async def test(health: Health, hw: SyncWorker, out: list[tuple[str, Any]]) -> None:
        health.broker_acl = lambda: ("pending", None)
        doc = await _doc(health, out)
        assert doc["status"] == "ok" and doc["broker_acl"] == {"probe": "pending",
                                                               "reason": None}

    run(test)


def test_the_worker_gone_or_its_inventory_failing() -> None:
    async def test(health: Health, hw: SyncWorker, out: list[tuple[str, Any]]) -> None:
        def broken() -> dict[str, Any]:
            raise OSError("no chip")

        hw.inventory = broken  # type: ignore[method-assign]
        health.sensor_problems["temp"] = "sensor temp: not answering"
        doc = await _doc(health, out)
        assert doc["status"] == "degraded" and doc["gpio"] == {"error": "OSError: no chip"}
        assert doc["problems"] == ["GPIO inventory: OSError: no chip",
                                   "sensor temp: not answering"]
        hw.accepting = False  # the worker is gone
        doc = await _doc(health, out)
        assert doc["status"] == "failed" and doc["gpio"] == {}
        assert doc["problems"] == ["hardware worker not running", "sensor temp: not answering"]

    run(test)


def test_an_expander_that_stops_answering_makes_its_devices_unavailable() -> None:
    async def test(health: Health, hw: SyncWorker, out: list[tuple[str, Any]]) -> None:
        health.devices = {"relay": _Lines(["io1:3"]), "led": _Lines([17])}
        health.twin.state("relay", {"value": 1})
        out.clear()
        health.expander_event(DeviceEvent(EXPANDER_DEVICE, "io1", {"problem": "gone"}, 0.0))
        relay = [doc for topic, doc in out if topic == TOPICS.device("relay", "state")]
        assert relay and relay[0]["available"] is False and relay[0]["error"] == "gone"
        assert relay[0]["value"] == 1
        assert not [t for t, _d in out if t == TOPICS.device("led", "state")]
        assert health.expander_problems == {"io1": "gone"}
        health.expander_event(DeviceEvent(EXPANDER_DEVICE, "io1", {"problem": None}, 0.0))
        assert health.expander_problems == {}

    run(test)


class _Lines:
    def __init__(self, lines: list[int | str]) -> None:
        self._lines = lines

    def lines(self) -> list[tuple[str, int | str, bool]]:
        return [("pin", line, False) for line in self._lines]
