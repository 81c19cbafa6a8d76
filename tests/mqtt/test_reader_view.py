"""The broker core's per-reader delivery under a read-protected prefix: ``readable`` decides
each delivery and ``reader_payload`` may give a reader its own payload, on every path a
message takes (the fast path, the general path, retained, queued for an offline session),
and readers of one protocol version never share the bytes of another reader's view."""

from __future__ import annotations

import pytest

from pi_mqtt_gpio.mqtt.broker import BrokerCore, BrokerLimits
from pi_mqtt_gpio.mqtt.hooks import ClientInfo
from pi_mqtt_gpio.mqtt.packets import (
    PROTOCOL_50,
    PROTOCOL_311,
    Prop,
    Publish,
    Subscribe,
    Subscription,
)
from tests.mqtt.harness import AllowAll, FakeClient, Harness


class Views(AllowAll):
    """``view/...`` is read-protected: ``blocked`` may not read it, every other reader gets
    a payload naming it."""

    def read_protected(self) -> tuple[str, ...]:
        return ("view/",)

    def readable(self, client: ClientInfo, topic: str) -> bool:
        return client.client_id != "blocked"

    def reader_payload(self, client: ClientInfo, topic: str, payload: bytes) -> bytes:
        return payload if client.client_id == "plain" else payload + b" for " + \
            client.client_id.encode()


def harness() -> Harness:
    h = Harness()
    h.hooks = Views()
    h.core = BrokerCore(BrokerLimits(), [h.hooks])
    return h


def subscriber(h: Harness, cid: str, version: int, qos: int = 0, **connect: object
               ) -> FakeClient:
    c = h.client(cid, version, **connect)
    c.connack()
    c.send(Subscribe(1, [Subscription("view/#", qos)]))
    c.backlog = [p for p in c.received() if isinstance(p, Publish)]  # retained ones
    return c


def payloads(c: FakeClient) -> list[tuple[bytes, bool]]:
    return [(p.payload, p.retain) for p in c.received() if isinstance(p, Publish)]


@pytest.mark.parametrize("qos", [0, 1])
def test_each_reader_its_own_view_live_retained_and_queued(qos: int) -> None:
    h = harness()
    readers = {cid: subscriber(h, cid, version) for cid, version in (
        ("a", PROTOCOL_50), ("b", PROTOCOL_50), ("c", PROTOCOL_311), ("plain", PROTOCOL_50),
        ("blocked", PROTOCOL_50))}
    away = subscriber(h, "away", PROTOCOL_50, 1, clean_start=False,
                      properties={Prop.SESSION_EXPIRY_INTERVAL: 60})
    away.close()
    pub = h.client("pub", PROTOCOL_50)
    pub.connack()
    pub.send(Publish("view/x", b"live", qos, False, False, 1 if qos else None, {}))
    pub.send(Publish("view/x", b"live", qos, False, False, 2 if qos else None, {}))  # fast
    pub.send(Publish("view/x", b"kept", 1, True, False, 3, {}))
    for cid, c in readers.items():
        got = payloads(c)
        if cid == "blocked":
            assert got == []
        elif cid == "plain":
            assert got == [(b"live", False)] * 2 + [(b"kept", False)]
        else:
            own = f" for {cid}".encode()
            assert got == [(b"live" + own, False)] * 2 + [(b"kept" + own, False)], cid
    back = h.client("away", PROTOCOL_50, clean_start=False,
                    properties={Prop.SESSION_EXPIRY_INTERVAL: 60})
    queued = [p.payload for p in back.received() if isinstance(p, Publish)]
    assert b"kept for away" in queued and all(p.endswith(b" for away") for p in queued)
    late = subscriber(h, "late", PROTOCOL_311)  # the retained one, as this reader sees it
    assert payloads(late) == [(b"kept for late", True)]
    assert payloads(subscriber(h, "blocked", PROTOCOL_311)) == []
    assert payloads(subscriber(h, "plain", PROTOCOL_311)) == [(b"kept", True)]
