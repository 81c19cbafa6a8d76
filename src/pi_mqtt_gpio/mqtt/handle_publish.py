"""PUBLISH from a client, and the acknowledgements of the QoS 1/2 flows in both directions.

Two paths take an inbound PUBLISH. The general one (``on_publish``) decodes the packet, checks
it, builds the message and routes it (``BrokerCore.publish``). The fast one (``fast_publish``)
takes the common PUBLISH without building packet objects: cached topic names, decisions and
receivers, and the publisher's own bytes forwarded. Both deliver and account through
``deliver.py`` (``deliver``, ``reserve``, ``fly``; ``land`` for the acknowledgements), so
they send the same bytes and keep the same books: tests/mqtt/test_fast_path.py runs both.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pi_mqtt_gpio.mqtt.authorize import authorize_publish, may_retain, topic_ok
from pi_mqtt_gpio.mqtt.codec import encode_publish, encode_varint, split_publish
from pi_mqtt_gpio.mqtt.connection import Connection, ConnState
from pi_mqtt_gpio.mqtt.deliver import deliver, fly, land, reserve
from pi_mqtt_gpio.mqtt.errors import ProtocolError
from pi_mqtt_gpio.mqtt.hooks import Decision
from pi_mqtt_gpio.mqtt.limits import RC_FAILURE
from pi_mqtt_gpio.mqtt.logguard import clip
from pi_mqtt_gpio.mqtt.message import NONE_YET, Message
from pi_mqtt_gpio.mqtt.packets import (
    PROTOCOL_50,
    RC,
    Prop,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
)
from pi_mqtt_gpio.mqtt.route import Targets, route_targets
from pi_mqtt_gpio.mqtt.session import Inflight, Session

if TYPE_CHECKING:
    from pi_mqtt_gpio.mqtt.broker import BrokerCore

log = logging.getLogger("pi_mqtt_gpio.broker")

_FORWARD_DROP = (Prop.TOPIC_ALIAS, Prop.SUBSCRIPTION_IDENTIFIER, Prop.MESSAGE_EXPIRY_INTERVAL)
_FAST_TOPICS = 16  # topic names remembered per connection (fast path) ...
_FAST_TOPIC_MAX = 256  # ... of at most this many bytes each


# ------------------------------------------------------------------ PUBLISH in, general
def on_publish(core: BrokerCore, conn: Connection, p: Publish, now: float) -> None:
    """An inbound PUBLISH: resolve its topic, check it, route it, acknowledge it."""
    session = core.conn_sessions.get(conn.id)
    assert session is not None and conn.client is not None
    topic = _resolve_alias(core, conn, p)
    qos, pid = p.qos, p.packet_id
    if not topic_ok(core, topic):
        _refuse_publish(core, conn, p, topic, RC.TOPIC_NAME_INVALID, now,
                        "topic too long or too deep")
        return
    if qos == 2 and pid in session.awaiting_rel:
        # Duplicate of a QoS 2 message not yet released: acknowledge, do not route again.
        conn.send(PubRec(pid))
        core.dirty.add(conn)
        return
    if qos == 2 and len(session.awaiting_rel) >= core.limits.receive_maximum:
        raise ProtocolError("Receive Maximum exceeded", RC.RECEIVE_MAXIMUM_EXCEEDED)
    routed = -1
    code = _publish_check(core, conn, p, topic, now)
    if code == RC.SUCCESS:
        routed = core.publish(_inbound_message(core, conn, p, topic, now), now)
    elif code == RC.NOT_AUTHORIZED and not conn.v5:
        code = RC.SUCCESS  # 3.1.1 MQTT-3.3.5-2: positive acknowledgement, message dropped
    if qos == 0:
        return
    if conn.v5 and code == RC.SUCCESS and routed == 0:
        code = RC.NO_MATCHING_SUBSCRIBERS
    if qos == 1:
        conn.send(PubAck(pid, code))  # type: ignore[arg-type]
    else:
        if code < RC_FAILURE:
            session.await_rel(pid)  # type: ignore[arg-type]
        conn.send(PubRec(pid, code))  # type: ignore[arg-type]
    core.dirty.add(conn)


def _resolve_alias(core: BrokerCore, conn: Connection, p: Publish) -> str:
    """The topic of ``p``, through its 5.0 Topic Alias (MQTT-3.3.2-9/10/12)."""
    topic = p.topic
    alias = p.properties.get(Prop.TOPIC_ALIAS) if conn.v5 and p.properties else None
    if alias is None:
        return topic
    if alias > core.limits.topic_alias_maximum:
        raise ProtocolError("topic alias out of range", RC.TOPIC_ALIAS_INVALID)
    if topic:
        if conn.alias_in is NONE_YET:
            conn.alias_in = {}
        conn.alias_in[alias] = topic
        return topic
    known = conn.alias_in.get(alias)
    if known is None:
        raise ProtocolError("unknown topic alias")  # (0x82)
    return known


def _publish_check(core: BrokerCore, conn: Connection, p: Publish, topic: str,
                   now: float) -> int:
    """SUCCESS, PAYLOAD_FORMAT_INVALID (5.0) or NOT_AUTHORIZED (the ACL; the hooks hear of
    the refusal, so that a refused call can still be answered)."""
    client = conn.client
    assert client is not None
    if conn.v5 and p.properties.get(Prop.PAYLOAD_FORMAT_INDICATOR) == 1 \
            and not _utf8_ok(p.payload):
        return RC.PAYLOAD_FORMAT_INVALID
    if authorize_publish(core, client, topic, p.qos, p.retain) is Decision.ALLOW:
        return RC.SUCCESS
    core.log_limiter.log(logging.INFO, conn.client_id, now, "publish to %r by %r denied",
                         clip(topic), clip(conn.client_id))
    denied = Message(topic, p.payload, p.qos, p.retain, p.properties, None, conn.client_id,
                     client.username, client.role)
    for hook in core.hooks:
        try:
            hook.on_publish_denied(client, denied)
        except Exception:
            log.exception("on_publish_denied hook failed")
    return RC.NOT_AUTHORIZED


def _utf8_ok(payload: bytes) -> bool:
    """Whether a payload whose Payload Format Indicator says UTF-8 is."""
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _inbound_message(core: BrokerCore, conn: Connection, p: Publish, topic: str,
                     now: float) -> Message:
    """The message to route: per-hop properties dropped, expiry on our clock, the retain
    flag cleared where a hook forbids it."""
    client = conn.client
    assert client is not None
    props = p.properties
    fwd: Properties = props
    expires_at = None
    if props and p.raw_properties is None:
        fwd = {k: v for k, v in props.items() if k not in _FORWARD_DROP}
        mei = props.get(Prop.MESSAGE_EXPIRY_INTERVAL)
        if mei is not None:
            expires_at = now + mei
    retain = p.retain and may_retain(core, client, topic)
    return Message(topic, p.payload, p.qos, retain, fwd, expires_at, conn.client_id,
                   client.username, client.role, p.raw_properties)


def _refuse_publish(core: BrokerCore, conn: Connection, p: Publish, topic: str, code: int,
                    now: float, why: str) -> None:
    """Drop an inbound PUBLISH: 5.0 says why in PUBACK/PUBREC; 3.1.1 has no negative
    acknowledgement, so the message is acknowledged and dropped (as for the ACL)."""
    core.stats.topics_refused += 1
    core.log_limiter.log(logging.INFO, conn.client_id, now, "publish to %r by %r refused: %s",
                         clip(topic), clip(conn.client_id), why)
    if p.qos == 0:
        return
    ack_code = code if conn.v5 else RC.SUCCESS
    if p.qos == 1:
        conn.send(PubAck(p.packet_id, ack_code))  # type: ignore[arg-type]
    elif conn.v5:
        conn.send(PubRec(p.packet_id, ack_code))  # type: ignore[arg-type]
    else:
        core.conn_sessions[conn.id].await_rel(p.packet_id)  # type: ignore[arg-type]
        conn.send(PubRec(p.packet_id))  # type: ignore[arg-type]
    core.dirty.add(conn)


# ------------------------------------------------------------------ PUBLISH in, fast
def fast_publish(core: BrokerCore, conn: Connection, first: int, body: bytes,
                 now: float) -> bool:
    """The common PUBLISH (QoS 0/1, no DUP, no RETAIN, no Topic Alias, no Message Expiry,
    a topic this connection already published to and was allowed, only plain
    subscriptions matching): routed with cached decisions and, for a receiver of the
    publisher's version, the publisher's own bytes. False (nothing done) for anything
    else: the general path then handles it, errors included."""
    if conn.state is not ConnState.CONNECTED:
        return False
    cut = split_publish(first, body, conn.version == PROTOCOL_50)
    if cut is None:
        return False
    tkey, pid, props, raw, pos = cut
    qos = 1 if pid else 0
    known = conn.fast_topics.get(tkey)
    if known is not None and known[1] == core.auth_epoch and known[2] & (1 << qos):
        topic = known[0]
    else:
        found = _fast_admit(core, conn, tkey, qos, known)
        if found is None:
            return False
        topic = found
    payload = body[pos:]
    if props and props.get(Prop.PAYLOAD_FORMAT_INDICATOR) == 1 and not _utf8_ok(payload):
        return False
    hit = core.targets.get(topic)
    if hit is not None and hit[0] == core.subscriptions.version:
        targets = hit[1]
    else:
        targets = route_targets(core, topic)
    if targets is None:
        return False
    core.stats.messages_in += 1
    count = _forward(core, conn, topic, tkey, body, payload, props, raw, qos, targets, now)
    if pid:
        if conn.version == PROTOCOL_50 and not count:
            conn.write(bytes((0x40, 3, pid >> 8, pid & 0xFF, RC.NO_MATCHING_SUBSCRIBERS)))
        else:
            conn.write(bytes((0x40, 2, pid >> 8, pid & 0xFF)))
        core.dirty.add(conn)
    return True


def _forward(core: BrokerCore, conn: Connection, topic: str, tkey: bytes, body: bytes,
             payload: bytes, props: Properties, raw: bytes | None, qos: int,
             targets: Targets, now: float) -> int:
    """Deliver the PUBLISH (``body``, cut by ``split_publish``: topic bytes ``tkey``,
    properties ``props`` encoded as ``raw``) to ``targets``; returns how many sessions it
    went to. A plain QoS 0 receiver gets bytes shared by every receiver of its version (the
    publisher's own for a QoS 0 PUBLISH); a QoS 1 delivery the publisher's bytes with our
    packet id (``_fly_fast``); any other receiver goes through ``deliver``."""
    sessions = core.sessions
    # ``authorize.read_checked``, inline (once per message): receivers checked by the read
    # rule go through ``deliver``.
    protected = bool(core.protected) and (
        topic.startswith(core.protected) or topic in core.protected_parents)
    version = conn.version
    connected = ConnState.CONNECTED
    dirty = core.dirty
    stats = core.stats
    msg: Message | None = None  # built only for a receiver the general path serves
    same: bytes | None = None  # the PUBLISH as a QoS 0 receiver of ``version`` gets it
    other: bytes | None = None  # ... and as one of the other version gets it
    count = 0
    for cid, sub_qos, sub_ids in targets:
        session = sessions.get(cid)
        if session is None:
            continue
        count += 1
        out = session.conn
        if (sub_ids or protected or out is None or out.state is not connected
                or out.alias_out_max or out.max_packet_out
                or session.internal_handler is not None):
            msg = _deliver(core, conn, session, msg, topic, payload, qos, props, raw, sub_qos,
                           sub_ids, now)
        elif qos and sub_qos:
            msg = _fly_fast(core, conn, session, out, msg, topic, tkey, body, payload, props,
                            raw, sub_ids, now)
        elif out.congested:  # a stuck reader: ``deliver`` drops (and counts) a QoS 0 one
            msg = _deliver(core, conn, session, msg, topic, payload, qos, props, raw, sub_qos,
                           sub_ids, now)
        else:  # a plain QoS 0 delivery: written here, counted as ``written`` does
            if out.version == version:
                if same is None:
                    if qos:
                        same = encode_publish(topic, payload, 0, False, False, None, props,
                                              version, raw)
                    else:  # the publisher's own bytes
                        size = len(body)
                        same = (bytes((0x30, size)) if size < 128
                                else b"\x30" + encode_varint(size)) + body
                data = same
            else:
                if other is None:
                    other = encode_publish(topic, payload, 0, False, False, None, props,
                                           out.version, raw)
                data = other
            out.write(data)
            dirty.add(out)
            stats.messages_out += 1
    return count


def _message(conn: Connection, topic: str, payload: bytes, qos: int, props: Properties,
             raw: bytes | None) -> Message:
    """The message the fast path forwards, for a receiver that needs it built."""
    client = conn.client
    assert client is not None
    return Message(topic, payload, qos, False, props, None, conn.client_id,
                   client.username, client.role, raw)


def _deliver(core: BrokerCore, conn: Connection, session: Session, msg: Message | None,
             topic: str, payload: bytes, qos: int, props: Properties, raw: bytes | None,
             sub_qos: int, sub_ids: list[int], now: float) -> Message:
    """A receiver the general delivery serves (``deliver``); returns the message, built
    the first time one is needed."""
    if msg is None:
        msg = _message(conn, topic, payload, qos, props, raw)
    deliver(core, session, msg, qos if qos < sub_qos else sub_qos, False, sub_ids, now)
    return msg


def _fly_fast(core: BrokerCore, conn: Connection, session: Session, out: Connection,
              msg: Message | None, topic: str, tkey: bytes, body: bytes, payload: bytes,
              props: Properties, raw: bytes | None, sub_ids: list[int], now: float) -> Message:
    """A QoS 1 delivery to a plain receiver: sent now when ``deliver`` would send it (a
    packet id ``reserve``d), with the publisher's bytes and our packet id for a receiver of
    its version, and accounted as ``deliver`` does (``fly``); else ``deliver`` queues it.
    Returns the message, built the first time one is needed."""
    if msg is None:
        msg = _message(conn, topic, payload, 1, props, raw)
    pid = reserve(core, session, out, msg.cost)
    if pid is None:
        deliver(core, session, msg, 1, False, sub_ids, now)  # queued
        return msg
    if out.version == conn.version:  # the publisher's bytes with our packet id
        at = 2 + len(tkey)
        data = b"\x32" + encode_varint(len(body)) + body[:at] \
            + bytes((pid >> 8, pid & 0xFF)) + body[at + 2:]
    else:
        data = encode_publish(topic, payload, 1, False, False, pid, props, out.version, raw)
    fly(core, session, out, pid, Inflight(msg, 1, False, sub_ids), data, now)
    return msg


def _fast_admit(core: BrokerCore, conn: Connection, tkey: bytes, qos: int,
                known: tuple[str, int, int] | None) -> str | None:
    """A topic name seen for the first time (at this QoS, since the last change of
    rights): valid and allowed? Then remembered, for short topics and a few of them."""
    try:
        topic = tkey.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\x00" in topic or "+" in topic or "#" in topic or not topic_ok(core, topic):
        return None
    client = conn.client
    assert client is not None
    if authorize_publish(core, client, topic, qos, False) is not Decision.ALLOW:
        return None  # the general path refuses it, logs it and tells the hooks
    if len(tkey) <= _FAST_TOPIC_MAX:
        mask = known[2] if known is not None and known[1] == core.auth_epoch else 0
        cached = conn.fast_topics
        if cached is NONE_YET:
            cached = conn.fast_topics = {}
        if len(cached) >= _FAST_TOPICS and tkey not in cached:
            cached.clear()
        cached[tkey] = (topic, core.auth_epoch, mask | (1 << qos))
    return topic


# ------------------------------------------------------------------ acknowledgements
def on_pubrel(core: BrokerCore, conn: Connection, pid: int) -> None:
    session = core.conn_sessions.get(conn.id)
    assert session is not None
    if pid in session.awaiting_rel:
        session.awaiting_rel.discard(pid)
        conn.send(PubComp(pid))
    else:
        conn.send(PubComp(pid, RC.PACKET_IDENTIFIER_NOT_FOUND))
    core.dirty.add(conn)


def on_puback(core: BrokerCore, conn: Connection, pid: int, qos: int, now: float) -> None:
    """PUBACK (``qos`` 1) or PUBCOMP (2) for one of our deliveries: its flow ends, and what
    was queued behind it may go out."""
    session = core.conn_sessions.get(conn.id)
    assert session is not None
    item = session.inflight.get(pid)
    if item is None or item.qos != qos or (qos == 2 and not item.released):
        return  # unknown or out of order: ignore (5.0 section 4.3)
    land(core, session, conn, pid, item, now)


def on_pubrec(core: BrokerCore, conn: Connection, p: PubRec, now: float) -> None:
    session = core.conn_sessions.get(conn.id)
    assert session is not None
    item = session.inflight.get(p.packet_id)
    if item is None or item.qos != 2:
        conn.send(PubRel(p.packet_id, RC.PACKET_IDENTIFIER_NOT_FOUND))
        core.dirty.add(conn)
        return
    conn.last_ack = now
    if p.reason_code >= RC_FAILURE:
        land(core, session, conn, p.packet_id, item, now)  # MQTT-4.3.3-? the flow ends
        return
    item.released = True
    conn.send(PubRel(p.packet_id))
    core.dirty.add(conn)
