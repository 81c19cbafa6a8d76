"""Covers, gestures and bindings end to end: the real daemon (in this process, so that the
MockFactory relay pins can be recorded change by change) on a real TCP port, commands from
paho clients, and a separate watcher client on ``#`` that sees the relays in every state
the cover publishes."""

from __future__ import annotations

import json
import queue
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from pi_mqtt_gpio.server.daemon import Daemon
from tests.conftest import Client, PinRecorder, broker_config, start_gatekeeper, v5_props
from tests.server.test_guards_e2e import run

UP, DOWN = 5, 6
COVER = """
devices:
  screen: {type: Cover, up: 5, down: 6, travel_time_up_s: 2.0, travel_time_down_s: 2.0,
           start_delay_up_s: 0.1, start_delay_down_s: 0.1, endstop_overrun_s: 0.2,
           direction_change_pause_s: 0.3, initial_position: 0, position_step: 10}
"""


def call(c: Client, device: str, request: dict[str, Any], timeout: float = 10.0
         ) -> dict[str, Any]:
    """An RPC from ``c`` (MQTT 5: Response Topic; 3.1.1: reply_to in the payload)."""
    reply_to = f"gatekeeper/g/reply/{c.client_id}/r"
    c.subscribe(reply_to, 1)
    topic = f"gatekeeper/g/device/{device}/call"
    if c.version == mqtt.MQTTv5:
        c.publish(topic, json.dumps(request), 1,
                  properties=v5_props(ResponseTopic=reply_to, CorrelationData=b"c1"))
    else:
        c.publish(topic, json.dumps({**request, "reply_to": reply_to,
                                     "correlation_id": "c1"}), 1)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = c.get(end - time.monotonic())
        if m.topic == reply_to:
            return dict(json.loads(m.payload))
    raise AssertionError("no reply")


def drain(w: Client) -> list[tuple[str, Any]]:
    out = []
    while True:
        try:
            m = w.messages.get_nowait()
        except queue.Empty:
            return out
        try:
            out.append((m.topic, json.loads(m.payload)))
        except ValueError:
            out.append((m.topic, m.payload.decode(errors="replace")))


def until(w: Client, done: Any, timeout: float = 6.0) -> list[tuple[str, Any]]:
    """What the watcher sees until ``done(topic, payload)``."""
    out: list[tuple[str, Any]] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = w.get(end - time.monotonic())
        try:
            payload = json.loads(m.payload)
        except ValueError:
            payload = m.payload.decode(errors="replace")
        out.append((m.topic, payload))
        if isinstance(payload, dict) and done(m.topic, payload):
            return out
    raise AssertionError(f"not seen within {timeout} s: {out[-5:]}")


def settled(w: Client, c: Client, device: str) -> list[tuple[str, Any]]:
    """What the watcher sees up to a sentinel after everything the daemon did before: a call
    from ``c`` on ``device`` is read by the event loop before the timers already due then run,
    runs on the hardware worker after the jobs queued before it, and is answered after; the
    watcher's own sentinel follows."""
    assert call(c, device, {"method": "state"})["ok"]
    sentinel = "gatekeeper/g/probe/sentinel"
    w.publish(sentinel, json.dumps({"sentinel": True}), 1)
    return until(w, lambda t, p: t == sentinel)[:-1]


def states(seen: list[tuple[str, Any]], device: str = "screen") -> list[dict[str, Any]]:
    return [p for t, p in seen if t == f"gatekeeper/g/device/{device}/state"]


def watcher(port: int) -> Client:
    w = Client(port, mqtt.MQTTv5, client_id="watcher")
    w.connect()
    w.subscribe("gatekeeper/g/#", 1)
    return w


def relays(daemon: Daemon) -> PinRecorder:
    adapter = daemon.hw.adapters["screen"]
    return PinRecorder([adapter.up.pin, adapter.down.pin])  # type: ignore[attr-defined]


@pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_two_second_travel_on_times_and_never_both_relays(version: int) -> None:
    def body(daemon: Daemon, port: int) -> dict[str, Any]:
        pins = relays(daemon)
        w = watcher(port)
        c = Client(port, version, client_id="caller")
        c.connect()
        try:
            opened = call(c, "screen", {"method": "open"})
            # it answers once the relay is on, not at the end of the travel ("open")
            assert opened["ok"] and opened["state"]["state"] == "opening"
            screen = "gatekeeper/g/device/screen/state"
            seen = until(w, lambda t, p: t == screen and p.get("state") == "open", 60)
            half = call(c, "screen", {"method": "set_position", "kwargs": {"position": 50}})
            reversal_start = time.monotonic()
            back = call(c, "screen", {"method": "set_position", "kwargs": {"position": 90}})
            took = time.monotonic() - reversal_start
            seen += until(w, lambda t, p: t == screen and p.get("position") == 90
                          and p.get("state") == "stopped", 60)
            return {"pins": pins, "seen": seen, "half": half, "back": back, "took": took}
        finally:
            c.close()
            w.close()

    got = run(COVER, body)
    pins: PinRecorder = got["pins"]
    assert pins.never_together(UP, DOWN)
    up, down = pins.on_times(UP), pins.on_times(DOWN)
    # open from 0: delay + travel + overrun; 100 -> 50: delay + half; 50 -> 90: delay + 40 %
    expected_up, expected_down = [0.1 + 2.0 + 0.2, 0.1 + 0.8], [0.1 + 1.0]
    errors = [a - b for a, b in zip(up + down, expected_up + expected_down, strict=True)]
    print(f"on-times up {up}, down {down}; errors {[round(e * 1000, 1) for e in errors]} ms")
    # Never shorter than the travel asks (a missing 0.1 s delay or 0.2 s overrun fails); a
    # loaded machine's timers only make a run late, and the cover counts the time it really ran.
    assert min(errors) > -0.030
    assert max(errors) < 0.5
    assert got["half"]["ok"] and got["half"]["result"] == {"position": 50}
    assert got["back"]["ok"] and got["back"]["state"]["position"] == 90
    seen = states(got["seen"])
    assert all(not (s["up"] and s["down"]) for s in seen)
    assert seen[-1]["position"] == 90 and seen[-1]["state"] == "stopped"
    opening = [s["position"] for s in seen if s["state"] == "opening" and s["target"] == 100]
    assert opening == sorted(opening) and len(opening) >= 8  # every 10 % step, in order
    assert any(s["state"] == "open" and s["calibrated"] for s in seen)


def test_a_stop_from_another_client_interrupts_set_position() -> None:
    def body(daemon: Daemon, port: int) -> dict[str, Any]:
        w = watcher(port)
        caller = Client(port, mqtt.MQTTv5, client_id="caller")
        other = Client(port, mqtt.MQTTv311, client_id="other")
        caller.connect()
        other.connect()
        try:
            replies: queue.Queue[dict[str, Any]] = queue.Queue()
            import threading

            threading.Thread(target=lambda: replies.put(call(
                caller, "screen", {"method": "set_position", "kwargs": {"position": 100}})),
                daemon=True).start()
            time.sleep(0.1 + 1.0)
            other.publish("gatekeeper/g/device/screen/set", "STOP", 1)
            reply = replies.get(timeout=5)
            time.sleep(0.1)
            return {"reply": reply, "seen": drain(w)}
        finally:
            caller.close()
            other.close()
            w.close()

    got = run(COVER, body)
    err = got["reply"]["error"]
    assert got["reply"]["ok"] is False and err["code"] == "BUSY"
    assert err["details"]["interrupted_by"] == "stop"
    assert 40 <= err["details"]["position"] <= 60
    events = [p for t, p in got["seen"] if t.endswith("/screen/event")]
    assert any(e["event"] == "stopped" for e in events)
    assert states(got["seen"])[-1]["state"] == "stopped"


