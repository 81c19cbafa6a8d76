"""YAML config -> typed, frozen models.

Every problem is reported at once, each with its key path and line number, before anything
is started or any pin claimed. Unknown keys are errors.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import urlsplit

import yaml

from pi_mqtt_gpio.errors import GatekeeperError
from pi_mqtt_gpio.mqtt.topic_tree import parse_shared
from pi_mqtt_gpio.server.schema import (
    NonEmpty,
    Problem,
    Range,
    Tagged,
    build,
    did_you_mean,
    section,
)
from pi_mqtt_gpio.server.sections import (
    DEFAULT_FREQUENCY,
    FREQUENCY_TOLERANCE,
    BindingsQueueConfig,
    CompatConfig,
    ExpanderConfig,
    WatchdogConfig,
    frequency_matches,
)
from pi_mqtt_gpio.topics import Topics

__all__ = [
    "BUILTIN_ROLES",
    "AclProbeConfig",
    "AuthConfig",
    "BrokerConfig",
    "Config",
    "ConfigError",
    "DeviceType",
    "Known",
    "ListenerConfig",
    "load_config",
    "parse_config",
    "tls_context",
]


class ConfigError(Exception):
    """A config that cannot be used; ``problems`` lists every reason, one line each."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid config:\n" + "\n".join(f"  {p}" for p in problems))


Port = Annotated[int, Range(ge=0, le=65535)]


@section
class HardwareConfig:
    pin_factory: Literal["lgpio", "mock"] = "lgpio"
    chip: str | int = "auto"
    consumer_tag: Annotated[str, NonEmpty()] = "gatekeeper"
    reclaim_on_busy: bool = False


@section
class ListenerConfig:
    type: Literal["tcp", "tls", "websocket"]
    host: str = "0.0.0.0"
    port: Port
    certfile: str | None = None  # tls; websocket served over TLS when given
    keyfile: str | None = None
    cafile: str | None = None  # verify client certificates against this CA
    require_certificate: bool = False
    use_identity_as_username: bool = False  # client certificate CN becomes the user name
    # websocket: pages of these origins ("https://host:port") may open MQTT over WebSocket
    # besides the listener's own (a browser upgrade from any other Origin is refused)
    allowed_origins: list[str] = field(default_factory=list)
    # websocket: more names (besides IP addresses, localhost, the host name, <host>.local and
    # the FQDN) a browser may call this machine by (a request with Origin naming another
    # Host is refused: DNS rebinding)
    allowed_hosts: list[str] = field(default_factory=list)
    # websocket: other brokers' WebSocket addresses the dashboard served here may use
    dashboard_brokers: list[str] = field(default_factory=list)

    def check(self) -> list[str]:
        problems = []
        if self.type == "tls" and not (self.certfile and self.keyfile):
            problems.append("a tls listener needs certfile and keyfile")
        elif bool(self.certfile) != bool(self.keyfile):
            problems.append("certfile and keyfile go together")
        if (self.require_certificate or self.use_identity_as_username) and not self.cafile:
            problems.append("client certificates need cafile")
        if self.type != "websocket" and (self.allowed_origins or self.dashboard_brokers
                                         or self.allowed_hosts):
            problems.append("allowed_origins, allowed_hosts and dashboard_brokers are for "
                            "websocket listeners")
        return problems + self._browser_problems()

    def _browser_problems(self) -> list[str]:
        """allowed_hosts are host names, allowed_origins origins, dashboard_brokers
        WebSocket addresses."""
        from pi_mqtt_gpio.server.web import host_name, normalize_origin  # websockets: lazily

        problems = []
        for host in self.allowed_hosts:
            name = host_name(host)
            if name is None or name != host.strip().lower().rstrip(".") \
                    or not _HOST_NAME.fullmatch(name):
                problems.append(f"allowed_hosts: {host!r} is not a host name like "
                                "'pi.example.com' (no scheme, no port)")
        for origin in self.allowed_origins:
            if normalize_origin(origin) is None:
                problems.append(f"allowed_origins: {origin!r} is not an origin like "
                                "'https://host' or 'http://host:8080' (no path)")
        for url in self.dashboard_brokers:
            if not _websocket_url(url):
                problems.append(f"dashboard_brokers: {url!r} is not a WebSocket address like "
                                "'wss://host:port/mqtt'")
        return problems


