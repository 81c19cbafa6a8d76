"""A sans-io harness for the broker core: fake clients exchange packets with ``BrokerCore``
directly (no sockets) and the clock is a number the test moves."""

from __future__ import annotations

from pi_mqtt_gpio.mqtt.broker import BrokerCore, BrokerLimits
from pi_mqtt_gpio.mqtt.codec import FrameReader, decode_frame, encode
from pi_mqtt_gpio.mqtt.connection import Connection
from pi_mqtt_gpio.mqtt.hooks import AuthResult, BrokerHooks, ClientInfo, Decision
from pi_mqtt_gpio.mqtt.packets import PROTOCOL_50, ConnAck, Connect, Packet, Prop


class AllowAll(BrokerHooks):
    """Allows all but ``forbidden*`` topics, and every publish of a user in ``revoked``;
    ``cmd/*`` messages may not be retained."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.revoked: set[str | None] = set()

    def authorize_publish(self, client: ClientInfo, topic: str, qos: int, retain: bool) -> Decision:
        if client.username in self.revoked:
            return Decision.DENY
        return Decision.DENY if topic.startswith("forbidden") else Decision.ALLOW

    def may_retain(self, client: ClientInfo, topic: str) -> bool:
        return not topic.startswith("cmd/")

    def authorize_subscribe(self, client: ClientInfo, topic_filter: str, qos: int) -> Decision:
        return Decision.DENY if topic_filter.startswith("forbidden") else Decision.ALLOW

    def on_connected(self, client: ClientInfo) -> None:
        self.events.append(("connected", client.client_id, client.username or ""))

    def on_disconnected(self, client: ClientInfo, reason: str) -> None:
        self.events.append(("disconnected", client.client_id, reason))


class Harness:
    def __init__(self, limits: BrokerLimits | None = None) -> None:
        self.hooks = AllowAll()
        self.core = BrokerCore(limits or BrokerLimits(), [self.hooks])
        self.now = 1000.0

    def client(self, client_id: str = "c", version: int = PROTOCOL_50, *,
               peer: str = "127.0.0.1:1", **connect: object) -> FakeClient:
        fc = FakeClient(self, version, peer)
        fc.send(Connect(client_id, version, **connect))  # type: ignore[arg-type]
        return fc

    def revoke(self, username: str) -> None:
        """Every publish of ``username`` is refused from now on (rights changed)."""
        self.hooks.revoked.add(username)
        self.core.invalidate_authorization()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.core.on_timer(self.now)
        self.settle()

    def settle(self) -> None:
        for conn, req in self.core.take_auth_requests():
            decision = Decision.DENY if req.username == "bad" else Decision.ALLOW
            self.core.auth_complete(conn, AuthResult(decision, req.username, "r"), self.now)
        self.core.take_dirty()


class FakeClient:
    def __init__(self, harness: Harness, version: int, peer: str = "127.0.0.1:1") -> None:
        self.h = harness
        self.version = version
        self.conn: Connection = harness.core.open_connection("test", peer, harness.now)
        self.reader = FrameReader()
        self.backlog: list[Packet] = []  # received but not yet looked at

    def send_raw(self, data: bytes) -> None:
        core = self.h.core
        core.data_received(self.conn, data, self.h.now)
        while core.take_backlogged():  # the transport's later turns
            core.process_backlog(self.conn, self.h.now)
        self.h.settle()

    def send(self, packet: Packet) -> None:
        self.send_raw(encode(packet, self.version))

    def received(self) -> list[Packet]:
        self.h.settle()
        self.reader.feed(b"".join(self.conn.data_to_send()))
        out: list[Packet] = self.backlog
        self.backlog = []
        while (frame := self.reader.next_frame()) is not None:
            out.append(decode_frame(frame[0], frame[1], self.version, from_client=False))
        return out

    def connack(self) -> ConnAck:
        packets = self.received()
        assert packets and isinstance(packets[0], ConnAck), packets
        return packets[0]

    def close(self) -> None:
        self.h.core.connection_lost(self.conn, self.h.now)
        self.h.settle()

    @property
    def closed(self) -> bool:
        return self.conn.closing or self.conn.state.value == "closed"


__all__ = ["AllowAll", "FakeClient", "Harness", "Prop"]
