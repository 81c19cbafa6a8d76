"""SUBSCRIBE and UNSUBSCRIBE, the subscription budgets, and granting every subscription
again when rights change (``reauthorize``)."""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

from pi_mqtt_gpio.mqtt.authorize import (
    authorize_subscribe,
    for_reader,
    read_checked,
    topic_ok,
)
from pi_mqtt_gpio.mqtt.connection import Connection
from pi_mqtt_gpio.mqtt.deliver import charge, deliver
from pi_mqtt_gpio.mqtt.errors import ProtocolError
from pi_mqtt_gpio.mqtt.hooks import ClientInfo, Decision
from pi_mqtt_gpio.mqtt.logguard import clip
from pi_mqtt_gpio.mqtt.message import NONE_YET, Message
from pi_mqtt_gpio.mqtt.packets import (
    RC,
    Prop,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
)
from pi_mqtt_gpio.mqtt.session import Pending, Session, SubEntry
from pi_mqtt_gpio.mqtt.topic_tree import parse_shared, topic_levels

if TYPE_CHECKING:
    from pi_mqtt_gpio.mqtt.broker import BrokerCore

log = logging.getLogger("pi_mqtt_gpio.broker")


def on_subscribe(core: BrokerCore, conn: Connection, p: Subscribe, now: float) -> None:
    session = core.conn_sessions.get(conn.id)
    client = conn.client
    assert session is not None and client is not None
    sub_ids = p.properties.get(Prop.SUBSCRIPTION_IDENTIFIER)
    sub_id = sub_ids[0] if sub_ids else None
    codes: list[int] = []
    retained: list[tuple[Message, int, list[int]]] = []
    for sub in p.subscriptions:
        code, matching = _subscribe_one(core, conn, session, client, sub, sub_id, now)
        codes.append(code)
        for msg in matching:
            retained.append((msg, min(msg.qos, sub.qos), [sub_id] if sub_id else []))
    conn.send(SubAck(p.packet_id, codes))
    core.dirty.add(conn)
    for msg, qos, ids in retained:
        if msg.expires_at is not None and msg.expires_at <= now:
            core.retained.set(msg.topic, None)  # expired while retained
            continue
        deliver(core, session, msg, qos, True, ids, now)  # MQTT-3.3.1-8: retain flag 1


def _subscribe_one(
    core: BrokerCore, conn: Connection, session: Session, client: ClientInfo,
    sub: Subscription, sub_id: int | None, now: float,
) -> tuple[int, list[Message]]:
    """One filter of a SUBSCRIBE: its reason code and the retained messages it gets."""
    parsed = parse_shared(sub.topic_filter)
    if parsed is None:
        return RC.TOPIC_FILTER_INVALID, []
    group, plain = parsed
    if group is not None and sub.no_local:
        raise ProtocolError("No Local on a shared subscription")  # MQTT-3.8.3-4
    if not topic_ok(core, plain):
        core.stats.topics_refused += 1
        return RC.TOPIC_FILTER_INVALID, []
    if authorize_subscribe(core, client, sub.topic_filter, sub.qos) is not Decision.ALLOW:
        core.log_limiter.log(logging.INFO, conn.client_id, now, "subscribe to %r by %r denied",
                             clip(sub.topic_filter), clip(conn.client_id))
        # A code per filter, in order (MQTT-3.9.3-1/2): 0x87 Not authorized; 3.1.1
        # has 0x80 Failure only (its MQTT-3.9.3-2; the codec maps it). A hook grants
        # a filter only where what it would refuse is under ``protected``.
        return RC.NOT_AUTHORIZED, []
    if sub.topic_filter not in session.subscriptions and \
            not subscription_budget(core, session, plain):
        core.log_limiter.log(logging.WARNING, conn.client_id, now,
                             "subscription of %r refused: quota", clip(conn.client_id))
        return RC.QUOTA_EXCEEDED, []
    existed = add_subscription(core, session, sub, sub_id, group, plain, now)
    # Retained messages (MQTT-3.3.1-9/10/11); never for shared subscriptions.
    if group is None and (
        sub.retain_handling == 0 or (sub.retain_handling == 1 and not existed)
    ):
        return sub.qos, core.retained.match(plain)
    return sub.qos, []


def subscription_budget(core: BrokerCore, session: Session, plain: str) -> bool:
    """Room for one more subscription: a count, filter bytes and levels per session, and
    tree nodes for the whole broker (counting every level as a new node)."""
    limits = core.limits
    levels = topic_levels(plain)
    return (len(session.subscriptions) < limits.max_subscriptions_per_client
            and session.sub_bytes + len(plain) <= limits.max_subscription_bytes_per_client
            and session.sub_levels + levels <= limits.max_subscription_levels_per_client
            and core.subscriptions.nodes + levels <= limits.max_subscription_nodes)


