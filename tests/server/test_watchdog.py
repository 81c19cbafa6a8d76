"""The loopback watchdog: the pure status with injected time, and end to end on simulated
pins (the output wired to the input), watched from a separate client on the health topic:
cutting the wire turns it ``degraded`` naming the lines within ``stale_s``, mending it
``ok`` again; devices may not use its lines."""

from __future__ import annotations

import json
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from pi_mqtt_gpio.server.config_loader import ConfigError, parse_config
from pi_mqtt_gpio.server.daemon import Daemon
from pi_mqtt_gpio.server.watchdog import LoopbackWatch
from tests.conftest import Client, wait_for
from tests.server.test_guards_e2e import run


def test_status_from_edges_with_injected_time() -> None:
    w = LoopbackWatch(stale_s=3.0)
    assert w.status(0.0) == "ok" and w.deadline() is None
    w.start(10.0)
    assert w.status(12.9) == "ok" and w.status(13.0) == "degraded"  # none since the start
    w.edge(12.0)
    assert w.deadline() == 15.0 and w.status(14.99) == "ok" and w.status(15.0) == "degraded"
    w.edge(20.0)
    assert w.status(20.0) == "ok" and w.edges == 2


@pytest.mark.parametrize(("extra", "message"), [
    ("watchdog: {out: 17, in: 17}", "out and in must be two different lines"),
    ("watchdog: {out: 17, in: 27, period_s: 2, stale_s: 1}", "stale_s must be longer"),
    ("watchdog: {out: 17, in: 27}\ndevices: {led: {type: LED, pin: 27}}",
     "devices.led.pin: GPIO27 is the watchdog's in line"),
])
def test_config_problems(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(extra)


def health(w: Client, predicate: Any, timeout: float = 5.0) -> tuple[dict[str, Any], float]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = w.get(end - time.monotonic())
        if m.topic.endswith("/system/health"):
            doc = json.loads(m.payload)
            if predicate(doc):
                return doc, time.monotonic()
    raise AssertionError("health never matched")


def test_a_cut_wire_degrades_the_health_and_mending_it_recovers() -> None:
    config = "watchdog: {out: 17, in: 27, period_s: 0.1, stale_s: 0.5}\n"

    def body(daemon: Daemon, port: int) -> dict[str, Any]:
        w = Client(port, mqtt.MQTTv5, client_id="watcher")
        w.connect()
        w.subscribe("gatekeeper/g/system/health", 1)
        try:
            first, _ = health(w, lambda d: d["watchdog"] is not None)
            assert first["status"] == "ok" and first["watchdog"]["status"] == "ok"
            assert daemon.watchdog is not None
            # the edges come back through the wire
            assert wait_for(lambda: daemon.watchdog.watch.edges >= 3, 10)
            out_pin = daemon.watchdog._out.pin
            in_pin = out_pin.input_pin
            cut = time.monotonic()
            out_pin.input_pin = None  # cut the wire
            bad, seen = health(w, lambda d: d["status"] == "degraded")
            detected = seen - cut
            out_pin.input_pin = in_pin  # mend it
            mended = time.monotonic()
            _good, back = health(w, lambda d: d["status"] == "ok")
            return {"bad": bad, "detected": detected, "recovered": back - mended}
        finally:
            w.close()

    got = run(config, body)
    print(f"watchdog: degraded {got['detected']:.2f} s after the cut (stale_s 0.5), "
          f"ok {got['recovered']:.2f} s after mending")
    assert got["bad"]["watchdog"]["status"] == "degraded"
    assert "no edge on GPIO27 (looped from GPIO17)" in got["bad"]["problems"][0]
    assert 0.4 <= got["detected"] <= 0.5 + 0.3
    assert got["recovered"] <= 0.3
