"""The loop's round is shared: with several clients sending as fast as they can, each gets a
smaller turn (``BrokerCore.turn_budget``), so another client's packet waits about one round
however many are busy. And a login that needs no waiting is decided in the same turn as its
CONNECT was read (the transport runs the authentication hook's first step at once)."""

from __future__ import annotations

import asyncio

from pi_mqtt_gpio.mqtt.broker import BrokerCore, BrokerLimits
from pi_mqtt_gpio.mqtt.codec import encode
from pi_mqtt_gpio.mqtt.connection import Connection, ConnState
from pi_mqtt_gpio.mqtt.hooks import AuthRequest, AuthResult, Decision
from pi_mqtt_gpio.mqtt.limits import MIN_TURN
from pi_mqtt_gpio.mqtt.packets import (
    PROTOCOL_311,
    Connect,
    PingResp,
    Publish,
    Subscribe,
    Subscription,
)
from pi_mqtt_gpio.server.broker import BrokerServer, _Link
from tests.mqtt.harness import Harness


def _flood(n: int, topic: str = "load") -> bytes:
    return b"".join(encode(Publish(f"{topic}/{i}", b"x", 0), PROTOCOL_311) for i in range(n))


def test_busy_connections_share_the_round() -> None:
    h = Harness(BrokerLimits(frames_per_turn=100))
    sub = h.client("sub", PROTOCOL_311)
    sub.connack()
    sub.send(Subscribe(1, [Subscription("#", 0)]))
    sub.received()
    a = h.client("a", PROTOCOL_311)
    a.connack()
    b = h.client("b", PROTOCOL_311)
    b.connack()
    other = h.client("other", PROTOCOL_311)
    other.connack()
    core = h.core
    core.data_received(a.conn, _flood(400, "a"), h.now)
    assert len(sub.received()) == 100 and core.busy == 1  # alone: the whole round
    core.data_received(b.conn, _flood(400, "b"), h.now)
    assert len(sub.received()) == 50 and core.busy == 2  # a waits: half a round
    assert core.take_backlogged() == [a.conn, b.conn]
    other.send_raw(b"\xc0\x00")  # between the turns: answered at once
    assert isinstance(other.received()[-1], PingResp)
    core.process_backlog(a.conn, h.now)  # b still waits: a gets half
    assert len(sub.received()) == 50
    core.process_backlog(b.conn, h.now)
    assert len(sub.received()) == 50
    core.connection_lost(a.conn, h.now)  # a gone with its backlog: b has the round again
    assert core.busy == 1 and not a.conn.backlog
    core.take_backlogged()
    core.process_backlog(b.conn, h.now)
    assert len(sub.received()) == 100 and core.busy == 1
    core.take_backlogged()
    core.process_backlog(b.conn, h.now)
    core.process_backlog(b.conn, h.now)  # not listed: nothing left, nothing counted twice
    got = sub.received()
    last = got[-1]
    assert len(got) == 200 and isinstance(last, Publish) and last.topic == "b/399"
    assert core.busy == 0
    assert not b.conn.backlog


def test_a_turn_is_never_below_the_minimum() -> None:
    core = BrokerCore(BrokerLimits(frames_per_turn=256))
    core.busy = 100
    assert core.turn_budget() == MIN_TURN
    small = BrokerCore(BrokerLimits(frames_per_turn=5))
    small.busy = 3
    assert small.turn_budget() == 5  # below the minimum already: as configured


class _StubLink(_Link):
    __slots__ = ("out",)

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self.out: list[bytes] = []

    def write(self, chunks: list[bytes]) -> None:
        self.out.extend(chunks)

    def later(self) -> None:
        pass

    def buffered(self) -> int:
        return 0

    def close(self) -> None:
        pass


def _server(authenticate: object) -> tuple[BrokerServer, Connection, _StubLink]:
    server = BrokerServer(BrokerCore(), authenticate, [])  # type: ignore[arg-type]
    conn = server.accept("tcp", "127.0.0.1:5")
    link = server.links[conn.id] = _StubLink(conn)
    server.core.data_received(conn, encode(Connect("c", PROTOCOL_311), PROTOCOL_311),
                              server.now())
    return server, conn, link


def test_a_login_that_needs_no_waiting_is_answered_in_the_same_turn() -> None:
    async def allow(req: AuthRequest) -> AuthResult:
        return AuthResult(Decision.ALLOW, None, "all")

    async def main() -> None:
        server, conn, link = _server(allow)
        server.pump()  # no turn of the loop in between
        assert conn.state is ConnState.CONNECTED and link.out == [b"\x20\x02\x00\x00"]
        assert server.auth_in_progress() == 0

    asyncio.run(main())


def test_a_login_that_waits_goes_on_as_a_task_and_can_be_cancelled() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        checks: list[asyncio.Future[bool]] = []
        outcomes: list[str] = []

        async def check(req: AuthRequest) -> AuthResult:
            fut: asyncio.Future[bool] = loop.create_future()
            checks.append(fut)
            try:
                ok = await fut
            except asyncio.CancelledError:
                outcomes.append("cancelled")
                raise
            return AuthResult(Decision.ALLOW if ok else Decision.DENY, None, "all")

        server, conn, link = _server(check)
        server.pump()
        assert conn.state is ConnState.AUTHENTICATING and server.auth_in_progress() == 1
        checks[0].set_result(True)
        while server.auth_in_progress():
            await asyncio.sleep(0)
        assert server.core.established == 1 and link.out == [b"\x20\x02\x00\x00"]

        server2, conn2, link2 = _server(check)
        server2.pump()
        task = server2._auth_tasks[conn2.id]
        server2.cancel_auth(conn2)
        await asyncio.gather(task, return_exceptions=True)
        assert outcomes == ["cancelled"] and conn2.state is ConnState.AUTHENTICATING
        assert link2.out == []

    asyncio.run(main())


def test_a_scheduled_pump_goes_before_the_next_busy_turn() -> None:
    """What the gatekeeper publishes outside I/O (an RPC's reply) is written when the next
    busy connection's turn starts (``pump_scheduled``), not after the whole round."""
    async def allow(req: AuthRequest) -> AuthResult:
        return AuthResult(Decision.ALLOW, None, "all")

    async def main() -> None:
        server, conn, link = _server(allow)
        server.pump()
        conn.write(b"\xd0\x00")  # as a publish from the gatekeeper would queue bytes
        server.core.dirty.add(conn)
        server.schedule_pump()
        assert link.out == [b"\x20\x02\x00\x00"]
        server.pump_scheduled()  # what a busy connection's turn does first
        assert link.out == [b"\x20\x02\x00\x00", b"\xd0\x00"]
        server.pump_scheduled()  # nothing scheduled any more: nothing happens
        await asyncio.sleep(0)  # the scheduled callback itself now finds nothing to do
        assert link.out == [b"\x20\x02\x00\x00", b"\xd0\x00"]

    asyncio.run(main())
