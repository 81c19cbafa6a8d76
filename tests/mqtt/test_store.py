"""The broker core's snapshot and restore (``mqtt/store.py``), and its ``$SYS`` values,
without sockets or files, on MQTT 3.1.1 and 5.0."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pi_mqtt_gpio.mqtt import store
from pi_mqtt_gpio.mqtt.broker import BrokerLimits
from pi_mqtt_gpio.mqtt.packets import (
    PROTOCOL_50,
    PROTOCOL_311,
    RC,
    ConnAck,
    Disconnect,
    Prop,
    PubAck,
    Publish,
)
from pi_mqtt_gpio.mqtt.sys_topics import SysTopics
from tests.mqtt.harness import FakeClient, Harness
from tests.mqtt.test_core import publishes, subscribe

BOTH = pytest.mark.parametrize("version", [PROTOCOL_311, PROTOCOL_50], ids=["v311", "v5"])


def persistent(h: Harness, cid: str, version: int, expiry: int = 100) -> FakeClient:
    props = {Prop.SESSION_EXPIRY_INTERVAL: expiry} if version == PROTOCOL_50 else {}
    return h.client(cid, version, clean_start=False, properties=props)


def resume(h: Harness, cid: str, version: int, expiry: int = 100
           ) -> tuple[bool, list[Publish], FakeClient]:
    """Reconnect ``cid``: CONNACK's session present, and what was sent with it."""
    c = persistent(h, cid, version, expiry)
    packets = c.received()
    assert isinstance(packets[0], ConnAck), packets
    return packets[0].session_present, [p for p in packets if isinstance(p, Publish)], c


def saved(h: Harness) -> Any:
    """The document as written and read back (JSON both ways)."""
    cap = store.capture(h.core, h.now, lambda m: not m.topic.startswith("node/"))
    return json.loads(json.dumps(store.encode(cap)))


def restored(doc: Any, downtime: float = 0.0, limits: BrokerLimits | None = None) -> Harness:
    h = Harness(limits)
    store.apply(h.core, store.parse(doc, h.now, downtime), h.now)
    return h


@BOTH
def test_retained_and_queued_messages_survive(version: int) -> None:
    h = Harness()
    a = persistent(h, "a", version)
    a.connack()
    subscribe(a, "alerts/#", 1)
    a.send(Disconnect())
    b = h.client("b", version)
    b.connack()
    b.send(Publish("zigbee2mqtt/lamp", b"on", 1, True, packet_id=1))
    b.send(Publish("node/state", b"stale", 1, True, packet_id=2))  # not kept (``keep``)
    b.send(Publish("alerts/door", b"open", 1, packet_id=3))
    h2 = restored(saved(h))
    present, got, _ = resume(h2, "a", version)
    assert present
    assert [(p.topic, p.payload, p.qos) for p in got] == [("alerts/door", b"open", 1)]
    fresh = h2.client("c", version)
    fresh.connack()
    subscribe(fresh, "#", 1)
    assert [(p.topic, p.retain) for p in publishes(fresh)] == [("zigbee2mqtt/lamp", True)]


@BOTH
def test_time_spent_down_counts(version: int) -> None:
    """5.0: the Session Expiry Interval runs on while down; 3.1.1 sessions never expire."""
    h = Harness()
    a = persistent(h, "a", version, expiry=100)
    a.connack()
    subscribe(a, "x", 1)
    a.send(Disconnect())
    doc = saved(h)
    assert resume(restored(doc, 60), "a", version)[0]
    assert resume(restored(doc, 101), "a", version)[0] == (version == PROTOCOL_311)


def test_message_expiry_counts_down_while_down() -> None:
    h = Harness()
    a = persistent(h, "a", PROTOCOL_50, expiry=1000)
    a.connack()
    subscribe(a, "x/#", 1)
    a.send(Disconnect())
    b = h.client("b", PROTOCOL_50)
    b.connack()
    b.send(Publish("x/short", b"1", 1, packet_id=1,
                   properties={Prop.MESSAGE_EXPIRY_INTERVAL: 30}))
    b.send(Publish("x/long", b"2", 1, packet_id=2,
                   properties={Prop.MESSAGE_EXPIRY_INTERVAL: 300}))
    _, got, _ = resume(restored(saved(h), 100), "a", PROTOCOL_50, 1000)
    assert [p.topic for p in got] == ["x/long"]
    assert got[0].properties[Prop.MESSAGE_EXPIRY_INTERVAL] == 200  # MQTT-3.3.2-6


@BOTH
def test_unacknowledged_delivery_is_sent_again_with_dup(version: int) -> None:
    """In flight at the capture (connected, no PUBACK yet): resent with DUP (MQTT-4.4.0-1)."""
    h = Harness()
    a = persistent(h, "a", version)
    a.connack()
    subscribe(a, "x", 1)
    b = h.client("b", version)
    b.connack()
    b.send(Publish("x", b"1", 1, packet_id=1))
    first = publishes(a)[0]
    _, resent, again = resume(restored(saved(h)), "a", version)
    assert [(p.topic, p.dup, p.packet_id) for p in resent] == [("x", True, first.packet_id)]
    again.send(PubAck(first.packet_id))  # settled: nothing left in flight
    assert not again.h.core.sessions["a"].inflight


