"""The JSON envelopes on the wire, as types: the RPC request and its reply, the error object,
the lease table, the audit record, the health document and the device catalogue.

Shared by the server (which builds them) and the client stub (which reads them); the topics
they travel on are ``topics.py``'s. A device's state and event documents vary with the
device type and stay plain dicts (``State``).
"""

# No ``from __future__ import annotations``: the TypedDicts' required and optional keys
# are then right at run time too (tests check documents against them).
from typing import Any, Literal, NotRequired, TypeAlias, TypedDict

__all__ = [
    "AuditRecord",
    "BrokerAclState",
    "Catalogue",
    "CatalogueEntry",
    "Correlation",
    "DeviceTopics",
    "ErrorBody",
    "ErrorReply",
    "HealthDoc",
    "HealthStatus",
    "LeaseEntry",
    "LeaseGranted",
    "LeaseReleased",
    "LeaseTable",
    "OkReply",
    "ReplyBody",
    "Request",
    "State",
]

State: TypeAlias = dict[str, Any]
"""A device's state (or event) document: its fields depend on the device type."""

Correlation: TypeAlias = str | int | float
"""An MQTT 3.1.1 request's ``correlation_id`` (echoed in its reply)."""


class Request(TypedDict, total=False):
    """An RPC request on ``{root}/device/<name>/call`` or ``{root}/lease/call``. Only
    ``method`` is needed; ``reply_to`` and ``correlation_id`` are MQTT 3.1.1's stand-ins for
    the Response Topic and Correlation Data properties."""

    method: str
    args: list[Any]
    kwargs: dict[str, Any]
    reply_to: str
    correlation_id: Correlation


class ErrorBody(TypedDict):
    """A refusal: the error code (``LEASE_HELD``, ...) and what it means."""

    code: str
    message: str
    details: NotRequired[dict[str, object]]
    retry_after: NotRequired[float]  # seconds until the same call may succeed


class OkReply(TypedDict):
    """A call that ran: its result and (device calls) the state it left."""

    ok: Literal[True]
    result: Any
    state: NotRequired[State]
    correlation_id: NotRequired[Correlation]


class ErrorReply(TypedDict):
    ok: Literal[False]
    error: ErrorBody
    correlation_id: NotRequired[Correlation]


ReplyBody: TypeAlias = OkReply | ErrorReply


class LeaseEntry(TypedDict):
    """One lease in the retained ``{root}/lease`` table (and in lease replies, audits)."""

    holder: str  # the user name, or the client id when anonymous
    username: str | None
    client_id: str
    devices: list[str] | None  # None: the global lease
    expires: str  # ISO 8601 UTC
    ttl: float


class LeaseGranted(LeaseEntry):
    """The ``result`` of ``acquire`` and ``renew``."""

    lease_id: str


class LeaseReleased(TypedDict):
    """The ``result`` of ``release``."""

    released: list[LeaseEntry]


class LeaseTable(TypedDict):
    """The retained ``{root}/lease``."""

    scope: str  # "global" or "device"
    leases: list[LeaseEntry]


class AuditRecord(TypedDict):
    """One entry on ``{root}/audit``: who called what on which device, and the outcome."""

    ts: str
    client_id: str | None
    username: str | None
    device: str
    method: str | None
    source: str  # call, set, binding, lease, mqtt_io, ...
    ok: bool
    kwargs: NotRequired[Any]
    error: NotRequired[ErrorBody]
    reason: NotRequired[str]  # a lease lost: why
    lease: NotRequired[LeaseEntry]


HealthStatus: TypeAlias = Literal["ok", "degraded", "failed"]


class BrokerAclState(TypedDict):
    probe: str  # the external broker's ACL probe: unchecked, ok, failed, ...
    reason: str | None


class HealthDoc(TypedDict):
    """The retained ``{root}/system/health``."""

    status: HealthStatus
    problems: list[str]
    ts: str
    gpio: dict[str, object]  # the GPIO line ownership
    watchdog: dict[str, Any] | None
    simulated: bool
    events_dropped: int
    commands_queued: int
    broker_acl: NotRequired[BrokerAclState]


class DeviceTopics(TypedDict):
    state: str
    event: str
    set: str
    call: str
    history: NotRequired[str]  # sensors with a history


class CatalogueEntry(TypedDict):
    """One device in the catalogue."""

    name: str
    type: str
    kind: str
    description: str | None
    lease_required: bool
    methods: list[str]
    method_params: list[dict[str, Any]]
    events: list[str]
    capabilities: list[str]
    topics: DeviceTopics
    state_topic: str
    range: NotRequired[dict[str, Any]]  # dimmable, servo, mixer outputs
    device_class: NotRequired[str | None]  # covers


class Catalogue(TypedDict):
    """The retained ``{root}/devices``."""

    node_id: str
    root: str
    simulate: bool
    simulated: bool
    version: str
    broker: str  # "embedded" or "external"
    devices: list[CatalogueEntry]