def add_subscription(
    core: BrokerCore, session: Session, sub: Subscription, sub_id: int | None,
    group: str | None, plain: str, now: float,
) -> bool:
    entry = SubEntry(session.client_id, plain, sub, sub_id, group)
    existed = sub.topic_filter in session.subscriptions
    if session.subscriptions is NONE_YET:
        session.subscriptions = {}
    session.subscriptions[sub.topic_filter] = entry  # MQTT-3.8.4-3: replaces
    if not existed:
        session.sub_bytes += len(plain)
        session.sub_levels += topic_levels(plain)
    core.subscriptions.add(plain, session.client_id, entry, group)
    return existed


def remove_subscription(core: BrokerCore, session: Session, topic_filter: str) -> bool:
    subs = session.subscriptions
    entry = subs.pop(topic_filter, None) if subs else None
    if entry is None:
        return False
    session.sub_bytes -= len(entry.topic_filter)
    session.sub_levels -= topic_levels(entry.topic_filter)
    core.subscriptions.remove(entry.topic_filter, session.client_id, entry.group)
    return True


def on_unsubscribe(core: BrokerCore, conn: Connection, p: Unsubscribe) -> None:
    session = core.conn_sessions.get(conn.id)
    assert session is not None
    codes = [
        RC.SUCCESS if remove_subscription(core, session, f) else RC.NO_SUBSCRIPTION_EXISTED
        for f in p.topic_filters
    ]
    conn.send(UnsubAck(p.packet_id, codes))  # type: ignore[arg-type]
    core.dirty.add(conn)


# ------------------------------------------------------------------ rights changed
def reauthorize(core: BrokerCore) -> tuple[int, int]:
    """Every session's subscriptions (connected or not) granted again by the hooks as
    they answer now: one they refuse is removed (MQTT has no unsubscribe from the server:
    its deliveries just stop; the client learns it at its next SUBSCRIBE, 0x87 / 0x80).
    Then what each session holds for later, queued or in flight towards an offline
    client (resent at reconnect, MQTT-4.4.0-1), is kept only when a subscription it
    still has matches it and the read rule lets it read it now, as a restart's restore
    decides (``store.apply``). Returns (subscriptions removed, messages dropped)."""
    removed = dropped = 0
    for session in list(core.sessions.values()):
        client = session.client
        if client is None or client.internal or session.internal_handler is not None:
            continue
        refused = [topic_filter for topic_filter, entry in session.subscriptions.items()
                   if authorize_subscribe(core, client, topic_filter, entry.options.qos)
                   is not Decision.ALLOW]
        for topic_filter in refused:
            remove_subscription(core, session, topic_filter)
        if refused:
            removed += len(refused)
            log.warning("%d subscriptions of %r removed (no longer authorised), %r first",
                        len(refused), clip(session.client_id), clip(refused[0]))
        dropped += _recheck_held(core, session)
    if dropped:
        log.warning("%d queued messages dropped: their readers may no longer read them",
                    dropped)
    return removed, dropped


def _recheck_held(core: BrokerCore, session: Session) -> int:
    """Drop what ``session`` holds that it may no longer receive (``reauthorize``)."""
    dropped = 0
    if session.queue:
        kept: deque[Pending] = deque()
        for item in session.queue:
            shown = still_delivers(core, session, item.message)
            if shown is None:
                charge(core, session, -item.message.cost)
                dropped += 1
                continue
            if shown is not item.message:
                charge(core, session, shown.cost - item.message.cost)
                item.message = shown
            kept.append(item)
        session.queue = kept
    if session.conn is None:  # in flight to a client that is gone: resent at reconnect
        for pid, held in list(session.inflight.items()):
            if not held.released and still_delivers(core, session, held.message) is None:
                del session.inflight[pid]
                charge(core, session, -held.message.cost)
                dropped += 1
    return dropped


def still_delivers(core: BrokerCore, session: Session, msg: Message) -> Message | None:
    """``msg`` as ``session`` may receive it now: None when no subscription it holds
    matches it, or the read rule refuses it (``deliver``'s check)."""
    cid = session.client_id
    for node in core.subscriptions.match(msg.topic):
        if cid in node.subs or any(cid in members for members in node.shared.values()):
            break
    else:
        return None
    return for_reader(core, session, msg) if read_checked(core, msg.topic) else msg
