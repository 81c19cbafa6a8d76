"""The real daemon over real sockets, driven by paho-mqtt on MQTT 3.1.1 and 5.0."""

from __future__ import annotations

import socket
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import Client, Gatekeeper, v5_props


def make(clients: list[Client], broker: Gatekeeper, version: int, **kw: object) -> Client:
    c = Client(broker.port, version, **kw)  # type: ignore[arg-type]
    clients.append(c)
    return c


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_subscribe(broker: Gatekeeper, clients: list[Client], version: int,
                           qos: int) -> None:
    sub = make(clients, broker, version)
    rc, _ = sub.connect()
    assert rc == 0
    topic = f"e2e/{version}/{qos}/x"
    granted = sub.subscribe(f"e2e/{version}/{qos}/#", qos)
    assert [int(getattr(g, "value", g)) for g in granted] == [qos]
    pub = make(clients, broker, version)
    pub.connect()
    for i in range(20):
        pub.publish(topic, f"m{i}", qos)
    pub.publish(f"{topic}/end", "sentinel", qos)  # same session: delivered after the 20
    got = sub.until(f"{topic}/end")
    assert [m.payload for m in got] == [f"m{i}".encode() for i in range(20)]
    assert {m.qos for m in got} == {qos}


def test_retained(broker: Gatekeeper, clients: list[Client], version: int) -> None:
    pub = make(clients, broker, version)
    pub.connect()
    topic = f"retain/{version}/a"
    pub.publish(topic, "kept", 1, retain=True)
    sub = make(clients, broker, version)
    sub.connect()
    sub.subscribe(f"retain/{version}/+", 1)
    m = sub.get()
    assert (m.topic, m.payload, m.retain) == (topic, b"kept", True)
    pub.publish(topic, b"", 1, retain=True)  # deletes
    sub.get()  # the live empty message
    late = make(clients, broker, version)
    late.connect()
    late.subscribe(f"retain/{version}/+", 1)  # a retained message is sent with the SUBACK
    pub.publish(f"retain/{version}/end", "sentinel", 1)
    late.nothing_until(f"retain/{version}/end")


def test_will_on_abrupt_close(broker: Gatekeeper, clients: list[Client], version: int) -> None:
    sub = make(clients, broker, version)
    sub.connect()
    topic = f"will/{version}"
    sub.subscribe(topic, 1)
    dying = make(clients, broker, version)
    dying.c.will_set(topic, "died", 1)
    dying.connect()
    dying.c.loop_stop()
    dying.c.socket().close()  # no DISCONNECT
    m = sub.get(timeout=5)
    assert m.payload == b"died"


def test_clean_disconnect_no_will(broker: Gatekeeper, clients: list[Client],
                                  version: int) -> None:
    sub = make(clients, broker, version)
    sub.connect()
    topic = f"will-clean/{version}"
    sub.subscribe(topic, 1)
    polite = make(clients, broker, version)
    polite.c.will_set(topic, "died", 1)
    polite.connect()
    polite.close()
    # the Will would be published when the broker handles the DISCONNECT; a sentinel from a
    # session that connects only once the broker let the client id go is ordered after it
    again = make(clients, broker, version, client_id=polite.client_id)
    again.connect()
    again.publish(topic, "sentinel", 1)
    sub.nothing_until(lambda m: m.payload == b"sentinel")


def test_persistent_session_queue(broker: Gatekeeper, clients: list[Client],
                                  version: int) -> None:
    cid = f"persist-{version}"
    kw: dict[str, object] = {}
    if version == mqtt.MQTTv5:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 60
        kw["properties"] = props
    sub = make(clients, broker, version, client_id=cid, clean=False)
    sub.connect(**kw)
    sub.subscribe(f"persist/{version}", 1)
    sub.close()
    pub = make(clients, broker, version)
    pub.connect()
    pub.publish(f"persist/{version}", "while away", 1)
    again = make(clients, broker, version, client_id=cid, clean=False)
    rc, _ = again.connect(**kw)
    assert rc == 0
    assert again.get().payload == b"while away"


def test_dollar_topics(broker: Gatekeeper, clients: list[Client], version: int) -> None:
    sub = make(clients, broker, version)
    sub.connect()
    sub.subscribe("#", 0)
    pub = make(clients, broker, version)
    pub.connect()
    pub.publish("$internal/x", "hidden", 1)  # ACL "#" does not cover $-topics: refused
    pub.publish(f"visible/{version}", "seen", 1)
    while True:
        m = sub.get()
        assert not m.topic.startswith("$")
        if m.topic == f"visible/{version}":
            break


def test_v5_request_response_properties(broker: Gatekeeper, clients: list[Client]) -> None:
    v5 = mqtt.MQTTv5
    responder = make(clients, broker, v5)
    responder.connect()
    responder.subscribe("rr/req", 1)
    requester = make(clients, broker, v5)
    requester.connect()
    requester.subscribe("rr/resp/#", 1)
    props = v5_props(ResponseTopic="rr/resp/1", CorrelationData=b"\x01\x02",
                     UserProperty=[("k", "v")], ContentType="application/json",
                     PayloadFormatIndicator=1)
    requester.publish("rr/req", '{"q": 1}', 1, properties=props)
    req = responder.get()
    assert req.properties.ResponseTopic == "rr/resp/1"
    assert req.properties.CorrelationData == b"\x01\x02"
    assert req.properties.UserProperty == [("k", "v")]
    assert req.properties.ContentType == "application/json"
    assert req.properties.PayloadFormatIndicator == 1
    responder.publish(req.properties.ResponseTopic, "answer", 1,
                      properties=v5_props(CorrelationData=req.properties.CorrelationData))
    resp = requester.get()
    assert resp.payload == b"answer" and resp.properties.CorrelationData == b"\x01\x02"


