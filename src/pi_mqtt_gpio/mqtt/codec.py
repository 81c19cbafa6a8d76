"""MQTT 3.1.1 and 5.0 wire codec: bytes in, packets out, and back. No I/O, no clock.

``FrameReader`` cuts a byte stream into packets and enforces the maximum packet size from the
fixed header, before any body is buffered. ``decode`` turns one frame into a packet of
``packets.py``; ``encode`` does the reverse. Every violation raises an ``MQTTError`` whose
message names the rule and whose ``reason_code`` is what a 5.0 server sends back.

Why our own codec for 5.0 as well (and not only for 3.1.1): the ``mqtt5`` package (0.8) panics
with a ``BaseException`` on invalid UTF-8 and accepts reserved CONNECT flags, a Will QoS without
a Will, packet id 0 and wildcards in topic names, so every packet would have to be re-checked
anyway; one codec for both versions gives one packet model and one table of exact errors. The
test-suite uses ``mqtt5`` as an independent oracle for our 5.0 encodings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pi_mqtt_gpio.mqtt.errors import MalformedPacket, MQTTError, PacketTooLarge, ProtocolError
from pi_mqtt_gpio.mqtt.packets import (
    PROTOCOL_50,
    RC,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    PingReq,
    PingResp,
    Prop,
    Properties,
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
from pi_mqtt_gpio.mqtt.wire import (
    WILL,
    encode_bin,
    encode_props,
    encode_str,
    encode_varint,
    read_bin,
    read_props,
    read_str,
    read_u16,
    utf8,
)

__all__ = [
    "FrameReader",
    "connack_code_311",
    "decode",
    "decode_frame",
    "encode",
    "encode_publish",
    "encode_varint",
    "peek_protocol_level",
    "validate_topic_name",
]

# --- framing -----------------------------------------------------------------------------------
class FrameReader:
    """Cuts a byte stream into (first byte, body) frames.

    The maximum packet size (whole packet: fixed header included) is checked as soon as the
    remaining length is known, so an oversize claim never makes us buffer its body.
    """

    __slots__ = ("_buf", "_pos", "max_packet_size")

    def __init__(self, max_packet_size: int = 268_435_460) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_packet_size = max_packet_size

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def peek_first(self) -> int | None:
        """The first byte of the next frame, if any byte is buffered."""
        return self._buf[self._pos] if len(self._buf) > self._pos else None

    def next_frame(self) -> tuple[int, bytes] | None:
        """The next complete frame, or None when more bytes are needed."""
        buf = self._buf
        pos = self._pos
        end = len(buf)
        if end - pos < 2:
            return None
        first = buf[pos]
        byte = buf[pos + 1]
        if byte < 0x80:
            length = byte
            hdr = 2
        else:
            length = byte & 0x7F
            shift = 7
            hdr = 2
            while True:
                if pos + hdr >= end:
                    if hdr >= 5:
                        raise MalformedPacket("remaining length longer than 4 bytes")
                    return None
                byte = buf[pos + hdr]
                hdr += 1
                length |= (byte & 0x7F) << shift
                if byte < 0x80:
                    if byte == 0:
                        raise MalformedPacket("remaining length not minimally encoded")
                    break
                if hdr >= 5:
                    raise MalformedPacket("remaining length longer than 4 bytes")
                shift += 7
        if hdr + length > self.max_packet_size:
            raise PacketTooLarge(
                f"packet of {hdr + length} bytes exceeds the maximum of {self.max_packet_size}"
            )
        stop = pos + hdr + length
        if stop > end:
            return None
        body = bytes(buf[pos + hdr : stop])
        self._pos = stop
        if stop == end:
            buf.clear()
            self._pos = 0
        return first, body


# --- decoding ----------------------------------------------------------------------------------
def peek_protocol_level(body: bytes) -> int:
    """The protocol level byte of a CONNECT body (0 when the body is too short to tell)."""
    if len(body) < 2:
        return 0
    n = (body[0] << 8) | body[1]
    return body[2 + n] if len(body) > 2 + n else 0


def _check_flags(first: int, expected: int, name: str) -> None:
    if first & 0x0F != expected:
        raise MalformedPacket(f"reserved flags of {name} must be {expected:#x}")  # MQTT-2.2.2-2


def _packet_id(body: bytes, pos: int, end: int) -> tuple[int, int]:
    pid, pos = read_u16(body, pos, end, "packet identifier")
    if pid == 0:
        raise MalformedPacket("packet identifier must not be 0")  # MQTT-2.2.1-3
    return pid, pos


def _decode_connect(first: int, body: bytes) -> Connect:
    _check_flags(first, 0, "CONNECT")
    end = len(body)
    name, pos = read_str(body, 0, end, "protocol name")
    if pos >= end:
        raise MalformedPacket("protocol level missing")
    level = body[pos]
    pos += 1
    if pos >= end:
        raise MalformedPacket("connect flags missing")
    flags = body[pos]
    pos += 1
    if flags & 0x01:
        raise MalformedPacket("reserved connect flag must be 0")  # MQTT-3.1.2-3
    keep_alive, pos = read_u16(body, pos, end, "keep alive")
    v5 = level == PROTOCOL_50
    props: Properties = {}
    if v5:
        props, pos = read_props(body, pos, end, PacketType.CONNECT)
    will_flag = bool(flags & 0x04)
    will_qos = (flags >> 3) & 0x03
    will_retain = bool(flags & 0x20)
    if will_qos == 3:
        raise MalformedPacket("will QoS must not be 3")  # MQTT-3.1.2-14
    if not will_flag and (will_qos or will_retain):
        raise MalformedPacket("will QoS and retain must be 0 without a will")  # MQTT-3.1.2-11/13
    has_user = bool(flags & 0x80)
    has_pass = bool(flags & 0x40)
    if not v5 and has_pass and not has_user:
        raise MalformedPacket("password flag set without user name flag")  # MQTT-3.1.2-22
    client_id, pos = read_str(body, pos, end, "client identifier")
    will = None
    if will_flag:
        will_props: Properties = {}
        if v5:
            will_props, pos = read_props(body, pos, end, WILL)
        topic, pos = read_str(body, pos, end, "will topic")
        validate_topic_name(topic)
        payload, pos = read_bin(body, pos, end, "will payload")
        will = Will(topic, payload, will_qos, will_retain, will_props)
    username = None
    password = None
    if has_user:
        username, pos = read_str(body, pos, end, "user name")
    if has_pass:
        password, pos = read_bin(body, pos, end, "password")
    if pos != end:
        raise MalformedPacket("unexpected bytes after the CONNECT payload")
    return Connect(
        client_id=client_id,
        protocol_level=level,
        protocol_name=name,
        clean_start=bool(flags & 0x02),
        keep_alive=keep_alive,
        will=will,
        username=username,
        password=password,
        properties=props,
    )


def validate_topic_name(topic: str) -> None:
    """A topic name in a PUBLISH or Will: no wildcards (MQTT-3.3.2-2)."""
    if "+" in topic or "#" in topic:
        raise ProtocolError("topic name contains a wildcard", RC.TOPIC_NAME_INVALID)


# Per-hop PUBLISH properties: a property block holding one is never forwarded as is.
_NOT_FAST = (Prop.TOPIC_ALIAS, Prop.MESSAGE_EXPIRY_INTERVAL, Prop.SUBSCRIPTION_IDENTIFIER)


def _decode_publish(first: int, body: bytes, version: int, from_client: bool) -> Publish:
    qos = (first >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH QoS must not be 3")  # MQTT-3.3.1-4
    dup = bool(first & 0x08)
    if dup and not qos:
        raise MalformedPacket("DUP must be 0 for QoS 0")  # MQTT-3.3.1-2
    end = len(body)
    if end < 2:
        raise MalformedPacket("topic name length missing")
    n = (body[0] << 8) | body[1]
    pos = 2 + n
    if pos > end:
        raise MalformedPacket("topic name longer than the packet")
    topic = utf8(body[2:pos], "topic name")
    validate_topic_name(topic)
    packet_id = None
    if qos:
        packet_id, pos = _packet_id(body, pos, end)
    props: Properties = {}
    raw = None
    if version == PROTOCOL_50:
        props, raw, pos = _publish_props(body, pos, end, from_client)
    if not topic and Prop.TOPIC_ALIAS not in props:
        raise ProtocolError("empty topic name without a topic alias", RC.TOPIC_NAME_INVALID)
    return Publish(topic, body[pos:], qos, bool(first & 0x01), dup, packet_id, props, raw)


def _publish_props(body: bytes, pos: int, end: int, from_client: bool
                   ) -> tuple[Properties, bytes | None, int]:
    """A 5.0 PUBLISH's properties, their encoded block when it may be forwarded as is (no
    per-hop property in it), and where the payload starts."""
    if pos < end and body[pos] == 0:
        return {}, None, pos + 1
    start = pos
    props, pos = read_props(body, pos, end, PacketType.PUBLISH)
    if from_client and Prop.SUBSCRIPTION_IDENTIFIER in props:
        # MQTT-3.3.4-6: a client must not send Subscription Identifiers.
        raise ProtocolError("PUBLISH from a client carries a subscription identifier")
    if any(p in props for p in _NOT_FAST):
        return props, None, pos
    return props, body[start:pos], pos


def split_publish(first: int, body: bytes, v5: bool
                  ) -> tuple[bytes, int | None, Properties, bytes | None, int] | None:
    """The common inbound PUBLISH (QoS 0 or 1, no DUP, no RETAIN, a topic name, no Topic
    Alias, Message Expiry or Subscription Identifier), cut without decoding its topic:
    (topic bytes, packet id, properties, their encoded block, payload offset). None for
    anything else, well-formed or not: ``decode_frame`` then decides (and raises)."""
    if first not in (0x30, 0x32):
        return None
    end = len(body)
    if end < 2:
        return None
    n = (body[0] << 8) | body[1]
    pos = 2 + n
    if not n or pos > end:
        return None
    packet_id = None
    if first == 0x32:
        if pos + 2 > end:
            return None
        packet_id = (body[pos] << 8) | body[pos + 1]
        if not packet_id:
            return None
        pos += 2
    props: Properties = {}
    raw = None
    if v5:
        if pos >= end:
            return None
        if body[pos] == 0:
            pos += 1
        else:
            start = pos
            try:
                props, pos = read_props(body, pos, end, PacketType.PUBLISH)
            except MQTTError:
                return None
            if any(p in props for p in _NOT_FAST):
                return None
            raw = body[start:pos]
    return body[2:2 + n], packet_id, props, raw, pos


def _decode_ack(cls: Any, kind: PacketType, body: bytes, version: int) -> Any:
    end = len(body)
    pid, pos = _packet_id(body, 0, end)
    if version != PROTOCOL_50:
        if end != 2:
            raise MalformedPacket(f"{kind.name} remaining length must be 2")
        return cls(pid)
    if end == 2:
        return cls(pid)
    code = body[pos]
    pos += 1
    props: Properties = {}
    if pos < end:
        props, pos = read_props(body, pos, end, kind)
    if pos != end:
        raise MalformedPacket(f"unexpected bytes after the {kind.name} properties")
    return cls(pid, code, props)


def _decode_subscribe(first: int, body: bytes, version: int) -> Subscribe:
    _check_flags(first, 2, "SUBSCRIBE")  # MQTT-3.8.1-1
    end = len(body)
    pid, pos = _packet_id(body, 0, end)
    props: Properties = {}
    if version == PROTOCOL_50:
        props, pos = read_props(body, pos, end, PacketType.SUBSCRIBE)
        if len(props.get(Prop.SUBSCRIPTION_IDENTIFIER, ())) > 1:
            raise ProtocolError("property SUBSCRIPTION_IDENTIFIER included twice")
    subs: list[Subscription] = []
    while pos < end:
        topic_filter, pos = read_str(body, pos, end, "topic filter")
        if pos >= end:
            raise MalformedPacket("subscription options missing")
        opts = body[pos]
        pos += 1
        qos = opts & 0x03
        if qos == 3:
            raise MalformedPacket("subscription QoS must not be 3")  # MQTT-3.8.3-4
        if version == PROTOCOL_50:
            if opts & 0xC0:
                raise MalformedPacket("reserved subscription option bits must be 0")  # MQTT-3.8.3-5
            rh = (opts >> 4) & 0x03
            if rh == 3:
                raise ProtocolError("retain handling must not be 3")
            subs.append(Subscription(topic_filter, qos, bool(opts & 0x04), bool(opts & 0x08), rh))
        else:
            if opts & 0xFC:
                raise MalformedPacket("reserved subscription option bits must be 0")  # MQTT-3-8.3-4
            subs.append(Subscription(topic_filter, qos))
    if not subs:
        raise ProtocolError("SUBSCRIBE without a topic filter")  # MQTT-3.8.3-3
    return Subscribe(pid, subs, props)


def _decode_unsubscribe(first: int, body: bytes, version: int) -> Unsubscribe:
    _check_flags(first, 2, "UNSUBSCRIBE")  # MQTT-3.10.1-1
    end = len(body)
    pid, pos = _packet_id(body, 0, end)
    props: Properties = {}
    if version == PROTOCOL_50:
        props, pos = read_props(body, pos, end, PacketType.UNSUBSCRIBE)
    filters: list[str] = []
    while pos < end:
        topic_filter, pos = read_str(body, pos, end, "topic filter")
        filters.append(topic_filter)
    if not filters:
        raise ProtocolError("UNSUBSCRIBE without a topic filter")  # MQTT-3.10.3-2
    return Unsubscribe(pid, filters, props)


def _decode_reason_and_props(
    body: bytes, version: int, kind: PacketType
) -> tuple[int, Properties]:
    end = len(body)
    if version != PROTOCOL_50:
        if end:
            raise MalformedPacket(f"{kind.name} remaining length must be 0")
        return RC.SUCCESS, {}
    if not end:
        return RC.SUCCESS, {}
    code = body[0]
    props: Properties = {}
    pos = 1
    if end > 1:
        props, pos = read_props(body, 1, end, kind)
    if pos != end:
        raise MalformedPacket(f"unexpected bytes after the {kind.name} properties")
    return code, props


def _decode_connack(body: bytes, version: int) -> ConnAck:
    end = len(body)
    if end < 2:
        raise MalformedPacket("CONNACK too short")
    if body[0] & 0xFE:
        raise MalformedPacket("reserved CONNACK flags must be 0")
    props: Properties = {}
    if version == PROTOCOL_50:
        props, pos = read_props(body, 2, end, PacketType.CONNACK)
        if pos != end:
            raise MalformedPacket("unexpected bytes after the CONNACK properties")
    elif end != 2:
        raise MalformedPacket("CONNACK remaining length must be 2")
    return ConnAck(bool(body[0] & 1), body[1], props)


def _decode_suback(body: bytes, version: int, kind: PacketType) -> tuple[int, list[int], Properties]:
    end = len(body)
    pid, pos = _packet_id(body, 0, end)
    props: Properties = {}
    if version == PROTOCOL_50:
        props, pos = read_props(body, pos, end, kind)
    return pid, list(body[pos:]), props


def _decode_empty(cls: Any, name: str) -> Callable[[int, bytes, int], Packet]:
    def decode_empty(first: int, body: bytes, version: int) -> Packet:
        _check_flags(first, 0, name)
        if body:
            raise MalformedPacket(f"{name} remaining length must be 0")
        return cls()  # type: ignore[no-any-return]
    return decode_empty


def _decode_acks(cls: Any, kind: PacketType, flags: int) -> Callable[[int, bytes, int], Packet]:
    def decode_ack(first: int, body: bytes, version: int) -> Packet:
        _check_flags(first, flags, kind.name)
        return _decode_ack(cls, kind, body, version)  # type: ignore[no-any-return]
    return decode_ack


def _decode_disconnect(first: int, body: bytes, version: int) -> Disconnect:
    _check_flags(first, 0, "DISCONNECT")
    code, props = _decode_reason_and_props(body, version, PacketType.DISCONNECT)
    return Disconnect(code, props)


def _decode_connack_frame(first: int, body: bytes, version: int) -> ConnAck:
    _check_flags(first, 0, "CONNACK")
    return _decode_connack(body, version)


def _decode_suback_frame(first: int, body: bytes, version: int) -> SubAck:
    _check_flags(first, 0, "SUBACK")
    pid, codes, props = _decode_suback(body, version, PacketType.SUBACK)
    return SubAck(pid, codes, props)


def _decode_unsuback_frame(first: int, body: bytes, version: int) -> UnsubAck:
    _check_flags(first, 0, "UNSUBACK")
    pid, codes, props = _decode_suback(body, version, PacketType.UNSUBACK)
    if version != PROTOCOL_50 and codes:
        raise MalformedPacket("UNSUBACK remaining length must be 2")
    return UnsubAck(pid, codes, props)


def _decode_auth(first: int, body: bytes, version: int) -> Auth:
    if version != PROTOCOL_50:
        raise MalformedPacket("reserved packet type 15")  # 3.1.1 table 2.1
    _check_flags(first, 0, "AUTH")
    code, props = _decode_reason_and_props(body, version, PacketType.AUTH)
    return Auth(code, props)


# Packet type -> its decoder (PUBLISH, which depends on ``from_client``, aside).
_DECODERS: dict[int, Callable[[int, bytes, int], Packet]] = {
    1: lambda first, body, _version: _decode_connect(first, body),
    2: _decode_connack_frame,
    4: _decode_acks(PubAck, PacketType.PUBACK, 0),
    5: _decode_acks(PubRec, PacketType.PUBREC, 0),
    6: _decode_acks(PubRel, PacketType.PUBREL, 2),  # MQTT-3.6.1-1
    7: _decode_acks(PubComp, PacketType.PUBCOMP, 0),
    8: _decode_subscribe,
    9: _decode_suback_frame,
    10: _decode_unsubscribe,
    11: _decode_unsuback_frame,
    12: _decode_empty(PingReq, "PINGREQ"),
    13: _decode_empty(PingResp, "PINGRESP"),
    14: _decode_disconnect,
    15: _decode_auth,
}


def decode_frame(first: int, body: bytes, version: int, *, from_client: bool = True) -> Packet:
    """Decode one frame from ``FrameReader`` for a connection speaking ``version``.

    A CONNECT is decoded whatever ``version`` says (it carries its own protocol level).
    ``from_client=False`` decodes what a server sends (PUBLISH may then carry Subscription
    Identifiers).
    """
    ptype = first >> 4
    if ptype == 3:
        return _decode_publish(first, body, version, from_client)
    decoder = _DECODERS.get(ptype)
    if decoder is None:
        raise MalformedPacket(f"reserved packet type {ptype}")  # MQTT-2.2.2 / 3.1.1 table 2.1
    return decoder(first, body, version)


def decode(
    data: bytes, version: int = PROTOCOL_50, *, from_client: bool = True
) -> tuple[Packet, int] | None:
    """Decode the first packet of ``data``: (packet, bytes used), or None if incomplete."""
    reader = FrameReader()
    reader.feed(data)
    frame = reader.next_frame()
    if frame is None:
        return None
    packet = decode_frame(frame[0], frame[1], version, from_client=from_client)
    return packet, len(data) - reader.buffered


# --- encoding ----------------------------------------------------------------------------------
def _frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def encode_publish(
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    dup: bool,
    packet_id: int | None,
    props: Properties | None,
    version: int,
    props_block: bytes | None = None,
) -> bytes:
    """Encode a PUBLISH; the fan-out path calls this once per (QoS, properties) group.

    ``props_block``, when given, is the already encoded property block (5.0) to use as is.
    """
    raw = topic.encode("utf-8")
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    parts = [len(raw).to_bytes(2, "big"), raw]
    if qos:
        parts.append((packet_id or 0).to_bytes(2, "big"))
    if version == PROTOCOL_50:
        if props_block is not None:
            parts.append(props_block)
        else:
            parts.append(encode_props(props) if props else b"\x00")
    parts.append(payload)
    body = b"".join(parts)
    return bytes((first,)) + encode_varint(len(body)) + body


def _encode_connect(p: Connect) -> bytes:
    v5 = p.protocol_level == PROTOCOL_50
    flags = 0
    if p.clean_start:
        flags |= 0x02
    if p.will is not None:
        flags |= 0x04 | (p.will.qos << 3) | (0x20 if p.will.retain else 0)
    if p.password is not None:
        flags |= 0x40
    if p.username is not None:
        flags |= 0x80
    body = bytearray(encode_str(p.protocol_name))
    body.append(p.protocol_level)
    body.append(flags)
    body += p.keep_alive.to_bytes(2, "big")
    if v5:
        body += encode_props(p.properties)
    body += encode_str(p.client_id)
    if p.will is not None:
        if v5:
            body += encode_props(p.will.properties)
        body += encode_str(p.will.topic) + encode_bin(p.will.payload)
    if p.username is not None:
        body += encode_str(p.username)
    if p.password is not None:
        body += encode_bin(p.password)
    return _frame(0x10, bytes(body))


_ACK_FIRST: dict[type, int] = {PubAck: 0x40, PubRec: 0x50, PubRel: 0x62, PubComp: 0x70}


def _encode_ack(packet: Any, v5: bool) -> bytes:
    """PUBACK, PUBREC, PUBREL, PUBCOMP: the short forms when the reason is success."""
    first = _ACK_FIRST[type(packet)]
    pid: bytes = packet.packet_id.to_bytes(2, "big")
    if not v5 or (packet.reason_code == RC.SUCCESS and not packet.properties):
        return bytes((first, 2)) + pid
    if not packet.properties:
        return bytes((first, 3)) + pid + bytes((packet.reason_code,))
    return _frame(first, pid + bytes((packet.reason_code,)) + encode_props(packet.properties))


def _encode_connack(packet: Any, v5: bool) -> bytes:
    body = bytes((1 if packet.session_present else 0, _connack_code(packet.reason_code, v5)))
    if v5:
        body += encode_props(packet.properties)
    return _frame(0x20, body)


def _encode_suback(packet: Any, v5: bool) -> bytes:
    codes = packet.reason_codes
    if not v5:
        codes = [c if c < 0x80 else 0x80 for c in codes]  # 3.1.1: 0x80 is the only failure
    body = packet.packet_id.to_bytes(2, "big")
    if v5:
        body += encode_props(packet.properties)
    return _frame(0x90, body + bytes(codes))


def _encode_unsuback(packet: Any, v5: bool) -> bytes:
    body = packet.packet_id.to_bytes(2, "big")
    if v5:
        body += encode_props(packet.properties) + bytes(packet.reason_codes)
    return _frame(0xB0, body)


def _encode_goodbye(packet: Any, v5: bool) -> bytes:
    """DISCONNECT and AUTH: empty bodies when the reason is success."""
    first = 0xE0 if isinstance(packet, Disconnect) else 0xF0
    if not v5 or (packet.reason_code == RC.SUCCESS and not packet.properties):
        return bytes((first, 0))
    return _frame(first, bytes((packet.reason_code,)) + encode_props(packet.properties))


def _encode_subscribe(packet: Any, v5: bool) -> bytes:
    body = bytearray(packet.packet_id.to_bytes(2, "big"))
    if v5:
        body += encode_props(packet.properties)
    for sub in packet.subscriptions:
        opts = sub.qos
        if v5:
            opts |= ((0x04 if sub.no_local else 0) | (0x08 if sub.retain_as_published else 0)
                     | (sub.retain_handling << 4))
        body += encode_str(sub.topic_filter) + bytes((opts,))
    return _frame(0x82, bytes(body))


def _encode_unsubscribe(packet: Any, v5: bool) -> bytes:
    body = bytearray(packet.packet_id.to_bytes(2, "big"))
    if v5:
        body += encode_props(packet.properties)
    for topic_filter in packet.topic_filters:
        body += encode_str(topic_filter)
    return _frame(0xA2, bytes(body))


_ENCODERS: dict[type, Callable[[Any, bool], bytes]] = {
    PubAck: _encode_ack, PubRec: _encode_ack, PubRel: _encode_ack, PubComp: _encode_ack,
    ConnAck: _encode_connack,
    SubAck: _encode_suback,
    UnsubAck: _encode_unsuback,
    PingReq: lambda packet, v5: b"\xc0\x00",
    PingResp: lambda packet, v5: b"\xd0\x00",
    Disconnect: _encode_goodbye, Auth: _encode_goodbye,
    Subscribe: _encode_subscribe,
    Unsubscribe: _encode_unsubscribe,
    Connect: lambda packet, v5: _encode_connect(packet),
}


def encode(packet: Packet, version: int = PROTOCOL_50) -> bytes:
    """Encode any packet for a connection speaking ``version``."""
    if isinstance(packet, Publish):
        return encode_publish(
            packet.topic, packet.payload, packet.qos, packet.retain, packet.dup,
            packet.packet_id, packet.properties, version,
        )
    encoder = _ENCODERS.get(type(packet))
    if encoder is None:
        raise TypeError(f"cannot encode {packet!r}")
    return encoder(packet, version == PROTOCOL_50)


# 3.1.1 CONNACK return codes (section 3.2.2.3) for the 5.0 reason codes a server uses.
_CONNACK_311: dict[int, int] = {
    RC.SUCCESS: 0x00,
    RC.UNSUPPORTED_PROTOCOL_VERSION: 0x01,
    RC.CLIENT_IDENTIFIER_NOT_VALID: 0x02,
    RC.SERVER_UNAVAILABLE: 0x03,
    RC.SERVER_BUSY: 0x03,
    RC.BAD_USER_NAME_OR_PASSWORD: 0x04,
    RC.NOT_AUTHORIZED: 0x05,
    RC.BANNED: 0x05,
}


def _connack_code(code: int, v5: bool) -> int:
    if v5:
        return code
    return _CONNACK_311.get(code, 0x03)


def connack_code_311(code: int) -> int:
    """The 3.1.1 return code for a 5.0 CONNACK reason code."""
    return _connack_code(code, False)

