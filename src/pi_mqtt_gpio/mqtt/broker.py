"""The broker core: MQTT 3.1.1 and 5.0 semantics without sockets or clocks.

The transport (``server/broker.py``) calls ``open_connection``, ``data_received``,
``connection_lost``, ``auth_complete`` and ``on_timer`` with the current time, and after each
call writes ``conn.data_to_send()`` for every connection in ``take_dirty()``, closes those
marked ``closing``, runs pending ``auth_requests`` and hands ``take_internal()`` deliveries to
in-process clients. Spec references are to MQTT 5.0 (``MQTT-x.y.z-n``) unless marked 3.1.1.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from pi_mqtt_gpio.mqtt.codec import (
    decode_frame,
    encode,
    encode_publish,
    encode_varint,
    peek_protocol_level,
    split_publish,
)
from pi_mqtt_gpio.mqtt.connection import Connection, ConnState
from pi_mqtt_gpio.mqtt.errors import MQTTError, ProtocolError
from pi_mqtt_gpio.mqtt.hooks import (
    AuthRequest,
    AuthResult,
    BrokerHooks,
    ClientInfo,
    Decision,
)
from pi_mqtt_gpio.mqtt.logguard import LOG_TOTAL, LogLimiter, clip
from pi_mqtt_gpio.mqtt.message import MESSAGE_OVERHEAD, Message
from pi_mqtt_gpio.mqtt.packets import (
    PROTOCOL_50,
    PROTOCOL_311,
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
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from pi_mqtt_gpio.mqtt.retain import RetainedStore
from pi_mqtt_gpio.mqtt.session import (
    NEVER_EXPIRES,
    Inflight,
    Pending,
    Session,
    SubEntry,
)
from pi_mqtt_gpio.mqtt.timers import Timers
from pi_mqtt_gpio.mqtt.topic_tree import SubscriptionTree, TopicNode, parse_shared, topic_levels

__all__ = ["BrokerCore", "BrokerLimits", "InternalClient"]

log = logging.getLogger("pi_mqtt_gpio.broker")
_T = TypeVar("_T")

_FORWARD_DROP = (Prop.TOPIC_ALIAS, Prop.SUBSCRIPTION_IDENTIFIER, Prop.MESSAGE_EXPIRY_INTERVAL)
_FAST_TOPICS = 16  # topic names remembered per connection (fast path) ...
_FAST_TOPIC_MAX = 256  # ... of at most this many bytes each
_TARGETS_MAX = 4096  # topics whose receivers are remembered (fast path) ...
_TARGETS_SIZE = 65536  # ... and how many receivers in all
_RETAINED_NODE_COST = 300  # bytes a level of the retained tree costs (measured: ~290)
PENDING_HARD_FACTOR = 2  # unauthenticated sockets past twice the pool: newcomers are closed
KEEPALIVE_GRACE = 1.5  # MQTT-3.1.2-22: silence for 1.5 x Keep Alive closes the connection
RECEIVE_MAXIMUM_DEFAULT = 65535  # a Receive Maximum that is absent means 65,535
RC_FAILURE = 0x80  # reason codes from here on are failures (MQTT 5.0 section 2.4)
CLIENT_ID_FORBIDDEN = "/+#"  # a reply prefix {root}/reply/<client id> must be unambiguous
SYS_PREFIX = "$SYS/"  # the broker's statistics; a ``#`` subscription never gets them (MQTT-4.7.2-1)


_REFUSALS: dict[int, str] = {
    RC.NOT_AUTHORIZED: "not authorized",
    RC.BAD_USER_NAME_OR_PASSWORD: "bad user name or password",
    RC.SERVER_BUSY: "server busy: too many failed logins, try again later",
}


def _retained_cost(msg: Message) -> int:
    return len(msg.payload) + len(msg.topic) + topic_levels(msg.topic) * _RETAINED_NODE_COST


@dataclass(slots=True, frozen=True)
class BrokerLimits:
    max_connections: int = 256
    max_packet_size: int = 262_144
    max_queued_messages: int = 1000
    max_keepalive: int = 600
    receive_maximum: int = 1024  # inbound QoS 1/2 the client may have unacknowledged
    frames_per_turn: int = 256  # packets of one connection handled before the others' turn
    max_inflight_out: int = 1024  # cap on the client's Receive Maximum for our deliveries
    topic_alias_maximum: int = 64  # inbound aliases a 5.0 client may use
    connect_timeout: float = 5.0  # seconds to complete CONNECT (and authentication)
    max_subscriptions_per_client: int = 1000
    max_session_expiry: int = NEVER_EXPIRES
    max_sessions: int = 4096  # beyond it the longest-offline session is dropped
    max_retained_bytes: int = 64 * 1024 * 1024  # retained payloads, topics and tree nodes
    # Topics and filters longer or deeper than this are refused (no real deployment needs
    # more; each level costs a tree node of a few hundred bytes).
    max_topic_length: int = 1024  # characters
    max_topic_levels: int = 32
    # Subscriptions: per session a budget of filter text and of topic levels (tree nodes),
    # and for the whole broker a cap on subscription tree nodes.
    max_subscription_bytes_per_client: int = 128 * 1024
    max_subscription_levels_per_client: int = 8192
    max_subscription_nodes: int = 100_000
    # Messages queued and in flight for one session, and for all sessions together
    # (``Message.cost``: payload + topic + 64). Past either, the oldest queued message of
    # that session is dropped (and a message that alone is too large is not queued).
    max_queued_bytes_per_client: int = 8 * 1024 * 1024
    max_queued_bytes: int = 128 * 1024 * 1024
    # A connected client that acknowledges none of its in-flight QoS 1/2 messages for this
    # long is disconnected (5.0: 0x97); its session keeps them, within the budgets above.
    ack_timeout: float = 60.0
    # Sockets that have not completed CONNECT and authentication: a pool of their own, and
    # a cap per source address. A new socket past either evicts the oldest one that has sent
    # nothing for ``pending_grace`` seconds (a real client sends CONNECT at once; a burst of
    # real clients is not evicted before its CONNECTs are read); if there is none, the new
    # socket is closed.
    max_pending_connections: int = 1024
    max_pending_per_address: int = 256
    pending_grace: float = 0.25


@dataclass(slots=True)
class _Stats:
    messages_in: int = 0
    messages_out: int = 0
    dropped_queue_full: int = 0
    dropped_too_large: int = 0
    dropped_expired: int = 0
    dropped_congested: int = 0
    retained_refused: int = 0
    protocol_errors: int = 0
    wills_refused: int = 0
    pending_evicted: int = 0
    topics_refused: int = 0
    # Traffic ($SYS/broker/...): bytes as read (per read), packets as framed; what goes
    # out is counted by the transport as it writes (per write, not per packet here).
    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    packets_out: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class _Acc:
    """What one session gets from the non-shared subscriptions that match a message."""

    __slots__ = ("qos", "rap", "sub_ids")

    def __init__(self, qos: int, rap: bool, sub_ids: list[int]) -> None:
        self.qos = qos
        self.rap = rap
        self.sub_ids = sub_ids


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
        self._targets: dict[str, tuple[int, list[tuple[str, int, list[int]]] | None]] = {}
        self._targets_size = 0  # receivers held by ``_targets`` (bounded)
        self._backlogged: list[Connection] = []
        self.hooks: list[BrokerHooks] = list(hooks or [])
        self.sessions: dict[str, Session] = {}
        self.connections: dict[int, Connection] = {}
        self.subscriptions: SubscriptionTree[SubEntry] = SubscriptionTree()
        self.retained: RetainedStore[Message] = RetainedStore(_retained_cost)
        self.timers = Timers()
        self.stats = _Stats()
        self.auth_requests: list[tuple[Connection, AuthRequest]] = []
        self._dirty: set[Connection] = set()
        self._internal_out: list[tuple[InternalClient, Message, list[int]]] = []
        self._internal: dict[str, InternalClient] = {}
        self._conn_ids = itertools.count(1)
        self._assigned_ids = itertools.count(1)
        self.accepting = True
        self.established = 0  # connections past CONNACK (``max_connections`` counts these)
        self.established_max = 0  # the most there were at once ($SYS clients/maximum)
        self.queued_bytes = 0  # ``Message.cost`` queued or in flight, all sessions
        # Sockets that have not completed CONNECT and authentication, oldest first.
        self._pending: dict[int, Connection] = {}
        self._conn_sessions: dict[int, Session] = {}  # connection id -> its session
        self._pending_by_address: dict[str, int] = {}
        self._log = LogLimiter(log, total=LOG_TOTAL)  # across all addresses too
        # Topic prefixes whose deliveries a hook must approve per receiver (reply prefixes).
        self._protected: tuple[str, ...] = tuple(
            prefix for hook in self.hooks for prefix in hook.read_protected())
        # ... and their parent topics: a filter ``x/#`` also matches ``x`` (MQTT-4.7.1-2), so
        # a prefix ending in ``/`` covers the topic without it (``home/`` covers ``home``).
        self._protected_parents: frozenset[str] = frozenset(
            prefix[:-1] for prefix in self._protected if prefix.endswith("/"))

    # ------------------------------------------------------------------ transport interface
    def open_connection(
        self, transport: str, peer: str, now: float, cert_cn: str | None = None
    ) -> Connection:
        conn = Connection(
            next(self._conn_ids), transport, peer, self.limits.max_packet_size, now, cert_cn
        )
        self.connections[conn.id] = conn
        self.timers.push(now + self.limits.connect_timeout, "connect", conn)
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
        self._log.log(logging.WARNING, conn.address, now, "closing %r: %s", conn, reason)
        conn.hard_close = True
        self._close(conn, now, None, reason)

    def _unpend(self, conn: Connection) -> None:
        if self._pending.pop(conn.id, None) is None:
            return
        left = self._pending_by_address.get(conn.address, 1) - 1
        if left > 0:
            self._pending_by_address[conn.address] = left
        else:
            self._pending_by_address.pop(conn.address, None)

    def pending_count(self) -> int:
        """Sockets that have not completed CONNECT and authentication."""
        return len(self._pending)

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
                self._process(conn, now)
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
        if first == 0x40:
            return size == 2 and self._fast_puback(conn, (data[2] << 8) | data[3], now)
        if first == 0x30 or first == 0x32:
            return self._fast_publish(conn, first, data[hdr:], now)
        return False

    def _fast_puback(self, conn: Connection, pid: int, now: float) -> bool:
        """A success PUBACK for a QoS 1 delivery in flight, with nothing queued behind it:
        settled here. False (nothing done) for anything else (``_on_puback`` decides)."""
        session = self._conn_sessions.get(conn.id)
        if session is None or session.queue:
            return False
        inflight = session.inflight
        item = inflight.get(pid)
        if item is None or item.qos != 1:
            return False
        del inflight[pid]
        msg = item.message
        cost = len(msg.payload) + len(msg.topic) + MESSAGE_OVERHEAD
        session.queued_bytes -= cost
        self.queued_bytes -= cost
        conn.last_ack = now
        return True

    def process_backlog(self, conn: Connection, now: float) -> None:
        """Handle the next packets already received (see ``data_received``)."""
        conn.backlog = False
        if conn.state is ConnState.CLOSED or conn.closing:
            return
        self._guarded(conn, now, self._process, None)

    def _feed(self, conn: Connection, now: float, data: bytes) -> None:
        reader = conn.reader
        reader.feed(data)
        if conn.state is ConnState.AUTHENTICATING:
            if reader.buffered > 2 * self.limits.max_packet_size:
                raise ProtocolError("too much data before CONNACK", RC.QUOTA_EXCEEDED)
            return
        self._process(conn, now)

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
        self._close(conn, now, RC.IMPLEMENTATION_SPECIFIC_ERROR, "internal error")

    def _process(self, conn: Connection, now: float, _arg: None = None) -> None:
        reader = conn.reader
        budget = self.limits.frames_per_turn
        fast = self.fast_path
        connected = ConnState.CONNECTED
        stats = self.stats
        while not conn.closing:
            state = conn.state
            budget -= 1
            if budget < 0:
                if reader.buffered and not conn.backlog and state is connected:
                    conn.backlog = True
                    self._backlogged.append(conn)
                return
            if state is connected and fast:
                frame = reader.next_frame()
                if frame is None:
                    return
                stats.packets_in += 1
                first, body = frame
                if (first == 0x30 or first == 0x32) and self._fast_publish(conn, first, body,
                                                                           now):
                    continue
                if first == 0x40 and len(body) == 2 and (body[0] or body[1]):
                    # PUBACK (success, no properties)
                    pid = (body[0] << 8) | body[1]
                    if not self._fast_puback(conn, pid, now):
                        self._on_puback(conn, pid, 1, now)
                    continue
                self._dispatch(conn, first, body, now)
                continue
            if state is ConnState.CLOSED or state is ConnState.AUTHENTICATING:
                return
            if state is ConnState.NEW and reader.peek_first() not in (None, 0x10):
                # MQTT-3.1.0-1: the first packet must be CONNECT; close without reply, and
                # without waiting for the rest of whatever this is.
                self._close(conn, now, None, "first packet was not CONNECT")
                return
            frame = reader.next_frame()
            if frame is None:
                return
            stats.packets_in += 1
            first, body = frame
            if conn.state is ConnState.NEW:
                if peek_protocol_level(body) == PROTOCOL_50:
                    conn.version = PROTOCOL_50  # so a malformed CONNECT gets a 5.0 CONNACK
                self._on_connect(conn, body, first, now)
                continue
            self._dispatch(conn, first, body, now)

    def connection_lost(self, conn: Connection, now: float) -> None:
        """The network connection is gone (closed by either side)."""
        if conn.state is ConnState.CLOSED:
            return
        if not conn.disconnect_reason:
            conn.disconnect_reason = "connection lost"
        self._teardown(conn, now, publish_will=True)

    def on_timer(self, now: float) -> None:
        for kind, ref in self.timers.pop_due(now):
            try:
                self._fire(kind, ref, now)
            except Exception:
                log.exception("timer %s failed", kind)

    def next_deadline(self) -> float | None:
        return self.timers.next_deadline()

    def take_dirty(self) -> list[Connection]:
        dirty = list(self._dirty)
        self._dirty.clear()
        return dirty

    def take_backlogged(self) -> list[Connection]:
        """Connections with packets left for a later turn (``process_backlog``)."""
        out = self._backlogged
        self._backlogged = []
        return out

    def take_internal(self) -> list[tuple[InternalClient, Message, list[int]]]:
        out = self._internal_out
        self._internal_out = []
        return out

    def take_auth_requests(self) -> list[tuple[Connection, AuthRequest]]:
        out = self.auth_requests
        self.auth_requests = []
        return out

    def abort(self, conn: Connection, now: float, reason: str) -> None:
        """Drop ``conn`` without a goodbye (e.g. it stopped reading); its Will is published."""
        conn.disconnect_reason = reason
        self._close(conn, now, None, reason)

    def shutdown(self, now: float) -> None:
        """Disconnect everyone with 0x8B (5.0); wills are published as for a lost connection."""
        self.accepting = False
        for conn in list(self.connections.values()):
            self._close(conn, now, RC.SERVER_SHUTTING_DOWN, "server shutting down")

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
        self._internal[client_id] = client
        return client

    def subscribe_internal(
        self, client: InternalClient, sub: Subscription, sub_id: int, now: float
    ) -> None:
        session = self.sessions[client.client_id]
        self._add_subscription(session, sub, sub_id, None, sub.topic_filter, now)

    def unsubscribe_internal(self, client: InternalClient, topic_filter: str) -> None:
        session = self.sessions.get(client.client_id)
        if session is not None:
            self._remove_subscription(session, topic_filter)

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
            self._retain(msg, now)
        return self._route(msg, now)

    def _retain(self, msg: Message, now: float) -> None:
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
            self._log.log(logging.WARNING, "retained", now,
                          "retained store full (%d bytes): not retaining %r",
                          self.retained.bytes, clip(msg.topic))
            return
        self.retained.set(msg.topic, msg)

    # ------------------------------------------------------------------ closing
    def _protocol_violation(self, conn: Connection, exc: MQTTError, now: float) -> None:
        self._log.log(logging.INFO, conn.address, now, "closing %r: %s (0x%02x)", conn,
                      clip(exc.message, 200), exc.reason_code)
        if conn.state is ConnState.NEW or (
            conn.state is ConnState.AUTHENTICATING and conn.connect is None
        ):
            if conn.v5:
                # MQTT 5.0 section 4.13.1: MAY send CONNACK with the reason code before closing.
                conn.send(ConnAck(False, exc.reason_code, self._reason(conn, exc.message)))
                self._dirty.add(conn)
            self._close(conn, now, None, exc.message)
            return
        self._close(conn, now, exc.reason_code, exc.message)

    def _reason(self, conn: Connection, text: str) -> Properties:
        # MQTT-3.1.2-29: no Reason String when the client set Request Problem Information to 0
        # (CONNACK and DISCONNECT are exempt; we honour it everywhere else).
        return {Prop.REASON_STRING: text} if conn.v5 and text else {}

    def _close(
        self, conn: Connection, now: float, reason_code: int | None, text: str,
        publish_will: bool = True,
    ) -> None:
        """Close ``conn``: 5.0 DISCONNECT with ``reason_code`` when connected, then teardown."""
        if conn.state is ConnState.CLOSED:
            return
        if reason_code is not None and conn.v5 and conn.state is ConnState.CONNECTED:
            conn.send(Disconnect(reason_code, self._reason(conn, text)))  # MQTT-4.13.2-1
        conn.disconnect_reason = conn.disconnect_reason or text
        conn.closing = True
        self._dirty.add(conn)
        self._teardown(conn, now, publish_will)

    def _teardown(self, conn: Connection, now: float, publish_will: bool) -> None:
        was_connected = conn.state is ConnState.CONNECTED
        conn.state = ConnState.CLOSED
        self.connections.pop(conn.id, None)
        self._unpend(conn)
        if was_connected:
            self.established -= 1
        session = self._conn_sessions.pop(conn.id, None)
        if session is None or session.conn is not conn:
            return
        session.conn = None
        will = conn.will if publish_will else None
        conn.will = None
        if session.expiry_interval == 0:
            self._end_session(session, now, will)
        else:
            if session.expiry_interval != NEVER_EXPIRES:
                session.expires_at = now + session.expiry_interval
                self.timers.push(session.expires_at, "session", session)
            if will is not None:
                delay = min(conn.will_delay, session.expiry_interval)
                if delay <= 0:
                    self._publish_will(will, session.client, now)
                else:
                    session.will = will
                    session.will_at = now + delay
                    self.timers.push(session.will_at, "will", session)
        if was_connected and conn.client is not None:
            for hook in self.hooks:
                try:
                    hook.on_disconnected(conn.client, conn.disconnect_reason)
                except Exception:
                    log.exception("on_disconnected hook failed")

    def _make_room_for_a_session(self, now: float) -> None:
        """Sessions outlive connections (3.1.1 CleanSession=0 never expires): bound them.
        At ``max_sessions`` the session offline for longest ends (its Will, if pending, goes
        out), so no number of client ids can grow memory without bound."""
        if len(self.sessions) < self.limits.max_sessions:
            return
        offline = [s for s in self.sessions.values()
                   if s.conn is None and s.internal_handler is None]
        if not offline:
            return
        oldest = min(offline, key=lambda s: s.expires_at if s.expires_at is not None
                     else float("-inf"))
        log.warning("%d sessions: dropping offline session %r", len(self.sessions),
                    oldest.client_id)
        self._end_session(oldest, now)

    def _end_session(self, session: Session, now: float, will: Message | None = None) -> None:
        """The session ends: publish a pending Will (MQTT-3.1.3-9), drop all state."""
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        for entry in list(session.subscriptions.values()):
            self.subscriptions.remove(entry.topic_filter, session.client_id, entry.group)
        session.subscriptions.clear()
        session.sub_bytes = session.sub_levels = 0
        self._release_queue(session)
        pending = will or session.will
        session.will = None
        if pending is not None:
            self._publish_will(pending, session.client, now)

    def _publish_will(self, will: Message, owner: ClientInfo | None, now: float) -> None:
        """A Will is published as its owner's PUBLISH would be: authorised again now (the
        owner's rights may have changed since CONNECT), refused silently otherwise."""
        if owner is None or self._authorize_publish(owner, will.topic, will.qos, will.retain) \
                is not Decision.ALLOW:
            self.stats.wills_refused += 1
            self._log.log(logging.WARNING, will.sender or "", now,
                          "will of %r on %r not published: not authorized",
                          clip(will.sender), clip(will.topic))
            return
        self.publish(will, now)

    def _release_queue(self, session: Session) -> None:
        """Forget what was queued or in flight for ``session`` (it ended)."""
        self.queued_bytes -= session.queued_bytes
        session.queued_bytes = 0
        session.queue.clear()
        session.inflight.clear()

    def _fire(self, kind: str, ref: object, now: float) -> None:
        if kind == "keepalive":
            assert isinstance(ref, Connection)
            conn = ref
            if conn.state is not ConnState.CONNECTED or not conn.keep_alive:
                return
            deadline = conn.last_rx + conn.keep_alive * KEEPALIVE_GRACE  # MQTT-3.1.2-22
            if now >= deadline:
                self._close(conn, now, RC.KEEP_ALIVE_TIMEOUT, "keep alive timeout")
            else:
                self.timers.push(deadline, "keepalive", conn)
        elif kind == "connect":
            assert isinstance(ref, Connection)
            if ref.state in (ConnState.NEW, ConnState.AUTHENTICATING):
                self._close(ref, now, None, "CONNECT not completed in time")
        elif kind == "will":
            assert isinstance(ref, Session)
            if ref.will is not None and ref.will_at is not None and now >= ref.will_at:
                will, ref.will = ref.will, None
                self._publish_will(will, ref.client, now)
        elif kind == "acks":
            assert isinstance(ref, Connection)
            self._check_acks(ref, now)
        elif kind == "session":
            assert isinstance(ref, Session)
            if ref.conn is None and ref.expires_at is not None and now >= ref.expires_at:
                self._end_session(ref, now)

    # ------------------------------------------------------------------ CONNECT
    def _on_connect(self, conn: Connection, body: bytes, first: int, now: float) -> None:
        packet = decode_frame(first, body, conn.version)
        assert isinstance(packet, Connect)
        level, name = packet.protocol_level, packet.protocol_name
        if level not in (PROTOCOL_311, PROTOCOL_50) or name != "MQTT":
            # MQTT-3.1.2-2 (3.1.1: return code 0x01), 5.0: 0x84; then close.
            conn.version = PROTOCOL_50 if level == PROTOCOL_50 else PROTOCOL_311
            conn.send(ConnAck(False, RC.UNSUPPORTED_PROTOCOL_VERSION))
            self._dirty.add(conn)
            self._close(conn, now, None, f"unsupported protocol {name!r} level {level}")
            return
        conn.version = level
        conn.connect = packet
        props = packet.properties
        if conn.disconnect_reason == "server busy" or \
                self.established >= self.limits.max_connections:
            self._refuse(conn, RC.SERVER_BUSY, "too many connections", now)
            return
        if Prop.AUTHENTICATION_METHOD in props:
            self._refuse(conn, RC.BAD_AUTHENTICATION_METHOD, "enhanced auth not supported", now)
            return
        client_id = packet.client_id
        if not client_id:
            if level == PROTOCOL_311 and not packet.clean_start:
                # 3.1.1 MQTT-3.1.3-8: zero-length id with CleanSession=0 -> 0x02, close.
                self._refuse(conn, RC.CLIENT_IDENTIFIER_NOT_VALID, "empty client id", now)
                return
            client_id = f"auto-{next(self._assigned_ids):x}-{conn.id:x}"
            conn.client_id = client_id
            props_assigned = level == PROTOCOL_50
        else:
            conn.client_id = client_id
            props_assigned = False
        if client_id in self._internal:
            self._refuse(conn, RC.CLIENT_IDENTIFIER_NOT_VALID, "client id reserved", now)
            return
        if any(c in client_id for c in CLIENT_ID_FORBIDDEN):
            # MQTT-3.1.3-5 lets a server restrict client ids; a reply prefix
            # {root}/reply/<id> must not cover another client's ("vic" and "vic/x").
            self._refuse(conn, RC.CLIENT_IDENTIFIER_NOT_VALID,
                         "client id may not contain '/', '+' or '#'", now)
            return
        if packet.will is not None and not self._topic_ok(packet.will.topic):
            self._refuse(conn, RC.TOPIC_NAME_INVALID, "will topic too long or too deep", now)
            return
        conn.problem_info = bool(props.get(Prop.REQUEST_PROBLEM_INFORMATION, 1))
        conn.state = ConnState.AUTHENTICATING
        if props_assigned:
            conn.connect.properties[Prop.ASSIGNED_CLIENT_IDENTIFIER] = client_id
        self.auth_requests.append(
            (
                conn,
                AuthRequest(
                    client_id, packet.username, packet.password, level, conn.transport,
                    conn.peer, conn.cert_cn,
                ),
            )
        )

    def _refuse(self, conn: Connection, code: int, text: str, now: float) -> None:
        props = self._reason(conn, text) if conn.v5 else {}
        conn.send(ConnAck(False, code, props))
        self._dirty.add(conn)
        self._close(conn, now, None, text)

    def auth_complete(self, conn: Connection, result: AuthResult, now: float) -> None:
        """The security hooks have decided on ``conn``'s CONNECT."""
        if conn.state is not ConnState.AUTHENTICATING or conn.connect is None:
            return
        self._guarded(conn, now, self._authenticated, result)

    def _authenticated(self, conn: Connection, now: float, result: AuthResult) -> None:
        if result.decision is not Decision.ALLOW:
            code = result.reason_code
            self._refuse(conn, code, _REFUSALS.get(code, "not authorized"), now)
            return
        packet = conn.connect
        assert packet is not None
        client = ClientInfo(
            conn.client_id, result.username, result.role, conn.version, conn.transport, conn.peer
        )
        refusal = self._connect_refusal(client, packet)
        if refusal is not None:
            code, text = refusal
            self._log.log(logging.WARNING, conn.address, now, "refusing %r (user %r): %s", conn,
                          clip(result.username), text)
            self._refuse(conn, code, text, now)
            return
        conn.client = client
        self._establish(conn, now)
        self._process(conn, now)

    def _connect_refusal(self, client: ClientInfo, packet: Connect) -> tuple[int, str] | None:
        """Why an authenticated CONNECT is still refused, or None."""
        if self.established >= self.limits.max_connections:
            return RC.SERVER_BUSY, "too many connections"
        session = self.sessions.get(client.client_id)
        if session is not None and session.client is not None \
                and session.client.username != client.username:
            # A session belongs to the user who made it: another user may neither take it
            # over nor discard it (clean start), and its owner stays connected.
            return RC.CLIENT_IDENTIFIER_NOT_VALID, "client id in use by another user"
        will = packet.will
        if will is not None and self._authorize_publish(client, will.topic, will.qos,
                                                        will.retain) is not Decision.ALLOW:
            # MQTT-3.1.2: a Will the client could not publish itself is refused at CONNECT
            # (5.0: 0x87 Not authorized; 3.1.1: 0x05), not accepted and dropped later.
            return RC.NOT_AUTHORIZED, "will topic not authorized"
        return None

    def _establish(self, conn: Connection, now: float) -> None:
        """CONNECT accepted: negotiate, attach the session, keep the Will, send CONNACK,
        resume what the session had in flight."""
        packet = conn.connect
        assert packet is not None and conn.client is not None
        ack_props, expiry = self._negotiate(conn, packet)
        session, session_present = self._attach_session(conn, packet, expiry, now)
        if packet.will is not None:
            conn.will, conn.will_delay = self._will_message(conn, packet.will)
        if conn.v5:
            ack_props.update(self._connack_properties(conn, packet))
        conn.state = ConnState.CONNECTED
        self._unpend(conn)
        self.established += 1
        if self.established > self.established_max:
            self.established_max = self.established
        conn.send(ConnAck(session_present, RC.SUCCESS, ack_props))
        self._dirty.add(conn)
        if conn.keep_alive:
            self.timers.push(now + conn.keep_alive * KEEPALIVE_GRACE, "keepalive", conn)
        self._resume(conn, session, now)
        for hook in self.hooks:
            try:
                hook.on_connected(conn.client)
            except Exception:
                log.exception("on_connected hook failed")

    def _negotiate(self, conn: Connection, packet: Connect) -> tuple[Properties, int]:
        """Keep alive, session expiry and the client's limits; the CONNACK properties they
        need and the session expiry interval."""
        props = packet.properties
        limits = self.limits
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
        conn.receive_max_out = min(props.get(Prop.RECEIVE_MAXIMUM, RECEIVE_MAXIMUM_DEFAULT), limits.max_inflight_out)
        conn.max_packet_out = props.get(Prop.MAXIMUM_PACKET_SIZE, 0)
        conn.alias_out_max = props.get(Prop.TOPIC_ALIAS_MAXIMUM, 0)
        return ack_props, expiry

    def _attach_session(self, conn: Connection, packet: Connect, expiry: int, now: float
                        ) -> tuple[Session, bool]:
        """The session for ``conn``: taken over, discarded (clean start) or new."""
        client_id = conn.client_id
        # Session takeover (MQTT-3.1.4-3): the existing connection is closed (0x8E on 5.0).
        session = self.sessions.get(client_id)
        if session is not None and session.conn is not None:
            self._close(session.conn, now, RC.SESSION_TAKEN_OVER, "session taken over")
            session = self.sessions.get(client_id)  # may have ended with the old connection
        present = False
        if session is not None and packet.clean_start:
            self._end_session(session, now)  # MQTT-3.1.2-4: discard the existing session
            session = None
        if session is None:
            self._make_room_for_a_session(now)
            session = Session(client_id)
            self.sessions[client_id] = session
        else:
            present = True
            session.will = None  # MQTT-3.1.3-9: reconnected before the Will Delay passed
        session.expiry_interval = expiry
        session.expires_at = None
        session.conn = conn
        session.client = conn.client
        self._conn_sessions[conn.id] = session
        return session, present

    def _will_message(self, conn: Connection, will: Will) -> tuple[Message, int]:
        """The Will as the message to publish on an unclean close, and its delay. A Message
        Expiry Interval stays in the properties: it starts counting when the Will is
        published (``publish`` turns it into ``expires_at``)."""
        assert conn.client is not None
        wprops = dict(will.properties)
        delay = wprops.pop(Prop.WILL_DELAY_INTERVAL, 0)
        retain = will.retain and self._may_retain(conn.client, will.topic)
        return Message(will.topic, will.payload, will.qos, retain, wprops, None,
                       conn.client_id, conn.client.username, conn.client.role), delay

    def _connack_properties(self, conn: Connection, packet: Connect) -> Properties:
        """What a 5.0 CONNACK tells the client about us."""
        limits = self.limits
        out: Properties = {}
        if Prop.ASSIGNED_CLIENT_IDENTIFIER in packet.properties:
            out[Prop.ASSIGNED_CLIENT_IDENTIFIER] = conn.client_id
        if limits.receive_maximum < RECEIVE_MAXIMUM_DEFAULT:
            out[Prop.RECEIVE_MAXIMUM] = limits.receive_maximum
        out[Prop.MAXIMUM_PACKET_SIZE] = limits.max_packet_size
        if limits.topic_alias_maximum:
            out[Prop.TOPIC_ALIAS_MAXIMUM] = limits.topic_alias_maximum
        if packet.properties.get(Prop.REQUEST_RESPONSE_INFORMATION) and conn.client is not None:
            for hook in self.hooks:
                info = hook.response_information(conn.client)
                if info:
                    out[Prop.RESPONSE_INFORMATION] = info
                    break
        if conn.client is not None and Prop.USER_PROPERTY in packet.properties:
            asked = list(packet.properties[Prop.USER_PROPERTY])
            extra: list[tuple[str, str]] = []
            for hook in self.hooks:
                try:
                    extra.extend(hook.connack_user_properties(conn.client, asked))
                except Exception:
                    log.exception("connack_user_properties hook failed")
            # MQTT-3.2.2-20: never grow the CONNACK past the client's Maximum Packet Size.
            limit = packet.properties.get(Prop.MAXIMUM_PACKET_SIZE, 0)
            if extra and (not limit or len(encode(ConnAck(True, RC.SUCCESS, {
                    **out, Prop.USER_PROPERTY: extra}))) <= limit):
                out[Prop.USER_PROPERTY] = extra
        return out

    def _resume(self, conn: Connection, session: Session, now: float) -> None:
        """Resend unacknowledged deliveries with DUP (MQTT-4.4.0-1), then the queue."""
        if session.inflight:
            self._watch_acks(conn, now)
        for pid, item in session.inflight.items():
            if item.released:
                conn.send(PubRel(pid))
            else:
                self._send_publish(conn, item.message, item.qos, item.retain, pid, True,
                                   item.subscription_ids, now)
        self._drain_queue(session, now)

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, conn: Connection, first: int, body: bytes, now: float) -> None:
        packet = decode_frame(first, body, conn.version)
        if isinstance(packet, Publish):
            self._on_publish(conn, packet, now)
        elif isinstance(packet, PubAck):
            self._on_puback(conn, packet.packet_id, 1, now)
        elif isinstance(packet, PubRec):
            self._on_pubrec(conn, packet, now)
        elif isinstance(packet, PubRel):
            self._on_pubrel(conn, packet.packet_id)
        elif isinstance(packet, PubComp):
            self._on_puback(conn, packet.packet_id, 2, now)
        elif isinstance(packet, PingReq):
            conn.write(b"\xd0\x00")
            self._dirty.add(conn)
        elif isinstance(packet, Subscribe):
            self._on_subscribe(conn, packet, now)
        elif isinstance(packet, Unsubscribe):
            self._on_unsubscribe(conn, packet)
        elif isinstance(packet, Disconnect):
            self._on_disconnect(conn, packet, now)
        elif isinstance(packet, Connect):
            raise ProtocolError("second CONNECT")  # MQTT-3.1.0-2
        elif isinstance(packet, Auth):
            raise ProtocolError("AUTH without enhanced authentication")  # MQTT-4.12.0-1
        else:
            raise ProtocolError(f"{type(packet).__name__} is not sent by clients")

    # ------------------------------------------------------------------ PUBLISH in
    def _on_publish(self, conn: Connection, p: Publish, now: float) -> None:
        """An inbound PUBLISH: resolve its topic, check it, route it, acknowledge it."""
        session = self._conn_sessions.get(conn.id)
        assert session is not None and conn.client is not None
        topic = self._resolve_alias(conn, p)
        qos, pid = p.qos, p.packet_id
        if not self._topic_ok(topic):
            self._refuse_publish(conn, p, topic, RC.TOPIC_NAME_INVALID, now,
                                 "topic too long or too deep")
            return
        if qos == 2 and pid in session.awaiting_rel:
            # Duplicate of a QoS 2 message not yet released: acknowledge, do not route again.
            conn.send(PubRec(pid))
            self._dirty.add(conn)
            return
        if qos == 2 and len(session.awaiting_rel) >= self.limits.receive_maximum:
            raise ProtocolError("Receive Maximum exceeded", RC.RECEIVE_MAXIMUM_EXCEEDED)
        routed = -1
        code = self._publish_check(conn, p, topic, now)
        if code == RC.SUCCESS:
            routed = self.publish(self._inbound_message(conn, p, topic, now), now)
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
                session.awaiting_rel.add(pid)  # type: ignore[arg-type]
            conn.send(PubRec(pid, code))  # type: ignore[arg-type]
        self._dirty.add(conn)

    # ------------------------------------------------------------------ PUBLISH in, fast
    def invalidate_authorization(self) -> None:
        """Rights may have changed (users reloaded): forget every cached decision, and
        authorise every subscription again, as a SUBSCRIBE now would be (``reauthorize``)."""
        self.auth_epoch += 1
        self.reauthorize()

    def reauthorize(self) -> tuple[int, int]:
        """Every session's subscriptions (connected or not) granted again by the hooks as
        they answer now: one they refuse is removed (MQTT has no unsubscribe from the server:
        its deliveries just stop; the client learns it at its next SUBSCRIBE, 0x87 / 0x80).
        Then what each session holds for later, queued or in flight towards an offline
        client (resent at reconnect, MQTT-4.4.0-1), is kept only when a subscription it
        still has matches it and the read rule lets it read it now, as a restart's restore
        decides (``store.apply``). Returns (subscriptions removed, messages dropped)."""
        removed = dropped = 0
        for session in list(self.sessions.values()):
            client = session.client
            if client is None or client.internal or session.internal_handler is not None:
                continue
            refused = [topic_filter for topic_filter, entry in session.subscriptions.items()
                       if self._authorize_subscribe(client, topic_filter, entry.options.qos)
                       is not Decision.ALLOW]
            for topic_filter in refused:
                self._remove_subscription(session, topic_filter)
            if refused:
                removed += len(refused)
                log.warning("%d subscriptions of %r removed (no longer authorised), %r first",
                            len(refused), clip(session.client_id), clip(refused[0]))
            dropped += self._recheck_held(session)
        if dropped:
            log.warning("%d queued messages dropped: their readers may no longer read them",
                        dropped)
        return removed, dropped

    def _recheck_held(self, session: Session) -> int:
        """Drop what ``session`` holds that it may no longer receive (``reauthorize``)."""
        dropped = 0
        if session.queue:
            kept: deque[Pending] = deque()
            for item in session.queue:
                shown = self._still_delivers(session, item.message)
                if shown is None:
                    self._charge(session, -item.message.cost)
                    dropped += 1
                    continue
                if shown is not item.message:
                    self._charge(session, shown.cost - item.message.cost)
                    item.message = shown
                kept.append(item)
            session.queue = kept
        if session.conn is None:  # in flight to a client that is gone: resent at reconnect
            for pid, held in list(session.inflight.items()):
                if not held.released and self._still_delivers(session, held.message) is None:
                    del session.inflight[pid]
                    self._charge(session, -held.message.cost)
                    dropped += 1
        return dropped

    def _still_delivers(self, session: Session, msg: Message) -> Message | None:
        """``msg`` as ``session`` may receive it now: None when no subscription it holds
        matches it, or the read rule refuses it (``_deliver``'s check)."""
        cid = session.client_id
        for node in self.subscriptions.match(msg.topic):
            if cid in node.subs or any(cid in members for members in node.shared.values()):
                break
        else:
            return None
        return self._for_reader(session, msg) if self._read_checked(msg.topic) else msg

    def _read_checked(self, topic: str) -> bool:
        """Whether deliveries on ``topic`` are checked per reader (``read_protected()``)."""
        return bool(self._protected) and (
            topic.startswith(self._protected) or topic in self._protected_parents)

    def _fast_publish(self, conn: Connection, first: int, body: bytes, now: float) -> bool:
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
        if known is not None and known[1] == self.auth_epoch and known[2] & (1 << qos):
            topic = known[0]
        else:
            found = self._fast_admit(conn, tkey, qos, known)
            if found is None:
                return False
            topic = found
        payload = body[pos:]
        if props and props.get(Prop.PAYLOAD_FORMAT_INDICATOR) == 1:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                return False
        hit = self._targets.get(topic)
        if hit is not None and hit[0] == self.subscriptions.version:
            targets = hit[1]
        else:
            targets = self._route_targets(topic)
        if targets is None:
            return False
        self.stats.messages_in += 1
        msg: Message | None = None  # built only for a receiver the general path serves
        sessions = self.sessions
        protected = bool(self._protected) and (
            topic.startswith(self._protected) or topic in self._protected_parents)
        version = conn.version
        same: bytes | None = None  # the PUBLISH as a QoS 0 receiver of ``version`` gets it
        other: bytes | None = None  # ... and as one of the other version gets it
        count = 0
        for cid, sub_qos, sub_ids in targets:
            session = sessions.get(cid)
            if session is None:
                continue
            count += 1
            out = session.conn
            if (sub_ids or protected or out is None or out.state is not ConnState.CONNECTED
                    or out.alias_out_max or out.max_packet_out
                    or session.internal_handler is not None):
                slow = True
            elif qos and sub_qos:  # a QoS 1 delivery: with a window and nothing queued
                slow = (len(session.inflight) >= out.receive_max_out or bool(session.queue)
                        or session.queued_bytes + len(payload) + len(topic) + MESSAGE_OVERHEAD
                        > self.limits.max_queued_bytes_per_client)
            else:
                slow = out.congested
            if slow or (qos and sub_qos):
                if msg is None:
                    client = conn.client
                    assert client is not None
                    msg = Message(topic, payload, qos, False, props, None, conn.client_id,
                                  client.username, client.role, raw)
                if slow:
                    self._deliver(session, msg, qos if qos < sub_qos else sub_qos, False,
                                  sub_ids, now)
                    continue
                cost = msg.cost
                if self.queued_bytes + cost > self.limits.max_queued_bytes:
                    self._deliver(session, msg, 1, False, sub_ids, now)
                    continue
                assert out is not None
                inflight = session.inflight
                out_pid = session.next_pid
                if out_pid in inflight:
                    out_pid = session.allocate_pid()
                else:
                    session.next_pid = out_pid % 65535 + 1
                if out.version == version:  # the publisher's bytes with our packet id
                    at = 2 + len(tkey)
                    data = b"\x32" + encode_varint(len(body)) + body[:at] \
                        + bytes((out_pid >> 8, out_pid & 0xFF)) + body[at + 2:]
                else:
                    data = encode_publish(topic, payload, 1, False, False, out_pid, props,
                                          out.version, raw)
                out.write(data)
                self._dirty.add(out)
                self.stats.messages_out += 1
                if not inflight:
                    self._watch_acks(out, now)
                inflight[out_pid] = Inflight(msg, 1, False, sub_ids)
                session.queued_bytes += cost
                self.queued_bytes += cost
                continue
            assert out is not None
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
            self._dirty.add(out)
            self.stats.messages_out += 1
        if pid:
            if conn.version == PROTOCOL_50 and not count:
                conn.write(bytes((0x40, 3, pid >> 8, pid & 0xFF, RC.NO_MATCHING_SUBSCRIBERS)))
            else:
                conn.write(bytes((0x40, 2, pid >> 8, pid & 0xFF)))
            self._dirty.add(conn)
        return True

    def _fast_admit(self, conn: Connection, tkey: bytes, qos: int,
                    known: tuple[str, int, int] | None) -> str | None:
        """A topic name seen for the first time (at this QoS, since the last change of
        rights): valid and allowed? Then remembered, for short topics and a few of them."""
        try:
            topic = tkey.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if "\x00" in topic or "+" in topic or "#" in topic or not self._topic_ok(topic):
            return None
        client = conn.client
        assert client is not None
        if self._authorize_publish(client, topic, qos, False) is not Decision.ALLOW:
            return None  # the general path refuses it, logs it and tells the hooks
        if len(tkey) <= _FAST_TOPIC_MAX:
            mask = known[2] if known is not None and known[1] == self.auth_epoch else 0
            cached = conn.fast_topics
            if len(cached) >= _FAST_TOPICS and tkey not in cached:
                cached.clear()
            cached[tkey] = (topic, self.auth_epoch, mask | (1 << qos))
        return topic

    def _route_targets(self, topic: str) -> list[tuple[str, int, list[int]]] | None:
        """Who gets a message on ``topic`` from its plain subscriptions: (client id, QoS,
        Subscription Identifiers) per session, as ``_route`` aggregates them. None when a
        shared or No Local subscription matches (those depend on more than the topic)."""
        tree = self.subscriptions
        hit = self._targets.get(topic)
        if hit is not None and hit[0] == tree.version:
            return hit[1]
        per_client: dict[str, _Acc] = {}
        plain = True
        for node in tree.match(topic):
            if node.shared:
                plain = False
                break
            for cid, entry in node.subs.items():
                opts = entry.options
                if opts.no_local:
                    plain = False
                    break
                acc = per_client.get(cid)
                sid = entry.subscription_id
                if acc is None:
                    per_client[cid] = _Acc(opts.qos, opts.retain_as_published,
                                           [sid] if sid else [])
                else:
                    if opts.qos > acc.qos:
                        acc.qos = opts.qos
                    if sid:
                        acc.sub_ids.append(sid)
            if not plain:
                break
        result = [(cid, acc.qos, acc.sub_ids) for cid, acc in per_client.items()] \
            if plain else None
        size = len(result) if result else 1
        if len(self._targets) >= _TARGETS_MAX or self._targets_size + size > _TARGETS_SIZE:
            self._targets.clear()
            self._targets_size = 0
        self._targets[topic] = (tree.version, result)
        self._targets_size += size
        return result

    def _resolve_alias(self, conn: Connection, p: Publish) -> str:
        """The topic of ``p``, through its 5.0 Topic Alias (MQTT-3.3.2-9/10/12)."""
        topic = p.topic
        alias = p.properties.get(Prop.TOPIC_ALIAS) if conn.v5 and p.properties else None
        if alias is None:
            return topic
        if alias > self.limits.topic_alias_maximum:
            raise ProtocolError("topic alias out of range", RC.TOPIC_ALIAS_INVALID)
        if topic:
            conn.alias_in[alias] = topic
            return topic
        known = conn.alias_in.get(alias)
        if known is None:
            raise ProtocolError("unknown topic alias")  # (0x82)
        return known

    def _publish_check(self, conn: Connection, p: Publish, topic: str, now: float) -> int:
        """SUCCESS, PAYLOAD_FORMAT_INVALID (5.0) or NOT_AUTHORIZED (the ACL; the hooks hear of
        the refusal, so that a refused call can still be answered)."""
        client = conn.client
        assert client is not None
        if conn.v5 and p.properties.get(Prop.PAYLOAD_FORMAT_INDICATOR) == 1:
            try:
                p.payload.decode("utf-8")
            except UnicodeDecodeError:
                return RC.PAYLOAD_FORMAT_INVALID
        if self._authorize_publish(client, topic, p.qos, p.retain) is Decision.ALLOW:
            return RC.SUCCESS
        self._log.log(logging.INFO, conn.client_id, now, "publish to %r by %r denied",
                      clip(topic), clip(conn.client_id))
        denied = Message(topic, p.payload, p.qos, p.retain, p.properties, None, conn.client_id,
                         client.username, client.role)
        for hook in self.hooks:
            try:
                hook.on_publish_denied(client, denied)
            except Exception:
                log.exception("on_publish_denied hook failed")
        return RC.NOT_AUTHORIZED

    def _inbound_message(self, conn: Connection, p: Publish, topic: str, now: float) -> Message:
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
        retain = p.retain and self._may_retain(client, topic)
        return Message(topic, p.payload, p.qos, retain, fwd, expires_at, conn.client_id,
                       client.username, client.role, p.raw_properties)

    def _refuse_publish(self, conn: Connection, p: Publish, topic: str, code: int, now: float,
                        why: str) -> None:
        """Drop an inbound PUBLISH: 5.0 says why in PUBACK/PUBREC; 3.1.1 has no negative
        acknowledgement, so the message is acknowledged and dropped (as for the ACL)."""
        self.stats.topics_refused += 1
        self._log.log(logging.INFO, conn.client_id, now, "publish to %r by %r refused: %s",
                      clip(topic), clip(conn.client_id), why)
        if p.qos == 0:
            return
        ack_code = code if conn.v5 else RC.SUCCESS
        if p.qos == 1:
            conn.send(PubAck(p.packet_id, ack_code))  # type: ignore[arg-type]
        elif conn.v5:
            conn.send(PubRec(p.packet_id, ack_code))  # type: ignore[arg-type]
        else:
            self._conn_sessions[conn.id].awaiting_rel.add(p.packet_id)  # type: ignore[arg-type]
            conn.send(PubRec(p.packet_id))  # type: ignore[arg-type]
        self._dirty.add(conn)

    def _topic_ok(self, topic: str) -> bool:
        """Within ``max_topic_length`` and ``max_topic_levels`` (a topic or a filter)."""
        limits = self.limits
        return len(topic) <= limits.max_topic_length and \
            topic.count("/") < limits.max_topic_levels

    def _may_retain(self, client: ClientInfo, topic: str) -> bool:
        """Whether a message from ``client`` on ``topic`` may be retained (commands are not:
        a stored command would be replayed to every later subscriber)."""
        return all(hook.may_retain(client, topic) for hook in self.hooks)

    def _authorize_publish(self, client: ClientInfo, topic: str, qos: int, retain: bool) -> Decision:
        if topic.startswith(SYS_PREFIX) or topic == "$SYS":
            return Decision.DENY  # the broker's own statistics: no client writes there
        for hook in self.hooks:
            decision = hook.authorize_publish(client, topic, qos, retain)
            if decision is not Decision.DEFER:
                return decision
        return Decision.DENY

    def _authorize_subscribe(self, client: ClientInfo, topic_filter: str, qos: int) -> Decision:
        for hook in self.hooks:
            decision = hook.authorize_subscribe(client, topic_filter, qos)
            if decision is not Decision.DEFER:
                return decision
        return Decision.DENY

    def _on_pubrel(self, conn: Connection, pid: int) -> None:
        session = self._conn_sessions.get(conn.id)
        assert session is not None
        if pid in session.awaiting_rel:
            session.awaiting_rel.discard(pid)
            conn.send(PubComp(pid))
        else:
            conn.send(PubComp(pid, RC.PACKET_IDENTIFIER_NOT_FOUND))
        self._dirty.add(conn)

    # ------------------------------------------------------------------ acknowledgements out
    def _on_puback(self, conn: Connection, pid: int, qos: int, now: float) -> None:
        session = self._conn_sessions.get(conn.id)
        assert session is not None
        item = session.inflight.get(pid)
        if item is None or item.qos != qos or (qos == 2 and not item.released):
            return  # unknown or out of order: ignore (5.0 section 4.3)
        del session.inflight[pid]
        self._charge(session, -item.message.cost)
        conn.last_ack = now
        if session.queue:
            self._drain_queue(session, now)

    def _on_pubrec(self, conn: Connection, p: PubRec, now: float) -> None:
        session = self._conn_sessions.get(conn.id)
        assert session is not None
        item = session.inflight.get(p.packet_id)
        if item is None or item.qos != 2:
            conn.send(PubRel(p.packet_id, RC.PACKET_IDENTIFIER_NOT_FOUND))
            self._dirty.add(conn)
            return
        conn.last_ack = now
        if p.reason_code >= RC_FAILURE:
            del session.inflight[p.packet_id]  # MQTT-4.3.3-? the flow ends on an error PUBREC
            self._charge(session, -item.message.cost)
            self._drain_queue(session, now)
            return
        item.released = True
        conn.send(PubRel(p.packet_id))
        self._dirty.add(conn)

    # ------------------------------------------------------------------ SUBSCRIBE
    def _on_subscribe(self, conn: Connection, p: Subscribe, now: float) -> None:
        session = self._conn_sessions.get(conn.id)
        client = conn.client
        assert session is not None and client is not None
        sub_ids = p.properties.get(Prop.SUBSCRIPTION_IDENTIFIER)
        sub_id = sub_ids[0] if sub_ids else None
        codes: list[int] = []
        retained: list[tuple[Message, int, list[int]]] = []
        for sub in p.subscriptions:
            parsed = parse_shared(sub.topic_filter)
            if parsed is None:
                codes.append(RC.TOPIC_FILTER_INVALID)
                continue
            group, plain = parsed
            if group is not None and sub.no_local:
                raise ProtocolError("No Local on a shared subscription")  # MQTT-3.8.3-4
            if not self._topic_ok(plain):
                self.stats.topics_refused += 1
                codes.append(RC.TOPIC_FILTER_INVALID)
                continue
            if self._authorize_subscribe(client, sub.topic_filter, sub.qos) is not Decision.ALLOW:
                self._log.log(logging.INFO, conn.client_id, now, "subscribe to %r by %r denied",
                              clip(sub.topic_filter), clip(conn.client_id))
                # A code per filter, in order (MQTT-3.9.3-1/2): 0x87 Not authorized; 3.1.1
                # has 0x80 Failure only (its MQTT-3.9.3-2; the codec maps it). A hook grants
                # a filter only where what it would refuse is under ``_protected``.
                codes.append(RC.NOT_AUTHORIZED)
                continue
            if sub.topic_filter not in session.subscriptions and \
                    not self._subscription_budget(session, plain):
                self._log.log(logging.WARNING, conn.client_id, now,
                              "subscription of %r refused: quota", clip(conn.client_id))
                codes.append(RC.QUOTA_EXCEEDED)
                continue
            existed = self._add_subscription(session, sub, sub_id, group, plain, now)
            codes.append(sub.qos)
            # Retained messages (MQTT-3.3.1-9/10/11); never for shared subscriptions.
            if group is None and (
                sub.retain_handling == 0 or (sub.retain_handling == 1 and not existed)
            ):
                for msg in self.retained.match(plain):
                    retained.append((msg, min(msg.qos, sub.qos), [sub_id] if sub_id else []))
        conn.send(SubAck(p.packet_id, codes))
        self._dirty.add(conn)
        for msg, qos, ids in retained:
            if msg.expires_at is not None and msg.expires_at <= now:
                self.retained.set(msg.topic, None)  # expired while retained
                continue
            self._deliver(session, msg, qos, True, ids, now)  # MQTT-3.3.1-8: retain flag 1

    def _subscription_budget(self, session: Session, plain: str) -> bool:
        """Room for one more subscription: a count, filter bytes and levels per session, and
        tree nodes for the whole broker (counting every level as a new node)."""
        limits = self.limits
        levels = topic_levels(plain)
        return (len(session.subscriptions) < limits.max_subscriptions_per_client
                and session.sub_bytes + len(plain) <= limits.max_subscription_bytes_per_client
                and session.sub_levels + levels <= limits.max_subscription_levels_per_client
                and self.subscriptions.nodes + levels <= limits.max_subscription_nodes)

    def _add_subscription(
        self, session: Session, sub: Subscription, sub_id: int | None, group: str | None,
        plain: str, now: float,
    ) -> bool:
        entry = SubEntry(session.client_id, plain, sub, sub_id, group)
        existed = sub.topic_filter in session.subscriptions
        session.subscriptions[sub.topic_filter] = entry  # MQTT-3.8.4-3: replaces
        if not existed:
            session.sub_bytes += len(plain)
            session.sub_levels += topic_levels(plain)
        self.subscriptions.add(plain, session.client_id, entry, group)
        return existed

    def _remove_subscription(self, session: Session, topic_filter: str) -> bool:
        entry = session.subscriptions.pop(topic_filter, None)
        if entry is None:
            return False
        session.sub_bytes -= len(entry.topic_filter)
        session.sub_levels -= topic_levels(entry.topic_filter)
        self.subscriptions.remove(entry.topic_filter, session.client_id, entry.group)
        return True

    def _on_unsubscribe(self, conn: Connection, p: Unsubscribe) -> None:
        session = self._conn_sessions.get(conn.id)
        assert session is not None
        codes = [
            RC.SUCCESS if self._remove_subscription(session, f) else RC.NO_SUBSCRIPTION_EXISTED
            for f in p.topic_filters
        ]
        conn.send(UnsubAck(p.packet_id, codes))  # type: ignore[arg-type]
        self._dirty.add(conn)

    def _on_disconnect(self, conn: Connection, p: Disconnect, now: float) -> None:
        session = self._conn_sessions.get(conn.id)
        assert session is not None
        new_expiry = p.properties.get(Prop.SESSION_EXPIRY_INTERVAL)
        if new_expiry is not None:
            if session.expiry_interval == 0 and new_expiry != 0:
                raise ProtocolError("session expiry set in DISCONNECT after 0")  # MQTT-3.14.2-2
            session.expiry_interval = min(new_expiry, self.limits.max_session_expiry)
        # MQTT-3.14.4-3: a normal DISCONNECT discards the Will; 0x04 asks for it.
        publish_will = p.reason_code == RC.DISCONNECT_WITH_WILL
        conn.disconnect_reason = "client disconnected"
        conn.closing = True
        self._dirty.add(conn)
        self._teardown(conn, now, publish_will)

    # ------------------------------------------------------------------ routing
    def _route(self, msg: Message, now: float) -> int:
        nodes = self.subscriptions.match(msg.topic)
        if not nodes:
            return 0
        sessions = self.sessions
        sender = msg.sender
        # One delivery per session for its non-shared subscriptions: the highest QoS among
        # them and every Subscription Identifier (MQTT-3.3.4-2/3/4/5; 3.1.1 MQTT-3.3.5-1).
        per_client: dict[str, _Acc] = {}
        shared: list[tuple[TopicNode[SubEntry], str, dict[str, SubEntry]]] = []
        for node in nodes:
            for cid, entry in node.subs.items():
                opts = entry.options
                if opts.no_local and cid == sender:
                    continue  # MQTT-3.8.3-3
                acc = per_client.get(cid)
                sid = entry.subscription_id
                if acc is None:
                    per_client[cid] = _Acc(opts.qos, opts.retain_as_published, [sid] if sid else [])
                else:
                    if opts.qos > acc.qos:
                        acc.qos = opts.qos
                    if opts.retain_as_published:
                        acc.rap = True
                    if sid:
                        acc.sub_ids.append(sid)
            if node.shared:
                for group, members in node.shared.items():
                    shared.append((node, group, members))
        count = 0
        cache: dict[tuple[int, bool], bytes] = {}
        for cid, acc in per_client.items():
            session = sessions.get(cid)
            if session is None:
                continue
            qos = msg.qos if msg.qos < acc.qos else acc.qos
            retain = msg.retain and acc.rap  # MQTT-3.3.1-12/13
            self._deliver(session, msg, qos, retain, acc.sub_ids, now, cache)
            count += 1
        for node, group, members in shared:
            picked = self._pick_shared(node, group, members)
            if picked is None:
                continue
            session = sessions.get(picked.client_id)
            if session is None:
                continue
            ids = [picked.subscription_id] if picked.subscription_id else []
            qos = min(msg.qos, picked.options.qos)
            self._deliver(session, msg, qos, False, ids, now)
            count += 1
        return count

    def _pick_shared(
        self, node: TopicNode[SubEntry], group: str, members: dict[str, SubEntry]
    ) -> SubEntry | None:
        """Round robin over the group's members, preferring those that are connected."""
        entries = list(members.values())
        if not entries:
            return None
        rr = node.share_cursor
        start = rr.get(group, 0)
        n = len(entries)
        chosen: SubEntry | None = None
        for i in range(n):
            entry = entries[(start + i) % n]
            session = self.sessions.get(entry.client_id)
            if session is not None and (session.conn is not None or session.internal_handler):
                chosen = entry
                rr[group] = (start + i + 1) % n
                break
        if chosen is None:
            chosen = entries[start % n]
            rr[group] = (start + 1) % n
        return chosen

    def _deliver(
        self, session: Session, msg: Message, qos: int, retain: bool, sub_ids: list[int],
        now: float, cache: dict[tuple[int, bool], bytes] | None = None,
    ) -> None:
        if session.internal_handler is not None:
            session.internal_handler(msg, sub_ids)
            return
        if self._protected and (msg.topic.startswith(self._protected)
                                or msg.topic in self._protected_parents):
            # The rule that granted the subscription decides each delivery it holds back
            # (MQTT 5.0 section 5.4.2): live, retained (MQTT-3.3.1-9) and queued alike.
            shown = self._for_reader(session, msg)
            if shown is None:
                return
            if shown is not msg:
                msg, cache = shown, None  # this reader's own payload: not the shared bytes
        conn = session.conn
        if conn is None or conn.state is not ConnState.CONNECTED:
            if qos == 0:
                return  # QoS 0 is not queued for offline sessions (MQTT 5.0 section 3.1.2.4)
            self._enqueue(session, Pending(msg, qos, retain, sub_ids), now)
            return
        if qos == 0:
            if conn.congested:
                self.stats.dropped_congested += 1  # QoS 0 may be lost; a stuck reader loses it
                return
            # Fast path: identical bytes for every plain QoS 0 receiver of one version.
            if (cache is not None and not sub_ids and not conn.alias_out_max
                    and msg.expires_at is None and not conn.max_packet_out):
                key = (conn.version, retain)
                data = cache.get(key)
                if data is None:
                    data = cache[key] = encode_publish(
                        msg.topic, msg.payload, 0, retain, False, None, msg.properties,
                        conn.version, msg.raw_props,
                    )
                conn.write(data)
                self._dirty.add(conn)
                self.stats.messages_out += 1
                return
            self._send_publish(conn, msg, 0, retain, None, False, sub_ids, now)
            return
        if len(session.inflight) >= conn.receive_max_out or session.queue \
                or not self._affordable(session, msg.cost):
            self._enqueue(session, Pending(msg, qos, retain, sub_ids), now)  # MQTT-3.3.4-7/8
            return
        pid = session.allocate_pid()
        if self._send_publish(conn, msg, qos, retain, pid, False, sub_ids, now):
            if not session.inflight:
                self._watch_acks(conn, now)
            session.inflight[pid] = Inflight(msg, qos, retain, sub_ids)
            self._charge(session, msg.cost)

    # ------------------------------------------------------------------ queue budgets
    def _charge(self, session: Session, cost: int) -> None:
        session.queued_bytes += cost
        self.queued_bytes += cost

    def _affordable(self, session: Session, cost: int) -> bool:
        limits = self.limits
        return (session.queued_bytes + cost <= limits.max_queued_bytes_per_client
                and self.queued_bytes + cost <= limits.max_queued_bytes)

    def _watch_acks(self, conn: Connection, now: float) -> None:
        """In-flight deliveries started: from now on they must make progress."""
        conn.last_ack = now
        if not conn.ack_timer:
            conn.ack_timer = True
            self.timers.push(now + self.limits.ack_timeout, "acks", conn)

    def _check_acks(self, conn: Connection, now: float) -> None:
        """A client that acknowledges nothing of what is in flight for ``ack_timeout`` is
        stuck (or hostile): disconnect it; its session keeps the messages, within budget."""
        conn.ack_timer = False
        session = self._conn_sessions.get(conn.id)
        if conn.state is not ConnState.CONNECTED or session is None or not session.inflight:
            return
        deadline = conn.last_ack + self.limits.ack_timeout
        if now < deadline:
            conn.ack_timer = True
            self.timers.push(deadline, "acks", conn)
            return
        self._log.log(logging.WARNING, conn.address, now,
                      "disconnecting %r: no acknowledgement for %g s (%d in flight)", conn,
                      self.limits.ack_timeout, len(session.inflight))
        self._close(conn, now, RC.QUOTA_EXCEEDED,
                    f"no acknowledgement for {self.limits.ack_timeout:g} s")

    def _for_reader(self, session: Session, msg: Message) -> Message | None:
        """``msg`` as ``session`` may receive it (under a read-protected prefix): None when
        a hook refuses it to this reader, a copy when a hook gives this reader its own
        payload, else ``msg`` itself."""
        client = session.client
        if client is None:
            return None
        topic = msg.topic
        hooks = self.hooks
        if not all(hook.readable(client, topic) for hook in hooks):
            return None
        payload = msg.payload
        for hook in hooks:
            shown = hook.reader_payload(client, topic, payload)
            if shown is None:
                return None  # not for this reader
            payload = shown
        return msg if payload is msg.payload else dataclasses.replace(msg, payload=payload)

    def _enqueue(self, session: Session, item: Pending, now: float) -> None:
        """Queue ``item``; past the session's count or byte budget, or the broker's byte
        budget, the oldest queued messages of this session make room (dropped)."""
        queue = session.queue
        cost = item.message.cost
        dropped = 0
        while queue and (len(queue) >= self.limits.max_queued_messages
                         or not self._affordable(session, cost)):
            old = queue.popleft()
            self._charge(session, -old.message.cost)
            dropped += 1
        if len(queue) >= self.limits.max_queued_messages or not self._affordable(session, cost):
            dropped += 1  # the new one does not fit even alone
        else:
            queue.append(item)
            self._charge(session, cost)
        if dropped:
            self.stats.dropped_queue_full += dropped
            self._log.log(logging.WARNING, "queue:" + session.client_id, now,
                          "queue of %r full (%d messages, %d bytes): dropping oldest "
                          "(%d dropped so far)", clip(session.client_id), len(queue),
                          session.queued_bytes, self.stats.dropped_queue_full)

    def _drain_queue(self, session: Session, now: float) -> None:
        conn = session.conn
        if conn is None or conn.state is not ConnState.CONNECTED:
            return
        queue = session.queue
        while queue and len(session.inflight) < conn.receive_max_out:
            item = queue.popleft()
            if item.qos == 0:
                self._charge(session, -item.message.cost)
                self._send_publish(conn, item.message, 0, item.retain, None, False,
                                   item.subscription_ids, now)
                continue
            pid = session.allocate_pid()
            if self._send_publish(conn, item.message, item.qos, item.retain, pid, False,
                                  item.subscription_ids, now):
                if not session.inflight:
                    self._watch_acks(conn, now)
                session.inflight[pid] = Inflight(item.message, item.qos, item.retain,
                                                 item.subscription_ids)
            else:
                self._charge(session, -item.message.cost)  # expired or too large: gone

    def _send_publish(
        self, conn: Connection, msg: Message, qos: int, retain: bool, pid: int | None,
        dup: bool, sub_ids: list[int], now: float,
    ) -> bool:
        """Encode and queue one PUBLISH; False when it was dropped (expired or too large)."""
        topic = msg.topic
        props: Properties | None = None
        new_alias: str | None = None
        if conn.v5:
            props = msg.properties
            if msg.expires_at is not None or sub_ids or conn.alias_out_max:
                props = dict(props)
                if msg.expires_at is not None:
                    remaining = math.ceil(msg.expires_at - now)
                    if remaining <= 0:
                        self.stats.dropped_expired += 1
                        return False  # MQTT-3.3.2-5: expired, not delivered
                    props[Prop.MESSAGE_EXPIRY_INTERVAL] = remaining  # MQTT-3.3.2-6
                if sub_ids:
                    props[Prop.SUBSCRIPTION_IDENTIFIER] = sub_ids
                if conn.alias_out_max:
                    alias = conn.alias_out.get(topic)
                    if alias is not None:
                        props[Prop.TOPIC_ALIAS] = alias
                        topic = ""
                    elif len(conn.alias_out) < conn.alias_out_max:
                        new_alias = topic
                        conn.alias_out[topic] = props[Prop.TOPIC_ALIAS] = len(conn.alias_out) + 1
        elif msg.expires_at is not None and msg.expires_at <= now:
            self.stats.dropped_expired += 1
            return False
        block = msg.raw_props if props is msg.properties else None
        data = encode_publish(topic, msg.payload, qos, retain, dup, pid, props, conn.version,
                              block)
        if conn.max_packet_out and len(data) > conn.max_packet_out:
            # MQTT-3.1.2-25: discard as if sent; forget an alias the client never saw.
            if new_alias is not None:
                del conn.alias_out[new_alias]
            self.stats.dropped_too_large += 1
            return False
        conn.write(data)
        self._dirty.add(conn)
        self.stats.messages_out += 1
        return True