def test_v5_connack_properties(broker: Gatekeeper, clients: list[Client]) -> None:
    c = make(clients, broker, mqtt.MQTTv5, client_id="")
    props = Properties(PacketTypes.CONNECT)
    props.RequestResponseInformation = 1
    rc, ack = c.connect(keepalive=0, properties=props)
    assert rc == 0
    assert ack.AssignedClientIdentifier
    assert ack.ServerKeepAlive == 600
    assert ack.ResponseInformation == f"{broker.root}/reply/{ack.AssignedClientIdentifier}"
    assert ack.MaximumPacketSize == 262144
    assert ack.TopicAliasMaximum == 64


def test_shared_subscription(broker: Gatekeeper, clients: list[Client], version: int) -> None:
    members = [make(clients, broker, version) for _ in range(2)]
    for m in members:
        m.connect()
        m.subscribe(f"$share/workers/jobs/{version}", 1)
        m.subscribe(f"jobs/{version}/end", 1)  # the sentinel, to every member
    pub = make(clients, broker, version)
    pub.connect()
    for i in range(10):
        pub.publish(f"jobs/{version}", str(i), 1)
    pub.publish(f"jobs/{version}/end", "sentinel", 1)  # same session: after the 10
    counts = [len(m.until(f"jobs/{version}/end")) for m in members]
    assert counts == [5, 5]


def test_session_takeover(broker: Gatekeeper, clients: list[Client], version: int) -> None:
    cid = f"takeover-{version}"
    first = make(clients, broker, version, client_id=cid)
    first.connect()
    second = make(clients, broker, version, client_id=cid)
    assert second.connect()[0] == 0
    rc = first.disconnects.get(timeout=5)
    if version == mqtt.MQTTv5:
        assert rc == 142  # 0x8E session taken over
    first.c.loop_stop()


def test_websocket_transport(broker: Gatekeeper, clients: list[Client], version: int) -> None:
    ws = Client(broker.ports["websocket"], version, transport="websockets")
    clients.append(ws)
    assert ws.connect()[0] == 0
    ws.subscribe(f"ws/{version}", 1)
    tcp = make(clients, broker, version)
    tcp.connect()
    tcp.publish(f"ws/{version}", "over websocket", 1)
    assert ws.get().payload == b"over websocket"
    ws.publish(f"ws/{version}/back", "x", 1)


def _raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s


def _read_all(s: socket.socket, timeout: float = 3.0) -> bytes:
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return data
            data += chunk
    except TimeoutError:
        raise AssertionError(f"connection not closed; got {data!r}") from None


V5_CONNECT = b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x01z"
V311_CONNECT = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01z"


@pytest.mark.parametrize(("name", "connect", "payload", "expected"), [
    ("wildcard topic v5", V5_CONNECT, b"\x30\x06\x00\x03a/+\x00", b"\xe0\x02\x90\x00"[:3]),
    ("reserved type v5", V5_CONNECT, b"\x00\x00", b"\xe0"),
    ("bad utf8 v5", V5_CONNECT, b"\x30\x05\x00\x02\xff\xfe\x00", b"\xe0"),
    ("second connect v5", V5_CONNECT, V5_CONNECT, b"\xe0"),
    ("packet id 0 v311", V311_CONNECT, b"\x32\x05\x00\x01a\x00\x00", b""),
    ("huge length v311", V311_CONNECT, b"\x30\xff\xff\xff\x7f", b""),
    ("bad remaining length v311", V311_CONNECT, b"\x30\xff\xff\xff\xff\x01", b""),
])
def test_malformed_packets_close_connection(broker: Gatekeeper, name: str, connect: bytes,
                                            payload: bytes, expected: bytes) -> None:
    s = _raw(broker.port)
    s.sendall(connect)
    time.sleep(0.05)
    s.sendall(payload)
    data = _read_all(s)
    assert data[:1] == b"\x20"  # CONNACK first
    rest = data[data[1] + 2:]
    if expected:
        assert rest.startswith(b"\xe0"), rest  # 5.0: DISCONNECT with a reason code
        assert rest[2] in (0x81, 0x82, 0x90), rest
    else:
        assert rest == b""  # 3.1.1: just closed
    s.close()
    assert broker.alive()


def test_first_packet_not_connect_and_garbage(broker: Gatekeeper) -> None:
    for junk in (b"\xc0\x00", b"GET / HTTP/1.1\r\n\r\n", b"\x10\xff\xff\xff\xff\xff"):
        s = _raw(broker.port)
        s.sendall(junk)
        assert _read_all(s) == b""
        s.close()
    assert broker.alive()


def test_unsupported_protocol_level(broker: Gatekeeper) -> None:
    s = _raw(broker.port)
    s.sendall(b"\x10\x0d\x00\x04MQTT\x03\x02\x00\x3c\x00\x01z")
    assert _read_all(s) == b"\x20\x02\x00\x01"
    s.close()
