"""Session state that outlives a network connection (MQTT 5.0 section 4.1).

A session holds the client's subscriptions, its in-flight outgoing QoS 1/2 messages, the
QoS 2 packet ids it has sent us and not yet released, messages queued while it is offline or
over its Receive Maximum, a delayed Will and its expiry time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from pi_mqtt_gpio.mqtt.message import NONE_YET, Message
from pi_mqtt_gpio.mqtt.packets import Subscription

if TYPE_CHECKING:
    from pi_mqtt_gpio.mqtt.connection import Connection
    from pi_mqtt_gpio.mqtt.hooks import ClientInfo

__all__ = ["NEVER_EXPIRES", "NO_QUEUE", "Inflight", "Pending", "Session", "SubEntry"]

# What a session holds until it needs more: most never queue a message nor receive a QoS 2
# one, and an empty deque costs 624 bytes, an empty set 216. Shared and immutable: whoever
# adds makes the session its own (``enqueue``, ``Session.await_rel``).
NO_QUEUE = cast("deque[Pending]", ())
_NO_REL = cast("set[int]", frozenset())

NEVER_EXPIRES = 0xFFFFFFFF


@dataclass(slots=True)
class SubEntry:
    """A subscription held by a session; ``group`` is set for ``$share/group/...``."""

    client_id: str
    topic_filter: str  # the plain filter, without "$share/group/"
    options: Subscription
    subscription_id: int | None
    group: str | None = None


@dataclass(slots=True)
class Pending:
    """A delivery waiting for the client (offline, or over its Receive Maximum)."""

    message: Message
    qos: int
    retain: bool
    subscription_ids: list[int]


@dataclass(slots=True)
class Inflight:
    """An outgoing QoS 1/2 delivery awaiting PUBACK (1), PUBREC (2) or PUBCOMP (2, released)."""

    message: Message
    qos: int
    retain: bool
    subscription_ids: list[int]
    released: bool = False  # QoS 2: PUBREC received, PUBREL sent, awaiting PUBCOMP


class Session:
    __slots__ = (
        "awaiting_rel",
        "client",
        "client_id",
        "conn",
        "expires_at",
        "expiry_interval",
        "inflight",
        "internal_handler",
        "next_pid",
        "queue",
        "queued_bytes",
        "sub_bytes",
        "sub_levels",
        "subscriptions",
        "will",
        "will_at",
    )

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.subscriptions: dict[str, SubEntry] = NONE_YET  # key: filter as subscribed
        self.inflight: dict[int, Inflight] = NONE_YET
        self.queue: deque[Pending] = NO_QUEUE
        self.awaiting_rel: set[int] = _NO_REL
        self.next_pid = 1
        self.expiry_interval = 0
        self.conn: Connection | None = None
        self.expires_at: float | None = None
        self.will: Message | None = None  # a Will waiting for its delay to pass
        self.will_at: float | None = None
        self.internal_handler: Callable[[Message, list[int]], None] | None = None
        self.client: ClientInfo | None = None  # who owns it, as authenticated
        self.queued_bytes = 0  # ``Message.cost`` of what is queued and in flight
        self.sub_bytes = 0  # topic filter text held by its subscriptions
        self.sub_levels = 0  # topic levels of its subscriptions (tree nodes they may need)

    def await_rel(self, pid: int) -> None:
        """A QoS 2 message ``pid`` was received: its PUBREL is awaited."""
        rel = self.awaiting_rel
        if rel is _NO_REL:
            rel = self.awaiting_rel = set()
        rel.add(pid)

    def allocate_pid(self) -> int:
        """A packet identifier not in use by an in-flight message (MQTT-2.2.1-3)."""
        pid = self.next_pid
        inflight = self.inflight
        for _ in range(65535):
            if pid not in inflight:
                break
            pid = pid % 65535 + 1
        else:  # pragma: no cover - Receive Maximum caps in-flight at 65535
            raise RuntimeError("no free packet identifier")
        self.next_pid = pid % 65535 + 1
        return pid
