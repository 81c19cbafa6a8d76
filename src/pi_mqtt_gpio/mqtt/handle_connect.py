"""CONNECT (checked, then authenticated by the hooks, then accepted or refused), the session
it attaches to, the CONNACK, and DISCONNECT from the client."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pi_mqtt_gpio.mqtt.authorize import authorize_publish, topic_ok
from pi_mqtt_gpio.mqtt.codec import decode_frame, encode, peek_protocol_level
from pi_mqtt_gpio.mqtt.connection import Connection, ConnState
from pi_mqtt_gpio.mqtt.deliver import drain_queue, send_publish, watch_acks
from pi_mqtt_gpio.mqtt.errors import ProtocolError
from pi_mqtt_gpio.mqtt.hooks import AuthRequest, AuthResult, ClientInfo, Decision
from pi_mqtt_gpio.mqtt.limits import (
    CLIENT_ID_FORBIDDEN,
    KEEPALIVE_GRACE,
    RECEIVE_MAXIMUM_DEFAULT,
)
from pi_mqtt_gpio.mqtt.logguard import clip
from pi_mqtt_gpio.mqtt.packets import (
    PROTOCOL_50,
    PROTOCOL_311,
    RC,
    ConnAck,
    Connect,
    Disconnect,
    Prop,
    Properties,
    PubRel,
)
from pi_mqtt_gpio.mqtt.session import NEVER_EXPIRES, Session
from pi_mqtt_gpio.mqtt.session_expiry import end_session, make_room_for_a_session
from pi_mqtt_gpio.mqtt.will import will_message

if TYPE_CHECKING:
    from pi_mqtt_gpio.mqtt.broker import BrokerCore

log = logging.getLogger("pi_mqtt_gpio.broker")

_REFUSALS: dict[int, str] = {
    RC.NOT_AUTHORIZED: "not authorized",
    RC.BAD_USER_NAME_OR_PASSWORD: "bad user name or password",
    RC.SERVER_BUSY: "server busy: too many failed logins, try again later",
}


# ------------------------------------------------------------------ CONNECT
def on_connect(core: BrokerCore, conn: Connection, first: int, body: bytes,
               now: float) -> None:
    """The first packet: a CONNECT checked here, then handed to the hooks to authenticate
    (``core.auth_requests``; they answer through ``auth_complete``)."""
    if peek_protocol_level(body) == PROTOCOL_50:
        conn.version = PROTOCOL_50  # so a malformed CONNECT gets a 5.0 CONNACK
    packet = decode_frame(first, body, conn.version)
    assert isinstance(packet, Connect)
    level, name = packet.protocol_level, packet.protocol_name
    if level not in (PROTOCOL_311, PROTOCOL_50) or name != "MQTT":
        # MQTT-3.1.2-2 (3.1.1: return code 0x01), 5.0: 0x84; then close.
        conn.version = PROTOCOL_50 if level == PROTOCOL_50 else PROTOCOL_311
        conn.send(ConnAck(False, RC.UNSUPPORTED_PROTOCOL_VERSION))
        core.dirty.add(conn)
        core.close(conn, now, None, f"unsupported protocol {name!r} level {level}")
        return
    conn.version = level
    conn.connect = packet
    refusal = _connect_check(core, conn, packet)
    if refusal is not None:
        refuse(core, conn, *refusal, now)
        return
    props = packet.properties
    conn.problem_info = bool(props.get(Prop.REQUEST_PROBLEM_INFORMATION, 1))
    conn.state = ConnState.AUTHENTICATING
    if not packet.client_id and level == PROTOCOL_50:
        props[Prop.ASSIGNED_CLIENT_IDENTIFIER] = conn.client_id
    core.auth_requests.append(
        (
            conn,
            AuthRequest(
                conn.client_id, packet.username, packet.password, level, conn.transport,
                conn.peer, conn.cert_cn,
            ),
        )
    )


def _connect_check(core: BrokerCore, conn: Connection, packet: Connect
                   ) -> tuple[int, str] | None:
    """Why a CONNECT is refused before authentication, or None; sets ``conn.client_id``
    (assigned by us when empty)."""
    if conn.disconnect_reason == "server busy" or \
            core.established >= core.limits.max_connections:
        return RC.SERVER_BUSY, "too many connections"
    if Prop.AUTHENTICATION_METHOD in packet.properties:
        return RC.BAD_AUTHENTICATION_METHOD, "enhanced auth not supported"
    client_id = packet.client_id
    if not client_id:
        if packet.protocol_level == PROTOCOL_311 and not packet.clean_start:
            # 3.1.1 MQTT-3.1.3-8: zero-length id with CleanSession=0 -> 0x02, close.
            return RC.CLIENT_IDENTIFIER_NOT_VALID, "empty client id"
        client_id = f"auto-{next(core.assigned_ids):x}-{conn.id:x}"
    conn.client_id = client_id
    if client_id in core.internal_clients:
        return RC.CLIENT_IDENTIFIER_NOT_VALID, "client id reserved"
    if any(c in client_id for c in CLIENT_ID_FORBIDDEN):
        # MQTT-3.1.3-5 lets a server restrict client ids; a reply prefix
        # {root}/reply/<id> must not cover another client's ("vic" and "vic/x").
        return RC.CLIENT_IDENTIFIER_NOT_VALID, "client id may not contain '/', '+' or '#'"
    if packet.will is not None and not topic_ok(core, packet.will.topic):
        return RC.TOPIC_NAME_INVALID, "will topic too long or too deep"
    return None


def refuse(core: BrokerCore, conn: Connection, code: int, text: str, now: float) -> None:
    props = conn.reason(text) if conn.v5 else {}
    conn.send(ConnAck(False, code, props))
    core.dirty.add(conn)
    core.close(conn, now, None, text)


def authenticated(core: BrokerCore, conn: Connection, now: float, result: AuthResult) -> None:
    """The hooks have decided on ``conn``'s CONNECT: refused, or accepted (and then the
    packets that arrived meanwhile are handled)."""
    if result.decision is not Decision.ALLOW:
        code = result.reason_code
        refuse(core, conn, code, _REFUSALS.get(code, "not authorized"), now)
        return
    packet = conn.connect
    assert packet is not None
    client = ClientInfo(
        conn.client_id, result.username, result.role, conn.version, conn.transport, conn.peer
    )
    refusal = _connect_refusal(core, client, packet)
    if refusal is not None:
        code, text = refusal
        core.log_limiter.log(logging.WARNING, conn.address, now, "refusing %r (user %r): %s",
                             conn, clip(result.username), text)
        refuse(core, conn, code, text, now)
        return
    conn.client = client
    _establish(core, conn, now)
    core.process_frames(conn, now)


def _connect_refusal(core: BrokerCore, client: ClientInfo, packet: Connect
                     ) -> tuple[int, str] | None:
    """Why an authenticated CONNECT is still refused, or None."""
    if core.established >= core.limits.max_connections:
        return RC.SERVER_BUSY, "too many connections"
    session = core.sessions.get(client.client_id)
    if session is not None and session.client is not None \
            and session.client.username != client.username:
        # A session belongs to the user who made it: another user may neither take it
        # over nor discard it (clean start), and its owner stays connected.
        return RC.CLIENT_IDENTIFIER_NOT_VALID, "client id in use by another user"
    will = packet.will
    if will is not None and authorize_publish(core, client, will.topic, will.qos,
                                              will.retain) is not Decision.ALLOW:
        # MQTT-3.1.2: a Will the client could not publish itself is refused at CONNECT
        # (5.0: 0x87 Not authorized; 3.1.1: 0x05), not accepted and dropped later.
        return RC.NOT_AUTHORIZED, "will topic not authorized"
    return None


def _establish(core: BrokerCore, conn: Connection, now: float) -> None:
    """CONNECT accepted: negotiate, attach the session, keep the Will, send CONNACK,
    resume what the session had in flight."""
    packet = conn.connect
    assert packet is not None and conn.client is not None
    ack_props, expiry = _negotiate(core, conn, packet)
    session, session_present = _attach_session(core, conn, packet, expiry, now)
    if packet.will is not None:
        conn.will, conn.will_delay = will_message(core, conn, packet.will)
    if conn.v5:
        ack_props.update(_connack_properties(core, conn, packet))
    conn.state = ConnState.CONNECTED
    core.unpend(conn)
    core.established += 1
    if core.established > core.established_max:
        core.established_max = core.established
    conn.send(ConnAck(session_present, RC.SUCCESS, ack_props))
    core.dirty.add(conn)
    if conn.keep_alive:
        core.timers.push(now + conn.keep_alive * KEEPALIVE_GRACE, "keepalive", conn)
    _resume(core, conn, session, now)
    conn.connect = None  # done with it (and with its password)
    for hook in core.hooks:
        try:
            hook.on_connected(conn.client)
        except Exception:
            log.exception("on_connected hook failed")


def _negotiate(core: BrokerCore, conn: Connection, packet: Connect) -> tuple[Properties, int]:
    """Keep alive, session expiry and the client's limits; the CONNACK properties they
    need and the session expiry interval."""
    props = packet.properties
    limits = core.limits
    ack_props: Properties = {}
    # Keep alive and the server cap (MQTT-3.2.2-21: the client uses Server Keep Alive).
    keep_alive = packet.keep_alive
    if conn.v5 and (keep_alive == 0 or keep_alive > limits.max_keepalive):
        keep_alive = limits.max_keepalive
        ack_props[Prop.SERVER_KEEP_ALIVE] = keep_alive
    conn.keep_alive = keep_alive
    # Session expiry: 3.1.1 CleanSession=0 keeps the session with no expiry.
    if conn.v5:
        asked = props.get(Prop.SESSION_EXPIRY_INTERVAL, 0)
        expiry = min(asked, limits.max_session_expiry)
        if expiry != asked:
            ack_props[Prop.SESSION_EXPIRY_INTERVAL] = expiry
    else:
        expiry = 0 if packet.clean_start else NEVER_EXPIRES
    conn.receive_max_out = min(props.get(Prop.RECEIVE_MAXIMUM, RECEIVE_MAXIMUM_DEFAULT),
                               limits.max_inflight_out)
    conn.max_packet_out = props.get(Prop.MAXIMUM_PACKET_SIZE, 0)
    conn.alias_out_max = props.get(Prop.TOPIC_ALIAS_MAXIMUM, 0)
    return ack_props, expiry


def _attach_session(core: BrokerCore, conn: Connection, packet: Connect, expiry: int,
                    now: float) -> tuple[Session, bool]:
    """The session for ``conn``: taken over, discarded (clean start) or new."""
    client_id = conn.client_id
    # Session takeover (MQTT-3.1.4-3): the existing connection is closed (0x8E on 5.0).
    session = core.sessions.get(client_id)
    if session is not None and session.conn is not None:
        core.close(session.conn, now, RC.SESSION_TAKEN_OVER, "session taken over")
        session = core.sessions.get(client_id)  # may have ended with the old connection
    present = False
    if session is not None and packet.clean_start:
        end_session(core, session, now)  # MQTT-3.1.2-4: discard the existing session
        session = None
    if session is None:
        make_room_for_a_session(core, now)
        session = Session(client_id)
        core.sessions[client_id] = session
    else:
        present = True
        session.will = None  # MQTT-3.1.3-9: reconnected before the Will Delay passed
    session.expiry_interval = expiry
    session.expires_at = None
    session.conn = conn
    session.client = conn.client
    core.conn_sessions[conn.id] = session
    return session, present


def _connack_properties(core: BrokerCore, conn: Connection, packet: Connect) -> Properties:
    """What a 5.0 CONNACK tells the client about us."""
    limits = core.limits
    out: Properties = {}
    if Prop.ASSIGNED_CLIENT_IDENTIFIER in packet.properties:
        out[Prop.ASSIGNED_CLIENT_IDENTIFIER] = conn.client_id
    if limits.receive_maximum < RECEIVE_MAXIMUM_DEFAULT:
        out[Prop.RECEIVE_MAXIMUM] = limits.receive_maximum
    out[Prop.MAXIMUM_PACKET_SIZE] = limits.max_packet_size
    if limits.topic_alias_maximum:
        out[Prop.TOPIC_ALIAS_MAXIMUM] = limits.topic_alias_maximum
    if conn.client is None:
        return out
    if packet.properties.get(Prop.REQUEST_RESPONSE_INFORMATION):
        for hook in core.hooks:
            info = hook.response_information(conn.client)
            if info:
                out[Prop.RESPONSE_INFORMATION] = info
                break
    if Prop.USER_PROPERTY in packet.properties:
        extra = _connack_user_properties(core, conn.client, packet)
        # MQTT-3.2.2-20: never grow the CONNACK past the client's Maximum Packet Size.
        limit = packet.properties.get(Prop.MAXIMUM_PACKET_SIZE, 0)
        if extra and (not limit or len(encode(ConnAck(True, RC.SUCCESS, {
                **out, Prop.USER_PROPERTY: extra}))) <= limit):
            out[Prop.USER_PROPERTY] = extra
    return out


def _connack_user_properties(core: BrokerCore, client: ClientInfo, packet: Connect
                             ) -> list[tuple[str, str]]:
    asked = list(packet.properties[Prop.USER_PROPERTY])
    extra: list[tuple[str, str]] = []
    for hook in core.hooks:
        try:
            extra.extend(hook.connack_user_properties(client, asked))
        except Exception:
            log.exception("connack_user_properties hook failed")
    return extra


def _resume(core: BrokerCore, conn: Connection, session: Session, now: float) -> None:
    """Resend unacknowledged deliveries with DUP (MQTT-4.4.0-1), then the queue."""
    if session.inflight:
        watch_acks(core, conn, now)
    for pid, item in session.inflight.items():
        if item.released:
            conn.send(PubRel(pid))
        else:
            send_publish(core, conn, item.message, item.qos, item.retain, pid, True,
                         item.subscription_ids, now)
    drain_queue(core, session, now)


# ------------------------------------------------------------------ DISCONNECT
def on_disconnect(core: BrokerCore, conn: Connection, p: Disconnect, now: float) -> None:
    session = core.conn_sessions.get(conn.id)
    assert session is not None
    new_expiry = p.properties.get(Prop.SESSION_EXPIRY_INTERVAL)
    if new_expiry is not None:
        if session.expiry_interval == 0 and new_expiry != 0:
            raise ProtocolError("session expiry set in DISCONNECT after 0")  # MQTT-3.14.2-2
        session.expiry_interval = min(new_expiry, core.limits.max_session_expiry)
    # MQTT-3.14.4-3: a normal DISCONNECT discards the Will; 0x04 asks for it.
    publish_will = p.reason_code == RC.DISCONNECT_WITH_WILL
    conn.disconnect_reason = "client disconnected"
    conn.closing = True
    core.dirty.add(conn)
    core.teardown(conn, now, publish_will)