def tls_context(listener: ListenerConfig) -> ssl.SSLContext | None:
    """The listener's server TLS context (None without certfile/keyfile); raises OSError or
    ssl.SSLError for unreadable or unusable files."""
    if not listener.certfile or not listener.keyfile:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(listener.certfile, listener.keyfile)
    if listener.cafile:
        ctx.load_verify_locations(listener.cafile)
        ctx.verify_mode = ssl.CERT_REQUIRED if listener.require_certificate else ssl.CERT_OPTIONAL
    return ctx


_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


def _websocket_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises on a bad port
    except ValueError:
        return False
    return parts.scheme in ("ws", "wss") and bool(parts.hostname) \
        and parts.username is None and not parts.fragment


@section
class AclProbeConfig:
    """A broker user of its own that checks the broker's ACL (external mode): it publishes
    a harmless command under another user's name, which must not arrive, and one under its
    own name, which must."""
    username: Annotated[str, NonEmpty()]
    password_file: Annotated[str, NonEmpty()]
    interval_s: Annotated[float, Range(ge=10)] = 300.0  # between two probes while connected
    timeout_s: Annotated[float, Range(gt=0, le=120)] = 10.0  # for its own command to arrive


@section
class ExternalBrokerConfig:
    host: str | None = None
    port: Port = 1883
    hosts: list[str] | None = None  # "host:port" of a cluster's nodes, tried in turn
    tls: bool = False
    ca_file: str | None = None
    username: str | None = None
    password_file: str | None = None
    client_id: str | None = None
    # Required: the probe user, or false (explicitly unchecked, warned at every start).
    acl_probe: AclProbeConfig | Literal[False] | None = None

    def check(self) -> list[str]:
        problems = []
        if self.acl_probe is None:
            problems.append(
                "acl_probe: give {username, password_file} of a broker user for the ACL "
                "probe (the gatekeeper checks that the broker lets a user publish commands "
                "only under its own name, and refuses every command when it does not), or "
                "acl_probe: false to run without that check")
        elif self.acl_probe is not False and self.acl_probe.username == self.username:
            problems.append("acl_probe.username must be a broker user of its own, not the "
                            "gatekeeper's username")
        if (self.host is None) == (not self.hosts):
            problems.append("give host (and port) or hosts: [\"host:port\", ...], one of them")
        for entry in self.hosts or []:
            host, sep, port = entry.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                problems.append(f"hosts: {entry!r} is not host:port")
        if self.client_id is not None and (not self.client_id
                                           or any(c in self.client_id for c in "/+#")):
            problems.append("client_id must be non-empty without '/', '+', '#'")
        return problems


@section
class LimitsConfig:
    max_connections: Annotated[int, Range(ge=1)] = 256
    max_packet_size: Annotated[int, Range(ge=64, le=268_435_460)] = 262_144
    max_queued_messages: Annotated[int, Range(ge=0)] = 1000
    max_keepalive: Annotated[int, Range(ge=1, le=65535)] = 600
    connect_timeout_s: Annotated[float, Range(gt=0)] = 5.0
    max_topic_length: Annotated[int, Range(ge=16, le=65535)] = 1024
    max_topic_levels: Annotated[int, Range(ge=4, le=1024)] = 32
    max_subscriptions_per_client: Annotated[int, Range(ge=1)] = 1000
    max_subscription_bytes_per_client: Annotated[int, Range(ge=1024)] = 128 * 1024
    max_subscription_levels_per_client: Annotated[int, Range(ge=16)] = 8192
    max_subscription_nodes: Annotated[int, Range(ge=1000)] = 100_000
    max_queued_bytes_per_client: Annotated[int, Range(ge=65536)] = 8 * 1024 * 1024
    max_queued_bytes: Annotated[int, Range(ge=65536)] = 128 * 1024 * 1024
    max_retained_bytes: Annotated[int, Range(ge=65536)] = 64 * 1024 * 1024
    max_sessions: Annotated[int, Range(ge=16)] = 4096
    ack_timeout_s: Annotated[float, Range(gt=0)] = 60.0
    max_pending_connections: Annotated[int, Range(ge=1)] = 1024
    max_pending_per_address: Annotated[int, Range(ge=1)] = 256
    frames_per_turn: Annotated[int, Range(ge=1, le=65536)] = 256