def test_lease_expiry_while_moving_stops_the_cover() -> None:
    config = COVER.replace("initial_position: 0,", "initial_position: 0, lease_required: true,")
    config += "leases: {scope: device}\n"

    def body(daemon: Daemon, port: int) -> dict[str, Any]:
        pins = relays(daemon)
        w = watcher(port)
        alice = Client(port, mqtt.MQTTv5, client_id="alice")
        alice.connect()
        try:
            reply_to = "gatekeeper/g/reply/alice/lease"
            alice.subscribe(reply_to, 1)
            alice.publish("gatekeeper/g/lease/call", json.dumps(
                {"method": "acquire", "kwargs": {"devices": ["screen"], "ttl": 1.0}}), 1,
                properties=v5_props(ResponseTopic=reply_to, CorrelationData=b"l"))
            assert json.loads(alice.get().payload)["ok"]
            started = time.monotonic()
            reply = call(alice, "screen", {"method": "set_position", "kwargs": {"position": 100}})
            stopped_after = time.monotonic() - started
            time.sleep(0.1)
            return {"reply": reply, "after": stopped_after, "pins": pins, "seen": drain(w)}
        finally:
            alice.close()

    got = run(config, body)
    assert got["reply"]["error"]["details"]["interrupted_by"] == "safe_state"
    # the lease ended at 1 s (the reply says safe_state): no full 2.3 s travel
    assert got["after"] < 2.3 and got["pins"].on_times(UP)[0] < 2.3
    last = states(got["seen"])[-1]
    # moved, and stopped by 1 s of 2.3 s of travel (43 %, with some slack); how far it got
    # depends on how soon after the lease the call arrived (once 21 % on a busy machine)
    assert last["up"] == 0 and last["down"] == 0 and 0 < last["position"] <= 60
    audit = [p for t, p in got["seen"] if t.endswith("/audit")]
    assert any(a["method"] == "lost" and a["reason"] == "expired" for a in audit)


GESTURES = COVER + """
  wall:
    type: Button
    pin: 27
    bounce_time: 0.02
    gestures: {double_click_s: 0.3, long_press_s: 0.6}
    bindings:
      single: {device: screen, method: open}
      double: {device: screen, method: set_position, kwargs: {position: 80}}
      long_start: {device: screen, method: close}
      long_end: {device: screen, method: stop}
  locked_button:
    type: Button
    pin: 22
    bindings:
      pressed: {device: gate, method: 'on'}
  gate: {type: OutputDevice, pin: 23, lease_required: true}
"""


def on_worker(daemon: Daemon, fn: Any) -> None:
    """Run ``fn`` on the daemon's hardware worker (queued from its event loop), as a real
    edge would arrive."""
    loop = daemon.hw._loop
    assert loop is not None
    loop.call_soon_threadsafe(lambda: daemon.hw.submit(fn, force=True))


def press(daemon: Daemon, name: str, hold: float = 0.05, bounces: int = 0) -> None:
    """Press and release a button's mock pin (pulled up: low is pressed), with contact
    bounce on both edges when asked."""
    pin = daemon.hw.adapters[name].device.pin

    def edges(levels: list[bool]) -> None:  # one job on the worker: bounces 1 ms apart
        def drive() -> None:
            for level in levels:
                (pin.drive_high if level else pin.drive_low)()
                time.sleep(0.001)

        on_worker(daemon, drive)

    edges([*([False, True] * bounces), False])
    time.sleep(hold)
    edges([*([True, False] * bounces), True])


