"""Delivering a routed message to one session, and the accounting every delivery shares:
what was written and counted, what is in flight (packet ids, the Receive Maximum window, the
acknowledgement watch), what is queued, and the byte budgets all of it is charged to. The
general path (``route``) and the fast path (``handle_publish``) both account through here."""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import TYPE_CHECKING

from pi_mqtt_gpio.mqtt.authorize import for_reader, read_checked
from pi_mqtt_gpio.mqtt.codec import encode_publish
from pi_mqtt_gpio.mqtt.connection import Connection, ConnState
from pi_mqtt_gpio.mqtt.logguard import clip
from pi_mqtt_gpio.mqtt.message import MESSAGE_OVERHEAD, NONE_YET, Message
from pi_mqtt_gpio.mqtt.packets import RC, Prop, Properties
from pi_mqtt_gpio.mqtt.session import NO_QUEUE, Inflight, Pending, Session

if TYPE_CHECKING:
    from pi_mqtt_gpio.mqtt.broker import BrokerCore


def deliver(
    core: BrokerCore, session: Session, msg: Message, qos: int, retain: bool,
    sub_ids: list[int], now: float, cache: dict[tuple[int, bool], bytes] | None = None,
) -> None:
    """Send ``msg`` to ``session`` now, or queue it (offline, or no room in flight)."""
    if session.internal_handler is not None:
        session.internal_handler(msg, sub_ids)
        return
    if read_checked(core, msg.topic):
        # The rule that granted the subscription decides each delivery it holds back
        # (MQTT 5.0 section 5.4.2): live, retained (MQTT-3.3.1-9) and queued alike.
        shown = for_reader(core, session, msg)
        if shown is None:
            return
        if shown is not msg:
            msg, cache = shown, None  # this reader's own payload: not the shared bytes
    conn = session.conn
    if conn is None or conn.state is not ConnState.CONNECTED:
        if qos == 0:
            return  # QoS 0 is not queued for offline sessions (MQTT 5.0 section 3.1.2.4)
        enqueue(core, session, Pending(msg, qos, retain, sub_ids), now)
        return
    if qos == 0:
        _deliver_qos0(core, conn, msg, retain, sub_ids, cache, now)
        return
    pid = reserve(core, session, conn, msg.cost)
    if pid is None:
        enqueue(core, session, Pending(msg, qos, retain, sub_ids), now)  # MQTT-3.3.4-7/8
        return
    data = publish_bytes(core, conn, msg, qos, retain, pid, False, sub_ids, now)
    if data is not None:
        fly(core, session, conn, pid, Inflight(msg, qos, retain, sub_ids), data, now)


def _deliver_qos0(
    core: BrokerCore, conn: Connection, msg: Message, retain: bool, sub_ids: list[int],
    cache: dict[tuple[int, bool], bytes] | None, now: float,
) -> None:
    if conn.congested:
        core.stats.dropped_congested += 1  # QoS 0 may be lost; a stuck reader loses it
        return
    # Identical bytes for every plain QoS 0 receiver of one version (``route``'s cache).
    if (cache is not None and not sub_ids and not conn.alias_out_max
            and msg.expires_at is None and not conn.max_packet_out):
        key = (conn.version, retain)
        data = cache.get(key)
        if data is None:
            data = cache[key] = encode_publish(
                msg.topic, msg.payload, 0, retain, False, None, msg.properties,
                conn.version, msg.raw_props,
            )
        written(core, conn, data)
        return
    send_publish(core, conn, msg, 0, retain, None, False, sub_ids, now)


# ------------------------------------------------------------------ the shared accounting
def written(core: BrokerCore, conn: Connection, data: bytes) -> None:
    """One PUBLISH to ``conn``: queued for the transport and counted."""
    conn.write(data)
    core.dirty.add(conn)
    core.stats.messages_out += 1


def reserve(core: BrokerCore, session: Session, conn: Connection, cost: int) -> int | None:
    """A packet identifier for a QoS 1/2 delivery that may go out now, or None: it must
    wait (queued) unless it is within the client's Receive Maximum (MQTT-3.3.4-7/8), with
    nothing queued before it, and within the byte budgets."""
    inflight = session.inflight
    limits = core.limits
    if (len(inflight) >= conn.receive_max_out or session.queue
            or session.queued_bytes + cost > limits.max_queued_bytes_per_client
            or core.queued_bytes + cost > limits.max_queued_bytes):
        return None
    pid = session.next_pid
    if pid in inflight:
        return session.allocate_pid()
    session.next_pid = pid % 65535 + 1  # as ``allocate_pid``, without its search
    return pid


