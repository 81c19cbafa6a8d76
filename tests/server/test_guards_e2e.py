"""The safety guards end to end: the real daemon (in this process, so that the MockFactory
pins' histories with their times can be read) on a real TCP port, commands from paho
clients, refusals watched on the audit topic from a separate client."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from pi_mqtt_gpio.server.config_loader import parse_config
from pi_mqtt_gpio.server.daemon import Daemon
from tests.conftest import Client, v5_props, wait_for

BASE = """
node_id: g
broker: {listeners: [{type: tcp, host: 127.0.0.1, port: 0}]}
auth: {allow_anonymous: true, anonymous_role: admin}
"""


def run(config: str, body: Callable[[Daemon, int], Any]) -> Any:
    async def main() -> Any:
        daemon = Daemon(parse_config(BASE + config), simulate=True)
        await daemon.start()
        try:
            return await asyncio.to_thread(body, daemon, daemon.server.port("tcp"))
        finally:
            await daemon.stop()

    return asyncio.run(main())


def edges(daemon: Daemon, device: str) -> list[tuple[float, bool]]:
    """(seconds since the previous change, new level) for every change of the device's pin."""
    pin = daemon.hw.adapters[device].device.pin
    return [(s.timestamp, bool(s.state)) for s in list(pin.states)[1:]]


def test_ten_toggles_in_20_ms_are_spaced_half_a_second() -> None:
    config = """
safety: {min_relay_interval_s: 0.5, min_command_interval_s: 0, flap_lockout_s: 0}
devices: {relay: {type: OutputDevice, pin: 22}}
"""

    def body(daemon: Daemon, port: int) -> list[tuple[float, bool]]:
        c = Client(port, mqtt.MQTTv5, client_id="toggler")
        c.connect()
        try:
            start = time.monotonic()
            for _ in range(10):
                c.publish("gatekeeper/g/device/relay/set", "TOGGLE", 1)
            assert time.monotonic() - start < 0.5
            assert wait_for(lambda: len(edges(daemon, "relay")) >= 10, 8)
            time.sleep(0.6)
            return edges(daemon, "relay")
        finally:
            c.close()

    got = run(config, body)
    gaps = [gap for gap, _level in got[1:]]
    print(f"10 edges, smallest gap {min(gaps):.4f} s")
    assert len(got) == 10  # none dropped
    assert [level for _gap, level in got] == [True, False] * 5
    assert min(gaps) >= 0.5


def test_flapping_relay_locks_out_and_recovers() -> None:
    config = """
safety: {min_relay_interval_s: 0, min_command_interval_s: 0, flap_window_s: 10,
         flap_max_edges: 4, flap_lockout_s: 1.5}
devices: {relay: {type: OutputDevice, pin: 22}}
"""

    def body(daemon: Daemon, port: int) -> None:
        watcher = Client(port, mqtt.MQTTv5, client_id="watcher")
        watcher.connect()
        watcher.subscribe("gatekeeper/g/audit", 0)
        watcher.subscribe("gatekeeper/g/device/relay/#", 0)
        caller = Client(port, mqtt.MQTTv5, client_id="caller")
        caller.connect()
        caller.subscribe("gatekeeper/g/reply/caller/#", 1)
        try:
            def call(method: str) -> dict[str, Any]:
                caller.publish("gatekeeper/g/device/relay/call", json.dumps({"method": method}),
                               1, properties=v5_props(ResponseTopic="gatekeeper/g/reply/caller/r",
                                                      CorrelationData=b"1"))
                return dict(json.loads(caller.get(5).payload))

            for method in ("on", "off", "on", "off"):
                assert call(method)["ok"]
            refused = call("on")  # the fifth change within 10 s
            assert refused["error"]["code"] == "SAFETY_LOCKOUT"
            assert 1.4 < refused["error"]["retry_after"] <= 1.5
            assert call("on")["error"]["code"] == "SAFETY_LOCKOUT"
            assert call("off")["ok"]  # switching off is always allowed
            seen = []
            end = time.monotonic() + 1
            while time.monotonic() < end:
                try:
                    seen.append(watcher.get(0.2))
                except Exception:
                    pass
            docs = [(m.topic, json.loads(m.payload)) for m in seen]
            assert any(t.endswith("/event") and d["event"] == "lockout" for t, d in docs)
            assert any(t.endswith("/state") and "lockout_until" in d for t, d in docs)
            assert any(t.endswith("/audit") and d.get("error", {}).get("code") ==
                       "SAFETY_LOCKOUT" for t, d in docs)
            time.sleep(1.0)  # the lockout (1.5 s) is over
            assert call("on")["ok"]
            assert daemon.hw.adapters["relay"].device.value == 1
        finally:
            watcher.close()
            caller.close()

    run(config, body)