def test_double_click_moves_the_cover_to_the_bound_position() -> None:
    def body(daemon: Daemon, port: int) -> dict[str, Any]:
        w = watcher(port)
        presser = Client(port, mqtt.MQTTv5, client_id="presser")
        presser.connect()
        try:
            for _ in range(2):  # two clicks through the simulation methods, 60 ms apart
                assert call(presser, "wall", {"method": "sim_press"})["ok"]
                time.sleep(0.03)
                assert call(presser, "wall", {"method": "sim_release"})["ok"]
                time.sleep(0.03)
            seen = until(w, lambda t, p: t.endswith("/screen/state") and p["position"] == 80
                         and p["state"] == "stopped")
            time.sleep(0.4)  # past the double-click window: no single may follow
            return {"seen": seen + settled(w, presser, "wall")}
        finally:
            presser.close()
            w.close()

    got = run(GESTURES, body)
    gestures = [p["event"] for t, p in got["seen"] if t.endswith("/wall/event")
                and p["event"] in ("single", "double", "long_start", "long_end")]
    assert gestures == ["double"]
    assert states(got["seen"])[-1]["position"] == 80
    audit = [p for t, p in got["seen"] if t.endswith("/audit") and p["device"] == "screen"]
    assert audit and audit[0]["client_id"] == "local:wall" and audit[0]["source"] == "binding"
    assert audit[0]["method"] == "set_position" and audit[0]["ok"]


def test_bouncy_click_and_hold_give_one_gesture_each() -> None:
    def body(daemon: Daemon, port: int) -> dict[str, Any]:
        w = watcher(port)
        pin = daemon.hw.adapters["wall"].device.pin

        def wall_event(name: str) -> Any:
            return lambda topic, p: topic.endswith("/wall/event") and p["event"] == name

        try:
            press(daemon, "wall", hold=0.15, bounces=3)  # a click with bouncy contacts
            seen = until(w, wall_event("single"), timeout=30)
            on_worker(daemon, pin.drive_low)  # a hold: close while held, stop on release
            seen += until(w, wall_event("long_start"), timeout=30)
            on_worker(daemon, pin.drive_high)
            # (the stop waits for the down relay's spacing: 0.5 s after it went on)
            closing: list[bool] = []

            def stopped_after_closing(topic: str, p: dict[str, Any]) -> bool:
                if topic.endswith("/screen/state") and p["state"] == "closing":
                    closing.append(True)
                return bool(closing) and topic.endswith("/screen/state") \
                    and p["state"] == "stopped"

            seen += until(w, stopped_after_closing, timeout=30)
            return {"seen": seen + drain(w)}
        finally:
            w.close()

    # bounces 1 ms apart, within a 50 ms debounce even when a loaded machine stalls the
    # thread driving them for a few time slices
    got = run(GESTURES.replace("initial_position: 0", "initial_position: 50")
              .replace("bounce_time: 0.02", "bounce_time: 0.05"), body)
    # (a hold that a loaded machine stretched past the button's hold_time also says "held")
    wall = [p["event"] for t, p in got["seen"] if t.endswith("/wall/event")
            and p["event"] != "held"]
    assert wall == ["pressed", "released", "single", "pressed", "long_start", "released",
                    "long_end"]
    screen = states(got["seen"])
    assert any(s["state"] == "opening" for s in screen)  # single: open
    assert any(s["state"] == "closing" for s in screen)  # long_start: close
    assert screen[-1]["state"] == "stopped"  # long_end: stop


def test_a_refused_binding_is_audited_with_its_code() -> None:
    def body(daemon: Daemon, port: int) -> dict[str, Any]:
        w = watcher(port)
        c = Client(port, mqtt.MQTTv5, client_id="caller")
        c.connect()
        try:
            press(daemon, "locked_button")
            return {"seen": settled(w, c, "locked_button"),
                    "gate": daemon.hw.adapters["gate"].device.value}
        finally:
            c.close()
            w.close()

    got = run(GESTURES, body)
    audit = [p for t, p in got["seen"] if t.endswith("/audit") and p["device"] == "gate"]
    assert len(audit) == 1 and audit[0]["ok"] is False
    assert audit[0]["client_id"] == "local:locked_button"
    assert audit[0]["error"]["code"] == "LEASE_REQUIRED"
    assert got["gate"] == 0
    gate_states = states(got["seen"], "gate")
    assert all(s["value"] == 0 for s in gate_states)