def _default_listeners() -> list[ListenerConfig]:
    return [ListenerConfig(type="tcp", host="0.0.0.0", port=1883)]


@section
class BrokerConfig:
    mode: Literal["embedded", "external"] = "embedded"
    listeners: list[ListenerConfig] = field(default_factory=_default_listeners)
    external: ExternalBrokerConfig | None = None
    limits: LimitsConfig = field(default_factory=lambda: LimitsConfig())
    sys_interval_s: Annotated[float, Range(ge=0, le=86400)] = 10.0  # $SYS/broker/...; 0: off

    def check(self) -> list[str]:
        problems = []
        if self.mode == "external" and self.external is None:
            problems.append("mode external needs an 'external' section")
        seen: set[tuple[str, int]] = set()
        for listener in self.listeners:
            key = (listener.host, listener.port)
            if listener.port and key in seen:
                problems.append(f"two listeners on {listener.host}:{listener.port}")
            seen.add(key)
        return problems


@section
class UserConfig:
    password_hash: str | None = None  # None: certificate-only user (use_identity_as_username)
    role: str = "viewer"


Right = Literal["simulate", "force_release", "manage"]
RIGHTS: tuple[str, ...] = ("simulate", "force_release", "manage")


@section
class RoleConfig:
    subscribe: list[str] = field(default_factory=list)
    publish: list[str] = field(default_factory=list)
    deny: list[str] = field(default_factory=list)
    # simulate: sim_* methods; force_release: break others' leases; manage: admin RPCs
    rights: list[Right] = field(default_factory=list)

    def check(self) -> list[Problem | str]:
        problems: list[Problem | str] = []
        for kind in ("subscribe", "publish", "deny"):
            for i, item in enumerate(getattr(self, kind)):
                if parse_shared(item) is None:
                    problems.append(((kind, i), f"{item!r} is not a valid MQTT topic filter"))
        return problems


@section
class AuthConfig:
    allow_anonymous: bool = False
    anonymous_role: str = "viewer"
    users: dict[str, UserConfig] = field(default_factory=dict)
    users_file: str | None = None
    roles: dict[str, RoleConfig] = field(default_factory=dict)
    # Password checks run at once (argon2id: 64 MiB and tens of ms each); more wait.
    max_concurrent_checks: Annotated[int, Range(ge=1, le=16)] = 2


@section
class LeasesConfig:
    scope: Literal["global", "device"] = "global"
    ttl_s: Annotated[float, Range(gt=0)] = 60.0


@section
class SafetyConfig:
    min_relay_interval_s: Annotated[float, Range(ge=0)] = 0.5
    min_command_interval_s: Annotated[float, Range(ge=0)] = 0.2
    flap_window_s: Annotated[float, Range(gt=0)] = 10.0
    flap_max_edges: Annotated[int, Range(ge=1)] = 8
    flap_lockout_s: Annotated[float, Range(ge=0)] = 15.0
    max_on_s: Annotated[float, Range(gt=0)] | None = None


@section
class HomeAssistantConfig:
    discovery: bool = True
    prefix: str = "homeassistant"
    # With an external broker: HA's MQTT user name, the last level of its command topics.
    username: str = "homeassistant"


@section
class PersistenceConfig:
    path: str | None = None  # none: nothing survives a restart
    autosave_s: Annotated[float, Range(gt=0, le=3600)] = 3.0


def _hostname() -> str:
    return socket.gethostname().split(".")[0] or "gatekeeper"


BUILTIN_ROLES = ("admin", "operator", "viewer", "homeassistant")


class DeviceType(Protocol):
    """What the config checks ask of a device type (a device adapter class)."""

    @property
    def Config(self) -> type: ...
    @property
    def kind(self) -> str: ...
    @property
    def methods(self) -> Mapping[str, Any]: ...


