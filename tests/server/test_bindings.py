"""Bindings: their config checks, the queue for publishes while the broker link is down,
and the gesture driver on a hand-advanced clock (pure; the end-to-end tests are in
test_cover_e2e.py)."""

from __future__ import annotations

from typing import Any

import pytest

from pi_mqtt_gpio.server.bindings import (
    Bindings,
    ButtonGestures,
    GesturesConfig,
    PublishQueue,
    QueuedPublish,
)
from pi_mqtt_gpio.server.config_loader import ConfigError, parse_config

BASE = "node_id: n\ndevices:\n  screen: {type: Cover, up: 5, down: 6}\n"


@pytest.mark.parametrize(("binding", "message"), [
    ("{device: nope, method: open}", "devices.b.bindings.pressed.device: no device named 'nope'"),
    ("{device: screen, method: fly}", "a Cover has no method 'fly' (methods: open, close"),
    ("{device: screen, method: set_position, kwargs: {position: 800}}",
     "position must be <= 100, got 800"),
    ("{device: screen, method: set_position}", "set_position() needs argument 'position'"),
    ("{device: b, method: sim_press}", "a Button has no method 'sim_press'"),
    ("{device: screen}", "a device binding needs a method"),
    ("{device: screen, method: open, publish: {topic: a/b}}", "not both"),
    ("{publish: {topic: 'a/#'}}", "a topic without wildcards"),
    ("{publish: {topic: gatekeeper/n/status, payload: offline}}",
     "inside this node's tree only device set/call topics may be published"),
    ("{device: screen, method: on}", "YAML reads unquoted on, off, yes and no as true/false"),
])
def test_binding_problems_are_refused_with_the_reason(binding: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + f"  b: {{type: Button, pin: 7, bindings: {{pressed: {binding}}}}}\n")
    assert message in str(err.value)


def test_gesture_bindings_need_gestures_and_known_triggers() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + "  b: {type: Button, pin: 7, bindings: {double: "
                     "{device: screen, method: open}, triple: {device: screen, method: open}}}\n")
    text = str(err.value)
    assert "bindings.double: a gesture binding needs gestures" in text
    assert "bindings.triple: not a gesture or event of a Button" in text


def test_good_bindings_and_own_set_topics_pass() -> None:
    config = parse_config(BASE + """  b:
    type: Button
    pin: 7
    gestures: {double_click_s: 0.25}
    bindings:
      double: {device: screen, method: set_position, args: [80]}
      single: {publish: {topic: gatekeeper/n/device/screen/set, payload: STOP}}
      long_start: {publish: {topic: other/node/light/set, payload: TOGGLE, qos: 1}}
""")
    assert set(config.devices["b"].bindings) == {"double", "single", "long_start"}
    assert config.bindings_queue.max == 200 and config.bindings_queue.max_age_s == 30


def test_users_named_like_local_principals_are_refused() -> None:
    with pytest.raises(ConfigError, match="principals of local bindings"):
        parse_config("auth: {users: {'local:b': {password_hash: x, role: admin}}}\n")


def item(topic: str, at: float) -> QueuedPublish:
    return QueuedPublish(topic, b"x", 0, False, at)


def test_publish_queue_bounds_count_and_age() -> None:
    q = PublishQueue(max_items=3, max_age_s=30)
    for i in range(5):
        q.put(item(f"t{i}", at=float(i)), now=float(i))
    assert len(q) == 3 and q.dropped == 2  # oldest dropped first
    assert [p.topic for p in q.take(now=32.5)] == ["t3", "t4"]  # t2 is 30.5 s old: dropped
    assert len(q) == 0 and q.dropped == 3
    q.put(item("late", 100.0), 100.0)
    assert q.take(now=131.0) == [] and q.dropped == 4


def test_publish_bindings_wait_for_the_link_and_device_bindings_do_not() -> None:
    sent: list[tuple[str, bytes]] = []
    calls: list[tuple[Any, ...]] = []
    link = {"up": False}
    from pi_mqtt_gpio.server.bindings import BindingConfig, PublishConfig

    b = Bindings(
        {"wall": {"single": BindingConfig(publish=PublishConfig(topic="x/set", payload="ON")),
                  "double": BindingConfig(device="screen", method="open")}},
        call=lambda *a: calls.append(a), local_publish=lambda *a: False,
        send=lambda t, p, q, r: sent.append((t, p)), link_up=lambda: link["up"])
    b.trigger("wall", "single")
    b.trigger("wall", "double")
    b.trigger("wall", "pressed")  # no binding: nothing
    assert sent == [] and len(b.queue) == 1
    assert calls == [("local:wall", "screen", "open", [], {})]
    link["up"] = True
    assert b.link_restored() == 1 and sent == [("x/set", b"ON")]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0
        self.timers: list[tuple[float, Any]] = []

    def call_at(self, when: float, fn: Any) -> Any:
        entry = [when, fn, False]
        self.timers.append(entry)  # type: ignore[arg-type]

        class H:
            def cancel(self) -> None:
                entry[2] = True

        return H()

    def run_until(self, t: float) -> None:
        while True:
            due = [e for e in self.timers if not e[2] and e[0] <= t]  # type: ignore[index]
            if not due:
                break
            first = min(due, key=lambda e: e[0])  # type: ignore[index]
            first[2] = True  # type: ignore[index]
            self.t = first[0]  # type: ignore[index]
            first[1]()  # type: ignore[index]
        self.t = t


def test_gesture_driver_ticks_on_its_clock() -> None:
    clock = Clock()
    seen: list[tuple[str, float]] = []
    g = ButtonGestures("wall", GesturesConfig(double_click_s=0.3, long_press_s=0.8),
                       emit=lambda b, e: seen.append((e, clock.t)), clock=lambda: clock.t,
                       call_at=clock.call_at)
    g.edge(True, 0.0)
    g.edge(False, 0.1)
    clock.run_until(0.39)
    assert seen == []
    clock.run_until(0.41)
    assert seen == [("single", pytest.approx(0.4))]
    clock.t = 1.0
    g.edge(True, 1.0)
    clock.run_until(1.8)
    assert seen[-1] == ("long_start", pytest.approx(1.8))
    clock.t = 2.5
    g.edge(False, 2.5)
    assert seen[-1] == ("long_end", 2.5) and len(seen) == 3
    g.close()