def fly(core: BrokerCore, session: Session, conn: Connection, pid: int, item: Inflight,
        data: bytes, now: float) -> None:
    """A QoS 1/2 PUBLISH (``data``, packet id ``pid``) goes out: written and counted, held in
    flight until acknowledged (``land``), charged to the budgets, its progress watched."""
    conn.write(data)
    core.dirty.add(conn)
    core.stats.messages_out += 1
    inflight = session.inflight
    if not inflight:
        watch_acks(core, conn, now)
        if inflight is NONE_YET:
            inflight = session.inflight = {}
    inflight[pid] = item
    msg = item.message
    cost = len(msg.payload) + len(msg.topic) + MESSAGE_OVERHEAD  # ``msg.cost``, inline
    session.queued_bytes += cost
    core.queued_bytes += cost


def land(core: BrokerCore, session: Session, conn: Connection, pid: int, item: Inflight,
         now: float) -> None:
    """An in-flight delivery's flow ended (acknowledged, or refused by an error PUBREC):
    no longer held nor charged; what was queued behind it may go out."""
    del session.inflight[pid]
    msg = item.message
    cost = len(msg.payload) + len(msg.topic) + MESSAGE_OVERHEAD  # ``msg.cost``, inline
    session.queued_bytes -= cost
    core.queued_bytes -= cost
    conn.last_ack = now
    if session.queue:
        drain_queue(core, session, now)


def charge(core: BrokerCore, session: Session, cost: int) -> None:
    session.queued_bytes += cost
    core.queued_bytes += cost


def affordable(core: BrokerCore, session: Session, cost: int) -> bool:
    limits = core.limits
    return (session.queued_bytes + cost <= limits.max_queued_bytes_per_client
            and core.queued_bytes + cost <= limits.max_queued_bytes)


def watch_acks(core: BrokerCore, conn: Connection, now: float) -> None:
    """In-flight deliveries started: from now on they must make progress."""
    conn.last_ack = now
    if not conn.ack_timer:
        conn.ack_timer = True
        core.timers.push(now + core.limits.ack_timeout, "acks", conn)


def check_acks(core: BrokerCore, ref: object, now: float) -> None:
    """The "acks" timer: a client that acknowledges nothing of what is in flight for
    ``ack_timeout`` is stuck (or hostile): disconnect it; its session keeps the messages,
    within budget."""
    assert isinstance(ref, Connection)
    conn = ref
    conn.ack_timer = False
    session = core.conn_sessions.get(conn.id)
    if conn.state is not ConnState.CONNECTED or session is None or not session.inflight:
        return
    deadline = conn.last_ack + core.limits.ack_timeout
    if now < deadline:
        conn.ack_timer = True
        core.timers.push(deadline, "acks", conn)
        return
    core.log_limiter.log(logging.WARNING, conn.address, now,
                         "disconnecting %r: no acknowledgement for %g s (%d in flight)", conn,
                         core.limits.ack_timeout, len(session.inflight))
    core.close(conn, now, RC.QUOTA_EXCEEDED,
               f"no acknowledgement for {core.limits.ack_timeout:g} s")


# ------------------------------------------------------------------ the queue
def enqueue(core: BrokerCore, session: Session, item: Pending, now: float) -> None:
    """Queue ``item``; past the session's count or byte budget, or the broker's byte
    budget, the oldest queued messages of this session make room (dropped)."""
    queue = session.queue
    cost = item.message.cost
    limit = core.limits.max_queued_messages
    dropped = 0
    while queue and (len(queue) >= limit or not affordable(core, session, cost)):
        old = queue.popleft()
        charge(core, session, -old.message.cost)
        dropped += 1
    if len(queue) >= limit or not affordable(core, session, cost):
        dropped += 1  # the new one does not fit even alone
    else:
        if queue is NO_QUEUE:  # its own from now on
            queue = session.queue = deque()
        queue.append(item)
        charge(core, session, cost)
    if dropped:
        stats = core.stats
        stats.dropped_queue_full += dropped
        core.log_limiter.log(logging.WARNING, "queue:" + session.client_id, now,
                             "queue of %r full (%d messages, %d bytes): dropping oldest "
                             "(%d dropped so far)", clip(session.client_id), len(queue),
                             session.queued_bytes, stats.dropped_queue_full)