ConfigCheck = Callable[["Config"], "list[Problem | str]"]


@dataclass(frozen=True, slots=True)
class Known:
    """What the layers above tell the config layer: the device types by their ``type``
    (the adapters' registry), the Home Assistant components a type can be shown as, and
    the checks of sections whose meaning lives above (``compat:``), run last."""

    devices: Mapping[str, DeviceType]
    components: Callable[[str], tuple[str, ...]]
    checks: tuple[ConfigCheck, ...] = ()


_KNOWN: ContextVar[Known | None] = ContextVar("_KNOWN", default=None)


def _known() -> Known:
    known = _KNOWN.get()
    if known is None:
        raise RuntimeError("a Config is built by parse_config(..., known=...)")
    return known


@contextmanager
def knowing(known: Known) -> Iterator[None]:
    """Build and check configs with these device types (``parse_config`` does)."""
    token = _KNOWN.set(known)
    try:
        yield
    finally:
        _KNOWN.reset(token)


def _device_schema(type_name: str) -> type | None:
    adapter = _known().devices.get(type_name)
    return adapter.Config if adapter is not None else None


def _device_types() -> list[str]:
    return sorted(_known().devices)


DeviceEntry = Annotated[Any, Tagged("type", _device_schema, _device_types)]


@section
class Config:
    node_id: str = field(default_factory=_hostname)
    base_topic: str = "gatekeeper"
    hardware: HardwareConfig = field(default_factory=lambda: HardwareConfig())
    broker: BrokerConfig = field(default_factory=lambda: BrokerConfig())
    auth: AuthConfig = field(default_factory=lambda: AuthConfig())
    leases: LeasesConfig = field(default_factory=lambda: LeasesConfig())
    devices: dict[str, DeviceEntry] = field(default_factory=dict)
    safety: SafetyConfig = field(default_factory=lambda: SafetyConfig())
    interlocks: list[list[str]] = field(default_factory=list)
    homeassistant: HomeAssistantConfig = field(default_factory=lambda: HomeAssistantConfig())
    persistence: PersistenceConfig = field(default_factory=lambda: PersistenceConfig())
    bindings_queue: BindingsQueueConfig = field(default_factory=lambda: BindingsQueueConfig())
    watchdog: WatchdogConfig | None = None
    expanders: dict[str, ExpanderConfig] = field(default_factory=dict)
    compat: CompatConfig = field(default_factory=lambda: CompatConfig())

    def check(self) -> list[Problem | str]:
        problems: list[Problem | str] = []
        for key, value in (("node_id", self.node_id), ("base_topic", self.base_topic)):
            if not value or any(c in value for c in "+#\x00"):
                problems.append(((key,), "must be non-empty without '+', '#'"))
        if "/" in self.node_id:
            problems.append((("node_id",), "must not contain '/'"))
        problems.extend(_role_problems(self.auth))
        problems.extend(_device_problems(self.devices))
        problems.extend(_interlock_problems(self.interlocks, self.devices))
        problems.extend(_restore_problems(self.devices))
        problems.extend(_binding_problems(self.devices, self.topics))
        problems.extend(_homeassistant_problems(self.devices, self.homeassistant))
        problems.extend(_watchdog_problems(self.devices, self.watchdog))
        problems.extend(_expander_problems(self.devices, self.expanders))
        for check in _known().checks:
            problems.extend(check(self))
        return problems

    @property
    def topics(self) -> Topics:
        return Topics(self.base_topic, self.node_id)

    @property
    def root(self) -> str:
        return self.topics.root


def _role_problems(auth: AuthConfig) -> list[Problem | str]:
    problems: list[Problem | str] = []
    known = set(BUILTIN_ROLES) | set(auth.roles)
    if auth.allow_anonymous and auth.anonymous_role not in known:
        problems.append((("auth", "anonymous_role"), f"{auth.anonymous_role!r} is not a role"
                         f"{did_you_mean(auth.anonymous_role, known)}"))
    for name, user in auth.users.items():
        if name.startswith("local:"):
            problems.append((("auth", "users", name), "user names starting with 'local:' are "
                             "the principals of local bindings (local:<button>)"))
        if user.role not in known:
            problems.append((("auth", "users", name, "role"), f"{user.role!r} is not a role"
                             f"{did_you_mean(user.role, known)}"))
    return problems