def test_sigterm_while_moving_saves_the_position_and_a_restart_restores_it(tmp_path: Any
                                                                          ) -> None:
    state_file = tmp_path / "state.json"
    config = broker_config(
        node_id="g",
        persistence={"path": str(state_file), "autosave_s": 30},
        devices={"screen": {"type": "Cover", "up": 5, "down": 6, "travel_time_up_s": 2.0,
                            "travel_time_down_s": 2.0, "initial_position": 0}})
    gk = start_gatekeeper(tmp_path, config)
    try:
        c = Client(gk.port, mqtt.MQTTv5, client_id="mover")
        c.connect()
        c.publish("gatekeeper/g/device/screen/set", "OPEN", 1)
        time.sleep(1.0)
        c.close()
        assert gk.stop() == 0
    finally:
        if gk.alive():
            gk.stop()
    saved = json.loads(state_file.read_text())["covers"]["screen"]
    assert 35 <= saved["position"] <= 65 and saved["calibrated"] is False
    gk = start_gatekeeper(tmp_path, config)
    try:
        w = watcher(gk.port)
        try:
            m = w.get()
            while m.topic != "gatekeeper/g/device/screen/state":
                m = w.get()
            state = json.loads(m.payload)
            assert state["position"] == round(saved["position"]) and state["up"] == 0
            assert state["state"] == "stopped"
        finally:
            w.close()
    finally:
        assert gk.stop() == 0


ENDSTOPS = """
devices:
  screen: {type: Cover, up: 5, down: 6, travel_time_up_s: 1.0, travel_time_down_s: 1.0,
           endstop_overrun_s: 0.5, initial_position: 0,
           endstops: {open: 16, closed: 19, bounce_time: 0.01},
           learning: {enabled: true, alpha: 0.5, clamp_percent: 50}}
safety: {min_relay_interval_s: 0, min_command_interval_s: 0}
"""


def test_an_endstop_stops_the_relay_at_once_and_teaches_the_travel_time() -> None:
    def body(daemon: Daemon, port: int) -> dict[str, Any]:
        pins = relays(daemon)
        w = watcher(port)
        c = Client(port, mqtt.MQTTv5, client_id="caller")
        c.connect()
        adapter: Any = daemon.hw.adapters["screen"]
        closed_pin = adapter.endstop_inputs["closed"].pin
        open_pin = adapter.endstop_inputs["open"].pin
        try:
            # no endstop closes on the way down: the full time runs, endstop_missed
            assert call(c, "screen", {"method": "close"})["ok"]
            until(w, lambda t, p: t.endswith("/screen/event") and p["event"] == "endstop_missed")
            on_worker(daemon, closed_pin.drive_low)  # now it is at the bottom
            time.sleep(0.2)
            # a full travel up from the closed endstop, 0.8 s until the open one closes
            assert call(c, "screen", {"method": "open"})["ok"]
            time.sleep(0.05)
            on_worker(daemon, closed_pin.drive_high)
            time.sleep(0.75)
            switched = time.monotonic()
            on_worker(daemon, open_pin.drive_low)
            seen = until(w, lambda t, p: t.endswith("/screen/event") and p["event"] == "opened")
            return {"pins": pins, "seen": seen, "switched": switched}
        finally:
            c.close()
            w.close()

    got = run(ENDSTOPS, body)
    up = got["pins"].on_times(UP)
    assert len(up) == 1
    # The relay went off when the open endstop closed (the test's sleep before it is only
    # about 0.8 s on a loaded machine), not after the 1.0 s travel and its 0.5 s overrun.
    went_on = next(t for t, line, level in got["pins"].log if line == UP and level)
    travelled = got["switched"] - went_on
    print(f"up relay on {up[0]:.3f} s, endstop closed after {travelled:.3f} s")
    assert travelled <= up[0] < travelled + 0.5
    last = states(got["seen"])[-1]
    assert last["position"] == 100 and last["calibrated"] and last["up"] == 0
    # learned: 1.0 + 0.5 * (measured - 1.0), about 0.9 (the 10 ms debounce adds a little)
    assert last["travel_time_up_s"] == pytest.approx(1.0 + 0.5 * (up[0] - 1.0), abs=0.03)
    assert last["travel_time_down_s"] == 1.0
