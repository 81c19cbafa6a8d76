"""Routing: who gets a message. One delivery per session for its non-shared subscriptions
(the highest QoS among them and every Subscription Identifier), one member per shared
group; and, for the fast path, the same receivers remembered per topic."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pi_mqtt_gpio.mqtt.deliver import deliver
from pi_mqtt_gpio.mqtt.message import Message
from pi_mqtt_gpio.mqtt.session import SubEntry
from pi_mqtt_gpio.mqtt.topic_tree import TopicNode

if TYPE_CHECKING:
    from pi_mqtt_gpio.mqtt.broker import BrokerCore

_TARGETS_MAX = 4096  # topics whose receivers are remembered (fast path) ...
_TARGETS_SIZE = 65536  # ... and how many receivers in all

Targets = list[tuple[str, int, list[int]]]  # (client id, QoS, Subscription Identifiers)
_Shared = list[tuple[TopicNode[SubEntry], str, dict[str, SubEntry]]]


class _Acc:
    """What one session gets from the non-shared subscriptions that match a message."""

    __slots__ = ("qos", "rap", "sub_ids")

    def __init__(self, qos: int, rap: bool, sub_ids: list[int]) -> None:
        self.qos = qos
        self.rap = rap
        self.sub_ids = sub_ids


def _collect(nodes: list[TopicNode[SubEntry]], sender: str | None
             ) -> tuple[dict[str, _Acc], _Shared, bool]:
    """The matching subscriptions: per session its aggregate (MQTT-3.3.4-2/3/4/5; 3.1.1
    MQTT-3.3.5-1), the shared groups, and whether a No Local subscription matched."""
    per_client: dict[str, _Acc] = {}
    shared: _Shared = []
    no_local = False
    for node in nodes:
        for cid, entry in node.subs.items():
            opts = entry.options
            if opts.no_local:
                no_local = True
                if cid == sender:
                    continue  # MQTT-3.8.3-3
            acc = per_client.get(cid)
            sid = entry.subscription_id
            if acc is None:
                per_client[cid] = _Acc(opts.qos, opts.retain_as_published, [sid] if sid else [])
                continue
            if opts.qos > acc.qos:
                acc.qos = opts.qos
            if opts.retain_as_published:
                acc.rap = True
            if sid:
                acc.sub_ids.append(sid)
        if node.shared:
            for group, members in node.shared.items():
                shared.append((node, group, members))
    return per_client, shared, no_local


def route(core: BrokerCore, msg: Message, now: float) -> int:
    """Deliver ``msg`` to every session a subscription of which matches it; returns how
    many sessions it went to."""
    nodes = core.subscriptions.match(msg.topic)
    if not nodes:
        return 0
    sessions = core.sessions
    per_client, shared, _no_local = _collect(nodes, msg.sender)
    count = 0
    cache: dict[tuple[int, bool], bytes] = {}
    for cid, acc in per_client.items():
        session = sessions.get(cid)
        if session is None:
            continue
        qos = msg.qos if msg.qos < acc.qos else acc.qos
        retain = msg.retain and acc.rap  # MQTT-3.3.1-12/13
        deliver(core, session, msg, qos, retain, acc.sub_ids, now, cache)
        count += 1
    for node, group, members in shared:
        picked = _pick_shared(core, node, group, members)
        if picked is None:
            continue
        session = sessions.get(picked.client_id)
        if session is None:
            continue
        ids = [picked.subscription_id] if picked.subscription_id else []
        deliver(core, session, msg, min(msg.qos, picked.options.qos), False, ids, now)
        count += 1
    return count


def _pick_shared(
    core: BrokerCore, node: TopicNode[SubEntry], group: str, members: dict[str, SubEntry]
) -> SubEntry | None:
    """Round robin over the group's members, preferring those that are connected."""
    entries = list(members.values())
    if not entries:
        return None
    rr = node.share_cursor
    start = rr.get(group, 0)
    n = len(entries)
    for i in range(n):
        entry = entries[(start + i) % n]
        session = core.sessions.get(entry.client_id)
        if session is not None and (session.conn is not None or session.internal_handler):
            rr[group] = (start + i + 1) % n
            return entry
    rr[group] = (start + 1) % n
    return entries[start % n]


def route_targets(core: BrokerCore, topic: str) -> Targets | None:
    """Who gets a message on ``topic`` from its plain subscriptions, as ``route`` aggregates
    them, remembered per topic until the subscriptions change. None when a shared or No
    Local subscription matches (those depend on more than the topic)."""
    tree = core.subscriptions
    hit = core.targets.get(topic)
    if hit is not None and hit[0] == tree.version:
        return hit[1]
    per_client, shared, no_local = _collect(tree.match(topic), None)
    result = None if shared or no_local else \
        [(cid, acc.qos, acc.sub_ids) for cid, acc in per_client.items()]
    size = len(result) if result else 1
    if len(core.targets) >= _TARGETS_MAX or core.targets_size + size > _TARGETS_SIZE:
        core.targets.clear()
        core.targets_size = 0
    core.targets[topic] = (tree.version, result)
    core.targets_size += size
    return result
