"""Wills: the message a CONNECT leaves to publish on an unclean close, its delay, and its
publication, authorised again at that moment (MQTT 5.0 sections 3.1.2.5 and 3.1.3.2)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pi_mqtt_gpio.mqtt.authorize import authorize_publish, may_retain
from pi_mqtt_gpio.mqtt.connection import Connection
from pi_mqtt_gpio.mqtt.hooks import ClientInfo, Decision
from pi_mqtt_gpio.mqtt.logguard import clip
from pi_mqtt_gpio.mqtt.message import Message
from pi_mqtt_gpio.mqtt.packets import Prop, Will
from pi_mqtt_gpio.mqtt.session import Session

if TYPE_CHECKING:
    from pi_mqtt_gpio.mqtt.broker import BrokerCore


def will_message(core: BrokerCore, conn: Connection, will: Will) -> tuple[Message, int]:
    """The Will as the message to publish on an unclean close, and its delay. A Message
    Expiry Interval stays in the properties: it starts counting when the Will is
    published (``publish`` turns it into ``expires_at``)."""
    assert conn.client is not None
    wprops = dict(will.properties)
    delay = wprops.pop(Prop.WILL_DELAY_INTERVAL, 0)
    retain = will.retain and may_retain(core, conn.client, will.topic)
    return Message(will.topic, will.payload, will.qos, retain, wprops, None,
                   conn.client_id, conn.client.username, conn.client.role), delay


def will_after_close(core: BrokerCore, session: Session, will: Message, delay: int,
                     now: float) -> None:
    """The connection closed uncleanly and the session lives on: the Will goes out now, or
    after its delay, unless the client reconnects first (MQTT-3.1.3-9); never later than
    the session ends."""
    delay = min(delay, session.expiry_interval)
    if delay <= 0:
        publish_will(core, will, session.client, now)
        return
    session.will = will
    session.will_at = now + delay
    core.timers.push(session.will_at, "will", session)


def will_due(core: BrokerCore, ref: object, now: float) -> None:
    """The "will" timer: a delayed Will still pending is published."""
    assert isinstance(ref, Session)
    if ref.will is not None and ref.will_at is not None and now >= ref.will_at:
        will, ref.will = ref.will, None
        publish_will(core, will, ref.client, now)


def publish_will(core: BrokerCore, will: Message, owner: ClientInfo | None, now: float) -> None:
    """A Will is published as its owner's PUBLISH would be: authorised again now (the
    owner's rights may have changed since CONNECT), refused silently otherwise."""
    if owner is None or authorize_publish(core, owner, will.topic, will.qos, will.retain) \
            is not Decision.ALLOW:
        core.stats.wills_refused += 1
        core.log_limiter.log(logging.WARNING, will.sender or "", now,
                             "will of %r on %r not published: not authorized",
                             clip(will.sender), clip(will.topic))
        return
    core.publish(will, now)
