"""Hooks through which the gatekeeper and its security layer steer the broker core.

Every answer is allow / deny / defer. Hooks are asked in order; the first answer that is not
``DEFER`` wins; if every hook defers, the answer is deny (Mosquitto's ``security.c``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = [
    "AuthRequest",
    "AuthResult",
    "BrokerHooks",
    "ClientInfo",
    "Decision",
    "under_protected",
]


class Decision(Enum):
    ALLOW = "allow"
    DENY = "deny"
    DEFER = "defer"


@dataclass(slots=True, frozen=True)
class AuthRequest:
    """What a client presented in CONNECT, plus what the transport knows about it."""

    client_id: str
    username: str | None
    password: bytes | None
    protocol_version: int
    transport: str  # "tcp", "tls", "websocket", "websocket+tls"
    peer: str  # "host:port"
    cert_cn: str | None = None  # subject CN of a verified client certificate


@dataclass(slots=True, frozen=True)
class AuthResult:
    decision: Decision
    # On ALLOW: the identity the broker records (None for anonymous) and its role.
    username: str | None = None
    role: str | None = None
    # On DENY: 0x86 bad user name or password (default) or 0x87 not authorized.
    reason_code: int = 0x86


@dataclass(slots=True)
class ClientInfo:
    """A connected client as the broker saw it after authentication."""

    client_id: str
    username: str | None
    role: str | None
    protocol_version: int
    transport: str
    peer: str
    internal: bool = False
    extra: dict[str, object] = field(default_factory=dict)


def under_protected(topic: str, prefixes: tuple[str, ...]) -> bool:
    """Whether deliveries on ``topic`` are checked per reader by ``prefixes``
    (``read_protected()``): it starts with one, or it is one ending in ``/`` without the
    ``/`` (a filter ``home/#`` matches the topic ``home``, MQTT-4.7.1-2). The broker's own
    checks are this, inlined."""
    return topic.startswith(prefixes) or any(
        p.endswith("/") and topic == p[:-1] for p in prefixes)


class BrokerHooks:
    """Base class: every method defers or does nothing. Override what you need."""

    def authorize_publish(self, client: ClientInfo, topic: str, qos: int, retain: bool) -> Decision:
        return Decision.DEFER

    def authorize_subscribe(self, client: ClientInfo, topic_filter: str, qos: int) -> Decision:
        return Decision.DEFER

    def read_protected(self) -> tuple[str, ...]:
        """Topic prefixes whose deliveries ``readable`` must approve (checked per receiver).

        The contract with ``authorize_subscribe``: a hook grants a filter only when every
        topic it matches that ``readable`` would refuse is under one of these prefixes
        (``under_protected``: it starts with one, or is the parent topic of one that ends in
        ``/``, which ``x/#`` matches too, MQTT-4.7.1-2). The broker then checks nothing per
        delivery elsewhere (its fast path), and checks every delivery here, live, retained
        and queued ones alike."""
        return ()

    def readable(self, client: ClientInfo, topic: str) -> bool:
        """May ``client`` receive a message on ``topic`` (under ``read_protected()``)? The
        same rule that ``authorize_subscribe`` grants by."""
        return True

    def reader_payload(self, client: ClientInfo, topic: str, payload: bytes) -> bytes | None:
        """The payload ``client`` receives on ``topic`` (under ``read_protected()``, once
        ``readable`` approved): ``payload`` itself, or a view of it for this reader, or None
        when this message is not for this reader (what it says is not for it to read)."""
        return payload

    def may_retain(self, client: ClientInfo, topic: str) -> bool:
        """May a message from ``client`` on ``topic`` be retained? (No: the flag is cleared.)"""
        return True

    def on_publish_denied(self, client: ClientInfo, message: Any) -> None:
        """A PUBLISH was refused by authorisation (``message`` is a ``session.Message``)."""
        return None

    def owner_exists(self, client: ClientInfo) -> bool:
        """Whether the user a stored session belongs to still exists (may still log in); a
        restored session of one that does not is dropped."""
        return True

    def response_information(self, client: ClientInfo) -> str | None:
        """Response Information for a 5.0 client that asked for it (Request Response Info)."""
        return None

    def connack_user_properties(self, client: ClientInfo,
                                asked: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """User Properties for a 5.0 CONNACK, given the CONNECT's own (``asked``)."""
        return []

    def on_connected(self, client: ClientInfo) -> None:
        return None

    def on_disconnected(self, client: ClientInfo, reason: str) -> None:
        return None