def drain_queue(core: BrokerCore, session: Session, now: float) -> None:
    """Send what is queued, as far as the client's Receive Maximum allows."""
    conn = session.conn
    if conn is None or conn.state is not ConnState.CONNECTED:
        return
    queue = session.queue
    while queue and len(session.inflight) < conn.receive_max_out:
        item = queue.popleft()
        msg = item.message
        charge(core, session, -msg.cost)  # out of the queue (``fly`` charges what flies)
        if item.qos == 0:
            send_publish(core, conn, msg, 0, item.retain, None, False, item.subscription_ids,
                         now)
            continue
        pid = session.allocate_pid()
        data = publish_bytes(core, conn, msg, item.qos, item.retain, pid, False,
                             item.subscription_ids, now)
        if data is not None:  # else expired or too large: gone
            fly(core, session, conn, pid,
                Inflight(msg, item.qos, item.retain, item.subscription_ids), data, now)


def release_queue(core: BrokerCore, session: Session) -> None:
    """Forget what was queued or in flight for ``session`` (it ended)."""
    core.queued_bytes -= session.queued_bytes
    session.queued_bytes = 0
    session.queue = NO_QUEUE
    session.inflight = NONE_YET


# ------------------------------------------------------------------ encoding for one receiver
def send_publish(
    core: BrokerCore, conn: Connection, msg: Message, qos: int, retain: bool, pid: int | None,
    dup: bool, sub_ids: list[int], now: float,
) -> bool:
    """Encode and queue one PUBLISH; False when it was dropped (expired or too large)."""
    data = publish_bytes(core, conn, msg, qos, retain, pid, dup, sub_ids, now)
    if data is None:
        return False
    written(core, conn, data)
    return True


def publish_bytes(
    core: BrokerCore, conn: Connection, msg: Message, qos: int, retain: bool, pid: int | None,
    dup: bool, sub_ids: list[int], now: float,
) -> bytes | None:
    """``msg`` as a PUBLISH for ``conn``; None when it is dropped (expired or too large)."""
    topic = msg.topic
    props: Properties | None = None
    new_alias: str | None = None
    if conn.v5:
        props = msg.properties
        if msg.expires_at is not None or sub_ids or conn.alias_out_max:
            props = _v5_properties(msg, sub_ids, now)
            if props is None:
                core.stats.dropped_expired += 1
                return None  # MQTT-3.3.2-5: expired, not delivered
            if conn.alias_out_max:
                topic, new_alias = _alias_out(conn, topic, props)
    elif msg.expires_at is not None and msg.expires_at <= now:
        core.stats.dropped_expired += 1
        return None
    block = msg.raw_props if props is msg.properties else None
    data = encode_publish(topic, msg.payload, qos, retain, dup, pid, props, conn.version, block)
    if conn.max_packet_out and len(data) > conn.max_packet_out:
        # MQTT-3.1.2-25: discard as if sent; forget an alias the client never saw.
        if new_alias is not None:
            del conn.alias_out[new_alias]
        core.stats.dropped_too_large += 1
        return None
    return data


def _v5_properties(msg: Message, sub_ids: list[int], now: float) -> Properties | None:
    """The properties of ``msg`` for one 5.0 receiver (a copy); None when it expired."""
    props = dict(msg.properties)
    if msg.expires_at is not None:
        remaining = math.ceil(msg.expires_at - now)
        if remaining <= 0:
            return None
        props[Prop.MESSAGE_EXPIRY_INTERVAL] = remaining  # MQTT-3.3.2-6
    if sub_ids:
        props[Prop.SUBSCRIPTION_IDENTIFIER] = sub_ids
    return props


def _alias_out(conn: Connection, topic: str, props: Properties) -> tuple[str, str | None]:
    """The topic to send (empty when a Topic Alias replaces it) and the alias newly set,
    if any (our aliases towards the client, within its Topic Alias Maximum)."""
    alias = conn.alias_out.get(topic)
    if alias is not None:
        props[Prop.TOPIC_ALIAS] = alias
        return "", None
    if len(conn.alias_out) < conn.alias_out_max:
        if conn.alias_out is NONE_YET:
            conn.alias_out = {}
        conn.alias_out[topic] = props[Prop.TOPIC_ALIAS] = len(conn.alias_out) + 1
        return topic, topic
    return topic, None