def _interlock_problems(groups: list[list[str]], devices: dict[str, Any]
                        ) -> list[Problem | str]:
    """Every member names an output device; a group has two members or more."""
    registry = _known().devices
    problems: list[Problem | str] = []
    for i, group in enumerate(groups):
        if len(set(group)) < 2:
            problems.append((("interlocks", i), "an interlock group needs two devices or more"))
        for j, name in enumerate(group):
            dev = devices.get(name)
            if dev is None:
                problems.append((("interlocks", i, j), f"no device named {name!r}"))
                continue
            adapter = registry.get(dev.type)
            if adapter is None or adapter.kind != "output":
                problems.append((("interlocks", i, j), f"{name!r} is a {dev.type}, which "
                                 f"cannot be switched on: only outputs can be interlocked"))
        safe_on = [name for name in dict.fromkeys(group)
                   if getattr(devices.get(name), "safe_state", None) == "on"]
        if len(safe_on) > 1:
            problems.append((("interlocks", i), f"{' and '.join(safe_on)} both have "
                             f"safe_state: on: their safe states would be active together"))
    return problems


def _restore_problems(devices: dict[str, Any]) -> list[Problem | str]:
    registry = _known().devices
    problems: list[Problem | str] = []
    for name, dev in devices.items():
        adapter = registry.get(dev.type)
        if dev.restore and (adapter is None or "value" not in adapter.methods):
            problems.append((("devices", name, "restore"),
                             f"a {dev.type} has no value to restore: only outputs can"))
    return problems


# Device types whose lines may be expander pins: plain digital inputs and outputs (an expander
# pin has no PWM and no microsecond timing).
EXPANDER_TYPES = frozenset({"OutputDevice", "DigitalOutputDevice", "LED", "Buzzer", "Button",
                            "DigitalInputDevice", "MotionSensor", "LineSensor", "Cover"})
# Device types whose lines may be PCA9685 channels: outputs, PWM at the chip's one frequency
# (a Servo's frame_width is checked against it), or full on / full off.
PCA9685_TYPES = frozenset({"PWMLED", "PWMOutputDevice", "LED", "OutputDevice",
                           "DigitalOutputDevice", "Buzzer", "RGBLED", "Servo", "AngularServo",
                           "Motor", "PhaseEnableMotor"})


def _expander_problems(devices: dict[str, Any], expanders: dict[str, ExpanderConfig]
                       ) -> list[Problem | str]:
    """Expander pins name a configured expander, on a type that can use one; an expander's
    interrupt line is not a device's; two expanders do not share a bus address."""
    problems: list[Problem | str] = []
    for name in expanders:
        if not name or any(c in name for c in ":/+# "):
            problems.append((("expanders", name), "expander names must not contain : / + # "
                             "or spaces"))
    seen: dict[tuple[int, int], str] = {}
    for name, exp in expanders.items():
        other = seen.setdefault((exp.bus, exp.address), name)
        if other != name:
            problems.append((("expanders", name, "address"),
                             f"bus {exp.bus} address 0x{exp.address:02x} is {other}'s"))
    interrupts = {exp.interrupt: name for name, exp in expanders.items()
                  if exp.interrupt is not None}
    for name, dev in devices.items():
        for key, line, _shared in dev.lines():
            where = ("devices", name, *key.split("."))
            if isinstance(line, str):
                problems.extend(_expander_pin_problems(where, dev, line, expanders))
            elif line in interrupts:
                problems.append((where, f"GPIO{line} is expander {interrupts[line]}'s "
                                 f"interrupt line"))
    return problems


