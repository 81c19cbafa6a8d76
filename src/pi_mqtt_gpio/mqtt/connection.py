"""Per-connection protocol state: framing, negotiated version and limits, topic aliases, and
the outbox of bytes the transport has to write. No I/O: the transport feeds bytes to the broker
core and takes ``data_to_send()``; ``closing`` tells it to close once the outbox is written."""

from __future__ import annotations

from enum import Enum

from pi_mqtt_gpio.mqtt.codec import FrameReader, encode
from pi_mqtt_gpio.mqtt.hooks import ClientInfo
from pi_mqtt_gpio.mqtt.logguard import clip
from pi_mqtt_gpio.mqtt.message import NONE_YET, Message
from pi_mqtt_gpio.mqtt.packets import PROTOCOL_50, PROTOCOL_311, Connect, Packet, Prop, Properties

__all__ = ["ConnState", "Connection", "peer_address"]


class ConnState(Enum):
    NEW = "new"  # waiting for CONNECT
    AUTHENTICATING = "authenticating"  # CONNECT received, hooks deciding
    CONNECTED = "connected"
    CLOSED = "closed"


class Connection:
    __slots__ = (
        "_out",
        "_out_size",
        "ack_timer",
        "address",
        "alias_in",
        "alias_out",
        "alias_out_max",
        "backlog",
        "cert_cn",
        "client",
        "client_id",
        "closing",
        "congested",
        "connect",
        "disconnect_reason",
        "fast_topics",
        "hard_close",
        "id",
        "keep_alive",
        "last_ack",
        "last_rx",
        "max_packet_out",
        "opened",
        "peer",
        "problem_info",
        "reader",
        "receive_max_out",
        "state",
        "transport",
        "version",
        "will",
        "will_delay",
    )

    def __init__(
        self, conn_id: int, transport: str, peer: str, max_packet_size: int, now: float,
        cert_cn: str | None = None,
    ) -> None:
        self.id = conn_id
        self.transport = transport
        self.peer = peer
        self.address = peer_address(peer)
        self.cert_cn = cert_cn
        self.reader = FrameReader(max_packet_size)
        self.state = ConnState.NEW
        self.version = PROTOCOL_311  # until CONNECT says otherwise
        self.client_id = ""
        self.client: ClientInfo | None = None
        self.connect: Connect | None = None
        self.keep_alive = 0
        self.last_rx = now
        self.opened = now  # its login time runs from here
        self.will: Message | None = None
        self.will_delay = 0
        self.receive_max_out = 65535  # the client's Receive Maximum
        self.max_packet_out = 0  # the client's Maximum Packet Size (0: no limit)
        self.alias_out_max = 0  # the client's Topic Alias Maximum
        self.alias_out: dict[str, int] = NONE_YET
        # Topics this client published that were valid and allowed: raw bytes -> (topic,
        # authorisation epoch, bit mask of the QoS levels allowed). A few, short ones only.
        self.fast_topics: dict[bytes, tuple[str, int, int]] = NONE_YET
        self.backlog = False  # packets received but not handled yet (the others' turn first)
        self.alias_in: dict[int, str] = NONE_YET
        self.problem_info = True
        self.closing = False
        self.hard_close = False  # close without a goodbye (RST): it never spoke MQTT
        self.last_ack = now  # progress of our in-flight QoS 1/2 deliveries
        self.ack_timer = False
        self.congested = False  # set by the transport while the client is not reading
        self.disconnect_reason = ""
        self._out: list[bytes] = []
        self._out_size = 0

    @property
    def v5(self) -> bool:
        return self.version == PROTOCOL_50

    def reason(self, text: str) -> Properties:
        """A Reason String for a 5.0 answer (none on 3.1.1, nor for an empty ``text``)."""
        # MQTT-3.1.2-29: no Reason String when the client set Request Problem Information to 0
        # (CONNACK and DISCONNECT are exempt; we honour it everywhere else).
        return {Prop.REASON_STRING: text} if self.v5 and text else {}

    def send(self, packet: Packet) -> None:
        self.write(encode(packet, self.version))

    def write(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)

    @property
    def pending_bytes(self) -> int:
        return self._out_size

    def data_to_send(self) -> list[bytes]:
        """Take the bytes queued for the network (the transport writes them in order)."""
        out = self._out
        if out:
            self._out = []
            self._out_size = 0
        return out

    def __repr__(self) -> str:
        return f"<Connection {self.id} {clip(self.client_id)!r} {self.peer} {self.state.value}>"


def peer_address(peer: str) -> str:
    """The address part of ``host:port`` (``::1:5000`` -> ``::1``)."""
    return peer.rsplit(":", 1)[0] if ":" in peer else peer
