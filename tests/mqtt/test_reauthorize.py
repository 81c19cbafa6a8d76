"""When rights change (``invalidate_authorization``, the users file reloaded), every
subscription is granted again as a SUBSCRIBE would be now, connected and offline sessions
alike, and what a session holds for later is kept only when it may still read it; and a
read-protected prefix ending in ``/`` covers its parent topic, which ``x/#`` also matches
(MQTT-4.7.1-2), on every path a message takes.

"Nothing arrives" is shown by a sentinel the reader may still read, published last."""

from __future__ import annotations

from typing import Any

import pytest

from pi_mqtt_gpio.mqtt.broker import BrokerCore, BrokerLimits
from pi_mqtt_gpio.mqtt.hooks import ClientInfo, Decision, under_protected
from pi_mqtt_gpio.mqtt.packets import (
    PROTOCOL_50,
    PROTOCOL_311,
    ConnAck,
    Prop,
    PubAck,
    Publish,
    Subscribe,
    Subscription,
)
from tests.mqtt.harness import AllowAll, FakeClient, Harness

VERSIONS = pytest.mark.parametrize("version", [PROTOCOL_311, PROTOCOL_50], ids=["v311", "v5"])


class Roles(AllowAll):
    """A user in ``demoted`` may subscribe only within ``open/`` and ``view/`` and may not
    read ``view/secret``; ``view/`` is read-protected (like a deny's fixed start)."""

    def __init__(self) -> None:
        super().__init__()
        self.demoted: set[str | None] = set()

    def authorize_subscribe(self, client: ClientInfo, topic_filter: str, qos: int) -> Decision:
        if client.username in self.demoted:
            return Decision.ALLOW if topic_filter.startswith(("open/", "view/")) \
                else Decision.DENY
        return super().authorize_subscribe(client, topic_filter, qos)

    def read_protected(self) -> tuple[str, ...]:
        return ("view/",)

    def readable(self, client: ClientInfo, topic: str) -> bool:
        return not (client.username in self.demoted and topic == "view/secret") \
            and not (client.client_id.startswith("blocked") and topic == "view")


def harness() -> tuple[Harness, Roles]:
    h = Harness()
    hooks = Roles()
    h.hooks = hooks
    h.core = BrokerCore(BrokerLimits(), [hooks])
    return h, hooks


def subscriber(h: Harness, cid: str, version: int, filters: list[str], **connect: Any
               ) -> FakeClient:
    c = h.client(cid, version, username=cid, **connect)
    c.connack()
    c.send(Subscribe(1, [Subscription(f, 1) for f in filters]))
    c.backlog = [p for p in c.received() if isinstance(p, Publish)]  # retained ones
    return c


def topics(c: FakeClient) -> list[str]:
    out = []
    for p in c.received():
        if isinstance(p, Publish):
            out.append(p.topic)
            if p.qos:
                c.send(PubAck(p.packet_id))  # type: ignore[arg-type]
    return out


def publish_all(pub: FakeClient, items: list[tuple[str, int]]) -> None:
    for pid, (topic, qos) in enumerate(items, 1):
        pub.send(Publish(topic, topic.encode(), qos, False, False, pid if qos else None, {}))
    pub.received()


def reconnect(h: Harness, cid: str, version: int) -> FakeClient:
    """``cid`` back with its session; what it is sent at once is kept for ``topics``."""
    c = h.client(cid, version, username=cid, clean_start=False)
    packets = c.received()
    assert isinstance(packets[0], ConnAck) and packets[0].session_present
    c.backlog = packets[1:]
    return c


def held_bytes(h: Harness) -> int:
    return sum(s.queued_bytes for s in h.core.sessions.values())


@VERSIONS
def test_demoted_sessions_lose_what_they_may_no_longer_read(version: int) -> None:
    h, hooks = harness()
    filters = ["#", "secret/#", "open/#", "view/#"]
    live = subscriber(h, "live", version, filters)
    away = subscriber(h, "away", version, filters, clean_start=False,
                      properties={Prop.SESSION_EXPIRY_INTERVAL: 600} if version == PROTOCOL_50
                      else {})
    pub = h.client("pub", PROTOCOL_50)
    pub.connack()
    # In flight to ``away`` and never acknowledged: resent at reconnect (MQTT-4.4.0-1) ...
    publish_all(pub, [("secret/inflight", 1)])
    assert topics(live) == ["secret/inflight"]
    away.received()
    away.close()
    # ... and queued while it is away, readable and not.
    publish_all(pub, [("secret/before", 1), ("view/secret", 1), ("open/before", 1)])
    assert topics(live) == ["secret/before", "view/secret", "open/before"]
    hooks.demoted |= {"live", "away"}
    h.core.invalidate_authorization()
    for cid in ("live", "away"):
        assert set(h.core.sessions[cid].subscriptions) == {"open/#", "view/#"}, cid
    # Live after the change, the general and the fast path (twice: cached routes), QoS 0/1.
    items = [("secret/after", 0), ("secret/after", 1), ("zigbee/x", 1), ("view/secret", 1),
             ("secret/after", 0), ("view/secret", 0), ("open/sentinel", 1)]
    publish_all(pub, items)
    assert topics(live) == ["open/sentinel"]
    back = reconnect(h, "away", version)
    assert topics(back) == ["open/before", "open/sentinel"]
    publish_all(pub, items)
    assert topics(back) == ["open/sentinel"]
    assert topics(live) == ["open/sentinel"]
    assert h.core.queued_bytes == held_bytes(h) == 0


def test_nothing_changes_for_who_may_still_read() -> None:
    h, _ = harness()
    c = subscriber(h, "keeper", PROTOCOL_50, ["#", "view/#"])
    h.core.invalidate_authorization()
    assert h.core.reauthorize() == (0, 0)
    pub = h.client("pub", PROTOCOL_50)
    pub.connack()
    publish_all(pub, [("secret/x", 1), ("view/secret", 0)])
    assert topics(c) == ["secret/x", "view/secret"]


@VERSIONS
@pytest.mark.parametrize("qos", [0, 1])
def test_the_parent_topic_of_a_protected_prefix_is_checked(version: int, qos: int) -> None:
    """``view/#`` matches ``view``: a reader the rule refuses it to gets it neither retained
    nor live (fast path and general path) nor queued; another reader gets it."""
    h, _ = harness()
    pub = h.client("pub", PROTOCOL_50)
    pub.connack()
    pub.send(Publish("view", b"kept", 1, True, False, 9, {}))
    blocked = h.client("blocked", version)
    blocked.connack()
    blocked.send(Subscribe(1, [Subscription("view/#", qos)]))
    plain = subscriber(h, "plain", version, ["view/#"])
    away = subscriber(h, "blocked-away", version, ["view/#"], clean_start=False,
                      properties={Prop.SESSION_EXPIRY_INTERVAL: 600} if version == PROTOCOL_50
                      else {})
    away.close()
    publish_all(pub, [("view", qos), ("view", qos), ("view/ok", 1)])
    assert topics(blocked) == ["view/ok"]
    assert topics(plain) == ["view", "view", "view", "view/ok"]  # retained, then live
    back = reconnect(h, "blocked-away", version)
    assert topics(back) == ["view/ok"]


def test_under_protected() -> None:
    prefixes = ("gk/reply/", "gk/devices", "home/")
    assert under_protected("home", prefixes) and under_protected("home/a", prefixes)
    assert under_protected("gk/reply", prefixes)
    assert not under_protected("homeassistant/x", prefixes)
    assert not under_protected("gk", prefixes)
