"""Broker core behaviour without sockets: time is moved by the test (sans-io)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pi_mqtt_gpio.mqtt.broker import BrokerLimits
from pi_mqtt_gpio.mqtt.packets import (
    PROTOCOL_50,
    PROTOCOL_311,
    RC,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    Prop,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from tests.mqtt.harness import FakeClient, Harness

BOTH = pytest.mark.parametrize("version", [PROTOCOL_311, PROTOCOL_50], ids=["v311", "v5"])


def subscribe(client, topic_filter: str, qos: int = 0, pid: int = 1, **opts) -> SubAck:  # type: ignore[no-untyped-def]
    props = opts.pop("properties", {})
    client.send(Subscribe(pid, [Subscription(topic_filter, qos, **opts)], props))
    packets = client.received()
    assert isinstance(packets[0], SubAck), packets
    client.backlog = packets[1:]
    return packets[0]


def publishes(client) -> list[Publish]:  # type: ignore[no-untyped-def]
    return [p for p in client.received() if isinstance(p, Publish)]


@BOTH
def test_connect_and_pingreq(version: int) -> None:
    h = Harness()
    c = h.client("a", version, keep_alive=30)
    ack = c.connack()
    assert ack.reason_code == 0 and not ack.session_present
    c.send(PingReq())
    assert c.received() == [PingResp()]
    assert h.hooks.events == [("connected", "a", "")]


def test_first_packet_must_be_connect() -> None:
    h = Harness()
    fc = FakeClient(h, PROTOCOL_50)
    fc.send(PingReq())
    assert fc.closed and fc.received() == []  # MQTT-3.1.0-1: no CONNACK


@BOTH
def test_second_connect_closes(version: int) -> None:
    h = Harness()
    c = h.client("a", version)
    c.connack()
    c.send(Connect("a", version))
    assert c.closed
    if version == PROTOCOL_50:
        assert c.received() == [Disconnect(RC.PROTOCOL_ERROR, {Prop.REASON_STRING: "second CONNECT"})]


@pytest.mark.parametrize("level", [3, 6, 0])
def test_unsupported_protocol_level(level: int) -> None:
    fc = FakeClient(Harness(), PROTOCOL_311)
    body = b"\x00\x04MQTT" + bytes((level, 2)) + b"\x00\x3c\x00\x01c"
    fc.send_raw(bytes((0x10, len(body))) + body)
    assert fc.received() == [ConnAck(False, 0x01)]  # 3.1.1 format, "unacceptable protocol"
    assert fc.closed


def test_unsupported_protocol_name_v5() -> None:
    fc = FakeClient(Harness(), PROTOCOL_50)
    fc.send(Connect("c", PROTOCOL_50, protocol_name="MQTX"))
    assert fc.received()[0].reason_code == RC.UNSUPPORTED_PROTOCOL_VERSION  # type: ignore[union-attr]


def test_assigned_client_id_v5() -> None:
    h = Harness()
    c = h.client("", PROTOCOL_50)
    ack = c.connack()
    assigned = ack.properties[Prop.ASSIGNED_CLIENT_IDENTIFIER]
    assert assigned and assigned in h.core.sessions


def test_empty_client_id_v311() -> None:
    h = Harness()
    c = h.client("", PROTOCOL_311, clean_start=False)
    assert c.connack().reason_code == 0x02  # MQTT-3.1.3-8 identifier rejected
    assert c.closed
    c2 = h.client("", PROTOCOL_311, clean_start=True)
    assert c2.connack().reason_code == 0


@BOTH
def test_auth_denied(version: int) -> None:
    h = Harness()
    c = h.client("a", version, username="bad", password=b"x")
    ack = c.connack()
    assert ack.reason_code == (RC.BAD_USER_NAME_OR_PASSWORD if version == 5 else 0x04)
    assert c.closed


def test_server_keep_alive_cap() -> None:
    h = Harness(BrokerLimits(max_keepalive=60))
    c = h.client("a", PROTOCOL_50, keep_alive=0)
    assert c.connack().properties[Prop.SERVER_KEEP_ALIVE] == 60
    c2 = h.client("b", PROTOCOL_50, keep_alive=1000)
    assert c2.connack().properties[Prop.SERVER_KEEP_ALIVE] == 60
    c3 = h.client("c", PROTOCOL_50, keep_alive=30)
    assert Prop.SERVER_KEEP_ALIVE not in c3.connack().properties


@BOTH
def test_keepalive_timeout_publishes_will(version: int) -> None:
    h = Harness()
    sub = h.client("sub", version)
    sub.connack()
    subscribe(sub, "will/#")
    c = h.client("a", version, keep_alive=10, will=Will("will/a", b"gone"))
    c.connack()
    h.advance(14)  # < 1.5 x 10
    assert not c.closed
    c.send(PingReq())
    h.advance(14)  # 14 s after the ping: still within 15 s
    assert not c.closed
    h.advance(1.5)
    assert c.closed
    if version == PROTOCOL_50:
        assert c.received()[-1] == Disconnect(RC.KEEP_ALIVE_TIMEOUT,
                                              {Prop.REASON_STRING: "keep alive timeout"})
    assert [p.payload for p in publishes(sub)] == [b"gone"]


@BOTH
def test_clean_disconnect_discards_will(version: int) -> None:
    h = Harness()
    sub = h.client("sub", version)
    sub.connack()
    subscribe(sub, "will/#")
    c = h.client("a", version, will=Will("will/a", b"gone"))
    c.connack()
    c.send(Disconnect())
    c.close()
    assert publishes(sub) == []


def test_disconnect_with_will_v5() -> None:
    h = Harness()
    sub = h.client("sub")
    sub.connack()
    subscribe(sub, "will/#")
    c = h.client("a", will=Will("will/a", b"gone"))
    c.connack()
    c.send(Disconnect(RC.DISCONNECT_WITH_WILL))
    assert [p.payload for p in publishes(sub)] == [b"gone"]


def test_will_delay_and_cancel_on_reconnect() -> None:
    h = Harness()
    sub = h.client("sub")
    sub.connack()
    subscribe(sub, "will/#")
    will = Will("will/a", b"gone", properties={Prop.WILL_DELAY_INTERVAL: 5})
    props = {Prop.SESSION_EXPIRY_INTERVAL: 60}
    c = h.client("a", will=will, properties=props, clean_start=False)
    c.connack()
    c.close()
    h.advance(3)
    assert publishes(sub) == []
    c2 = h.client("a", properties=props, clean_start=False)  # back within the delay
    assert c2.connack().session_present
    h.advance(10)
    assert publishes(sub) == []  # MQTT-3.1.3-9
    c2.close()
    h.advance(1)
    assert publishes(sub) == []  # the new connection had no will
    # A will whose delay passes is published.
    c3 = h.client("b", will=will, properties=props)
    c3.connack()
    c3.close()
    h.advance(5.1)
    assert [p.payload for p in publishes(sub)] == [b"gone"]


def test_will_published_when_session_ends_before_delay() -> None:
    h = Harness()
    sub = h.client("sub")
    sub.connack()
    subscribe(sub, "will/#")
    will = Will("will/a", b"gone", properties={Prop.WILL_DELAY_INTERVAL: 100})
    c = h.client("a", will=will, properties={Prop.SESSION_EXPIRY_INTERVAL: 2})
    c.connack()
    c.close()
    h.advance(1)
    assert publishes(sub) == []
    h.advance(1.5)
    assert [p.payload for p in publishes(sub)] == [b"gone"]
    assert "a" not in h.core.sessions


@BOTH
def test_qos1_and_qos2_flows_both_directions(version: int) -> None:
    h = Harness()
    sub = h.client("sub", version)
    sub.connack()
    assert subscribe(sub, "t/#", qos=2).reason_codes == [2]
    pub = h.client("pub", version)
    pub.connack()
    pub.send(Publish("t/1", b"one", 1, packet_id=5))
    assert pub.received() == [PubAck(5)]
    pub.send(Publish("t/2", b"two", 2, packet_id=6))
    assert pub.received() == [PubRec(6)]
    pub.send(Publish("t/2", b"two", 2, dup=True, packet_id=6))  # duplicate: not routed again
    assert pub.received() == [PubRec(6)]
    pub.send(PubRel(6))
    assert pub.received() == [PubComp(6)]
    got = publishes(sub)
    assert [(p.topic, p.qos) for p in got] == [("t/1", 1), ("t/2", 2)]
    sub.send(PubAck(got[0].packet_id))  # type: ignore[arg-type]
    sub.send(PubRec(got[1].packet_id))  # type: ignore[arg-type]
    assert sub.received() == [PubRel(got[1].packet_id)]  # type: ignore[arg-type]
    sub.send(PubComp(got[1].packet_id))  # type: ignore[arg-type]
    assert h.core.sessions["sub"].inflight == {}


@BOTH
def test_redelivery_on_resume_with_dup(version: int) -> None:
    h = Harness()
    props = {Prop.SESSION_EXPIRY_INTERVAL: 100} if version == 5 else {}
    sub = h.client("sub", version, clean_start=False, properties=props)
    sub.connack()
    subscribe(sub, "t", qos=2)
    pub = h.client("pub", version)
    pub.connack()
    pub.send(Publish("t", b"a", 1, packet_id=1))
    pub.send(Publish("t", b"b", 2, packet_id=2))
    first = publishes(sub)
    sub.send(PubRec(first[1].packet_id))  # type: ignore[arg-type]
    sub.close()
    pub.send(Publish("t", b"c", 1, packet_id=3))  # queued while offline
    sub2 = h.client("sub", version, clean_start=False, properties=props)
    packets = sub2.received()
    assert isinstance(packets[0], ConnAck) and packets[0].session_present
    assert packets[1] == Publish("t", b"a", 1, False, True, first[0].packet_id)
    assert packets[2] == PubRel(first[1].packet_id)  # type: ignore[arg-type]
    assert isinstance(packets[3], Publish) and packets[3].payload == b"c" and not packets[3].dup


@BOTH
def test_offline_queue_bounded_drops_oldest(version: int) -> None:
    h = Harness(BrokerLimits(max_queued_messages=3))
    props = {Prop.SESSION_EXPIRY_INTERVAL: 100} if version == 5 else {}
    sub = h.client("sub", version, clean_start=False, properties=props)
    sub.connack()
    subscribe(sub, "t", qos=1)
    sub.close()
    pub = h.client("pub", version)
    pub.connack()
    for i in range(10):
        pub.send(Publish("t", str(i).encode(), 1, packet_id=i + 1))
    pub.send(Publish("t", b"qos0", 0))  # QoS 0 is not queued offline
    sub2 = h.client("sub", version, clean_start=False, properties=props)
    assert [p.payload for p in publishes(sub2)] == [b"7", b"8", b"9"]
    assert h.core.stats.dropped_queue_full == 7


@BOTH
def test_retained_store_and_delete(version: int) -> None:
    h = Harness()
    pub = h.client("pub", version)
    pub.connack()
    pub.send(Publish("r/a", b"A", 1, True, packet_id=1))
    pub.send(Publish("r/b", b"B", 0, True))
    pub.send(Publish("$sys/x", b"S", 0, True))
    sub = h.client("sub", version)
    sub.connack()
    subscribe(sub, "#", qos=1)
    got = publishes(sub)
    assert sorted((p.topic, p.payload, p.retain, p.qos) for p in got) == [
        ("r/a", b"A", True, 1), ("r/b", b"B", True, 0)]  # "#" does not match "$sys/x"
    pub.send(Publish("r/a", b"", 0, True))  # empty retained payload deletes
    publishes(sub)
    sub2 = h.client("sub2", version)
    sub2.connack()
    subscribe(sub2, "r/+")
    assert [p.topic for p in publishes(sub2)] == ["r/b"]


def test_retain_handling_and_retain_as_published() -> None:
    h = Harness()
    pub = h.client("pub")
    pub.connack()
    pub.send(Publish("r", b"x", 0, True))
    sub = h.client("sub")
    sub.connack()
    subscribe(sub, "r", retain_handling=2)
    assert publishes(sub) == []
    subscribe(sub, "r", retain_handling=1)  # exists already: not sent
    assert publishes(sub) == []
    subscribe(sub, "q", retain_handling=1)
    pub.send(Publish("r", b"live", 0, True))
    assert [p.retain for p in publishes(sub)] == [False]  # MQTT-3.3.1-12
    subscribe(sub, "r", retain_as_published=True)
    publishes(sub)
    pub.send(Publish("r", b"live2", 0, True))
    assert [p.retain for p in publishes(sub)] == [True]


def test_no_local() -> None:
    h = Harness()
    c = h.client("a")
    c.connack()
    subscribe(c, "t", no_local=True)
    c.send(Publish("t", b"self", 0))
    assert publishes(c) == []
    other = h.client("b")
    other.connack()
    other.send(Publish("t", b"other", 0))
    assert [p.payload for p in publishes(c)] == [b"other"]


@BOTH
def test_overlapping_subscriptions_one_copy_max_qos(version: int) -> None:
    h = Harness()
    c = h.client("a", version)
    c.connack()
    if version == PROTOCOL_50:
        subscribe(c, "t/#", 0, 1, properties={Prop.SUBSCRIPTION_IDENTIFIER: [7]})
        subscribe(c, "t/+", 2, 2, properties={Prop.SUBSCRIPTION_IDENTIFIER: [9]})
    else:
        subscribe(c, "t/#", 0, 1)
        subscribe(c, "t/+", 2, 2)
    pub = h.client("p", version)
    pub.connack()
    pub.send(Publish("t/x", b"m", 2, packet_id=1))
    got = publishes(c)
    assert len(got) == 1 and got[0].qos == 2
    if version == PROTOCOL_50:
        assert sorted(got[0].properties[Prop.SUBSCRIPTION_IDENTIFIER]) == [7, 9]


def test_shared_subscription_round_robin() -> None:
    h = Harness()
    members = [h.client(f"m{i}") for i in range(3)]
    for m in members:
        m.connack()
        subscribe(m, "$share/g/jobs/#", 1)
    pub = h.client("p")
    pub.connack()
    for i in range(6):
        pub.send(Publish("jobs/x", str(i).encode(), 0))
    counts = [len(publishes(m)) for m in members]
    assert counts == [2, 2, 2]
    # Shared subscriptions get no retained messages, and reject No Local.
    members[0].send(Subscribe(9, [Subscription("$share/g/a", 0, no_local=True)]))
    assert members[0].closed


@BOTH
def test_invalid_filters_and_denied_subscriptions(version: int) -> None:
    h = Harness()
    c = h.client("a", version)
    c.connack()
    c.send(Subscribe(1, [Subscription("a/#/b"), Subscription("forbidden/x"),
                         Subscription("ok/+", 1), Subscription("$share/g+/x")]))
    ack = c.received()[0]
    assert isinstance(ack, SubAck)
    if version == PROTOCOL_50:
        assert ack.reason_codes == [RC.TOPIC_FILTER_INVALID, RC.NOT_AUTHORIZED, 1,
                                    RC.TOPIC_FILTER_INVALID]
    else:
        assert ack.reason_codes == [0x80, 0x80, 1, 0x80]


@BOTH
def test_denied_publish(version: int) -> None:
    h = Harness()
    sub = h.client("s", version)
    sub.connack()
    subscribe(sub, "#")
    c = h.client("a", version)
    c.connack()
    c.send(Publish("forbidden/x", b"no", 1, packet_id=3))
    expected = RC.NOT_AUTHORIZED if version == 5 else RC.SUCCESS  # 3.1.1: ack, then drop
    assert c.received() == [PubAck(3, expected)]
    assert publishes(sub) == []


@BOTH
def test_unsubscribe(version: int) -> None:
    h = Harness()
    c = h.client("a", version)
    c.connack()
    subscribe(c, "t")
    c.send(Unsubscribe(2, ["t", "nope"]))
    ack = c.received()[0]
    if version == 5:
        assert ack == UnsubAck(2, [RC.SUCCESS, RC.NO_SUBSCRIPTION_EXISTED])
    else:
        assert ack == UnsubAck(2)
    c.send(Publish("t", b"x"))
    assert publishes(c) == []


def test_message_expiry_decremented_and_dropped() -> None:
    h = Harness()
    props = {Prop.SESSION_EXPIRY_INTERVAL: 100}
    sub = h.client("s", clean_start=False, properties=props)
    sub.connack()
    subscribe(sub, "t", 1)
    sub.close()
    pub = h.client("p")
    pub.connack()
    pub.send(Publish("t", b"short", 1, packet_id=1, properties={Prop.MESSAGE_EXPIRY_INTERVAL: 5}))
    pub.send(Publish("t", b"long", 1, packet_id=2, properties={Prop.MESSAGE_EXPIRY_INTERVAL: 60}))
    h.advance(10)
    sub2 = h.client("s", clean_start=False, properties=props)
    got = publishes(sub2)
    assert [p.payload for p in got] == [b"long"]
    assert got[0].properties[Prop.MESSAGE_EXPIRY_INTERVAL] == 50  # MQTT-3.3.2-6


def test_properties_forwarded_untouched() -> None:
    h = Harness()
    sub = h.client("s")
    sub.connack()
    subscribe(sub, "t")
    v3 = h.client("s3", PROTOCOL_311)
    v3.connack()
    subscribe(v3, "t")
    pub = h.client("p")
    pub.connack()
    props = {Prop.RESPONSE_TOPIC: "r", Prop.CORRELATION_DATA: b"\x00\x01",
             Prop.USER_PROPERTY: [("a", "1"), ("a", "2")], Prop.PAYLOAD_FORMAT_INDICATOR: 1,
             Prop.CONTENT_TYPE: "application/json"}
    pub.send(Publish("t", b"{}", 0, properties=dict(props)))
    assert publishes(sub)[0].properties == props
    assert publishes(v3)[0] == Publish("t", b"{}")


def test_topic_alias_inbound() -> None:
    h = Harness()
    sub = h.client("s")
    sub.connack()
    subscribe(sub, "long/topic")
    pub = h.client("p")
    assert pub.connack().properties[Prop.TOPIC_ALIAS_MAXIMUM] == 64
    pub.send(Publish("long/topic", b"1", properties={Prop.TOPIC_ALIAS: 1}))
    pub.send(Publish("", b"2", properties={Prop.TOPIC_ALIAS: 1}))
    assert [(p.topic, p.payload) for p in publishes(sub)] == [("long/topic", b"1"),
                                                              ("long/topic", b"2")]
    pub.send(Publish("", b"3", properties={Prop.TOPIC_ALIAS: 2}))  # unknown alias
    assert pub.closed
    pub2 = h.client("p2")
    pub2.connack()
    pub2.send(Publish("x", b"", properties={Prop.TOPIC_ALIAS: 65}))
    assert pub2.received()[-1].reason_code == RC.TOPIC_ALIAS_INVALID  # type: ignore[union-attr]


def test_topic_alias_outbound() -> None:
    h = Harness()
    sub = h.client("s", properties={Prop.TOPIC_ALIAS_MAXIMUM: 1})
    sub.connack()
    subscribe(sub, "#")
    pub = h.client("p")
    pub.connack()
    for topic in ("a", "a", "b"):
        pub.send(Publish(topic, b"x"))
    got = publishes(sub)
    assert [(p.topic, p.properties.get(Prop.TOPIC_ALIAS)) for p in got] == [
        ("a", 1), ("", 1), ("b", None)]


def test_receive_maximum_of_client_limits_inflight() -> None:
    h = Harness()
    sub = h.client("s", properties={Prop.RECEIVE_MAXIMUM: 2})
    sub.connack()
    subscribe(sub, "t", 1)
    pub = h.client("p")
    pub.connack()
    for i in range(5):
        pub.send(Publish("t", bytes([i]), 1, packet_id=i + 1))
    got = publishes(sub)
    assert len(got) == 2
    sub.send(PubAck(got[0].packet_id))  # type: ignore[arg-type]
    more = publishes(sub)
    assert [p.payload for p in more] == [bytes([2])]


def test_receive_maximum_inbound_exceeded() -> None:
    h = Harness(BrokerLimits(receive_maximum=2))
    c = h.client("a")
    assert c.connack().properties[Prop.RECEIVE_MAXIMUM] == 2
    for pid in (1, 2, 3):
        c.send(Publish("t", b"x", 2, packet_id=pid))
    assert c.closed
    assert c.received()[-1].reason_code == RC.RECEIVE_MAXIMUM_EXCEEDED  # type: ignore[union-attr]


def test_maximum_packet_size_of_client() -> None:
    h = Harness()
    sub = h.client("s", properties={Prop.MAXIMUM_PACKET_SIZE: 50})
    sub.connack()
    subscribe(sub, "t", 1)
    pub = h.client("p")
    pub.connack()
    pub.send(Publish("t", b"x" * 100, 1, packet_id=1))
    pub.send(Publish("t", b"small", 1, packet_id=2))
    assert [p.payload for p in publishes(sub)] == [b"small"]  # MQTT-3.1.2-25


@BOTH
def test_packet_too_large_closes(version: int) -> None:
    h = Harness(BrokerLimits(max_packet_size=100))
    c = h.client("a", version)
    c.connack()
    c.send(Publish("t", b"x" * 200))
    assert c.closed
    if version == 5:
        assert c.received()[-1].reason_code == RC.PACKET_TOO_LARGE  # type: ignore[union-attr]


@BOTH
def test_session_takeover(version: int) -> None:
    h = Harness()
    sub = h.client("s", version)
    sub.connack()
    subscribe(sub, "will")
    old = h.client("a", version, will=Will("will", b"old gone"))
    old.connack()
    new = h.client("a", version)
    assert new.connack().reason_code == 0
    assert old.closed
    if version == 5:
        assert old.received()[-1] == Disconnect(RC.SESSION_TAKEN_OVER,
                                                {Prop.REASON_STRING: "session taken over"})
    assert [p.payload for p in publishes(sub)] == [b"old gone"]


def test_session_expiry() -> None:
    h = Harness()
    c = h.client("a", clean_start=False, properties={Prop.SESSION_EXPIRY_INTERVAL: 10})
    c.connack()
    subscribe(c, "t")
    c.close()
    h.advance(9)
    assert "a" in h.core.sessions
    h.advance(2)
    assert "a" not in h.core.sessions
    assert h.core.subscriptions.count == 0


def test_session_expiry_in_disconnect_after_zero_is_protocol_error() -> None:
    h = Harness()
    c = h.client("a")
    c.connack()
    c.send(Disconnect(properties={Prop.SESSION_EXPIRY_INTERVAL: 10}))
    assert c.received()[-1].reason_code == RC.PROTOCOL_ERROR  # type: ignore[union-attr]


def test_dollar_topics_not_matched_by_leading_wildcards() -> None:
    h = Harness()
    c = h.client("a")
    c.connack()
    subscribe(c, "#", pid=1)
    subscribe(c, "+/x", pid=2)
    subscribe(c, "$data/#", pid=3)
    c.send(Publish("$data/x", b"1"))  # ($SYS/ itself is the broker's: no client publishes)
    c.send(Publish("a/x", b"2"))
    assert [(p.topic) for p in publishes(c)] == ["$data/x", "a/x"]


def test_connect_timeout() -> None:
    h = Harness(BrokerLimits(connect_timeout=3))
    fc = FakeClient(h, PROTOCOL_50)
    h.advance(3.1)
    assert fc.closed


def test_max_connections() -> None:
    h = Harness(BrokerLimits(max_connections=1))
    a = h.client("a")
    a.connack()
    b = h.client("b")
    assert b.connack().reason_code == RC.SERVER_BUSY
    b311 = h.client("c", PROTOCOL_311)
    assert b311.connack().reason_code == 0x03


def test_internal_client() -> None:
    h = Harness()
    got: list[tuple[str, bytes]] = []
    gk = h.core.connect_internal("gk", lambda m, ids: got.append((m.topic, m.payload)))
    gk.subscribe("cmd/#", now=h.now)
    c = h.client("a")
    c.connack()
    subscribe(c, "state")
    c.send(Publish("cmd/x", b"go"))
    for client, msg, ids in h.core.take_internal():
        client.on_message(msg, ids)
    assert got == [("cmd/x", b"go")]
    gk.publish("state", b"on", now=h.now, retain=True)
    assert [p.payload for p in publishes(c)] == [b"on"]
    c2 = h.client("gk")  # an internal client id is reserved
    assert c2.connack().reason_code == RC.CLIENT_IDENTIFIER_NOT_VALID


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([PROTOCOL_311, PROTOCOL_50]))
def test_fuzz_connection_state_machine(data: bytes, version: int) -> None:
    """Arbitrary bytes after a valid CONNECT never raise out of the core."""
    h = Harness()
    c = h.client("fuzz", version)
    c.connack()
    for i in range(0, len(data), 37):
        c.send_raw(data[i : i + 37])
    c.received()
    c.close()
    assert "fuzz" not in h.core.connections


def test_sessions_are_bounded() -> None:
    h = Harness(BrokerLimits(max_sessions=5))
    for i in range(20):
        c = h.client(f"p{i}", PROTOCOL_311, clean_start=False)  # 3.1.1: never expires
        c.connack()
        subscribe(c, f"t/{i}", 1)
        c.close()
    assert len(h.core.sessions) == 5
    assert set(h.core.sessions) == {f"p{i}" for i in range(15, 20)}  # the newest stay


def test_retained_store_is_bounded() -> None:
    # Charged for payload + topic + 300 bytes per topic level: "r/0" with 100 bytes = 703.
    h = Harness(BrokerLimits(max_retained_bytes=7100))
    pub = h.client("pub")
    pub.connack()
    for i in range(50):
        pub.send(Publish(f"r/{i}", b"x" * 100, 0, True))
    assert len(h.core.retained) == 10 and h.core.retained.bytes == 10 * 703
    assert h.core.stats.retained_refused == 40
    pub.send(Publish("r/0", b"y" * 50, 0, True))  # replacing a kept topic with less is allowed
    pub.send(Publish("r/1", b"", 0, True))  # and deleting frees room
    assert h.core.retained.bytes == 10 * 703 - 50 - 703
    pub.send(Publish("r/new", b"z" * 100, 0, True))
    assert h.core.retained.get("r/new") is not None


def test_retained_topics_and_levels_are_charged() -> None:
    """A 1-byte message on a deep topic costs its tree nodes, not one byte."""
    h = Harness(BrokerLimits(max_retained_bytes=100_000, max_topic_levels=1000,
                             max_topic_length=4000))
    pub = h.client("pub")
    pub.connack()
    deep = "/".join("a" * 3 for _ in range(500))
    pub.send(Publish(deep, b"x", 0, True))
    assert h.core.retained.get(deep) is None and h.core.stats.retained_refused == 1
    pub.send(Publish("a/b", b"x", 0, True))
    assert h.core.retained.bytes == 1 + 3 + 600

