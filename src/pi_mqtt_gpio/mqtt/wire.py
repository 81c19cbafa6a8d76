"""The MQTT wire format's primitives, both ways: variable byte integers, strings, binary data,
and the 5.0 property table with the reading and writing of a property block."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pi_mqtt_gpio.mqtt.errors import MalformedPacket, ProtocolError
from pi_mqtt_gpio.mqtt.packets import PacketType, Prop, Properties

__all__ = [
    "WILL",
    "encode_bin",
    "encode_props",
    "encode_str",
    "encode_varint",
    "read_bin",
    "read_props",
    "read_str",
    "read_u16",
    "read_varint",
    "utf8",
]

WILL = 0  # pseudo packet type for Will Properties

# --- property table (MQTT 5.0 section 2.2.2.2) -------------------------------------------------
_BYTE, _TWO, _FOUR, _VARINT, _UTF8, _BINARY, _PAIR = range(7)
_T = PacketType


def _kinds(*kinds: int) -> int:
    mask = 0
    for kind in kinds:
        mask |= 1 << kind
    return mask


_ALL = _kinds(*range(16))
_PROPS: dict[int, tuple[int, int]] = {
    Prop.PAYLOAD_FORMAT_INDICATOR: (_BYTE, _kinds(_T.PUBLISH, WILL)),
    Prop.MESSAGE_EXPIRY_INTERVAL: (_FOUR, _kinds(_T.PUBLISH, WILL)),
    Prop.CONTENT_TYPE: (_UTF8, _kinds(_T.PUBLISH, WILL)),
    Prop.RESPONSE_TOPIC: (_UTF8, _kinds(_T.PUBLISH, WILL)),
    Prop.CORRELATION_DATA: (_BINARY, _kinds(_T.PUBLISH, WILL)),
    Prop.SUBSCRIPTION_IDENTIFIER: (_VARINT, _kinds(_T.PUBLISH, _T.SUBSCRIBE)),
    Prop.SESSION_EXPIRY_INTERVAL: (_FOUR, _kinds(_T.CONNECT, _T.CONNACK, _T.DISCONNECT)),
    Prop.ASSIGNED_CLIENT_IDENTIFIER: (_UTF8, _kinds(_T.CONNACK)),
    Prop.SERVER_KEEP_ALIVE: (_TWO, _kinds(_T.CONNACK)),
    Prop.AUTHENTICATION_METHOD: (_UTF8, _kinds(_T.CONNECT, _T.CONNACK, _T.AUTH)),
    Prop.AUTHENTICATION_DATA: (_BINARY, _kinds(_T.CONNECT, _T.CONNACK, _T.AUTH)),
    Prop.REQUEST_PROBLEM_INFORMATION: (_BYTE, _kinds(_T.CONNECT)),
    Prop.WILL_DELAY_INTERVAL: (_FOUR, _kinds(WILL)),
    Prop.REQUEST_RESPONSE_INFORMATION: (_BYTE, _kinds(_T.CONNECT)),
    Prop.RESPONSE_INFORMATION: (_UTF8, _kinds(_T.CONNACK)),
    Prop.SERVER_REFERENCE: (_UTF8, _kinds(_T.CONNACK, _T.DISCONNECT)),
    Prop.REASON_STRING: (
        _UTF8,
        _kinds(
            _T.CONNACK, _T.PUBACK, _T.PUBREC, _T.PUBREL, _T.PUBCOMP, _T.SUBACK, _T.UNSUBACK,
            _T.DISCONNECT, _T.AUTH,
        ),
    ),
    Prop.RECEIVE_MAXIMUM: (_TWO, _kinds(_T.CONNECT, _T.CONNACK)),
    Prop.TOPIC_ALIAS_MAXIMUM: (_TWO, _kinds(_T.CONNECT, _T.CONNACK)),
    Prop.TOPIC_ALIAS: (_TWO, _kinds(_T.PUBLISH)),
    Prop.MAXIMUM_QOS: (_BYTE, _kinds(_T.CONNACK)),
    Prop.RETAIN_AVAILABLE: (_BYTE, _kinds(_T.CONNACK)),
    Prop.USER_PROPERTY: (_PAIR, _ALL),
    Prop.MAXIMUM_PACKET_SIZE: (_FOUR, _kinds(_T.CONNECT, _T.CONNACK)),
    Prop.WILDCARD_SUBSCRIPTION_AVAILABLE: (_BYTE, _kinds(_T.CONNACK)),
    Prop.SUBSCRIPTION_IDENTIFIER_AVAILABLE: (_BYTE, _kinds(_T.CONNACK)),
    Prop.SHARED_SUBSCRIPTION_AVAILABLE: (_BYTE, _kinds(_T.CONNACK)),
}
# Properties whose value must be 0 or 1.
_BOOLEAN_PROPS = frozenset(
    {
        Prop.PAYLOAD_FORMAT_INDICATOR,
        Prop.REQUEST_PROBLEM_INFORMATION,
        Prop.REQUEST_RESPONSE_INFORMATION,
        Prop.MAXIMUM_QOS,
        Prop.RETAIN_AVAILABLE,
        Prop.WILDCARD_SUBSCRIPTION_AVAILABLE,
        Prop.SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        Prop.SHARED_SUBSCRIPTION_AVAILABLE,
    }
)
# Properties where 0 is a protocol error.
_NONZERO_PROPS = frozenset(
    {
        Prop.RECEIVE_MAXIMUM,  # MQTT-3.1.2-? / 3.2.2.3.3
        Prop.MAXIMUM_PACKET_SIZE,  # 3.1.2.11.4
        Prop.TOPIC_ALIAS,  # MQTT-3.3.2-8
        Prop.SUBSCRIPTION_IDENTIFIER,  # MQTT-3.8.2.1.2 (1 to 268,435,455)
    }
)
_LISTS = frozenset({Prop.USER_PROPERTY, Prop.SUBSCRIPTION_IDENTIFIER})
_CHECK_BOOL, _CHECK_NONZERO, _CHECK_LIST = 1, 2, 4
# pid -> (type, allowed packet kinds, checks, name for messages): one lookup per property.
_SPEC: dict[int, tuple[int, int, int, str]] = {
    pid: (
        ptype,
        allowed,
        (_CHECK_BOOL if pid in _BOOLEAN_PROPS else 0)
        | (_CHECK_NONZERO if pid in _NONZERO_PROPS else 0)
        | (_CHECK_LIST if pid in _LISTS else 0),
        f"property {Prop(pid).name}",
    )
    for pid, (ptype, allowed) in _PROPS.items()
}


# --- primitive readers -------------------------------------------------------------------------
def utf8(raw: bytes, what: str) -> str:
    try:
        text = raw.decode("utf-8")  # strict: rejects overlongs and surrogates (MQTT-1.5.4-1)
    except UnicodeDecodeError:
        raise MalformedPacket(f"{what} is not valid UTF-8") from None
    if "\x00" in text:
        raise MalformedPacket(f"{what} contains U+0000")  # MQTT-1.5.4-2
    return text


def read_bin(buf: bytes, pos: int, end: int, what: str) -> tuple[bytes, int]:
    if pos + 2 > end:
        raise MalformedPacket(f"{what} length missing")
    n = (buf[pos] << 8) | buf[pos + 1]
    pos += 2
    if pos + n > end:
        raise MalformedPacket(f"{what} longer than the packet")
    return bytes(buf[pos : pos + n]), pos + n


def read_str(buf: bytes, pos: int, end: int, what: str) -> tuple[str, int]:
    raw, pos = read_bin(buf, pos, end, what)
    return utf8(raw, what), pos


def read_u16(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    if pos + 2 > end:
        raise MalformedPacket(f"{what} missing")
    return (buf[pos] << 8) | buf[pos + 1], pos + 2


def read_varint(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    value = 0
    shift = 0
    for i in range(4):
        if pos >= end:
            raise MalformedPacket(f"{what} truncated")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if i and byte == 0:
                raise MalformedPacket(f"{what} not minimally encoded")  # MQTT-1.5.5-1
            return value, pos
        shift += 7
    raise MalformedPacket(f"{what} longer than 4 bytes")


def _read_byte(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    if pos >= end:
        raise MalformedPacket(f"{what} truncated")
    return buf[pos], pos + 1


def _read_two(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    if pos + 2 > end:
        raise MalformedPacket(f"{what} truncated")
    return (buf[pos] << 8) | buf[pos + 1], pos + 2


def _read_four(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    if pos + 4 > end:
        raise MalformedPacket(f"{what} truncated")
    return int.from_bytes(buf[pos : pos + 4], "big"), pos + 4


def _read_pair(buf: bytes, pos: int, end: int, what: str) -> tuple[tuple[str, str], int]:
    key, pos = read_str(buf, pos, end, "user property name")
    val, pos = read_str(buf, pos, end, "user property value")
    return (key, val), pos


# How a value of each property type is read: (buffer, position, end, name) -> (value, next).
_READERS: dict[int, Callable[[bytes, int, int, str], tuple[Any, int]]] = {
    _BYTE: _read_byte,
    _TWO: _read_two,
    _FOUR: _read_four,
    _VARINT: read_varint,
    _UTF8: read_str,
    _BINARY: read_bin,
    _PAIR: _read_pair,
}


def read_props(buf: bytes, pos: int, end: int, kind: int) -> tuple[Properties, int]:
    length, pos = read_varint(buf, pos, end, "property length")
    stop = pos + length
    if stop > end:
        raise MalformedPacket("property length exceeds the packet")
    props: Properties = {}
    if not length:
        return props, pos
    kind_bit = 1 << kind
    spec_of = _SPEC.get
    while pos < stop:
        pid = buf[pos]  # every identifier in use fits in one varint byte
        pos += 1
        spec = spec_of(pid)
        if spec is None:
            raise MalformedPacket(f"unknown property 0x{pid:02x}")
        ptype, allowed, checks, name = spec
        if not allowed & kind_bit:
            raise MalformedPacket(f"{name} not allowed here")
        value, pos = _READERS[ptype](buf, pos, stop, name)
        if checks:
            if checks & _CHECK_BOOL and value > 1:
                raise ProtocolError(f"{name} must be 0 or 1")
            if checks & _CHECK_NONZERO and value == 0:
                raise ProtocolError(f"{name} must not be 0")
            if checks & _CHECK_LIST:
                props.setdefault(pid, []).append(value)
                continue
        if pid in props:
            raise ProtocolError(f"{name} included twice")  # 2.2.2.2
        props[pid] = value
    if pos != stop:
        raise MalformedPacket("property length does not match the properties")
    return props, pos


# --- writing -------------------------------------------------------------------------------------
def encode_varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def encode_bin(raw: bytes) -> bytes:
    return len(raw).to_bytes(2, "big") + raw


def encode_props(props: Properties) -> bytes:
    if not props:
        return b"\x00"
    out = bytearray()
    for pid, value in props.items():
        ptype = _PROPS[pid][0]
        values = value if pid in _LISTS else (value,)
        for item in values:
            out += encode_varint(pid)
            if ptype == _BYTE:
                out.append(item)
            elif ptype == _TWO:
                out += item.to_bytes(2, "big")
            elif ptype == _FOUR:
                out += item.to_bytes(4, "big")
            elif ptype == _VARINT:
                out += encode_varint(item)
            elif ptype == _UTF8:
                out += encode_str(item)
            elif ptype == _BINARY:
                out += encode_bin(item)
            else:
                out += encode_str(item[0]) + encode_str(item[1])
    return encode_varint(len(out)) + out
