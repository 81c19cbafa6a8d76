"""The broker core's defences, with injected time and no sockets: Wills under the ACL,
sessions owned by their user, client ids, the unauthenticated pool, topic limits,
subscription, retained and queue budgets, stuck consumers, commands never retained."""

from __future__ import annotations

import logging

import pytest

from pi_mqtt_gpio.mqtt.broker import BrokerLimits
from pi_mqtt_gpio.mqtt.packets import (
    PROTOCOL_50,
    PROTOCOL_311,
    RC,
    Disconnect,
    Prop,
    PubAck,
    Publish,
    Will,
)
from tests.mqtt.harness import FakeClient, Harness
from tests.mqtt.test_core import BOTH, publishes, subscribe

NOT_AUTHORIZED = {PROTOCOL_311: 0x05, PROTOCOL_50: RC.NOT_AUTHORIZED}
ID_INVALID = {PROTOCOL_311: 0x02, PROTOCOL_50: RC.CLIENT_IDENTIFIER_NOT_VALID}


# --- Wills ---------------------------------------------------------------------------------
@BOTH
def test_will_the_client_may_not_publish_is_refused_at_connect(version: int) -> None:
    h = Harness()
    watcher = h.client("w", version)
    watcher.connack()
    subscribe(watcher, "#")
    c = h.client("evil", version, will=Will("forbidden/x", b"boom"))
    assert c.connack().reason_code == NOT_AUTHORIZED[version]
    assert c.closed
    c.close()
    assert publishes(watcher) == []


@BOTH
def test_will_is_authorised_again_when_published(version: int) -> None:
    h = Harness()
    watcher = h.client("w", version)
    watcher.connack()
    subscribe(watcher, "will/#")
    c = h.client("a", version, username="u", will=Will("will/a", b"gone"))
    assert c.connack().reason_code == 0
    h.revoke("u")  # rights changed while connected
    c.close()
    assert publishes(watcher) == [] and h.core.stats.wills_refused == 1


def test_delayed_will_is_authorised_when_its_delay_ends() -> None:
    h = Harness()
    watcher = h.client("w")
    watcher.connack()
    subscribe(watcher, "will/#")
    c = h.client("a", username="u", will=Will("will/a", b"gone", 0, False,
                                              {Prop.WILL_DELAY_INTERVAL: 5}),
                 properties={Prop.SESSION_EXPIRY_INTERVAL: 60})
    c.connack()
    c.close()
    h.advance(4)
    h.revoke("u")
    h.advance(2)
    assert publishes(watcher) == [] and h.core.stats.wills_refused == 1


# --- sessions and client ids ---------------------------------------------------------------
@BOTH
@pytest.mark.parametrize("clean", [False, True])
def test_another_users_connect_cannot_take_a_session(version: int, clean: bool) -> None:
    h = Harness()
    owner = h.client("shared", version, username="admin", clean_start=False,
                     properties={Prop.SESSION_EXPIRY_INTERVAL: 300}
                     if version == PROTOCOL_50 else {})
    owner.connack()
    subscribe(owner, "secret/#", 1)
    thief = h.client("shared", version, username="viewer", clean_start=clean)
    ack = thief.connack()
    assert ack.reason_code == ID_INVALID[version] and not ack.session_present
    assert not owner.closed and owner.received() == []  # not kicked, nothing sent
    assert h.core.sessions["shared"].subscriptions  # nor discarded
    # ... also while the owner is offline
    owner.send(Disconnect())
    thief2 = h.client("shared", version, username="viewer", clean_start=False)
    assert thief2.connack().reason_code == ID_INVALID[version]
    back = h.client("shared", version, username="admin", clean_start=False)
    assert back.connack().session_present


@BOTH
@pytest.mark.parametrize("client_id", ["a/b", "a+", "#", "x/"])
def test_client_ids_with_topic_characters_are_refused(version: int, client_id: str) -> None:
    h = Harness()
    assert h.client(client_id, version).connack().reason_code == ID_INVALID[version]