@BOTH
def test_restore_stays_within_the_limits(version: int) -> None:
    h = Harness()
    a = persistent(h, "a", version)
    a.connack()
    subscribe(a, "x", 1)
    a.send(Disconnect())
    b = h.client("b", version)
    b.connack()
    for i in range(10):
        b.send(Publish("x", str(i).encode(), 1, packet_id=i + 1))
    h2 = restored(saved(h), limits=BrokerLimits(max_queued_messages=3))
    _, got, _ = resume(h2, "a", version)
    assert [p.payload for p in got] == [b"7", b"8", b"9"]  # the newest kept


@BOTH
def test_revoked_subscription_and_what_it_queued_are_dropped(version: int) -> None:
    h = Harness()
    a = persistent(h, "a", version)
    a.connack()
    subscribe(a, "secret/#", 1)
    subscribe(a, "open/#", 1)
    a.send(Disconnect())
    b = h.client("b", version)
    b.connack()
    b.send(Publish("secret/x", b"s", 1, packet_id=1))
    b.send(Publish("open/x", b"o", 1, packet_id=2))
    doc = saved(h)
    h2 = Harness()
    refuse = h2.hooks.authorize_subscribe

    def now_refused(client: Any, topic_filter: str, qos: int) -> Any:
        from pi_mqtt_gpio.mqtt.hooks import Decision
        return Decision.DENY if topic_filter.startswith("secret") else \
            refuse(client, topic_filter, qos)

    h2.hooks.authorize_subscribe = now_refused  # type: ignore[method-assign]
    result = store.apply(h2.core, store.parse(doc, h2.now, 0), h2.now)
    assert result.revoked == 2  # the subscription and the message it queued
    _, got, again = resume(h2, "a", version)
    assert [p.topic for p in got] == ["open/x"]
    b2 = h2.client("b", version)
    b2.connack()
    b2.send(Publish("secret/y", b"s", 1, packet_id=1))
    assert publishes(again) == []


@pytest.mark.parametrize("doc", [
    [], {"version": 2, "retained": [], "sessions": []},
    {"version": 1, "retained": [["not base64!", None, None, None, None]], "sessions": []},
    {"version": 1, "retained": [], "sessions": [{"id": "a"}]},
    {"version": 1, "retained": [], "sessions": [], "x": 1} | {"retained": "no"},
])
def test_parse_refuses_what_it_would_not_write(doc: Any) -> None:
    with pytest.raises(ValueError):
        store.parse(doc, 0.0, 0.0)


@BOTH
def test_no_client_publishes_under_sys(version: int) -> None:
    h = Harness()
    a = h.client("a", version)
    a.connack()
    subscribe(a, "$SYS/#", 0)
    a.send(Publish("$SYS/broker/uptime", b"forged", 1, True, packet_id=1))
    acks = [p for p in a.received() if isinstance(p, PubAck)]
    # 5.0: 0x87 Not authorized; 3.1.1 has no negative PUBACK (MQTT-3.3.5-2): dropped
    assert acks[0].reason_code == (RC.NOT_AUTHORIZED if version == PROTOCOL_50 else 0)
    assert h.core.retained.get("$SYS/broker/uptime") is None


@BOTH
def test_sys_values_count_traffic(version: int) -> None:
    h = Harness()
    sys = SysTopics(h.core, "1.0", h.now)
    a = h.client("a", version)
    a.connack()
    subscribe(a, "x", 0)
    before = sys.changed(h.now)
    assert before["$SYS/broker/clients/connected"] == b"1"
    assert before["$SYS/broker/uptime"] == b"0 seconds"
    a.send(Publish("x", b"12345"))
    publishes(a)
    after = sys.changed(h.now + 12)
    assert after["$SYS/broker/uptime"] == b"12 seconds"
    assert int(after["$SYS/broker/bytes/received"]) > int(before["$SYS/broker/bytes/received"])
    assert int(after["$SYS/broker/messages/received"]) == \
        int(before["$SYS/broker/messages/received"]) + 1
    assert "$SYS/broker/version" not in after  # unchanged: not published again
    assert before["$SYS/broker/subscriptions/count"] == b"1"


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def test_loads_cuts_each_list_to_what_the_limits_hold() -> None:
    """``loads`` keeps the first entries of the retained list, the sessions and each
    session's subscriptions, queue and in-flight list up to the caps and counts the rest;
    anything else is read as ``json`` reads it, and what is not JSON is refused."""
    caps = store.Caps(retained=2, sessions=2, subs=1, queue=3, inflight=1)
    doc = {"version": 1, "other": [1, 2, 3, 4], "retained": [[i] for i in range(5)],
           "sessions": [{"id": "a", "queue": list(range(10)), "inflight": [1, 2],
                         "subs": [[1], [2]], "rel": [1, 2, 3]}, {"id": "b"}, {"id": "c"}]}
    loaded = store.loads(json.dumps(doc, indent=1), caps, _no_constant)
    assert loaded.doc == {"version": 1, "other": [1, 2, 3, 4], "retained": [[0], [1]],
                          "sessions": [{"id": "a", "queue": [0, 1, 2], "inflight": [1],
                                        "subs": [[1]], "rel": [1, 2, 3]}, {"id": "b"}]}
    assert loaded.cut == 3 + 7 + 1 + 1 + 1
    for text in ("", "{", '{"a": 1} x', '{"retained": [1,]}', '{"a": NaN}',
                 '{"sessions": [{"queue": [1 2]}]}', '{"a" 1}', "{1: 2}"):
        with pytest.raises(ValueError):
            store.loads(text, caps, _no_constant)
    assert store.loads(" [] ", caps, _no_constant).doc == []
