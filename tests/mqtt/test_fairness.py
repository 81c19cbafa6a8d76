"""One client sending as fast as it can does not keep the others waiting: the core handles
at most ``frames_per_turn`` packets of a connection at once and lists the connection for a
later turn (the transport stops reading it meanwhile). Run on 3.1.1 and 5.0."""

from __future__ import annotations

import pytest

from pi_mqtt_gpio.mqtt.broker import BrokerLimits
from pi_mqtt_gpio.mqtt.codec import encode
from pi_mqtt_gpio.mqtt.packets import (
    PROTOCOL_50,
    PROTOCOL_311,
    PingResp,
    Publish,
    Subscribe,
    Subscription,
)
from tests.mqtt.harness import Harness


@pytest.mark.parametrize("version", [PROTOCOL_311, PROTOCOL_50])
def test_a_flood_is_handled_in_turns_and_others_are_answered_between(version: int) -> None:
    h = Harness(BrokerLimits(frames_per_turn=100))
    flood = h.client("flood", version)
    flood.connack()
    sub = h.client("sub", version)
    sub.connack()
    sub.send(Subscribe(1, [Subscription("load/#", 0)]))
    sub.received()
    other = h.client("other", version)
    other.connack()
    core = h.core
    batch = b"".join(encode(Publish(f"load/{i}", b"x", 0), version) for i in range(250))
    core.data_received(flood.conn, batch, h.now)  # straight to the core: no harness turns
    assert flood.conn.backlog
    assert core.take_backlogged() == [flood.conn]
    assert len(sub.received()) == 100  # one turn's worth
    other.send_raw(b"\xc0\x00")  # the others' turn: a PINGREQ is answered now
    assert isinstance(other.received()[-1], PingResp)
    core.process_backlog(flood.conn, h.now)
    assert core.take_backlogged() == [flood.conn] and len(sub.received()) == 100
    core.process_backlog(flood.conn, h.now)
    assert not flood.conn.backlog and core.take_backlogged() == []
    got = sub.received()
    assert len(got) == 50 and got[-1].topic == "load/249"  # all of them, in order


def test_a_backlog_of_a_closed_connection_is_dropped() -> None:
    h = Harness(BrokerLimits(frames_per_turn=10))
    flood = h.client("flood", PROTOCOL_311)
    flood.connack()
    batch = b"".join(encode(Publish("t", b"x", 0), PROTOCOL_311) for _ in range(50))
    h.core.data_received(flood.conn, batch, h.now)
    assert flood.conn.backlog
    h.core.connection_lost(flood.conn, h.now)
    h.core.process_backlog(flood.conn, h.now)  # nothing happens, nothing raises
    assert not flood.conn.backlog


def test_the_config_key_reaches_the_core() -> None:
    from pi_mqtt_gpio.server.config_loader import ConfigError, parse_config
    from pi_mqtt_gpio.server.daemon import broker_limits

    config = parse_config("broker: {limits: {frames_per_turn: 5}}\ndevices: {}\n")
    assert broker_limits(config).frames_per_turn == 5
    assert parse_config("devices: {}\n").broker.limits.frames_per_turn == 256
    with pytest.raises(ConfigError, match="frames_per_turn"):
        parse_config("broker: {limits: {frames_per_turn: 0}}\ndevices: {}\n")
