"""YAML config -> typed, frozen models (DESIGN section 4).

Every problem is reported at once, each with its key path and line number, before anything
is started or any pin claimed. Unknown keys are errors.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "BUILTIN_ROLES",
    "AuthConfig",
    "BrokerConfig",
    "Config",
    "ConfigError",
    "ListenerConfig",
    "load_config",
    "parse_config",
]


class ConfigError(Exception):
    """A config that cannot be used; ``problems`` lists every reason, one line each."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid config:\n" + "\n".join(f"  {p}" for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Port = Annotated[int, Field(ge=0, le=65535)]


class HardwareConfig(_Strict):
    pin_factory: Literal["lgpio", "mock"] = "lgpio"
    chip: str | int = "auto"
    consumer_tag: str = "gatekeeper"


class ListenerConfig(_Strict):
    type: Literal["tcp", "tls", "websocket"]
    host: str = "0.0.0.0"
    port: Port
    certfile: str | None = None  # tls; websocket served over TLS when given
    keyfile: str | None = None
    cafile: str | None = None  # verify client certificates against this CA
    require_certificate: bool = False
    use_identity_as_username: bool = False  # client certificate CN becomes the user name

    @model_validator(mode="after")
    def _tls_files(self) -> ListenerConfig:
        if self.type == "tls" and not (self.certfile and self.keyfile):
            raise ValueError("a tls listener needs certfile and keyfile")
        if bool(self.certfile) != bool(self.keyfile):
            raise ValueError("certfile and keyfile go together")
        if (self.require_certificate or self.use_identity_as_username) and not self.cafile:
            raise ValueError("client certificates need cafile")
        return self


class ExternalBrokerConfig(_Strict):
    host: str
    port: Port = 1883
    tls: bool = False
    username: str | None = None
    password_file: str | None = None
    client_id: str | None = None


class LimitsConfig(_Strict):
    max_connections: int = Field(256, ge=1)
    max_packet_size: int = Field(262_144, ge=64, le=268_435_460)
    max_queued_messages: int = Field(1000, ge=0)
    max_keepalive: int = Field(600, ge=1, le=65535)
    connect_timeout_s: float = Field(10.0, gt=0)


def _default_listeners() -> list[ListenerConfig]:
    return [ListenerConfig(type="tcp", host="0.0.0.0", port=1883)]


class BrokerConfig(_Strict):
    mode: Literal["embedded", "external"] = "embedded"
    listeners: list[ListenerConfig] = Field(default_factory=_default_listeners)
    external: ExternalBrokerConfig | None = None
    limits: LimitsConfig = LimitsConfig()

    @model_validator(mode="after")
    def _mode(self) -> BrokerConfig:
        if self.mode == "external" and self.external is None:
            raise ValueError("mode external needs an 'external' section")
        seen: set[tuple[str, int]] = set()
        for listener in self.listeners:
            key = (listener.host, listener.port)
            if listener.port and key in seen:
                raise ValueError(f"two listeners on {listener.host}:{listener.port}")
            seen.add(key)
        return self


class UserConfig(_Strict):
    password_hash: str
    role: str = "viewer"


class RoleConfig(_Strict):
    subscribe: list[str] = []
    publish: list[str] = []
    deny: list[str] = []


class AuthConfig(_Strict):
    allow_anonymous: bool = False
    anonymous_role: str = "viewer"
    users: dict[str, UserConfig] = {}
    users_file: str | None = None
    roles: dict[str, RoleConfig] = {}


class LeasesConfig(_Strict):
    scope: Literal["global", "device"] = "global"
    ttl_s: float = Field(60, gt=0)


class SafetyConfig(_Strict):
    min_relay_interval_s: float = Field(0.5, ge=0)
    min_command_interval_s: float = Field(0.2, ge=0)
    flap_window_s: float = Field(10, gt=0)
    flap_max_edges: int = Field(8, ge=1)
    flap_lockout_s: float = Field(15, ge=0)


class HomeAssistantConfig(_Strict):
    discovery: bool = True
    prefix: str = "homeassistant"


class PersistenceConfig(_Strict):
    path: str | None = None


def _hostname() -> str:
    return socket.gethostname().split(".")[0] or "gatekeeper"


BUILTIN_ROLES = ("admin", "operator", "viewer")


class Config(_Strict):
    node_id: str = Field(default_factory=_hostname)
    base_topic: str = "gatekeeper"
    hardware: HardwareConfig = HardwareConfig()
    broker: BrokerConfig = BrokerConfig()
    auth: AuthConfig = AuthConfig()
    leases: LeasesConfig = LeasesConfig()
    # Device entries are validated per type by the device adapters (issue: Gatekeeper).
    devices: dict[str, dict[str, Any]] = {}
    safety: SafetyConfig = SafetyConfig()
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()
    persistence: PersistenceConfig = PersistenceConfig()

    @model_validator(mode="after")
    def _names(self) -> Config:
        for what, value in (("node_id", self.node_id), ("base_topic", self.base_topic)):
            if not value or any(c in value for c in "+#\x00"):
                raise ValueError(f"{what} must be non-empty without '+', '#'")
        if "/" in self.node_id:
            raise ValueError("node_id must not contain '/'")
        known = set(BUILTIN_ROLES) | set(self.auth.roles)
        if self.auth.allow_anonymous and self.auth.anonymous_role not in known:
            raise ValueError(f"auth.anonymous_role {self.auth.anonymous_role!r} is not a role")
        for name, user in self.auth.users.items():
            if user.role not in known:
                raise ValueError(f"auth.users.{name}.role {user.role!r} is not a role")
        return self

    @property
    def root(self) -> str:
        return f"{self.base_topic}/{self.node_id}"


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


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse YAML text; raises ``ConfigError`` listing every problem."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(source, [f"{where}not valid YAML: {exc}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, ["line 1: the config must be a mapping of keys"])
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _positions(node, (), lines)
    problems: list[str] = []
    for key, line in lines.items():
        if key and key[0] == "__duplicate__":
            problems.append(f"line {line}: {_dotted(key[1:])}: key given twice")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
            at = _line_for(loc, lines)
            where = f"line {at}: " if at else ""
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif not isinstance(got, dict | list) and err["type"] != "missing":
                msg += f" (got {got!r})"
            problems.append(f"{where}{_dotted(loc)}: {msg}")
        raise ConfigError(source, problems) from None
    if problems:
        raise ConfigError(source, problems)
    return config


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["not UTF-8 text"]) from None
    return parse_config(text, str(path))
