"""The broker core's limits, counters and protocol constants (shared by its parts)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pi_mqtt_gpio.mqtt.session import NEVER_EXPIRES

__all__ = ["BrokerLimits", "Stats"]

PENDING_HARD_FACTOR = 2  # unauthenticated sockets past twice the pool: newcomers are closed
MIN_TURN = 16  # packets a busy connection may have handled per turn, however many are busy
KEEPALIVE_GRACE = 1.5  # MQTT-3.1.2-22: silence for 1.5 x Keep Alive closes the connection
RECEIVE_MAXIMUM_DEFAULT = 65535  # a Receive Maximum that is absent means 65,535
RC_FAILURE = 0x80  # reason codes from here on are failures (MQTT 5.0 section 2.4)
CLIENT_ID_FORBIDDEN = "/+#"  # a reply prefix {root}/reply/<client id> must be unambiguous
SYS_PREFIX = "$SYS/"  # the broker's statistics; a ``#`` subscription never gets them (MQTT-4.7.2-1)


@dataclass(slots=True, frozen=True)
class BrokerLimits:
    max_connections: int = 256
    max_packet_size: int = 262_144
    max_queued_messages: int = 1000
    max_keepalive: int = 600
    receive_maximum: int = 1024  # inbound QoS 1/2 the client may have unacknowledged
    frames_per_turn: int = 256  # packets handled per round of the loop (``turn_budget``)
    max_inflight_out: int = 1024  # cap on the client's Receive Maximum for our deliveries
    topic_alias_maximum: int = 64  # inbound aliases a 5.0 client may use
    connect_timeout: float = 5.0  # seconds to complete CONNECT (and authentication)
    max_subscriptions_per_client: int = 1000
    max_session_expiry: int = NEVER_EXPIRES
    max_sessions: int = 4096  # beyond it the longest-offline session is dropped
    max_retained_bytes: int = 64 * 1024 * 1024  # retained payloads, topics and tree nodes
    # Topics and filters longer or deeper than this are refused (no real deployment needs
    # more; each level costs a tree node of a few hundred bytes).
    max_topic_length: int = 1024  # characters
    max_topic_levels: int = 32
    # Subscriptions: per session a budget of filter text and of topic levels (tree nodes),
    # and for the whole broker a cap on subscription tree nodes.
    max_subscription_bytes_per_client: int = 128 * 1024
    max_subscription_levels_per_client: int = 8192
    max_subscription_nodes: int = 100_000
    # Messages queued and in flight for one session, and for all sessions together
    # (``Message.cost``: payload + topic + 64). Past either, the oldest queued message of
    # that session is dropped (and a message that alone is too large is not queued).
    max_queued_bytes_per_client: int = 8 * 1024 * 1024
    max_queued_bytes: int = 128 * 1024 * 1024
    # A connected client that acknowledges none of its in-flight QoS 1/2 messages for this
    # long is disconnected (5.0: 0x97); its session keeps them, within the budgets above.
    ack_timeout: float = 60.0
    # Sockets that have not completed CONNECT and authentication: a pool of their own, and
    # a cap per source address. A new socket past either evicts the oldest one that has sent
    # nothing for ``pending_grace`` seconds (a real client sends CONNECT at once; a burst of
    # real clients is not evicted before its CONNECTs are read); if there is none, the new
    # socket is closed.
    max_pending_connections: int = 1024
    max_pending_per_address: int = 256
    pending_grace: float = 0.25


@dataclass(slots=True)
class Stats:
    messages_in: int = 0
    messages_out: int = 0
    dropped_queue_full: int = 0
    dropped_too_large: int = 0
    dropped_expired: int = 0
    dropped_congested: int = 0
    retained_refused: int = 0
    protocol_errors: int = 0
    wills_refused: int = 0
    pending_evicted: int = 0
    topics_refused: int = 0
    # Traffic ($SYS/broker/...): bytes as read (per read), packets as framed; what goes
    # out is counted by the transport as it writes (per write, not per packet here).
    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    packets_out: int = 0
    extra: dict[str, int] = field(default_factory=dict)