# --- unauthenticated sockets ---------------------------------------------------------------
def test_unauthenticated_pool_evicts_the_oldest_idle_socket() -> None:
    h = Harness(BrokerLimits(max_pending_connections=4, max_pending_per_address=2,
                             pending_grace=0.25))
    core = h.core
    a1 = core.open_connection("t", "10.0.0.1:1", h.now)
    a2 = core.open_connection("t", "10.0.0.1:2", h.now)
    h.now += 0.25 - 0.001
    young = core.open_connection("t", "10.0.0.1:3", h.now)  # over the address's share ...
    assert not young.closing and not a1.closing  # ... but nobody idle long enough: kept
    h.now += 0.001  # exactly the grace: a1 and a2 count as idle now
    a4 = core.open_connection("t", "10.0.0.1:4", h.now)  # the address's oldest idle goes
    assert a1.closing and a1.hard_close and not a2.closing and not a4.closing
    b1 = core.open_connection("t", "10.0.0.2:1", h.now)
    assert core.pending_count() == 4 and not b1.closing
    real = h.client("real", peer="10.0.0.3:1")  # pool full: the oldest idle (a2) goes
    assert a2.closing and real.connack().reason_code == 0
    assert not b1.closing and not young.closing


def test_newcomers_are_closed_past_twice_the_pool() -> None:
    h = Harness(BrokerLimits(max_pending_connections=2, max_pending_per_address=2))
    core = h.core
    kept = [core.open_connection("t", f"10.0.0.{i}:1", h.now) for i in range(4)]
    assert not any(c.closing for c in kept)  # over the pool, nobody idle: up to 2x
    late = core.open_connection("t", "10.0.0.9:1", h.now)
    assert late.closing and late.hard_close
    assert core.pending_count() == 4


def test_max_connections_counts_logged_in_clients_only() -> None:
    h = Harness(BrokerLimits(max_connections=2))
    idle = [h.core.open_connection("t", f"10.0.1.{i}:1", h.now) for i in range(10)]
    first, second = h.client("a"), h.client("b")
    assert first.connack().reason_code == 0 and second.connack().reason_code == 0
    assert h.client("c").connack().reason_code == RC.SERVER_BUSY
    assert len(idle) == 10


# --- topic limits --------------------------------------------------------------------------
@BOTH
def test_topic_length_and_depth_limits(version: int) -> None:
    h = Harness(BrokerLimits(max_topic_levels=32, max_topic_length=1024))
    c = h.client("c", version)
    c.connack()
    at_limit = "/".join(["a"] * 32)
    too_deep = "/".join(["a"] * 33)
    too_long = "t/" + "x" * 1023
    assert subscribe(c, at_limit).reason_codes == [0]
    refused = 0x80 if version == PROTOCOL_311 else RC.TOPIC_FILTER_INVALID
    assert subscribe(c, too_deep, pid=2).reason_codes == [refused]
    assert subscribe(c, too_long, pid=3).reason_codes == [refused]
    c.send(Publish(too_deep, b"x", 1, True, False, 7))
    ack = next(p for p in c.received() if isinstance(p, PubAck))
    assert ack.reason_code == (RC.TOPIC_NAME_INVALID if version == PROTOCOL_50 else 0)
    assert h.core.retained.get(too_deep) is None
    c.send(Publish(at_limit, b"x", 0))
    assert [p.topic for p in publishes(c)] == [at_limit]


# --- budgets -------------------------------------------------------------------------------
def test_subscription_budget_counts_bytes_levels_and_nodes() -> None:
    h = Harness(BrokerLimits(max_subscription_bytes_per_client=100,
                             max_subscription_levels_per_client=10,
                             max_subscription_nodes=1000))
    c = h.client("c")
    c.connack()
    assert subscribe(c, "a/b/c/d/e").reason_codes == [0]  # 5 levels, 9 bytes
    assert subscribe(c, "f/g/h/i/j", pid=2).reason_codes == [0]  # 10 levels
    assert subscribe(c, "k", pid=3).reason_codes == [RC.QUOTA_EXCEEDED]  # 11 levels
    from pi_mqtt_gpio.mqtt.packets import Unsubscribe
    c.send(Unsubscribe(4, ["a/b/c/d/e"]))
    c.received()
    assert subscribe(c, "k", pid=5).reason_codes == [0]  # refunded
    assert subscribe(c, "x" * 95, pid=6).reason_codes == [RC.QUOTA_EXCEEDED]  # bytes
    d = h.client("d")
    d.connack()
    h.core.limits = BrokerLimits(max_subscription_nodes=h.core.subscriptions.nodes + 2)
    assert subscribe(d, "n/o/p").reason_codes == [RC.QUOTA_EXCEEDED]  # tree nodes
    assert subscribe(d, "n/o", pid=2).reason_codes == [0]


