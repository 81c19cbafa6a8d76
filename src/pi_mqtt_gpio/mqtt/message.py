"""An application message as the broker routes it (shared by sessions, connections and the
gatekeeper's in-process client)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, cast

from pi_mqtt_gpio.mqtt.packets import Properties

__all__ = ["MESSAGE_OVERHEAD", "NONE_YET", "Message"]

MESSAGE_OVERHEAD = 64  # bytes charged per queued message beyond its topic and payload

# What a connection or session holds in a dict it has not needed yet (topic aliases, the
# fast path's topics, subscriptions, messages in flight): an empty dict costs 64 bytes, and
# most clients never use most of them. Shared and read-only: whoever adds gives the owner a
# dict of its own first (``if x is NONE_YET: x = owner.x = {}``).
NONE_YET = cast("dict[Any, Any]", MappingProxyType({}))


@dataclass(slots=True, eq=False)
class Message:
    """An application message as routed by the broker. Never mutated once created."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = field(default_factory=dict)  # forwarded untouched
    expires_at: float | None = None  # from Message Expiry Interval, on the broker's clock
    sender: str | None = None  # publishing client id (No Local)
    username: str | None = None  # publishing client's authenticated user name
    role: str | None = None
    raw_props: bytes | None = None  # ``properties`` as encoded by the publisher (5.0)

    @property
    def cost(self) -> int:
        """Bytes charged against queue budgets for holding this message."""
        return len(self.payload) + len(self.topic) + MESSAGE_OVERHEAD
