"""Over real sockets (TCP and WebSocket, 3.1.1 and 5.0): a client that sends thousands of
packets in one write gets every one handled (the transport stops and resumes reading it
between turns; nothing is lost or stuck), and another client is answered meanwhile."""

from __future__ import annotations

import socket
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from pi_mqtt_gpio.mqtt.codec import FrameReader, encode
from pi_mqtt_gpio.mqtt.packets import PROTOCOL_50, PROTOCOL_311, Connect, Publish
from tests.conftest import Client, Gatekeeper


@pytest.mark.parametrize("version", [PROTOCOL_311, PROTOCOL_50])
def test_thousands_of_packets_in_one_write_are_all_answered(broker: Gatekeeper,
                                                            version: int) -> None:
    n = 5000
    s = socket.create_connection(("127.0.0.1", broker.ports["tcp"]))
    try:
        s.sendall(encode(Connect(f"fair-{version}", version), version))
        batch = b"".join(encode(Publish("fair/load", b"x" * 32, 1, packet_id=i % 65535 + 1),
                                version) for i in range(n))
        sender = threading.Thread(target=s.sendall, args=(batch,))
        sender.start()
        # Meanwhile another client is answered (its SUBACK comes back).
        other = Client(broker.ports["tcp"], mqtt.MQTTv5 if version == PROTOCOL_50
                       else mqtt.MQTTv311)
        other.connect()
        other.subscribe("fair/other", 0)
        other.close()
        reader = FrameReader()
        acks = 0
        s.settimeout(20)
        deadline = time.monotonic() + 30
        while acks < n and time.monotonic() < deadline:
            reader.feed(s.recv(1 << 16))
            while (frame := reader.next_frame()) is not None:
                if frame[0] >> 4 == 4:
                    acks += 1
        sender.join(10)
        assert acks == n
    finally:
        s.close()


def test_a_flood_over_websocket_is_all_delivered(broker: Gatekeeper) -> None:
    sub = Client(broker.ports["websocket"], mqtt.MQTTv5, transport="websockets")
    sub.connect()
    sub.subscribe("fairws/#", 0)
    pub = Client(broker.ports["websocket"], mqtt.MQTTv311, transport="websockets")
    pub.connect()
    try:
        # paho writes what it can at once: many packets reach the broker in one message
        for i in range(2000):
            pub.publish(f"fairws/{i}", b"x", 0)
        got = [sub.get(10).topic for _ in range(2000)]
        assert got == [f"fairws/{i}" for i in range(2000)]
    finally:
        pub.close()
        sub.close()