def test_offline_queue_is_bounded_in_bytes() -> None:
    h = Harness(BrokerLimits(max_queued_bytes_per_client=10_000, max_queued_bytes=15_000))
    subs = []
    for name in ("s1", "s2"):
        s = h.client(name, clean_start=False, properties={Prop.SESSION_EXPIRY_INTERVAL: 600})
        s.connack()
        subscribe(s, "q/#", 1)
        s.send(Disconnect())
        subs.append(s)
    pub = h.client("p")
    pub.connack()
    for i in range(40):
        pub.send(Publish(f"q/{i}", b"x" * 1000, 1, False, False, i + 1))
    s1, s2 = h.core.sessions["s1"], h.core.sessions["s2"]
    assert s1.queued_bytes <= 10_000 and s2.queued_bytes <= 10_000
    assert h.core.queued_bytes == s1.queued_bytes + s2.queued_bytes <= 15_000
    assert s1.queue[-1].message.topic == "q/39"  # the newest kept, the oldest dropped
    back = h.client("s1", clean_start=False, properties={Prop.SESSION_EXPIRY_INTERVAL: 600})
    packets = back.received()
    assert packets[0].session_present  # type: ignore[union-attr]
    for p in packets[1:]:
        assert isinstance(p, Publish)
        back.send(PubAck(p.packet_id))  # type: ignore[arg-type]
    assert s1.queued_bytes == 0 and h.core.queued_bytes == s2.queued_bytes


@BOTH
def test_subscriber_that_never_acknowledges_is_cut_off(version: int) -> None:
    h = Harness(BrokerLimits(ack_timeout=60))
    props = {Prop.RECEIVE_MAXIMUM: 1} if version == PROTOCOL_50 else {}
    stuck = h.client("stuck", version, properties=props)
    stuck.connack()
    subscribe(stuck, "t/#", 1)
    good = h.client("good", version)
    good.connack()
    subscribe(good, "t/#", 1)
    pub = h.client("p")
    pub.connack()
    for i in range(3):
        pub.send(Publish(f"t/{i}", b"x", 1, False, False, i + 1))
        for p in publishes(good):
            good.send(PubAck(p.packet_id))  # type: ignore[arg-type]
        h.advance(30)
    assert stuck.closed and not good.closed
    if version == PROTOCOL_50:
        assert stuck.received()[-1] == Disconnect(
            RC.QUOTA_EXCEEDED, {Prop.REASON_STRING: "no acknowledgement for 60 s"})
    assert h.core.sessions.get("stuck") is None  # clean session: its messages are freed
    assert h.core.queued_bytes == 0


def test_acknowledging_slowly_is_not_stuck() -> None:
    h = Harness(BrokerLimits(ack_timeout=60))
    slow = h.client("slow", properties={Prop.RECEIVE_MAXIMUM: 1})
    slow.connack()
    subscribe(slow, "t/#", 1)
    pub = h.client("p")
    pub.connack()
    for i in range(5):
        pub.send(Publish(f"t/{i}", b"x", 1, False, False, i + 1))
    for _ in range(5):
        h.advance(50)  # 50 s per acknowledgement: slow, but progressing
        for p in publishes(slow):
            slow.send(PubAck(p.packet_id))  # type: ignore[arg-type]
    assert not slow.closed


@BOTH
def test_commands_are_not_retained(version: int) -> None:
    h = Harness()
    c = h.client("c", version)
    c.connack()
    c.send(Publish("cmd/relay", b"ON", 0, True))
    c.send(Publish("state/relay", b"ON", 0, True))
    assert h.core.retained.get("cmd/relay") is None
    assert h.core.retained.get("state/relay") is not None


def test_malformed_packets_from_many_addresses_give_a_bounded_log(
        caplog: pytest.LogCaptureFixture) -> None:
    """Each address gets a few log lines per 10 s; across addresses the core's log is capped
    too (a flood from many addresses, or IPv6, cannot fill the journal)."""
    from pi_mqtt_gpio.mqtt.logguard import LOG_TOTAL

    h = Harness()
    with caplog.at_level(logging.INFO, logger="pi_mqtt_gpio"):
        for n in range(200):
            fc = FakeClient(h, PROTOCOL_50, peer=f"127.0.{n // 250}.{n % 250 + 1}:1")
            fc.send_raw(b"\x10\x02\x00\x00")  # a CONNECT cut short: closed, logged
            assert fc.closed
    lines = [r for r in caplog.records if r.name.startswith("pi_mqtt_gpio")]
    assert 0 < len(lines) <= LOG_TOTAL + 2, len(lines)
