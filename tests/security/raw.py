"""A raw MQTT client for hostile tests: our own codec over a plain socket, so a test can send
what a well-behaved library never would (a Will it may not publish, a 32,000-level filter,
a CONNECT and then silence, a socket dropped without DISCONNECT)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Any

from pi_mqtt_gpio.mqtt.codec import FrameReader, decode_frame, encode
from pi_mqtt_gpio.mqtt.packets import (
    PROTOCOL_50,
    ConnAck,
    Connect,
    Packet,
    Publish,
    Subscribe,
    Subscription,
    Will,
)

__all__ = ["IdleSockets", "RawClient"]


class RawClient:
    def __init__(self, port: int, *, version: int = PROTOCOL_50, source: str = "127.0.0.1",
                 timeout: float = 10.0) -> None:
        self.version = version
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = FrameReader(1 << 28)
        self.next_pid = 1

    def send(self, packet: Packet) -> None:
        self.sock.sendall(encode(packet, self.version))

    def recv(self, timeout: float = 5.0) -> Packet | None:
        """The next packet, or None when the server closed the connection."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.reader.next_frame()
            if frame is not None:
                return decode_frame(frame[0], frame[1], self.version, from_client=False)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no packet")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.reader.feed(data)

    def connect(self, client_id: str, *, username: str | None = None,
                password: str | None = None, will: Will | None = None, clean: bool = True,
                keep_alive: int = 60, properties: dict[Any, Any] | None = None) -> ConnAck:
        self.send(Connect(client_id, self.version, clean_start=clean, keep_alive=keep_alive,
                          will=will, username=username,
                          password=password.encode() if password is not None else None,
                          properties=dict(properties or {})))
        ack = self.recv()
        assert isinstance(ack, ConnAck), ack
        return ack

    def pid(self) -> int:
        pid = self.next_pid
        self.next_pid = pid % 65535 + 1
        return pid

    def subscribe(self, *filters: str, qos: int = 0) -> list[int]:
        pid = self.pid()
        self.send(Subscribe(pid, [Subscription(f, qos) for f in filters]))
        while True:
            packet = self.recv()
            assert packet is not None, "closed before SUBACK"
            if type(packet).__name__ == "SubAck":
                return list(packet.reason_codes)  # type: ignore[attr-defined]

    def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False,
                properties: dict[Any, Any] | None = None) -> int | None:
        """Publish; for QoS 1 the PUBACK's reason code."""
        pid = self.pid() if qos else None
        self.send(Publish(topic, payload, qos, retain, False, pid, dict(properties or {})))
        if qos != 1:
            return None
        while True:
            packet = self.recv()
            assert packet is not None, "closed before PUBACK"
            if type(packet).__name__ == "PubAck":
                return int(packet.reason_code)  # type: ignore[attr-defined]

    def drop(self) -> None:
        """Go away without DISCONNECT (what makes the server publish the Will)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    close = drop


_IDLE_HOLDER = """
import socket, sys, time
port, count, sources = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
socks = []
for i in range(count):
    try:
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=5,
                                              source_address=(sources[i % len(sources)], 0)))
    except OSError:
        pass
print(len(socks), flush=True)
sys.stdin.read()
"""


class IdleSockets:
    """``count`` TCP connections that never send anything, spread over ``sources``, held by a
    separate process (as an attacker would, and so that this process's clients, which may
    use select(), keep low file descriptors)."""

    def __init__(self, port: int, count: int, sources: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _IDLE_HOLDER, str(port), str(count), ",".join(sources)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.opened = int(self.proc.stdout.readline() or 0)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
