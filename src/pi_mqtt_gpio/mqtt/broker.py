"""The broker core: MQTT 3.1.1 and 5.0 semantics without sockets or clocks.

The transport (``server/broker.py``) calls ``open_connection``, ``data_received``,
``connection_lost``, ``auth_complete`` and ``on_timer`` with the current time, and after each
call writes ``conn.data_to_send()`` for every connection in ``take_dirty()``, closes those
marked ``closing``, runs pending ``auth_requests`` and hands ``take_internal()`` deliveries to
in-process clients. Spec references are to MQTT 5.0 (``MQTT-x.y.z-n``) unless marked 3.1.1.

``BrokerCore`` holds the state and the transport interface: framing, the unauthenticated pool,
timers, closing. Each kind of packet and each concern is handled by the functions of its own
module, which take the core: ``handle_connect`` (CONNECT, CONNACK, DISCONNECT),
``handle_publish`` (PUBLISH in, general and fast paths, and the acknowledgements),
``handle_subscribe`` (SUBSCRIBE, UNSUBSCRIBE, rights changing), ``route`` (who gets a message),
``deliver`` (sending, queueing, what is in flight, and the budgets), ``will`` and
``session_expiry``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from pi_mqtt_gpio.mqtt.codec import decode_frame
from pi_mqtt_gpio.mqtt.connection import Connection, ConnState
from pi_mqtt_gpio.mqtt.deliver import check_acks
from pi_mqtt_gpio.mqtt.errors import MQTTError, ProtocolError
from pi_mqtt_gpio.mqtt.handle_connect import authenticated, on_connect, on_disconnect
from pi_mqtt_gpio.mqtt.handle_publish import (
    fast_publish,
    on_puback,
    on_publish,
    on_pubrec,
    on_pubrel,
)
from pi_mqtt_gpio.mqtt.handle_subscribe import (
    add_subscription,
    on_subscribe,
    on_unsubscribe,
    reauthorize,
    remove_subscription,
)
from pi_mqtt_gpio.mqtt.hooks import AuthRequest, AuthResult, BrokerHooks, ClientInfo
from pi_mqtt_gpio.mqtt.limits import (
    KEEPALIVE_GRACE,
    MIN_TURN,
    PENDING_HARD_FACTOR,
    BrokerLimits,
    Stats,
)
from pi_mqtt_gpio.mqtt.logguard import LOG_TOTAL, LogLimiter, clip
from pi_mqtt_gpio.mqtt.message import Message
from pi_mqtt_gpio.mqtt.packets import (
    PROTOCOL_50,
    RC,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    Prop,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Subscribe,
    Subscription,
    Unsubscribe,
)
from pi_mqtt_gpio.mqtt.retain import RetainedStore
from pi_mqtt_gpio.mqtt.route import route
from pi_mqtt_gpio.mqtt.session import NEVER_EXPIRES, Session, SubEntry
from pi_mqtt_gpio.mqtt.session_expiry import detach, session_due
from pi_mqtt_gpio.mqtt.timers import Timers
from pi_mqtt_gpio.mqtt.topic_tree import SubscriptionTree, topic_levels
from pi_mqtt_gpio.mqtt.will import will_due

__all__ = ["PENDING_HARD_FACTOR", "BrokerCore", "BrokerLimits", "InternalClient"]

log = logging.getLogger("pi_mqtt_gpio.broker")
_T = TypeVar("_T")

_NOTHING: list[Connection] = []  # ``take_dirty`` when nothing is dirty (never changed)
_RETAINED_NODE_COST = 300  # bytes a level of the retained tree costs (measured: ~290)


def _retained_cost(msg: Message) -> int:
    return len(msg.payload) + len(msg.topic) + topic_levels(msg.topic) * _RETAINED_NODE_COST


class InternalClient:
    """A client inside the broker's process: publishes and subscribes without a socket.

    Messages for it are collected by the core and handed out by ``take_internal()``; the
    transport calls ``on_message`` outside of routing, so a handler may publish in turn.
    Internal clients bypass authorisation (they are the gatekeeper itself).
    """

    def __init__(
        self, core: BrokerCore, client_id: str, on_message: Callable[[Message, list[int]], None]
    ) -> None:
        self._core = core
        self.client_id = client_id
        self.on_message = on_message
        self.info = ClientInfo(
            client_id, None, "internal", PROTOCOL_50, "internal", "in-process", internal=True
        )
        self._sub_id = itertools.count(1)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        now: float,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        msg = Message(topic, payload, qos, retain, dict(properties or {}), None, self.client_id)
        self._core.publish(msg, now)

    def subscribe(self, topic_filter: str, *, now: float, qos: int = 1) -> int:
        """Subscribe; returns the subscription identifier reported with each message."""
        sub_id = next(self._sub_id)
        self._core.subscribe_internal(self, Subscription(topic_filter, qos), sub_id, now)
        return sub_id

    def unsubscribe(self, topic_filter: str) -> None:
        self._core.unsubscribe_internal(self, topic_filter)


def _keepalive_due(core: BrokerCore, ref: object, now: float) -> None:
    assert isinstance(ref, Connection)
    conn = ref
    if conn.state is not ConnState.CONNECTED or not conn.keep_alive:
        return
    deadline = conn.last_rx + conn.keep_alive * KEEPALIVE_GRACE  # MQTT-3.1.2-22
    if now >= deadline:
        core.close(conn, now, RC.KEEP_ALIVE_TIMEOUT, "keep alive timeout")
    else:
        core.timers.push(deadline, "keepalive", conn)


def _connect_due(core: BrokerCore, ref: object, now: float) -> None:
    core.login_timeouts(now)


# What each kind of timer does when due (``Timers`` entries: kind, and what it is for).
_TIMERS: dict[str, Callable[[BrokerCore, object, float], None]] = {
    "keepalive": _keepalive_due,
    "connect": _connect_due,
    "will": will_due,
    "acks": check_acks,
    "session": session_due,
}


class BrokerCore:
    def __init__(
        self,
        limits: BrokerLimits | None = None,
        hooks: list[BrokerHooks] | None = None,
        *,
        fast_path: bool = True,
    ) -> None:
        self.limits = limits or BrokerLimits()
        # The fast path forwards the common PUBLISH without building the packet objects of
        # the general path (same bytes out: tests/mqtt/test_fast_path.py runs both).
        self.fast_path = fast_path
        self.auth_epoch = 0  # bumped when authorisation may have changed (caches drop)
        # Receivers per topic for the fast path (``route.route_targets``), and their number.
        self.targets: dict[str, tuple[int, list[tuple[str, int, list[int]]] | None]] = {}
        self.targets_size = 0
        self._backlogged: list[Connection] = []
        self.busy = 0  # connections with packets left for a later turn (``conn.backlog``)
        self.hooks: list[BrokerHooks] = list(hooks or [])
        self.sessions: dict[str, Session] = {}
        self.connections: dict[int, Connection] = {}
        self.subscriptions: SubscriptionTree[SubEntry] = SubscriptionTree()
        self.retained: RetainedStore[Message] = RetainedStore(_retained_cost)
        self.timers = Timers()
        self.stats = Stats()
        self.auth_requests: list[tuple[Connection, AuthRequest]] = []
        self.dirty: set[Connection] = set()  # connections with bytes to write
        self._internal_out: list[tuple[InternalClient, Message, list[int]]] = []
        self.internal_clients: dict[str, InternalClient] = {}
        self._conn_ids = itertools.count(1)
        self.assigned_ids = itertools.count(1)  # for client ids we assign
        self.accepting = True
        self.established = 0  # connections past CONNACK (``max_connections`` counts these)
        self.established_max = 0  # the most there were at once ($SYS clients/maximum)
        self.queued_bytes = 0  # ``Message.cost`` queued or in flight, all sessions
        # Sockets that have not completed CONNECT and authentication, oldest first.
        self._pending: dict[int, Connection] = {}
        self.conn_sessions: dict[int, Session] = {}  # connection id -> its session
        self._pending_by_address: dict[str, int] = {}
        self._login_timer = False  # a "connect" timer is set for the oldest pending socket
        self.log_limiter = LogLimiter(log, total=LOG_TOTAL)  # across all addresses too
        # Topic prefixes whose deliveries a hook must approve per receiver (reply prefixes).
        self.protected: tuple[str, ...] = tuple(
            prefix for hook in self.hooks for prefix in hook.read_protected())
        # ... and their parent topics: a filter ``x/#`` also matches ``x`` (MQTT-4.7.1-2), so
        # a prefix ending in ``/`` covers the topic without it (``home/`` covers ``home``).
        self.protected_parents: frozenset[str] = frozenset(
            prefix[:-1] for prefix in self.protected if prefix.endswith("/"))

    # ------------------------------------------------------------------ transport interface
    def open_connection(
        self, transport: str, peer: str, now: float, cert_cn: str | None = None
    ) -> Connection:
        conn = Connection(
            next(self._conn_ids), transport, peer, self.limits.max_packet_size, now, cert_cn
        )
        self.connections[conn.id] = conn
        if not self._login_timer:  # one timer for the pool (``login_timeouts``)
            self._login_timer = True
            self.timers.push(now + self.limits.connect_timeout, "connect", None)
        if not self.accepting:
            # Answered once the CONNECT arrives (we need its version for the CONNACK format).
            conn.disconnect_reason = "server busy"
        self._admit_pending(conn, now)
        return conn

    # ------------------------------------------------------------------ unauthenticated pool
    def _admit_pending(self, conn: Connection, now: float) -> None:
        """Sockets that have not logged in yet have a pool of their own (they never count
        against ``max_connections``). Past the pool's size, or past an address's share, a
        newcomer evicts the oldest socket (of that address) that has sent nothing for
        ``pending_grace``: an idle socket, never a real client whose CONNECT is still unread
        in a burst. Past twice the pool's size the newcomer itself is closed: memory stays
        bounded whatever the rate of new sockets."""
        limits = self.limits
        addr = conn.address
        if self._pending_by_address.get(addr, 0) >= limits.max_pending_per_address:
            self._evict_idle(addr, now)
        if len(self._pending) >= limits.max_pending_connections \
                and not self._evict_idle(None, now) \
                and len(self._pending) >= PENDING_HARD_FACTOR * limits.max_pending_connections:
            self._drop_unauthenticated(conn, now, "too many unauthenticated connections")
            return
        self._pending[conn.id] = conn
        self._pending_by_address[addr] = self._pending_by_address.get(addr, 0) + 1

    def _evict_idle(self, address: str | None, now: float) -> bool:
        idle_since = now - self.limits.pending_grace
        for victim in self._pending.values():
            if victim.state is ConnState.NEW and victim.last_rx <= idle_since \
                    and (address is None or victim.address == address):
                self.stats.pending_evicted += 1
                self._drop_unauthenticated(victim, now, "evicted: no CONNECT yet")
                return True
        return False

    def _drop_unauthenticated(self, conn: Connection, now: float, reason: str) -> None:
        self.log_limiter.log(logging.WARNING, conn.address, now, "closing %r: %s", conn, reason)
        conn.hard_close = True
        self.close(conn, now, None, reason)

    def unpend(self, conn: Connection) -> None:
        """``conn`` leaves the unauthenticated pool (logged in, or closed)."""
        if self._pending.pop(conn.id, None) is None:
            return
        left = self._pending_by_address.get(conn.address, 1) - 1
        if left > 0:
            self._pending_by_address[conn.address] = left
        else:
            self._pending_by_address.pop(conn.address, None)

    def login_timeouts(self, now: float) -> None:
        """Close the sockets whose login time (``limits.connect_timeout`` from accept) ran
        out, and set the timer for the next one. The pool is in accept order, so these are
        at its front: one timer for all of them, not one per socket."""
        timeout = self.limits.connect_timeout
        due = []
        next_at = None
        for conn in self._pending.values():
            if conn.opened + timeout > now:
                next_at = conn.opened + timeout
                break
            due.append(conn)
        for conn in due:
            if conn.state in (ConnState.NEW, ConnState.AUTHENTICATING):
                self.close(conn, now, None, "CONNECT not completed in time")
            else:  # pragma: no cover - the pool holds only sockets not logged in
                self.unpend(conn)
        self._login_timer = next_at is not None
        if next_at is not None:
            self.timers.push(next_at, "connect", None)

    def pending_count(self) -> int:
        """Sockets that have not completed CONNECT and authentication."""
        return len(self._pending)

    # ------------------------------------------------------------------ bytes in
    def data_received(self, conn: Connection, data: bytes, now: float) -> None:
        """Take bytes from the network. At most ``limits.frames_per_turn`` packets are
        handled at once; then ``conn.backlog`` is set, the connection is listed by
        ``take_backlogged`` and the transport calls ``process_backlog`` on a later turn of
        its loop (not reading meanwhile), so that one client sending as fast as it can does
        not keep the others waiting."""
        if conn.state is ConnState.CLOSED or conn.closing:
            return
        conn.last_rx = now
        stats = self.stats
        stats.bytes_in += len(data)
        if conn.state is ConnState.CONNECTED:  # the common case, without ``_guarded``'s call
            try:
                reader = conn.reader
                if self.fast_path and not reader.buffered and self._fast_single(conn, data,
                                                                                 now):
                    stats.packets_in += 1
                    return
                reader.feed(data)
                self.process_frames(conn, now)
            except Exception as exc:
                self._failed(conn, now, exc)
            return
        self._guarded(conn, now, self._feed, data)

    def _fast_single(self, conn: Connection, data: bytes, now: float) -> bool:
        """``data`` is exactly one whole PUBLISH (QoS 0/1) or success PUBACK, and nothing is
        buffered before it (a client waiting for each answer sends one packet per read):
        handled without going through the frame reader. False (nothing done) otherwise: the
        reader then takes it as usual."""
        end = len(data)
        if end < 4 or type(data) is not bytes:  # topic bytes become dict keys: not bytearray
            return False
        first = data[0]
        size = data[1]
        if size < 0x80:
            hdr = 2
        elif end > 2 and data[2] < 0x80 and data[2]:  # two length bytes, minimal encoding
            size = (size & 0x7F) | (data[2] << 7)
            hdr = 3
        else:
            return False
        if hdr + size != end or end > self.limits.max_packet_size:
            return False
        if first == 0x40:  # PUBACK (success, no properties), as ``_process_connected``
            if size != 2 or not (data[2] or data[3]):
                return False
            on_puback(self, conn, (data[2] << 8) | data[3], 1, now)
            return True
        if first == 0x30 or first == 0x32:
            return fast_publish(self, conn, first, data[hdr:], now)
        return False

    def process_backlog(self, conn: Connection, now: float) -> None:
        """Handle the next packets already received (see ``data_received``)."""
        self.drop_backlog(conn)
        if conn.state is ConnState.CLOSED or conn.closing:
            return
        self._guarded(conn, now, self.process_frames, None)

    def drop_backlog(self, conn: Connection) -> None:
        """``conn`` is no longer waiting for a turn (its turn came, or it is gone)."""
        if conn.backlog:
            conn.backlog = False
            self.busy -= 1

    def turn_budget(self) -> int:
        """Packets one connection may have handled in this turn. ``frames_per_turn`` is the
        work of one round of the loop, shared by the connections that have packets waiting
        (each gets at least ``MIN_TURN``): the more clients send as fast as they can, the
        smaller each one's turn, so that a round, and with it the wait of any other
        client's packet, stays about the same."""
        per_round = self.limits.frames_per_turn
        if not self.busy:
            return per_round
        return max(min(per_round, MIN_TURN), per_round // (self.busy + 1))

    def _feed(self, conn: Connection, now: float, data: bytes) -> None:
        reader = conn.reader
        reader.feed(data)
        if conn.state is ConnState.AUTHENTICATING:
            if reader.buffered > 2 * self.limits.max_packet_size:
                raise ProtocolError("too much data before CONNACK", RC.QUOTA_EXCEEDED)
            return
        self.process_frames(conn, now)

    def _guarded(
        self, conn: Connection, now: float, step: Callable[[Connection, float, _T], None], arg: _T
    ) -> None:
        """Run ``step``; a protocol violation or an internal error closes ``conn`` (with the
        right reason code on 5.0) and never escapes to the transport."""
        try:
            step(conn, now, arg)
        except Exception as exc:
            self._failed(conn, now, exc)

    def _failed(self, conn: Connection, now: float, exc: Exception) -> None:
        """What handling ``conn``'s bytes raised: a protocol violation closes it with its
        reason code, anything else is an internal error (logged, 0x83)."""
        if isinstance(exc, MQTTError):
            self.stats.protocol_errors += 1
            self._protocol_violation(conn, exc, now)
            return
        log.error("internal error handling %r; closing it", conn, exc_info=exc)
        self.close(conn, now, RC.IMPLEMENTATION_SPECIFIC_ERROR, "internal error")

    def process_frames(self, conn: Connection, now: float, _arg: None = None) -> None:
        """Handle the frames ``conn``'s reader holds, at most ``limits.frames_per_turn``
        (then ``conn`` is backlogged: see ``data_received``)."""
        reader = conn.reader
        budget = self.turn_budget()
        connected = ConnState.CONNECTED
        while not conn.closing:
            state = conn.state
            if state is connected and self.fast_path:
                budget = self._process_connected(conn, now, budget)
                if budget < 0:
                    return
                continue
            budget -= 1
            if budget < 0:
                if reader.buffered and not conn.backlog and state is connected:
                    self._backlog(conn)
                return
            if state is ConnState.CLOSED or state is ConnState.AUTHENTICATING:
                return
            if state is ConnState.NEW and reader.peek_first() not in (None, 0x10):
                # MQTT-3.1.0-1: the first packet must be CONNECT; close without reply, and
                # without waiting for the rest of whatever this is.
                self.close(conn, now, None, "first packet was not CONNECT")
                return
            frame = reader.next_frame()
            if frame is None:
                return
            self.stats.packets_in += 1
            first, body = frame
            if conn.state is ConnState.NEW:
                on_connect(self, conn, first, body, now)
                continue
            self._dispatch(conn, first, body, now)

    def _process_connected(self, conn: Connection, now: float, budget: int) -> int:
        """``process_frames`` for a connected client, the fast path first. Returns the
        budget left when ``conn`` is no longer connected, or -1 when this turn is over."""
        reader = conn.reader
        stats = self.stats
        connected = ConnState.CONNECTED
        while not conn.closing:
            if conn.state is not connected:
                return budget
            budget -= 1
            if budget < 0:
                if reader.buffered and not conn.backlog:
                    self._backlog(conn)
                return -1
            frame = reader.next_frame()
            if frame is None:
                return -1
            stats.packets_in += 1
            first, body = frame
            if (first == 0x30 or first == 0x32) and fast_publish(self, conn, first, body, now):
                continue
            if first == 0x40 and len(body) == 2 and (body[0] or body[1]):
                # PUBACK (success, no properties)
                on_puback(self, conn, (body[0] << 8) | body[1], 1, now)
                continue
            self._dispatch(conn, first, body, now)
        return -1

    def _backlog(self, conn: Connection) -> None:
        conn.backlog = True
        self.busy += 1
        self._backlogged.append(conn)

    def _dispatch(self, conn: Connection, first: int, body: bytes, now: float) -> None:
        packet = decode_frame(first, body, conn.version)
        if isinstance(packet, Publish):
            on_publish(self, conn, packet, now)
        elif isinstance(packet, PubAck):
            on_puback(self, conn, packet.packet_id, 1, now)
        elif isinstance(packet, PubRec):
            on_pubrec(self, conn, packet, now)
        elif isinstance(packet, PubRel):
            on_pubrel(self, conn, packet.packet_id)
        elif isinstance(packet, PubComp):
            on_puback(self, conn, packet.packet_id, 2, now)
        elif isinstance(packet, PingReq):
            conn.write(b"\xd0\x00")
            self.dirty.add(conn)
        elif isinstance(packet, Subscribe):
            on_subscribe(self, conn, packet, now)
        elif isinstance(packet, Unsubscribe):
            on_unsubscribe(self, conn, packet)
        elif isinstance(packet, Disconnect):
            on_disconnect(self, conn, packet, now)
        elif isinstance(packet, Connect):
            raise ProtocolError("second CONNECT")  # MQTT-3.1.0-2
        elif isinstance(packet, Auth):
            raise ProtocolError("AUTH without enhanced authentication")  # MQTT-4.12.0-1
        else:
            raise ProtocolError(f"{type(packet).__name__} is not sent by clients")

    def auth_complete(self, conn: Connection, result: AuthResult, now: float) -> None:
        """The security hooks have decided on ``conn``'s CONNECT."""
        if conn.state is not ConnState.AUTHENTICATING or conn.connect is None:
            return
        self._guarded(conn, now, partial(authenticated, self), result)

    def connection_lost(self, conn: Connection, now: float) -> None:
        """The network connection is gone (closed by either side)."""
        if conn.state is ConnState.CLOSED:
            return
        if not conn.disconnect_reason:
            conn.disconnect_reason = "connection lost"
        self.teardown(conn, now, publish_will=True)

    def on_timer(self, now: float) -> None:
        for kind, ref in self.timers.pop_due(now):
            due = _TIMERS.get(kind)
            if due is None:
                continue
            try:
                due(self, ref, now)
            except Exception:
                log.exception("timer %s failed", kind)

    def next_deadline(self) -> float | None:
        return self.timers.next_deadline()

    # The ``take_*`` methods are called after every read (``server/broker.py``'s pump):
    # when there is nothing to take they allocate nothing. What they return is the caller's
    # to read, not to change.
    def take_dirty(self) -> list[Connection]:
        dirty = self.dirty
        if not dirty:
            return _NOTHING
        out = list(dirty)
        dirty.clear()
        return out

    def take_backlogged(self) -> list[Connection]:
        """Connections with packets left for a later turn (``process_backlog``)."""
        out = self._backlogged
        if out:
            self._backlogged = []
        return out

    def take_internal(self) -> list[tuple[InternalClient, Message, list[int]]]:
        out = self._internal_out
        if out:
            self._internal_out = []
        return out

    def take_auth_requests(self) -> list[tuple[Connection, AuthRequest]]:
        out = self.auth_requests
        if out:
            self.auth_requests = []
        return out

    def abort(self, conn: Connection, now: float, reason: str) -> None:
        """Drop ``conn`` without a goodbye (e.g. it stopped reading); its Will is published."""
        conn.disconnect_reason = reason
        self.close(conn, now, None, reason)

    def shutdown(self, now: float) -> None:
        """Disconnect everyone with 0x8B (5.0); wills are published as for a lost connection."""
        self.accepting = False
        for conn in list(self.connections.values()):
            self.close(conn, now, RC.SERVER_SHUTTING_DOWN, "server shutting down")

    # ------------------------------------------------------------------ internal clients
    def connect_internal(
        self, client_id: str, on_message: Callable[[Message, list[int]], None]
    ) -> InternalClient:
        client = InternalClient(self, client_id, on_message)
        session = Session(client_id)
        session.expiry_interval = NEVER_EXPIRES

        def handler(msg: Message, sub_ids: list[int]) -> None:
            self._internal_out.append((client, msg, sub_ids))

        session.internal_handler = handler
        self.sessions[client_id] = session
        self.internal_clients[client_id] = client
        return client

    def subscribe_internal(
        self, client: InternalClient, sub: Subscription, sub_id: int, now: float
    ) -> None:
        session = self.sessions[client.client_id]
        add_subscription(self, session, sub, sub_id, None, sub.topic_filter, now)

    def unsubscribe_internal(self, client: InternalClient, topic_filter: str) -> None:
        session = self.sessions.get(client.client_id)
        if session is not None:
            remove_subscription(self, session, topic_filter)

    # ------------------------------------------------------------------ messages
    def has_subscribers(self, topic: str) -> bool:
        """Whether any session would receive a message on ``topic`` (cheap: cached match)."""
        return any(node.subs or node.shared for node in self.subscriptions.match(topic))

    def publish(self, msg: Message, now: float) -> int:
        """Route ``msg`` (and retain it if flagged); returns the number of receivers.

        A Message Expiry Interval still in ``msg.properties`` starts counting now."""
        self.stats.messages_in += 1
        mei = msg.properties.get(Prop.MESSAGE_EXPIRY_INTERVAL) if msg.properties else None
        if mei is not None:
            msg.properties = {k: v for k, v in msg.properties.items()
                              if k != Prop.MESSAGE_EXPIRY_INTERVAL}
            msg.raw_props = None
            msg.expires_at = now + mei
        if msg.retain:
            self.store_retained(msg, now)
        return route(self, msg, now)

    def store_retained(self, msg: Message, now: float) -> None:
        """MQTT-3.3.1-5/6: store, or delete on an empty payload. The store is charged for
        payloads, topics and tree nodes; past ``max_retained_bytes`` new topics are not
        retained (replacing a topic's message with one no larger always is)."""
        if not msg.payload:
            self.retained.set(msg.topic, None)
            return
        old = self.retained.get(msg.topic)
        cost = _retained_cost(msg)
        freed = _retained_cost(old) if old is not None else 0
        if self.retained.bytes - freed + cost > self.limits.max_retained_bytes \
                and cost > freed:
            self.stats.retained_refused += 1
            self.log_limiter.log(logging.WARNING, "retained", now,
                                 "retained store full (%d bytes): not retaining %r",
                                 self.retained.bytes, clip(msg.topic))
            return
        self.retained.set(msg.topic, msg)

    def invalidate_authorization(self) -> None:
        """Rights may have changed (users reloaded): forget every cached decision, and
        authorise every subscription again, as a SUBSCRIBE now would be (``reauthorize``)."""
        self.auth_epoch += 1
        self.reauthorize()

    def reauthorize(self) -> tuple[int, int]:
        """Every subscription granted again as the hooks answer now; what sessions hold
        for later rechecked (``handle_subscribe.reauthorize``). Returns (subscriptions
        removed, messages dropped)."""
        return reauthorize(self)

    # ------------------------------------------------------------------ closing
    def _protocol_violation(self, conn: Connection, exc: MQTTError, now: float) -> None:
        self.log_limiter.log(logging.INFO, conn.address, now, "closing %r: %s (0x%02x)", conn,
                             clip(exc.message, 200), exc.reason_code)
        if conn.state is ConnState.NEW or (
            conn.state is ConnState.AUTHENTICATING and conn.connect is None
        ):
            if conn.v5:
                # MQTT 5.0 section 4.13.1: MAY send CONNACK with the reason code before closing.
                conn.send(ConnAck(False, exc.reason_code, conn.reason(exc.message)))
                self.dirty.add(conn)
            self.close(conn, now, None, exc.message)
            return
        self.close(conn, now, exc.reason_code, exc.message)

    def close(
        self, conn: Connection, now: float, reason_code: int | None, text: str,
        publish_will: bool = True,
    ) -> None:
        """Close ``conn``: 5.0 DISCONNECT with ``reason_code`` when connected, then teardown."""
        if conn.state is ConnState.CLOSED:
            return
        if reason_code is not None and conn.v5 and conn.state is ConnState.CONNECTED:
            conn.send(Disconnect(reason_code, conn.reason(text)))  # MQTT-4.13.2-1
        conn.disconnect_reason = conn.disconnect_reason or text
        conn.closing = True
        self.dirty.add(conn)
        self.teardown(conn, now, publish_will)

    def teardown(self, conn: Connection, now: float, publish_will: bool) -> None:
        """``conn`` is gone: out of the books; its session detached (``detach``) with its
        Will unless the client asked otherwise; the hooks told."""
        was_connected = conn.state is ConnState.CONNECTED
        conn.state = ConnState.CLOSED
        self.drop_backlog(conn)
        self.connections.pop(conn.id, None)
        self.unpend(conn)
        if was_connected:
            self.established -= 1
        session = self.conn_sessions.pop(conn.id, None)
        if session is None or session.conn is not conn:
            return
        session.conn = None
        will = conn.will if publish_will else None
        conn.will = None
        detach(self, session, conn, will, now)
        if was_connected and conn.client is not None:
            for hook in self.hooks:
                try:
                    hook.on_disconnected(conn.client, conn.disconnect_reason)
                except Exception:
                    log.exception("on_disconnected hook failed")
