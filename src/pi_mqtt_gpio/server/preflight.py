"""What the daemon would refuse at start, found before it starts (``check-config`` and the
daemon itself run the same checks), and warnings for risky but legal settings.

The config schema already checks keys, types, roles named in ``auth.users`` and pin
conflicts; this adds what needs the file system or the network stack: the users file (and
the roles it names, with its line), TLS files, listener addresses. Warnings: anonymous
clients with write rights on a listener other machines can reach, passwords over plain TCP
on such a listener, simulated pins in a config for real hardware.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from pi_mqtt_gpio.server.config import (
    BUILTIN_ROLES,
    Config,
    ListenerConfig,
    pca9685_frequency_warnings,
    tls_context,
)
from pi_mqtt_gpio.server.devices.mixer import control_problem
from pi_mqtt_gpio.server.devices.outputs import start_differs
from pi_mqtt_gpio.server.persistence import writable_problem
from pi_mqtt_gpio.server.pins.header import HEADER_GPIOS
from pi_mqtt_gpio.server.safety import guards_for
from pi_mqtt_gpio.server.security.acl import builtin_roles
from pi_mqtt_gpio.server.security.passwords import read_users_file

__all__ = ["Findings", "preflight", "tls_context"]


@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_users_file(config: Config, out: Findings) -> None:
    path = config.auth.users_file
    if not path:
        return
    roles = set(BUILTIN_ROLES) | set(config.auth.roles)
    try:
        read_users_file(path, roles)
    except OSError as exc:
        out.errors.append(f"auth.users_file: cannot read {path}: {exc.strerror}")
    except (ValueError, UnicodeDecodeError) as exc:
        out.errors.append(f"auth.users_file: {exc}")


def _check_listeners(config: Config, out: Findings) -> None:
    if config.broker.mode == "external":
        return  # no listeners are opened: the gatekeeper is a client of another broker
    for i, listener in enumerate(config.broker.listeners):
        where = f"broker.listeners[{i}]"
        try:
            socket.getaddrinfo(listener.host, listener.port or None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            out.errors.append(f"{where}.host: cannot listen on {listener.host!r}: {exc}")
        try:
            tls_context(listener)
        except (OSError, ssl.SSLError) as exc:
            out.errors.append(f"{where}: TLS files unusable: {exc}")
        for key in ("certfile", "keyfile", "cafile"):
            value = getattr(listener, key)
            if value and not Path(value).is_file():
                out.errors.append(f"{where}.{key}: no such file: {value}")


def _check_external(config: Config, out: Findings) -> None:
    """External mode: a warning when the ACL probe's password file cannot be read (the probe
    then fails: commands are refused), or without the probe (``acl_probe: false``)."""
    ext = config.broker.external
    if config.broker.mode != "external" or ext is None:
        return
    if ext.acl_probe is False:
        out.warnings.append(
            "broker.external.acl_probe is false: nothing checks that the broker's ACL lets "
            "each user publish commands only under its own name; without that ACL anyone on "
            "the broker can command in anyone's name")
        return
    path = ext.acl_probe.password_file if ext.acl_probe else None
    if path:
        try:
            Path(path).read_text()
        except OSError as exc:
            out.warnings.append(f"broker.external.acl_probe.password_file: cannot read {path}: "
                                f"{exc.strerror}; the ACL probe fails and every command is "
                                f"refused until it can")


def _check_persistence(config: Config, out: Findings) -> None:
    if config.persistence.path:
        problem = writable_problem(config.persistence.path)
        if problem is not None:
            out.errors.append(problem)


def _warnings(config: Config, simulate: bool, out: Findings) -> None:
    exposed = [lst for lst in config.broker.listeners if not _loopback(lst.host)] \
        if config.broker.mode == "embedded" else []
    _warn_anonymous(config, exposed, out)
    _warn_clear_passwords(config, exposed, out)
    _warn_unguarded(config, out)
    _warn_start_values(config, out)
    if config.hardware.pin_factory == "mock" and not simulate:
        out.warnings.append("hardware.pin_factory is 'mock': the pins are simulated, nothing "
                            "on the header will move (use --simulate for a demo, 'lgpio' "
                            "for real pins)")
    out.warnings.extend(pca9685_frequency_warnings(config.devices, config.expanders))
    if not simulate and config.hardware.pin_factory != "mock":
        _check_header(config, out)


def _warn_anonymous(config: Config, exposed: list[ListenerConfig], out: Findings) -> None:
    """Anonymous clients that may move hardware, with a listener other machines reach."""
    auth = config.auth
    if not (auth.allow_anonymous and exposed):
        return
    roles = builtin_roles(config.homeassistant.prefix)
    roles.update(auth.roles)
    role = roles.get(auth.anonymous_role)
    writes = role.publish if role is not None else []
    if writes:
        hosts = ", ".join(f"{lst.host}:{lst.port}" for lst in exposed)
        out.warnings.append(
            f"anonymous clients (role {auth.anonymous_role!r}) may publish "
            f"{', '.join(writes)} and a listener is reachable from other machines "
            f"({hosts}): anyone on the network can move hardware")


def _warn_clear_passwords(config: Config, exposed: list[ListenerConfig], out: Findings
                          ) -> None:
    auth = config.auth
    has_passwords = bool(auth.users_file) or any(u.password_hash for u in auth.users.values())
    plain = [lst for lst in exposed if not lst.certfile]
    if has_passwords and plain:
        hosts = ", ".join(f"{lst.type} {lst.host}:{lst.port}" for lst in plain)
        out.warnings.append(f"passwords travel in clear text on {hosts}: add a TLS listener "
                            f"and keep plain ones on 127.0.0.1")


def _warn_unguarded(config: Config, out: Findings) -> None:
    """Relay-like outputs with every safety guard off."""
    owners: dict[str, bool] = {}  # device -> every guard of it (or of its lines) is off
    for name, guard in guards_for(config.safety, config.devices).items():
        owner = name.partition("/")[0]
        owners[owner] = owners.get(owner, True) and guard.all_off
    unguarded = {owner for owner, off in owners.items() if off}
    for name in sorted(unguarded, key=list(config.devices).index):
        out.warnings.append(f"devices.{name}: a relay-like output with every safety guard "
                            f"off (spacing, rate limit, flap lockout, max on time)")


def _warn_start_values(config: Config, out: Findings) -> None:
    """Start values outputs do not take, and covers whose position a restart forgets."""
    for name, dev in config.devices.items():
        differs = start_differs(dev)
        if differs is not None:
            out.warnings.append(
                f"devices.{name}: {differs} has no effect: outputs start in their safe state "
                f"(safe_state: {dev.safe_state}), built at that level so that nothing "
                f"pulses at start; set safe_state to start elsewhere, or restore: true to "
                f"come back to the value before a restart")
    if not config.persistence.path:
        for name, dev in config.devices.items():
            if dev.type == "Cover":
                out.warnings.append(
                    f"devices.{name}: a Cover without persistence (persistence.path): after a "
                    f"restart its position is initial_position ({dev.initial_position:g}) "
                    f"whatever it really is, until it next runs into an end")


def _check_header(config: Config, out: Findings) -> None:
    """GPIO 28-53 are not on a Raspberry Pi's 40-pin header: only a Compute Module has them
    (warned, not refused: the gatekeeper cannot tell a Compute Module from its chip)."""
    for name, dev in config.devices.items():
        for key, line, _shared in dev.lines():
            if isinstance(line, int) and line not in HEADER_GPIOS:
                out.warnings.append(f"devices.{name}.{key}: GPIO{line} is not on the 40-pin "
                                    f"header (GPIO0 to GPIO27): only a Compute Module has it")


def _check_mixers(config: Config, simulate: bool, out: Findings) -> None:
    """Every AlsaMixer's card and control exist (not under simulation)."""
    if simulate or config.hardware.pin_factory == "mock":
        return
    for name, dev in config.devices.items():
        if dev.type == "AlsaMixer":
            problem = control_problem(dev)
            if problem is not None:
                out.errors.append(f"devices.{name}: {problem}")


def preflight(config: Config, *, simulate: bool = False) -> Findings:
    """Everything the daemon would refuse at start, and the warnings worth a look."""
    out = Findings()
    _check_mixers(config, simulate, out)
    _check_users_file(config, out)
    _check_listeners(config, out)
    _check_external(config, out)
    _check_persistence(config, out)
    _warnings(config, simulate, out)
    return out
