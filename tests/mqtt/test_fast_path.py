"""The broker core's fast path (cached topic names, decisions and receivers; the publisher's
own bytes forwarded) is the general path made cheaper, nothing else: random sequences of
CONNECT, SUBSCRIBE, UNSUBSCRIBE, PUBLISH (QoS 0/1/2, retained, with and without 5.0
properties, topic aliases, expiry), PUBACK, rights changing, clients leaving, readers
congested, from several 3.1.1 and 5.0 clients, go through two cores, one with the fast path
and one without; every client must receive exactly the same bytes from both, after every
step, the counters must agree, and so must the books of what is queued and in flight (both
paths account through deliver.py), which must add up on each side."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pi_mqtt_gpio.mqtt.broker import BrokerCore, BrokerLimits
from pi_mqtt_gpio.mqtt.codec import FrameReader, decode_frame, encode
from pi_mqtt_gpio.mqtt.hooks import AuthResult, BrokerHooks, ClientInfo, Decision
from pi_mqtt_gpio.mqtt.packets import (
    PROTOCOL_50,
    PROTOCOL_311,
    Connect,
    Disconnect,
    Prop,
    PubAck,
    Publish,
    PubRec,
    PubRel,
    Subscribe,
    Subscription,
    Unsubscribe,
)

CLIENTS = [("c0", PROTOCOL_311), ("c1", PROTOCOL_50), ("c2", PROTOCOL_50), ("c3", PROTOCOL_311)]
LEVELS = ["a", "b", "priv", "forbidden"]


class Hooks(BrokerHooks):
    """Publishing to ``forbidden/...`` is refused, and everything by a revoked user;
    ``priv/<client id>/...`` is readable by that client only."""

    def __init__(self) -> None:
        self.revoked: set[str] = set()

    def authorize_publish(self, client: ClientInfo, topic: str, qos: int, retain: bool
                          ) -> Decision:
        if client.client_id in self.revoked or topic.startswith("forbidden"):
            return Decision.DENY
        return Decision.ALLOW

    def authorize_subscribe(self, client: ClientInfo, topic_filter: str, qos: int) -> Decision:
        return Decision.ALLOW

    def read_protected(self) -> tuple[str, ...]:
        return ("priv/",)

    def readable(self, client: ClientInfo, topic: str) -> bool:
        return topic.startswith(f"priv/{client.client_id}")


@dataclass
class Side:
    core: BrokerCore
    hooks: Hooks
    conns: dict[str, Any]
    out: dict[str, bytes]


LIMITS = BrokerLimits(max_queued_messages=5, topic_alias_maximum=3)
# Byte budgets so small that deliveries wait for them (a message costs 64 + topic + payload).
TIGHT = BrokerLimits(max_queued_messages=5, topic_alias_maximum=3,
                     max_queued_bytes_per_client=220, max_queued_bytes=500)


def make(fast: bool, limits: BrokerLimits = LIMITS) -> Side:
    hooks = Hooks()
    core = BrokerCore(limits, [hooks], fast_path=fast)
    return Side(core, hooks, {}, {cid: b"" for cid, _v in CLIENTS})


def settle(side: Side, now: float) -> None:
    for conn, req in side.core.take_auth_requests():
        side.core.auth_complete(conn, AuthResult(Decision.ALLOW, req.username, "r"), now)
    side.core.take_dirty()
    for cid, conn in side.conns.items():
        side.out[cid] += b"".join(conn.data_to_send())


topic_st = st.one_of(
    st.sampled_from(["a", "a/b", "priv/c1", "priv/c2", "forbidden/x", "b/c1"]),
    st.lists(st.sampled_from([*LEVELS, "c1", "c2"]), min_size=1, max_size=3).map("/".join))
filter_st = st.one_of(
    st.sampled_from(["#", "a/#", "+/c1", "priv/#", "a", "$share/g/a/#", "+/+"]),
    topic_st,
    st.lists(st.sampled_from([*LEVELS, "+"]), min_size=1, max_size=3).map("/".join),
)
props_st = st.fixed_dictionaries({}, optional={
    Prop.RESPONSE_TOPIC: st.sampled_from(["a/reply", "b/r"]),
    Prop.CORRELATION_DATA: st.binary(max_size=4),
    Prop.PAYLOAD_FORMAT_INDICATOR: st.integers(0, 1),
    Prop.MESSAGE_EXPIRY_INTERVAL: st.integers(1, 100),
    Prop.TOPIC_ALIAS: st.integers(1, 3),
    Prop.USER_PROPERTY: st.lists(st.tuples(st.just("k"), st.sampled_from(["v", "w"])),
                                 max_size=2),
})

connect_st = st.tuples(st.just("connect"), st.integers(0, 3), st.booleans(), st.integers(0, 3))
subscribe_st = st.tuples(st.just("subscribe"), st.integers(0, 3), filter_st, st.integers(0, 2),
                         st.booleans(), st.booleans(), st.integers(0, 3))
publish_st = st.tuples(st.just("publish"), st.integers(0, 3), topic_st, st.integers(0, 2),
                       st.booleans(), st.sampled_from([b"", b"x", b"\xff\xfe", b"hello"]),
                       props_st)
op_st = st.one_of(
    connect_st, subscribe_st, publish_st, publish_st, publish_st,
    st.tuples(st.just("unsubscribe"), st.integers(0, 3), filter_st),
    st.tuples(st.just("ack"), st.integers(0, 3)),
    st.tuples(st.just("revoke"), st.integers(0, 3)),
    st.tuples(st.just("leave"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("wait"), st.integers(1, 200)),
    st.tuples(st.just("congest"), st.integers(0, 3), st.booleans()),
)


class Runner:
    def __init__(self, limits: BrokerLimits = LIMITS) -> None:
        self.sides = [make(True, limits), make(False, limits)]
        self.now = 1000.0
        self.pid = 0
        self.readers: dict[str, FrameReader] = {}
        self.seen: dict[str, int] = {}  # bytes of side 0's output already parsed
        self.sent = 0

    def send(self, i: int, packet: Any) -> None:
        """One packet per read (the fast path's single-packet case), or every third one in
        two reads (the frame reader's path, fast or general)."""
        cid, version = CLIENTS[i]
        data = encode(packet, version)
        self.sent += 1
        parts = [data[:1], data[1:]] if self.sent % 3 == 0 else [data]
        for side in self.sides:
            conn = side.conns.get(cid)
            if conn is not None:
                for part in parts:
                    side.core.data_received(conn, part, self.now)
                settle(side, self.now)

    def step(self, op: tuple[Any, ...]) -> None:
        kind, *args = op
        if kind == "wait":
            self.now += args[0] / 10
            for side in self.sides:
                side.core.on_timer(self.now)
                settle(side, self.now)
            return
        i = args[0]
        cid, version = CLIENTS[i]
        connected = cid in self.sides[0].conns
        if kind == "connect":
            if connected:
                return
            clean, small = args[1], args[2]
            props: dict[int, Any] = {}
            if version == PROTOCOL_50:
                props = {Prop.SESSION_EXPIRY_INTERVAL: 0 if clean else 60}
                if small == 1:
                    props[Prop.TOPIC_ALIAS_MAXIMUM] = 2
                elif small == 2:
                    props[Prop.MAXIMUM_PACKET_SIZE] = 40
                elif small == 3:
                    props[Prop.RECEIVE_MAXIMUM] = 1
            for side in self.sides:
                conn = side.core.open_connection("test", f"127.0.0.1:{i}", self.now)
                side.conns[cid] = conn
                side.out[cid] = b""
            self.readers[cid] = FrameReader()
            self.seen[cid] = 0
            self.send(i, Connect(cid, version, clean_start=clean, properties=props))
            return
        if not connected:
            return
        if kind == "subscribe":
            topic_filter, qos, no_local, rap, sub_id = args[1:]
            sprops = {Prop.SUBSCRIPTION_IDENTIFIER: [sub_id]} \
                if version == PROTOCOL_50 and sub_id else {}
            opts = Subscription(topic_filter, qos, no_local and version == PROTOCOL_50
                                and not topic_filter.startswith("$share"),
                                rap and version == PROTOCOL_50)
            self.pid += 1
            self.send(i, Subscribe(self.pid % 65535 + 1, [opts], sprops))
        elif kind == "unsubscribe":
            self.pid += 1
            self.send(i, Unsubscribe(self.pid % 65535 + 1, [args[1]]))
        elif kind == "publish":
            topic, qos, retain, payload, pprops = args[1:]
            pprops = dict(pprops) if version == PROTOCOL_50 else {}
            self.pid += 1
            pid = self.pid % 65535 + 1 if qos else None
            self.send(i, Publish(topic, payload, qos, retain, False, pid, pprops))
            if qos == 2:
                self.send(i, PubRel(pid))  # type: ignore[arg-type]
        elif kind == "ack":
            for packet in self.received(cid, version):
                if isinstance(packet, Publish) and packet.qos == 1:
                    self.send(i, PubAck(packet.packet_id))  # type: ignore[arg-type]
                elif isinstance(packet, Publish) and packet.qos == 2:
                    self.send(i, PubRec(packet.packet_id))  # type: ignore[arg-type]
                elif isinstance(packet, PubRel):
                    from pi_mqtt_gpio.mqtt.packets import PubComp
                    self.send(i, PubComp(packet.packet_id))
        elif kind == "congest":  # the transport sees the reader not reading (or again)
            for side in self.sides:
                side.conns[cid].congested = args[1]
        elif kind == "revoke":
            for side in self.sides:
                side.hooks.revoked.add(cid)
                side.core.invalidate_authorization()
        elif kind == "leave":
            graceful = args[1]
            if graceful:
                self.send(i, Disconnect())
            for side in self.sides:
                conn = side.conns.pop(cid)
                side.core.connection_lost(conn, self.now)
                settle(side, self.now)

    def received(self, cid: str, version: int) -> list[Any]:
        data = self.sides[0].out[cid]
        reader = self.readers[cid]
        reader.feed(data[self.seen[cid]:])
        self.seen[cid] = len(data)
        out = []
        while (frame := reader.next_frame()) is not None:
            out.append(decode_frame(frame[0], frame[1], version, from_client=False))
        return out

    def check(self) -> None:
        fast, slow = self.sides
        assert fast.out == slow.out
        assert fast.core.stats == slow.core.stats
        assert books(fast.core) == books(slow.core)


def books(core: BrokerCore) -> dict[str, tuple[int, int, int, list[int]]]:
    """Per session: bytes charged, messages queued, in flight (their packet ids); checked to
    add up (each session's charge is what it holds, the broker's is the sessions' sum)."""
    out = {}
    for cid, session in core.sessions.items():
        held = [item.message.cost for item in session.queue] + \
            [item.message.cost for item in session.inflight.values()]
        assert session.queued_bytes == sum(held), cid
        out[cid] = (session.queued_bytes, len(session.queue), len(session.inflight),
                    sorted(session.inflight))
    assert core.queued_bytes == sum(charged for charged, *_rest in out.values())
    return out


@settings(max_examples=400, deadline=None)
@given(st.lists(connect_st, min_size=4, max_size=4), st.lists(subscribe_st, max_size=4),
       st.lists(op_st, min_size=1, max_size=40))
def test_fast_path_sends_the_same_bytes_as_the_general_path(
        connects: list[tuple[Any, ...]], subscribes: list[tuple[Any, ...]],
        ops: list[tuple[Any, ...]]) -> None:
    runner = Runner()
    for i, op in enumerate(connects):  # everybody connected first, with drawn options
        runner.step((op[0], i, *op[2:]))
    for op in [*subscribes, *ops]:
        runner.step(op)
        runner.check()


def test_the_fast_path_is_taken() -> None:
    """The common case does go through it (else the comparison above proves little)."""
    runner = Runner()
    for op in [("connect", 0, True, 0), ("connect", 1, True, 0),
               ("subscribe", 1, "a/#", 0, False, False, 0),
               ("subscribe", 0, "a/#", 1, False, False, 0)]:
        runner.step(op)
    fast = runner.sides[0].core
    calls = 0
    original = fast._dispatch

    def counting(*args: Any) -> None:
        nonlocal calls
        calls += 1
        original(*args)

    fast._dispatch = counting  # type: ignore[method-assign]
    runner.step(("publish", 1, "a/b", 0, False, b"x", {}))
    runner.step(("publish", 0, "a/b", 1, False, b"y", {}))
    runner.step(("publish", 0, "a/b", 1, False, b"z", {}))
    runner.check()
    assert calls == 0
    assert runner.sides[0].out["c1"].endswith(b"\x30\x07\x00\x03a/b\x00z")
    runner.step(("publish", 0, "forbidden/b", 1, False, b"z", {}))  # refused: general path
    runner.step(("publish", 0, "a/b", 1, True, b"z", {}))  # retained: general path
    runner.check()
    assert calls == 2


def random_op(rng: random.Random) -> tuple[Any, ...]:
    """One step of a long random walk (the same kinds of steps as the strategies above)."""
    i = rng.randrange(4)
    roll = rng.random()
    topics = ["a", "a/b", "priv/c1", "priv/c2", "forbidden/x", "b/c1", "a/b/c"]
    filters = ["#", "a/#", "+/c1", "priv/#", "a", "$share/g/a/#", "+/+", "a/b", "+"]
    if roll < 0.5:
        props: dict[int, Any] = {}
        if rng.random() < 0.3:
            props[Prop.RESPONSE_TOPIC] = "a/reply"
            props[Prop.CORRELATION_DATA] = bytes([rng.randrange(256)])
        if rng.random() < 0.1:
            props[Prop.PAYLOAD_FORMAT_INDICATOR] = 1
        if rng.random() < 0.1:
            props[Prop.MESSAGE_EXPIRY_INTERVAL] = rng.randrange(1, 30)
        if rng.random() < 0.1:
            props[Prop.TOPIC_ALIAS] = rng.randrange(1, 4)
        if rng.random() < 0.1:
            props[Prop.USER_PROPERTY] = [("k", "v")]
        return ("publish", i, rng.choice(topics), rng.choice([0, 0, 1, 1, 2]),
                rng.random() < 0.1, rng.choice([b"", b"x", b"\xff", b"hello"]), props)
    if roll < 0.65:
        return ("subscribe", i, rng.choice(filters), rng.randrange(3), rng.random() < 0.2,
                rng.random() < 0.2, rng.choice([0, 0, 1, 2]))
    if roll < 0.72:
        return ("unsubscribe", i, rng.choice(filters))
    if roll < 0.85:
        return ("ack", i)
    if roll < 0.88:
        return ("revoke", i)
    if roll < 0.91:
        return ("leave", i, rng.random() < 0.5)
    if roll < 0.93:
        return ("congest", i, rng.random() < 0.5)
    if roll < 0.97:
        return ("connect", i, rng.random() < 0.5, rng.randrange(4))
    return ("wait", rng.randrange(1, 200))


def walk(seed: int, limits: BrokerLimits) -> Runner:
    """200 random steps with everybody connected at the start, checked after each."""
    rng = random.Random(seed)
    runner = Runner(limits)
    for i in range(4):
        runner.step(("connect", i, rng.random() < 0.5, rng.randrange(4)))
    for _ in range(200):
        runner.step(random_op(rng))
        runner.check()
    return runner


def test_long_random_walks_send_the_same_bytes() -> None:
    """Long sequences (what the shrinking search above rarely reaches): 150 seeded walks."""
    taken = sum(walk(seed, LIMITS).sides[0].core.stats.messages_in for seed in range(150))
    assert taken > 3000  # the walks did publish (and the fast side took part)


def test_random_walks_within_tight_budgets_send_the_same_bytes() -> None:
    """Byte budgets so small that QoS 1 deliveries wait for room (``deliver.reserve``
    refuses) and queues drop their oldest: both paths must wait and drop alike."""
    dropped = 0
    for seed in range(60):
        stats = walk(seed, TIGHT).sides[0].core.stats
        dropped += stats.dropped_queue_full
    assert dropped > 20  # the budgets did bite
