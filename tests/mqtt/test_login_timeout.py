"""Sockets that have not logged in are closed when their login time runs out, each at its
own deadline, with one timer for the whole pool (not one per socket)."""

from __future__ import annotations

from pi_mqtt_gpio.mqtt.broker import BrokerLimits
from pi_mqtt_gpio.mqtt.codec import encode
from pi_mqtt_gpio.mqtt.connection import Connection, ConnState
from pi_mqtt_gpio.mqtt.packets import PROTOCOL_311, Connect
from tests.mqtt.harness import Harness


def _state(conn: Connection) -> ConnState:
    return conn.state  # read afresh (each check after time moved on)


def test_each_socket_gets_its_own_login_time_from_one_timer() -> None:
    h = Harness(BrokerLimits(connect_timeout=5.0))
    core = h.core
    timers_before = len(core.timers)
    a = core.open_connection("tcp", "10.0.0.1:1", h.now)
    h.now += 1
    b = core.open_connection("tcp", "10.0.0.2:1", h.now)
    h.now += 1
    c = core.open_connection("tcp", "10.0.0.3:1", h.now)
    assert len(core.timers) == timers_before + 1  # one for the pool
    core.data_received(b, encode(Connect("b", PROTOCOL_311), PROTOCOL_311), h.now)
    h.settle()  # b logs in
    assert _state(b) is ConnState.CONNECTED
    h.advance(3.0)  # t = 5: a's time is up
    assert _state(a) is ConnState.CLOSED and _state(c) is ConnState.NEW
    assert core.pending_count() == 1
    h.advance(1.0)  # t = 6: b would have been due, but it logged in
    assert _state(b) is ConnState.CONNECTED and _state(c) is ConnState.NEW
    h.advance(0.9)
    assert _state(c) is ConnState.NEW
    h.advance(0.1)  # t = 7: c's time is up
    assert _state(c) is ConnState.CLOSED and core.pending_count() == 0
    d = core.open_connection("tcp", "10.0.0.4:1", h.now)  # the pool was empty: a new timer
    h.advance(4.9)
    assert _state(d) is ConnState.NEW
    h.advance(0.1)
    assert _state(d) is ConnState.CLOSED
