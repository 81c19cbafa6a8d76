"""Codec tests (house style of the ``mqtt5`` package's own tests): round-trip every packet on
both protocol versions, every truncated prefix asks for more bytes, a table of malformed inputs
gives exact errors, and our 5.0 encodings agree with the independent ``mqtt5`` codec."""

from __future__ import annotations

import mqtt5
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pi_mqtt_gpio.mqtt.codec import FrameReader, decode, encode
from pi_mqtt_gpio.mqtt.errors import MalformedPacket, MQTTError, PacketTooLarge, ProtocolError
from pi_mqtt_gpio.mqtt.packets import (
    PROTOCOL_50,
    PROTOCOL_311,
    RC,
    Auth,
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

V5_PACKETS = [
    Connect("c1", PROTOCOL_50, keep_alive=60),
    Connect(
        "client-ü", PROTOCOL_50, clean_start=False, keep_alive=5,
        will=Will("w/t", b"bye", 1, True, {Prop.WILL_DELAY_INTERVAL: 5,
                                           Prop.CONTENT_TYPE: "text/plain"}),
        username="alice", password=b"\x00secret",
        properties={Prop.SESSION_EXPIRY_INTERVAL: 3600, Prop.RECEIVE_MAXIMUM: 10,
                    Prop.TOPIC_ALIAS_MAXIMUM: 5, Prop.REQUEST_RESPONSE_INFORMATION: 1,
                    Prop.USER_PROPERTY: [("a", "b"), ("a", "c")]},
    ),
    Connect("", PROTOCOL_50, password=b"only-password"),
    ConnAck(True, RC.SUCCESS, {Prop.ASSIGNED_CLIENT_IDENTIFIER: "auto-1",
                               Prop.SERVER_KEEP_ALIVE: 30, Prop.MAXIMUM_PACKET_SIZE: 1024}),
    ConnAck(False, RC.NOT_AUTHORIZED, {Prop.REASON_STRING: "no"}),
    Publish("a/b", b"payload", 0),
    Publish("a/b", b"", 1, True, True, 7),
    Publish("a/b", b"x" * 300, 2, False, False, 65535,
            {Prop.RESPONSE_TOPIC: "r/t", Prop.CORRELATION_DATA: b"\x01\x02",
             Prop.PAYLOAD_FORMAT_INDICATOR: 1, Prop.MESSAGE_EXPIRY_INTERVAL: 9,
             Prop.CONTENT_TYPE: "json", Prop.USER_PROPERTY: [("k", "v")]}),
    Publish("", b"aliased", 0, properties={Prop.TOPIC_ALIAS: 3}),
    PubAck(1), PubAck(2, RC.NO_MATCHING_SUBSCRIBERS),
    PubAck(3, RC.NOT_AUTHORIZED, {Prop.REASON_STRING: "denied"}),
    PubRec(4), PubRec(5, RC.QUOTA_EXCEEDED), PubRel(6), PubRel(7, RC.PACKET_IDENTIFIER_NOT_FOUND),
    PubComp(8), PubComp(9, RC.PACKET_IDENTIFIER_NOT_FOUND, {Prop.USER_PROPERTY: [("x", "y")]}),
    Subscribe(10, [Subscription("a/#", 2, True, True, 2), Subscription("$share/g/b/+", 1)],
              {Prop.SUBSCRIPTION_IDENTIFIER: [42]}),
    SubAck(10, [0, 1, 2, RC.NOT_AUTHORIZED]),
    Unsubscribe(11, ["a/#", "b"]),
    UnsubAck(11, [RC.SUCCESS, RC.NO_SUBSCRIPTION_EXISTED]),
    PingReq(), PingResp(),
    Disconnect(), Disconnect(RC.SESSION_TAKEN_OVER),
    Disconnect(RC.SUCCESS, {Prop.SESSION_EXPIRY_INTERVAL: 0}),
    Auth(), Auth(RC.CONTINUE_AUTHENTICATION, {Prop.AUTHENTICATION_METHOD: "x"}),
]

V311_PACKETS = [
    Connect("c1", PROTOCOL_311, keep_alive=60),
    Connect("c2", PROTOCOL_311, clean_start=False, will=Will("w", b"bye", 2, True),
            username="u", password=b"p"),
    ConnAck(False, RC.SUCCESS), ConnAck(True, RC.SUCCESS),
    Publish("a/b", b"payload", 0), Publish("a", b"", 1, True, True, 7),
    Publish("a/b", b"y" * 200, 2, False, False, 9),
    PubAck(1), PubRec(2), PubRel(3), PubComp(4),
    Subscribe(5, [Subscription("a/+", 1), Subscription("#", 0)]),
    SubAck(5, [0, 1, 2, 0x80]),
    Unsubscribe(6, ["a/+"]), UnsubAck(6),
    PingReq(), PingResp(), Disconnect(),
]


@pytest.mark.parametrize(("version", "packet"), [(PROTOCOL_50, p) for p in V5_PACKETS]
                         + [(PROTOCOL_311, p) for p in V311_PACKETS], ids=repr)
def test_round_trip(version: int, packet: object) -> None:
    data = encode(packet, version)  # type: ignore[arg-type]
    result = decode(data + b"\xc0", version)  # a trailing byte must be left alone
    assert result is not None
    decoded, used = result
    assert used == len(data)
    assert decoded == packet
    # Every truncated prefix asks for more bytes (None), never raises.
    for cut in range(len(data)):
        assert decode(data[:cut], version) is None


@pytest.mark.parametrize("packet", V5_PACKETS, ids=repr)
def test_v5_encoding_accepted_by_mqtt5(packet: object) -> None:
    """The independent ``mqtt5`` (Rust) codec parses our 5.0 bytes to the same length."""
    data = encode(packet, PROTOCOL_50)  # type: ignore[arg-type]
    if isinstance(packet, Auth) and data == b"\xf0\x00":
        pytest.skip("mqtt5 0.8 rejects the 2-byte AUTH that MQTT 5.0 section 3.15.2.1 allows")
    theirs, used = mqtt5.read(memoryview(data))
    assert used == len(data)
    if isinstance(packet, Publish):
        assert theirs.topic == packet.topic and theirs.payload == packet.payload
        assert int(theirs.qos) == packet.qos
        if Prop.CORRELATION_DATA in packet.properties:
            assert theirs.correlation_data == packet.properties[Prop.CORRELATION_DATA]
            assert theirs.response_topic == packet.properties[Prop.RESPONSE_TOPIC]


def test_mqtt5_encodings_decode_identically() -> None:
    theirs = mqtt5.PublishPacket(
        "x/y", b"data", qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=12, response_topic="resp",
        correlation_data=b"c", user_properties=[("a", "1")], message_expiry_interval=30,
    )
    raw = theirs.write()
    packet, used = decode(raw, PROTOCOL_50)  # type: ignore[misc]
    assert used == len(raw)
    assert packet == Publish("x/y", b"data", 1, False, False, 12, {
        Prop.MESSAGE_EXPIRY_INTERVAL: 30, Prop.RESPONSE_TOPIC: "resp",
        Prop.CORRELATION_DATA: b"c", Prop.USER_PROPERTY: [("a", "1")]})
    connect = mqtt5.ConnectPacket("cid", username="u", password=b"p", clean_start=True,
                                  keep_alive=30, session_expiry_interval=10)
    packet, _ = decode(connect.write(), PROTOCOL_50)  # type: ignore[misc]
    assert isinstance(packet, Connect)
    assert (packet.client_id, packet.username, packet.password, packet.keep_alive) == (
        "cid", "u", b"p", 30)
    assert packet.properties[Prop.SESSION_EXPIRY_INTERVAL] == 10


def _connect_body(level: int, flags: int, payload: bytes, props: bytes = b"\x00") -> bytes:
    body = b"\x00\x04MQTT" + bytes((level, flags)) + b"\x00\x3c"
    if level == 5:
        body += props
    body += payload
    return bytes((0x10, len(body))) + body


MALFORMED = [
    # (name, version, bytes, exception, message)
    ("reserved type 0", 5, b"\x00\x00", MalformedPacket, "reserved packet type 0"),
    ("AUTH on 3.1.1", 4, b"\xf0\x00", MalformedPacket, "reserved packet type 15"),
    ("remaining length 5 bytes", 5, b"\x30\xff\xff\xff\xff\x01", MalformedPacket,
     "remaining length longer than 4 bytes"),
    ("non-minimal remaining length", 5, b"\xc0\x80\x00", MalformedPacket,
     "remaining length not minimally encoded"),
    ("PUBLISH QoS 3", 5, b"\x36\x06\x00\x01a\x00\x01\x00", MalformedPacket,
     "PUBLISH QoS must not be 3"),
    ("DUP on QoS 0", 4, b"\x38\x03\x00\x01a", MalformedPacket, "DUP must be 0 for QoS 0"),
    ("wildcard in topic", 4, b"\x30\x05\x00\x03a/+", ProtocolError,
     "topic name contains a wildcard"),
    ("hash in topic", 5, b"\x30\x04\x00\x01#\x00", ProtocolError,
     "topic name contains a wildcard"),
    ("bad UTF-8 topic", 4, b"\x30\x04\x00\x02\xff\xfe", MalformedPacket,
     "topic name is not valid UTF-8"),
    ("UTF-16 surrogate", 4, b"\x30\x05\x00\x03\xed\xa0\x80", MalformedPacket,
     "topic name is not valid UTF-8"),
    ("NUL in topic", 4, b"\x30\x04\x00\x02a\x00", MalformedPacket, "topic name contains U+0000"),
    ("topic longer than packet", 4, b"\x30\x03\x00\x05a", MalformedPacket,
     "topic name longer than the packet"),
    ("packet id 0 in PUBLISH", 4, b"\x32\x05\x00\x01a\x00\x00", MalformedPacket,
     "packet identifier must not be 0"),
    ("packet id 0 in PUBACK", 5, b"\x40\x02\x00\x00", MalformedPacket,
     "packet identifier must not be 0"),
    ("empty topic without alias", 5, b"\x30\x03\x00\x00\x00", ProtocolError,
     "empty topic name without a topic alias"),
    ("topic alias 0", 5, b"\x30\x07\x00\x01a\x03\x23\x00\x00", ProtocolError,
     "property TOPIC_ALIAS must not be 0"),
    ("unknown property", 5, b"\x30\x06\x00\x01a\x02\x7f\x00", MalformedPacket,
     "unknown property 0x7f"),
    ("property not allowed", 5, b"\x30\x07\x00\x01a\x03\x21\x00\x01", MalformedPacket,
     "property RECEIVE_MAXIMUM not allowed here"),
    ("duplicate property", 5, b"\x30\x08\x00\x01a\x04\x01\x01\x01\x01", ProtocolError,
     "property PAYLOAD_FORMAT_INDICATOR included twice"),
    ("bad payload format value", 5, b"\x30\x06\x00\x01a\x02\x01\x02", ProtocolError,
     "property PAYLOAD_FORMAT_INDICATOR must be 0 or 1"),
    ("property length beyond packet", 5, b"\x30\x05\x00\x01a\x09\x01", MalformedPacket,
     "property length exceeds the packet"),
    ("subscription id from client", 5, b"\x30\x06\x00\x01a\x02\x0b\x01", ProtocolError,
     "PUBLISH from a client carries a subscription identifier"),
    ("PUBREL bad flags", 5, b"\x60\x02\x00\x01", MalformedPacket,
     "reserved flags of PUBREL must be 0x2"),
    ("SUBSCRIBE bad flags", 4, b"\x80\x06\x00\x01\x00\x01a\x00", MalformedPacket,
     "reserved flags of SUBSCRIBE must be 0x2"),
    ("SUBSCRIBE no filters", 4, b"\x82\x02\x00\x01", ProtocolError,
     "SUBSCRIBE without a topic filter"),
    ("SUBSCRIBE QoS 3", 4, b"\x82\x06\x00\x01\x00\x01a\x03", MalformedPacket,
     "subscription QoS must not be 3"),
    ("SUBSCRIBE reserved bits 3.1.1", 4, b"\x82\x06\x00\x01\x00\x01a\x04", MalformedPacket,
     "reserved subscription option bits must be 0"),
    ("SUBSCRIBE reserved bits 5.0", 5, b"\x82\x07\x00\x01\x00\x00\x01a\xc0", MalformedPacket,
     "reserved subscription option bits must be 0"),
    ("SUBSCRIBE retain handling 3", 5, b"\x82\x07\x00\x01\x00\x00\x01a\x30", ProtocolError,
     "retain handling must not be 3"),
    ("SUBSCRIBE options missing", 4, b"\x82\x05\x00\x01\x00\x01a", MalformedPacket,
     "subscription options missing"),
    ("UNSUBSCRIBE no filters", 5, b"\xa2\x03\x00\x01\x00", ProtocolError,
     "UNSUBSCRIBE without a topic filter"),
    ("PINGREQ with body", 4, b"\xc0\x01\x00", MalformedPacket, "PINGREQ remaining length must be 0"),
    ("PINGREQ flags", 4, b"\xc1\x00", MalformedPacket, "reserved flags of PINGREQ must be 0x0"),
    ("DISCONNECT body on 3.1.1", 4, b"\xe0\x01\x00", MalformedPacket,
     "DISCONNECT remaining length must be 0"),
    ("PUBACK long on 3.1.1", 4, b"\x40\x03\x00\x01\x00", MalformedPacket,
     "PUBACK remaining length must be 2"),
    ("CONNECT reserved flag", 4, _connect_body(4, 0x03, b"\x00\x01c"), MalformedPacket,
     "reserved connect flag must be 0"),
    ("CONNECT will QoS 3", 4, _connect_body(4, 0x1e, b"\x00\x01c\x00\x01w\x00\x00"),
     MalformedPacket, "will QoS must not be 3"),
    ("CONNECT will QoS without will", 4, _connect_body(4, 0x0a, b"\x00\x01c"), MalformedPacket,
     "will QoS and retain must be 0 without a will"),
    ("CONNECT password without user 3.1.1", 4, _connect_body(4, 0x42, b"\x00\x01c\x00\x01p"),
     MalformedPacket, "password flag set without user name flag"),
    ("CONNECT bad UTF-8 client id", 5, _connect_body(5, 0x02, b"\x00\x02\xc3\x28"),
     MalformedPacket, "client identifier is not valid UTF-8"),
    ("CONNECT trailing bytes", 4, _connect_body(4, 0x02, b"\x00\x01cX"), MalformedPacket,
     "unexpected bytes after the CONNECT payload"),
    ("CONNECT will topic wildcard", 4, _connect_body(4, 0x06, b"\x00\x01c\x00\x01#\x00\x00"),
     ProtocolError, "topic name contains a wildcard"),
    ("CONNECT receive maximum 0", 5, _connect_body(5, 0x02, b"\x00\x01c", b"\x03\x21\x00\x00"),
     ProtocolError, "property RECEIVE_MAXIMUM must not be 0"),
    ("user property bad UTF-8", 5,
     b"\x30\x0b\x00\x01a\x07\x26\x00\x01\xff\x00\x01b", MalformedPacket,
     "user property name is not valid UTF-8"),
]


@pytest.mark.parametrize(("name", "version", "data", "exc", "message"), MALFORMED,
                         ids=[m[0] for m in MALFORMED])
def test_malformed(name: str, version: int, data: bytes, exc: type[MQTTError],
                   message: str) -> None:
    with pytest.raises(exc) as info:
        decode(data, version)
    assert info.value.message == message
    assert type(info.value) is exc


def test_reason_codes_of_errors() -> None:
    assert MalformedPacket("x").reason_code == RC.MALFORMED_PACKET
    assert ProtocolError("x").reason_code == RC.PROTOCOL_ERROR
    with pytest.raises(ProtocolError) as info:
        decode(b"\x30\x05\x00\x03a/+", PROTOCOL_311)
    assert info.value.reason_code == RC.TOPIC_NAME_INVALID


def test_max_packet_size_enforced_from_fixed_header() -> None:
    reader = FrameReader(max_packet_size=100)
    # Claims 2 MB; only 4 header bytes arrive: refused before the body is buffered.
    reader.feed(b"\x30\x80\x80\x80")
    assert reader.next_frame() is None  # varint not complete yet
    reader.feed(b"\x01")
    with pytest.raises(PacketTooLarge) as info:
        reader.next_frame()
    assert info.value.reason_code == RC.PACKET_TOO_LARGE
    assert reader.buffered == 5


def test_frame_reader_handles_split_and_coalesced_input() -> None:
    packets = [Publish(f"t/{i}", bytes([i]) * i, 1, packet_id=i + 1) for i in range(50)]
    stream = b"".join(encode(p, PROTOCOL_50) for p in packets)
    for chunk in (1, 3, 7, 64, len(stream)):
        reader = FrameReader()
        out = []
        for i in range(0, len(stream), chunk):
            reader.feed(stream[i : i + chunk])
            while (frame := reader.next_frame()) is not None:
                out.append(decode(bytes((frame[0],)) + _varint(len(frame[1])) + frame[1])[0])  # type: ignore[index]
        assert out == packets


def _varint(n: int) -> bytes:
    from pi_mqtt_gpio.mqtt.codec import encode_varint

    return encode_varint(n)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([PROTOCOL_311, PROTOCOL_50]))
def test_fuzz_random_bytes_only_raise_mqtt_errors(data: bytes, version: int) -> None:
    try:
        decode(data, version)
    except MQTTError:
        pass


@settings(max_examples=800, deadline=None)
@given(st.integers(0, len(V5_PACKETS) - 1), st.integers(0, 400), st.integers(0, 255))
def test_fuzz_mutated_packets(index: int, position: int, value: int) -> None:
    data = bytearray(encode(V5_PACKETS[index], PROTOCOL_50))
    data[position % len(data)] = value
    for version in (PROTOCOL_50, PROTOCOL_311):
        try:
            decode(bytes(data), version)
        except MQTTError:
            pass