def _expander_pin_problems(where: tuple[str, ...], dev: Any, line: str,
                           expanders: dict[str, ExpanderConfig]) -> list[Problem | str]:
    """A device's expander pin (``io1:3``): a pin of a configured expander its type can use."""
    problems: list[Problem | str] = []
    expander, _, number = line.partition(":")
    exp = expanders.get(expander)
    if exp is not None and exp.type == "PCF8574" and number.isdigit() and int(number) > 7:
        problems.append((where, f"a PCF8574 has pins 0 to 7 ({expander} is one), not "
                         f"{number}"))
    if exp is None:
        problems.append((where, f"no expander named {expander!r} (expanders: "
                         f"{', '.join(expanders) or 'none'})"))
    elif exp.type == "PCA9685":
        problems.extend(_pca9685_problems(where, dev, expander, exp))
    elif dev.type not in EXPANDER_TYPES:
        problems.append((where, f"a {dev.type} cannot use an expander pin (no PWM or precise "
                         f"timing there): give it a GPIO number, or a PCA9685 channel for "
                         f"PWM"))
    return problems


def _pca9685_problems(where: tuple[str, ...], dev: Any, expander: str,
                      exp: ExpanderConfig) -> list[Problem | str]:
    """A PCA9685 channel is an output at the chip's one frequency: no inputs, and a Servo's
    frame is the chip's period (gpiozero computes its pulse widths from frame_width)."""
    adapter = _known().devices.get(dev.type)
    if adapter is not None and adapter.kind == "input":
        return [(where, f"a {dev.type} is an input: {expander} is a PCA9685, whose channels "
                 f"are PWM outputs only; give it a GPIO number or an I/O expander pin")]
    if dev.type not in PCA9685_TYPES:
        return [(where, f"a {dev.type} cannot use a PCA9685 channel ({expander}); PWM "
                 f"outputs, LEDs, servos and motors can")]
    frequency = exp.frequency or DEFAULT_FREQUENCY
    frame = getattr(dev, "frame_width", None)
    if frame is not None and abs(frame * frequency - 1) > FREQUENCY_TOLERANCE:
        return [(where, f"{expander} runs all its channels at {frequency:g} Hz (a "
                 f"{1000 / frequency:g} ms frame); this {dev.type}'s frame_width is "
                 f"{frame * 1000:g} ms: set frame_width: {1 / frequency:g}, or the "
                 f"chip's frequency: {1 / frame:g}")]
    return []


def pca9685_frequency_warnings(devices: dict[str, Any], expanders: dict[str, ExpanderConfig]
                               ) -> list[str]:
    """A PWM device on a PCA9685 runs at the chip's frequency, not its own: said when they
    differ (the duty cycle, so brightness or speed, is the same)."""
    out = []
    for name, dev in devices.items():
        asked = getattr(dev, "frequency", None)
        if not isinstance(asked, int | float) or getattr(dev, "pwm", True) is False:
            continue
        for key, line, _shared in dev.lines():
            exp = expanders.get(line.partition(":")[0]) if isinstance(line, str) else None
            if exp is None or exp.type != "PCA9685":
                continue
            frequency = exp.frequency or DEFAULT_FREQUENCY
            if not frequency_matches(asked, frequency):
                out.append(f"devices.{name}.{key}: {line} is a PCA9685 channel: it runs at "
                           f"the chip's {frequency:g} Hz, not this {dev.type}'s "
                           f"frequency: {asked:g} (set frequency: {frequency:g} to say so)")
    return out


def _watchdog_problems(devices: dict[str, Any], watchdog: WatchdogConfig | None
                       ) -> list[Problem | str]:
    """The watchdog's two lines belong to it: no device may use them."""
    if watchdog is None:
        return []
    problems: list[Problem | str] = []
    reserved = {watchdog.out: "out", watchdog.in_: "in"}
    for name, dev in devices.items():
        for key, line, _shared in dev.lines():
            if line in reserved:
                problems.append((("devices", name, *key.split(".")),
                                 f"GPIO{line} is the watchdog's {reserved[line]} line"))
    return problems