def test_lockout_cleared_with_the_manage_right() -> None:
    config = """
safety: {min_relay_interval_s: 0, min_command_interval_s: 0, flap_max_edges: 1,
         flap_lockout_s: 60}
devices: {relay: {type: OutputDevice, pin: 22}}
"""

    def body(daemon: Daemon, port: int) -> None:
        c = Client(port, mqtt.MQTTv5, client_id="admin")
        c.connect()
        c.subscribe("gatekeeper/g/reply/admin/#", 1)
        try:
            def call(method: str) -> dict[str, Any]:
                c.publish("gatekeeper/g/device/relay/call", json.dumps({"method": method}), 1,
                          properties=v5_props(ResponseTopic="gatekeeper/g/reply/admin/r",
                                              CorrelationData=b"1"))
                return dict(json.loads(c.get(5).payload))

            assert call("on")["ok"] and call("off")["ok"]
            assert call("on")["error"]["code"] == "SAFETY_LOCKOUT"
            assert call("clear_lockout")["result"] == {"cleared": True}
            assert call("on")["ok"]
        finally:
            c.close()

    run(config, body)


def _high_intervals(pin: Any) -> list[tuple[float, float]]:
    """When the mock pin was high, in absolute monotonic time, from its change history
    (``states`` holds the time since the previous change; ``_last_change`` anchors it)."""
    changes = list(pin.states)
    times = [0.0] * len(changes)
    t = pin._last_change
    for i in range(len(changes) - 1, -1, -1):
        times[i] = t
        t -= changes[i].timestamp
    out, start = [], None
    for when, change in zip(times, changes, strict=True):
        if change.state and start is None:
            start = when
        elif not change.state and start is not None:
            out.append((start, when))
            start = None
    if start is not None:
        out.append((start, float("inf")))
    return out


def test_racing_writers_never_make_both_interlocked_pumps_high() -> None:
    """Two clients switch on the two pumps of an interlock at the same moment, 200 times;
    the pins' own histories (exact times of every change) never overlap."""
    config = """
safety: {min_relay_interval_s: 0, min_command_interval_s: 0, flap_lockout_s: 0}
interlocks: [[fill, drain]]
devices:
  fill:  {type: OutputDevice, pin: 5}
  drain: {type: OutputDevice, pin: 6}
"""

    def body(daemon: Daemon, port: int) -> tuple[int, list[tuple[float, float]],
                                                 list[tuple[float, float]]]:
        fill = daemon.hw.adapters["fill"].device.pin
        drain = daemon.hw.adapters["drain"].device.pin
        a = Client(port, mqtt.MQTTv5, client_id="a")
        b = Client(port, mqtt.MQTTv5, client_id="b")
        a.connect()
        b.connect()
        wins = 0
        try:
            for _ in range(200):
                ta = threading.Thread(target=a.publish,
                                      args=("gatekeeper/g/device/fill/set", "ON", 1))
                tb = threading.Thread(target=b.publish,
                                      args=("gatekeeper/g/device/drain/set", "ON", 1))
                ta.start()
                tb.start()
                ta.join()
                tb.join()
                assert wait_for(lambda: bool(fill.state) or bool(drain.state), 2)
                wins += 1
                for c, dev in ((a, "fill"), (b, "drain")):
                    c.publish(f"gatekeeper/g/device/{dev}/set", "OFF", 1)
                assert wait_for(lambda: not fill.state and not drain.state, 2)
            return wins, _high_intervals(fill), _high_intervals(drain)
        finally:
            a.close()
            b.close()

    wins, fill_high, drain_high = run(config, body)
    assert wins == 200 and len(fill_high) + len(drain_high) == 200  # one pump each round
    overlaps = [(f, d) for f in fill_high for d in drain_high if f[0] < d[1] and d[0] < f[1]]
    assert overlaps == [], overlaps[:3]


def test_max_on_drives_the_output_safe_and_says_so() -> None:
    config = """
safety: {min_relay_interval_s: 0, min_command_interval_s: 0}
devices: {heater: {type: OutputDevice, pin: 13, safety: {max_on_s: 0.5}}}
"""

    def body(daemon: Daemon, port: int) -> float:
        watcher = Client(port, mqtt.MQTTv5, client_id="w")
        watcher.connect()
        watcher.subscribe("gatekeeper/g/device/heater/event", 0)
        try:
            start = time.monotonic()  # before the ON: it cannot be on longer than this
            watcher.publish("gatekeeper/g/device/heater/set", "ON", 1)
            pin = daemon.hw.adapters["heater"].device.pin
            assert wait_for(lambda: pin.state, 10)
            assert wait_for(lambda: not pin.state, 10)
            took = time.monotonic() - start
            event = json.loads(watcher.get(10).payload)
            assert event["event"] == "max_on"  # its timer switched it off, nothing else
            return took
        finally:
            watcher.close()

    took = run(config, body)
    assert took >= 0.5  # not before max_on_s (how much later depends on the machine's load)
