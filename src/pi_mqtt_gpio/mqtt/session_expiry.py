"""Sessions outliving their connection: expiry (MQTT 5.0 section 4.1), the end of a session
(its pending Will goes out, MQTT-3.1.3-9) and the cap on how many sessions are kept."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pi_mqtt_gpio.mqtt.connection import Connection
from pi_mqtt_gpio.mqtt.deliver import release_queue
from pi_mqtt_gpio.mqtt.message import NONE_YET, Message
from pi_mqtt_gpio.mqtt.session import NEVER_EXPIRES, Session
from pi_mqtt_gpio.mqtt.will import publish_will, will_after_close

if TYPE_CHECKING:
    from pi_mqtt_gpio.mqtt.broker import BrokerCore

log = logging.getLogger("pi_mqtt_gpio.broker")


def detach(core: BrokerCore, session: Session, conn: Connection, will: Message | None,
           now: float) -> None:
    """``conn`` is gone: its session ends now (expiry 0) or starts counting its expiry; a
    Will (unclean close) goes out now or after its delay."""
    if session.expiry_interval == 0:
        end_session(core, session, now, will)
        return
    if session.expiry_interval != NEVER_EXPIRES:
        session.expires_at = now + session.expiry_interval
        core.timers.push(session.expires_at, "session", session)
    if will is not None:
        will_after_close(core, session, will, conn.will_delay, now)


def session_due(core: BrokerCore, ref: object, now: float) -> None:
    """The "session" timer: a session still offline at its expiry ends."""
    assert isinstance(ref, Session)
    if ref.conn is None and ref.expires_at is not None and now >= ref.expires_at:
        end_session(core, ref, now)


def end_session(core: BrokerCore, session: Session, now: float,
                will: Message | None = None) -> None:
    """The session ends: publish a pending Will (MQTT-3.1.3-9), drop all state."""
    if core.sessions.get(session.client_id) is session:
        del core.sessions[session.client_id]
    for entry in list(session.subscriptions.values()):
        core.subscriptions.remove(entry.topic_filter, session.client_id, entry.group)
    session.subscriptions = NONE_YET
    session.sub_bytes = session.sub_levels = 0
    release_queue(core, session)
    pending = will or session.will
    session.will = None
    if pending is not None:
        publish_will(core, pending, session.client, now)


def make_room_for_a_session(core: BrokerCore, now: float) -> None:
    """Sessions outlive connections (3.1.1 CleanSession=0 never expires): bound them.
    At ``max_sessions`` the session offline for longest ends (its Will, if pending, goes
    out), so no number of client ids can grow memory without bound."""
    if len(core.sessions) < core.limits.max_sessions:
        return
    offline = [s for s in core.sessions.values()
               if s.conn is None and s.internal_handler is None]
    if not offline:
        return
    oldest = min(offline, key=lambda s: s.expires_at if s.expires_at is not None
                 else float("-inf"))
    log.warning("%d sessions: dropping offline session %r", len(core.sessions),
                oldest.client_id)
    end_session(core, oldest, now)