def _homeassistant_problems(devices: dict[str, Any], ha: HomeAssistantConfig
                            ) -> list[Problem | str]:
    """A device's entity override names a component its type can be shown as."""
    allowed_components = _known().components
    problems: list[Problem | str] = []
    if not ha.prefix or any(c in ha.prefix for c in "+#\x00"):
        problems.append((("homeassistant", "prefix"), "must be non-empty without '+', '#'"))
    for name, dev in devices.items():
        own = getattr(dev, "homeassistant", None)
        component = getattr(own, "component", None)
        if component is not None and component not in allowed_components(dev.type):
            allowed = ", ".join(allowed_components(dev.type)) or "none"
            problems.append((("devices", name, "homeassistant", "component"),
                             f"a {dev.type} can be shown as: {allowed}"))
        if getattr(own, "inverted", False) and "binary_sensor" not in allowed_components(
                dev.type):
            problems.append((("devices", name, "homeassistant", "inverted"),
                             "only a two-state input (a binary_sensor) can be inverted"))
    return problems


def _binding_problems(devices: dict[str, Any], topics: Topics) -> list[Problem | str]:
    """A device binding names a device and one of its methods with arguments it accepts; a
    publish binding stays out of this node's own tree except its ``set``/``call`` topics
    (which then run as local calls)."""
    registry = _known().devices
    problems: list[Problem | str] = []
    for button, dev in devices.items():
        for trigger, action in (getattr(dev, "bindings", None) or {}).items():
            where = ("devices", button, "bindings", trigger)
            if action.publish is not None:
                topic = action.publish.topic
                if topics.in_tree(topic):
                    parsed = topics.parse_device(topic)
                    if parsed is None or parsed[1] not in ("set", "call"):
                        problems.append(((*where, "publish", "topic"),
                                         "inside this node's tree only device set/call "
                                         "topics may be published"))
                continue
            target = devices.get(action.device)
            if target is None:
                problems.append(((*where, "device"), f"no device named {action.device!r}"))
                continue
            adapter = registry.get(target.type)
            method = adapter.methods.get(action.method or "") if adapter else None
            if method is None or method.sim_only:
                known = ", ".join(m for m, spec in (adapter.methods if adapter else {}).items()
                                  if not spec.sim_only)
                problems.append(((*where, "method"), f"a {target.type} has no method "
                                 f"{action.method!r} (methods: {known})"))
                continue
            try:
                method.bind(action.args, action.kwargs)
            except GatekeeperError as exc:
                problems.append(((*where,), exc.message))
    return problems


def _device_problems(devices: dict[str, Any]) -> list[Problem | str]:
    problems: list[Problem | str] = []
    for name in devices:
        if not name or any(c in name for c in "/+#\x00 "):
            problems.append((("devices", name), "device names must not contain / + # or spaces"))
    problems.extend(_pin_conflicts(devices))
    return problems


def _partial_checks(data: dict[str, Any]) -> list[Problem]:
    """The cross-section checks over whatever sections did build, so that one run of
    ``check-config`` lists every problem even when some sections are broken."""
    out: list[Problem] = []
    scratch: list[Problem] = []
    auth = build(AuthConfig, data.get("auth"), ("auth",), scratch)
    if auth is not None:
        out.extend(p for p in _role_problems(auth) if isinstance(p, tuple))
    devices = data.get("devices")
    if isinstance(devices, dict):
        built = {}
        for name, entry in devices.items():
            dev = build(DeviceEntry, entry, ("devices", str(name)), scratch)
            if dev is not None:
                built[str(name)] = dev
        out.extend(p for p in _device_problems(built) if isinstance(p, tuple))
    return out


def _pin_conflicts(devices: dict[str, Any]) -> list[Problem | str]:
    """Every GPIO line may belong to one device (SPI bus lines to SPI devices only)."""
    owners: dict[int, tuple[str, str, bool]] = {}
    problems: list[Problem | str] = []
    for name, dev in devices.items():
        for key, line, shared in dev.lines():
            other = owners.get(line)
            if other is None:
                owners[line] = (name, key, shared)
            elif not (shared and other[2]) and not (other[0] == name and other[1] == key):
                problems.append(((("devices", name, key)),
                                 f"{_line_name(line)} is already used by {other[0]}.{other[1]}"))
    return problems


