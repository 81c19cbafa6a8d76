"""What the hooks allow: publishing, subscribing, retaining, and reading under a
read-protected prefix (MQTT 5.0 section 5.4.2), plus the topic size limits."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from pi_mqtt_gpio.mqtt.hooks import ClientInfo, Decision
from pi_mqtt_gpio.mqtt.limits import SYS_PREFIX
from pi_mqtt_gpio.mqtt.message import Message
from pi_mqtt_gpio.mqtt.session import Session

if TYPE_CHECKING:
    from pi_mqtt_gpio.mqtt.broker import BrokerCore


def topic_ok(core: BrokerCore, topic: str) -> bool:
    """Within ``max_topic_length`` and ``max_topic_levels`` (a topic or a filter)."""
    limits = core.limits
    return len(topic) <= limits.max_topic_length and \
        topic.count("/") < limits.max_topic_levels


def may_retain(core: BrokerCore, client: ClientInfo, topic: str) -> bool:
    """Whether a message from ``client`` on ``topic`` may be retained (commands are not:
    a stored command would be replayed to every later subscriber)."""
    return all(hook.may_retain(client, topic) for hook in core.hooks)


def authorize_publish(core: BrokerCore, client: ClientInfo, topic: str, qos: int,
                      retain: bool) -> Decision:
    if topic.startswith(SYS_PREFIX) or topic == "$SYS":
        return Decision.DENY  # the broker's own statistics: no client writes there
    for hook in core.hooks:
        decision = hook.authorize_publish(client, topic, qos, retain)
        if decision is not Decision.DEFER:
            return decision
    return Decision.DENY


def authorize_subscribe(core: BrokerCore, client: ClientInfo, topic_filter: str,
                        qos: int) -> Decision:
    for hook in core.hooks:
        decision = hook.authorize_subscribe(client, topic_filter, qos)
        if decision is not Decision.DEFER:
            return decision
    return Decision.DENY


def read_checked(core: BrokerCore, topic: str) -> bool:
    """Whether deliveries on ``topic`` are checked per reader (``read_protected()``)."""
    return bool(core.protected) and (
        topic.startswith(core.protected) or topic in core.protected_parents)


def for_reader(core: BrokerCore, session: Session, msg: Message) -> Message | None:
    """``msg`` as ``session`` may receive it (under a read-protected prefix): None when
    a hook refuses it to this reader, a copy when a hook gives this reader its own
    payload, else ``msg`` itself."""
    client = session.client
    if client is None:
        return None
    topic = msg.topic
    hooks = core.hooks
    if not all(hook.readable(client, topic) for hook in hooks):
        return None
    payload = msg.payload
    for hook in hooks:
        shown = hook.reader_payload(client, topic, payload)
        if shown is None:
            return None  # not for this reader
        payload = shown
    return msg if payload is msg.payload else dataclasses.replace(msg, payload=payload)