# --- loading with line numbers -----------------------------------------------------------------
def _positions(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*path, key)] = key_node.start_mark.line + 1
            if key in seen:
                out.setdefault(("__duplicate__", *path, key), key_node.start_mark.line + 1)
            seen.add(key)
            _positions(value_node, (*path, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _positions(item, (*path, i), out)


def _dotted(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "(top level)"


def _line_for(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int | None:
    probe = tuple(loc)
    while probe:
        if probe in lines:
            return lines[probe]
        probe = probe[:-1]
    return lines.get(())


# Sections of the documented config that this version does not act on yet: refused rather
# than accepted and ignored (a relay with min_relay_interval_s that chatters anyway).
NOT_SUPPORTED_YET: dict[str, str] = {}
MAX_CONFIG_NODES = 100_000  # YAML nodes after aliases are expanded (a real config has < 5,000)


def expanded_size(root: yaml.Node, limit: int) -> int | None:
    """How many nodes ``root`` has with every alias expanded (each node counted once per
    place it appears), or None past ``limit`` or for a recursive alias. Memoised, so an
    "alias bomb" (a billion laughs) is measured without being expanded."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        if done:
            active.discard(key)
            total = 1 + sum(sizes[id(c)] for c in children)
            if total > limit:
                return None
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in active:
            return None  # an alias inside its own anchor
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def _read_yaml(text: str, source: str) -> tuple[yaml.Node | None, dict[str, Any]]:
    """The composed nodes (for line numbers) and the data of a config's YAML text."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and expanded_size(node, MAX_CONFIG_NODES) is None:
            raise ConfigError(source, [
                f"line {node.start_mark.line + 1}: the YAML expands to more than "
                f"{MAX_CONFIG_NODES:,} values through aliases (*name), or an alias refers to "
                f"itself: refused"])
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(source, [f"{where}not valid YAML: {exc}"]) from None
    except RecursionError:
        raise ConfigError(source, ["the YAML is nested too deeply"]) from None
    if data is None:
        raise ConfigError(source, [
            "the config is empty: it needs at least node_id, listeners, users and devices "
            "(see deploy/demo.yaml)"])
    if not isinstance(data, dict):
        raise ConfigError(source, ["line 1: the config must be a mapping of keys"])
    return node, data


def _refused_keys(data: dict[str, Any], lines: dict[tuple[Any, ...], int]
                  ) -> tuple[dict[str, Any], list[str]]:
    """The data without the sections not supported yet, and the problems of those and of
    keys given twice."""
    problems: list[str] = []
    for section_key, why in NOT_SUPPORTED_YET.items():
        if section_key in data:
            data = {k: v for k, v in data.items() if k != section_key}
            problems.append(f"line {lines.get((section_key,), 0)}: {section_key}: "
                            f"not supported yet ({why})")
    for key, line in lines.items():
        if key and key[0] == "__duplicate__":
            problems.append(f"line {line}: {_dotted(key[1:])}: key given twice")
    return data, problems


def parse_config(text: str, source: str = "<config>", *, known: Known) -> Config:
    """Parse YAML text with the device types and checks of ``known``; raises
    ``ConfigError`` listing every problem."""
    node, data = _read_yaml(text, source)
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _positions(node, (), lines)
    data, problems = _refused_keys(data, lines)
    found: list[Problem] = []
    with knowing(known):
        config = build(Config, data, (), found)
        if config is None:
            found.extend(p for p in _partial_checks(data) if p not in found)
    located = sorted(((_line_for(loc, lines) or 0, _dotted(loc), msg) for loc, msg in found),
                     key=lambda item: item[0])
    for at, where, msg in located:
        problems.append(f"line {at}: {where}: {msg}" if at else f"{where}: {msg}")
    if problems or config is None:
        raise ConfigError(source, problems)
    assert isinstance(config, Config)
    return config


def load_config(path: str | Path, *, known: Known) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["not UTF-8 text"]) from None
    return parse_config(text, str(path), known=known)


def _line_name(line: int | str) -> str:
    """``GPIO17``, or an expander pin as it is written (``io1:3``)."""
    return f"GPIO{line}" if isinstance(line, int) else f"expander pin {line}"
