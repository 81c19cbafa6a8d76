"""Authentication (argon2id) and topic authorisation by role.

Both are broker hooks answering allow / deny / defer. Password verification runs in a thread
(never on the event loop) with a cap on concurrent verifications.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import argon2

from pi_mqtt_gpio.mqtt.hooks import AuthRequest, AuthResult, BrokerHooks, ClientInfo, Decision
from pi_mqtt_gpio.mqtt.packets import RC
from pi_mqtt_gpio.mqtt.topic_tree import filter_covers, parse_shared, topic_matches
from pi_mqtt_gpio.server.config import AuthConfig, RoleConfig, UserConfig
from pi_mqtt_gpio.topics import Topics

__all__ = [
    "AccessControl",
    "Authenticator",
    "ControlLeaseManager",
    "Lease",
    "LoginThrottle",
    "builtin_roles",
    "hash_password",
    "read_users_file",
    "verify_password",
    "write_users_file",
]

log = logging.getLogger("pi_mqtt_gpio.security")

_hasher = argon2.PasswordHasher()  # argon2id, library defaults (RFC 9106 low-memory profile)
MAX_PASSWORD_BYTES = 1024
# A hash of a random password nobody knows, with the library's default parameters: checked
# for unknown users so they cost as much as known ones. Fixed, so that building the
# Authenticator (on the event loop) does no argon2 work.
_DUMMY_HASH = "$argon2id$v=19$m=65536,t=3,p=4$HipZ56M8vIpiinBNqcrjxw$KfHetPU1B8JKAAHVJUUwWJ8WpFshOJ75i0OZgxaVSKg"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: bytes) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def builtin_roles() -> dict[str, RoleConfig]:
    """admin: everything; operator: read the gatekeeper, command devices and leases;
    viewer: read only. Every role also reads its own reply prefix (added in ``AccessControl``)."""
    return {
        "admin": RoleConfig(subscribe=["#"], publish=["#"]),
        "operator": RoleConfig(
            subscribe=["{root}/#"],
            publish=["{root}/device/+/set", "{root}/device/+/call", "{root}/lease/call"],
        ),
        "viewer": RoleConfig(subscribe=["{root}/#"], publish=[]),
    }


def read_users_file(path: str | Path) -> dict[str, UserConfig]:
    """``user:hash[:role]`` per line (``#`` comments), as written by ``passwd``."""
    users: dict[str, UserConfig] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("$argon2"):
            raise ValueError(f"{path}:{number}: expected user:$argon2id$...[:role]")
        users[parts[0]] = UserConfig(password_hash=parts[1],
                                     role=parts[2] if len(parts) == 3 else "viewer")
    return users


def write_users_file(path: str | Path, user: str, password_hash: str, role: str) -> None:
    """Add or replace ``user`` in a users file (created with mode 0600)."""
    if not user or any(c in user for c in ":\n\r#") or user != user.strip():
        raise ValueError("user names may not contain ':', '#', line breaks or outer spaces")
    file = Path(path)
    lines = file.read_text(encoding="utf-8").splitlines() if file.exists() else []
    entry = f"{user}:{password_hash}:{role}"
    out, replaced = [], False
    for line in lines:
        if line.split(":", 1)[0] == user and not line.startswith("#"):
            out.append(entry)
            replaced = True
        else:
            out.append(line)
    if not replaced:
        out.append(entry)
    tmp = file.with_name(file.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    os.replace(tmp, file)


class LoginThrottle:
    """Exponential back-off of failed logins per source address: after ``free`` failures a
    further attempt from that address waits 0.5 s, then 1, 2, 4 ... up to ``cap`` seconds
    before it is even checked. A success clears the address; quiet addresses are forgotten.
    Other addresses (the real user elsewhere) are never slowed down, and ``cap`` stays below
    the 5 s connect timeout so that the right password still gets in from a throttled address
    (behind the same NAT as the attacker, say). Time is passed in."""

    def __init__(self, *, free: int = 3, base: float = 0.5, cap: float = 4.0,
                 forget_after: float = 600.0, max_addresses: int = 10_000) -> None:
        self.free, self.base, self.cap = free, base, cap
        self.forget_after = forget_after
        self.max_addresses = max_addresses
        self._failures: dict[str, tuple[int, float]] = {}

    @staticmethod
    def address(peer: str) -> str:
        return peer.rsplit(":", 1)[0] if ":" in peer else peer

    def delay(self, peer: str, now: float) -> float:
        count, last = self._failures.get(self.address(peer), (0, 0.0))
        if count and now - last > self.forget_after:
            self._failures.pop(self.address(peer), None)
            return 0.0
        if count < self.free:
            return 0.0
        return float(min(self.cap, self.base * 2 ** (count - self.free)))

    def failed(self, peer: str, now: float) -> int:
        addr = self.address(peer)
        count = self._failures.get(addr, (0, 0.0))[0] + 1
        if len(self._failures) >= self.max_addresses and addr not in self._failures:
            # bounded memory: forget the oldest address
            oldest = min(self._failures, key=lambda a: self._failures[a][1])
            del self._failures[oldest]
        self._failures[addr] = (count, now)
        return count

    def succeeded(self, peer: str) -> None:
        self._failures.pop(self.address(peer), None)


class Authenticator:
    """Checks CONNECT credentials against ``auth.users`` (and ``auth.users_file``), or the
    verified client-certificate CN; anonymous clients per ``allow_anonymous``."""

    def __init__(self, auth: AuthConfig, *, max_concurrent: int = 2,
                 throttle: LoginThrottle | None = None) -> None:
        self.auth = auth
        self.users: dict[str, UserConfig] = dict(auth.users)
        if auth.users_file:
            self.users.update(read_users_file(auth.users_file))
        self.throttle = throttle or LoginThrottle()
        self._gates: dict[str, asyncio.Lock] = {}  # throttled addresses: one attempt at a time
        self._executor = ThreadPoolExecutor(max_concurrent, thread_name_prefix="argon2")
        self._slots = asyncio.Semaphore(max_concurrent)
        # Verifying against this keeps the timing of unknown users like that of known ones.
        self._dummy_hash = _DUMMY_HASH

    async def reload(self) -> int:
        """Re-read ``auth.users_file`` (SIGHUP); returns the number of users."""
        users = dict(self.auth.users)
        if self.auth.users_file:
            users.update(await asyncio.to_thread(read_users_file, self.auth.users_file))
        self.users = users
        log.info("users reloaded: %d", len(users))
        return len(users)

    async def authenticate(self, req: AuthRequest) -> AuthResult:
        auth = self.auth
        loop = asyncio.get_running_loop()
        anonymous = AuthResult(Decision.ALLOW, None, auth.anonymous_role)
        if req.cert_cn is not None:
            # A verified client certificate on a use_identity_as_username listener.
            user = self.users.get(req.cert_cn)
            if user is not None:
                return AuthResult(Decision.ALLOW, req.cert_cn, user.role)
            log.warning("certificate CN %r from %s is not a user", req.cert_cn, req.peer)
            return AuthResult(Decision.DENY, reason_code=RC.NOT_AUTHORIZED)
        if req.username is None:
            if auth.allow_anonymous:
                return anonymous
            return AuthResult(Decision.DENY, reason_code=RC.NOT_AUTHORIZED)
        user = self.users.get(req.username)
        password = req.password or b""
        if user is None and auth.allow_anonymous and not self.users:
            # A broker without users: a user name is just a label, the client is anonymous.
            return anonymous
        if not self.throttle.delay(req.peer, loop.time()):
            return await self._check(req, user, password)
        # A throttled address: one attempt at a time, each after its wait, so parallel
        # connections do not multiply a guesser's rate.
        address = LoginThrottle.address(req.peer)
        gate = self._gates.setdefault(address, asyncio.Lock())
        try:
            async with gate:
                delay = self.throttle.delay(req.peer, loop.time())
                log.warning("throttling logins from %s: %.1f s", req.peer, delay)
                await asyncio.sleep(delay)
                return await self._check(req, user, password)
        finally:
            if not gate.locked() and self._gates.get(address) is gate:
                del self._gates[address]

    async def _check(self, req: AuthRequest, user: UserConfig | None, password: bytes
                     ) -> AuthResult:
        loop = asyncio.get_running_loop()
        ok = False
        if len(password) <= MAX_PASSWORD_BYTES:
            async with self._slots:
                ok = await loop.run_in_executor(
                    self._executor, verify_password,
                    user.password_hash if user is not None and user.password_hash
                    else self._dummy_hash, password,
                )
        if user is not None and user.password_hash and ok:
            self.throttle.succeeded(req.peer)
            return AuthResult(Decision.ALLOW, req.username, user.role)
        count = self.throttle.failed(req.peer, loop.time())
        log.warning("authentication failed for user %r from %s (%d in a row)",
                    req.username, req.peer, count)
        return AuthResult(Decision.DENY, reason_code=RC.BAD_USER_NAME_OR_PASSWORD)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True, slots=True)
class _Role:
    subscribe: tuple[str, ...]
    publish: tuple[str, ...]
    deny: tuple[str, ...]


class AccessControl(BrokerHooks):
    """Topic ACL by role: a topic/filter must be allowed by the role's list and not denied
    (deny wins). ``{root}``, ``{username}`` and ``{client_id}`` are substituted per client."""

    def __init__(self, auth: AuthConfig, topics: Topics) -> None:
        roles = builtin_roles()
        roles.update(auth.roles)
        self.roles = {
            name: _Role(tuple(r.subscribe), tuple(r.publish), tuple(r.deny))
            for name, r in roles.items()
        }
        self.topics = topics
        self._cache: dict[tuple[str, str | None, str | None], _Role] = {}

    def _expand(self, client: ClientInfo) -> _Role | None:
        key = (client.client_id, client.username, client.role)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        role = self.roles.get(client.role or "")
        if role is None:
            return None

        # An id containing wildcards or '/' must not widen a filter it is substituted into.
        unsafe_ids = any(c in (client.username or "") + client.client_id for c in "+#/")

        def sub(filters: tuple[str, ...]) -> tuple[str, ...]:
            out = []
            for f in filters:
                if "{username}" in f and client.username is None:
                    continue  # anonymous clients have no user name to substitute
                if unsafe_ids and ("{username}" in f or "{client_id}" in f):
                    continue
                out.append(
                    f.replace("{root}", self.topics.root)
                    .replace("{username}", client.username or "")
                    .replace("{client_id}", client.client_id)
                )
            return tuple(out)

        reply = (f"{self.topics.reply_prefix('{client_id}')}/#",)
        expanded = _Role(sub(role.subscribe + reply), sub(role.publish), sub(role.deny))
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = expanded
        return expanded

    def authorize_publish(self, client: ClientInfo, topic: str, qos: int, retain: bool) -> Decision:
        if client.internal:
            return Decision.ALLOW
        role = self._expand(client)
        if role is None:
            return Decision.DENY
        if any(topic_matches(d, topic) for d in role.deny):
            return Decision.DENY
        if any(topic_matches(p, topic) for p in role.publish):
            return Decision.ALLOW
        return Decision.DENY

    def authorize_subscribe(self, client: ClientInfo, topic_filter: str, qos: int) -> Decision:
        if client.internal:
            return Decision.ALLOW
        role = self._expand(client)
        parsed = parse_shared(topic_filter)
        if role is None or parsed is None:
            return Decision.DENY
        plain = parsed[1]
        if any(filter_covers(d, plain) for d in role.deny):
            return Decision.DENY
        replies = f"{self.topics.root}/reply/#"
        own = f"{self.topics.reply_prefix(client.client_id)}/#"
        own_ok = not any(c in client.client_id for c in "+#/")  # ids that would widen it
        if filter_covers(replies, plain) and not (own_ok and (
                filter_covers(own, plain) or plain == self.topics.reply_prefix(client.client_id))):
            return Decision.DENY  # someone else's replies (a wider filter is read-filtered)
        if any(filter_covers(s, plain) for s in role.subscribe):
            return Decision.ALLOW
        return Decision.DENY

    def response_information(self, client: ClientInfo) -> str | None:
        return self.topics.reply_prefix(client.client_id)

    def read_protected(self) -> tuple[str, ...]:
        return (f"{self.topics.root}/reply/",)

    def readable(self, client: ClientInfo, topic: str) -> bool:
        """Replies are for their requester only: a ``{root}/#`` reader (a dashboard, another
        user, even an admin) does not see other clients' replies."""
        if client.internal:
            return True
        prefix = self.topics.reply_prefix(client.client_id)
        return topic == prefix or topic.startswith(prefix + "/")


# --- control leases ------------------------------------------------------------------------------
Holder = tuple[str | None, str]  # (authenticated user name, client id) as the broker saw them


@dataclass(slots=True)
class Lease:
    lease_id: str
    holder: Holder
    devices: frozenset[str] | None  # None: the global lease (every device)
    ttl: float
    expires: float  # the manager's clock (monotonic)
    expires_wall: float  # wall clock, for people
    written: set[str] = field(default_factory=set)  # devices the holder wrote under it

    def covers(self, device: str) -> bool:
        return self.devices is None or device in self.devices

    def describe(self) -> dict[str, Any]:
        from pi_mqtt_gpio.server.twin import utc_ts

        return {"holder": self.holder[0] or self.holder[1], "username": self.holder[0],
                "client_id": self.holder[1],
                "devices": None if self.devices is None else sorted(self.devices),
                "expires": utc_ts(self.expires_wall), "ttl": self.ttl}


class ControlLeaseManager:
    """Who may drive which device (DESIGN §3). Sans-io: time is passed in.

    ``scope: global`` — every lease is the global lease (a device list is accepted and
    ignored). ``scope: device`` — leases name devices; a lease without devices is global.
    A write to a device covered by someone else's lease is refused (``LEASE_HELD``); a write
    to a ``lease_required`` device without one's own covering lease too (``LEASE_REQUIRED``).
    The holder is the authenticated user name and client id, never a field of the payload.
    """

    def __init__(self, scope: str, default_ttl: float, *, max_ttl: float = 3600.0,
                 max_leases: int = 256) -> None:
        self.scope = scope
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.max_leases = max_leases
        self.leases: dict[str, Lease] = {}

    # --- queries --------------------------------------------------------------------------------
    def _conflicts(self, holder: Holder, devices: frozenset[str] | None) -> Lease | None:
        for lease in self.leases.values():
            if lease.holder == holder:
                continue
            if lease.devices is None or devices is None or lease.devices & devices:
                return lease
        return None

    def covering(self, device: str) -> list[Lease]:
        return [lease for lease in self.leases.values() if lease.covers(device)]

    def check_write(self, holder: Holder, device: str, lease_required: bool) -> None:
        """Raise ``LeaseHeld`` / ``LeaseRequired`` unless ``holder`` may write ``device``."""
        from pi_mqtt_gpio.errors import LeaseHeld, LeaseRequired

        mine = None
        for lease in self.covering(device):
            if lease.holder != holder:
                who = lease.holder[0] or lease.holder[1]
                raise LeaseHeld(f"{device} is leased by {who} until "
                                f"{lease.describe()['expires']}")
            mine = lease
        if mine is None and lease_required:
            raise LeaseRequired(f"{device} needs a control lease: acquire one on the lease "
                                f"topic first")
        if mine is not None:
            mine.written.add(device)

    def next_deadline(self) -> float | None:
        return min((lease.expires for lease in self.leases.values()), default=None)

    def snapshot(self) -> dict[str, Any]:
        return {"scope": self.scope,
                "leases": [lease.describe() for lease in
                           sorted(self.leases.values(), key=lambda item: item.expires)]}

    # --- changes --------------------------------------------------------------------------------
    def _ttl(self, ttl: float | None) -> float:
        from pi_mqtt_gpio.errors import BadArgument

        value = self.default_ttl if ttl is None else ttl
        if not 1 <= value <= self.max_ttl:
            raise BadArgument(f"ttl must be from 1 to {self.max_ttl:g} seconds")
        return float(value)

    def _devices(self, devices: list[str] | None) -> frozenset[str] | None:
        if self.scope == "global" or devices is None:
            return None
        return frozenset(devices)

    def _own(self, holder: Holder, lease_id: str | None, devices: frozenset[str] | None
             ) -> Lease:
        from pi_mqtt_gpio.errors import LeaseHeld, LeaseRequired

        if lease_id is not None:
            lease = self.leases.get(lease_id)
            if lease is None:
                raise LeaseRequired("no such lease (expired or released)")
            if lease.holder != holder:
                raise LeaseHeld("that lease belongs to another client")
            return lease
        for lease in self.leases.values():
            if lease.holder == holder and lease.devices == devices:
                return lease
        raise LeaseRequired("you hold no such lease")

    def acquire(self, holder: Holder, devices: list[str] | None, ttl: float | None,
                now: float, wall: float) -> Lease:
        from pi_mqtt_gpio.errors import Busy, LeaseHeld

        wanted = self._devices(devices)
        seconds = self._ttl(ttl)
        other = self._conflicts(holder, wanted)
        if other is not None:
            who = other.holder[0] or other.holder[1]
            raise LeaseHeld(f"held by {who} until {other.describe()['expires']}")
        for lease in self.leases.values():
            if lease.holder == holder and lease.devices == wanted:
                return self._extend(lease, seconds, now, wall)  # acquiring again renews
        if len(self.leases) >= self.max_leases:
            raise Busy("too many leases")
        lease = Lease(secrets.token_hex(8), holder, wanted, seconds, now + seconds, wall + seconds)
        self.leases[lease.lease_id] = lease
        return lease

    @staticmethod
    def _extend(lease: Lease, ttl: float, now: float, wall: float) -> Lease:
        lease.ttl = ttl
        lease.expires = now + ttl
        lease.expires_wall = wall + ttl
        return lease

    def renew(self, holder: Holder, lease_id: str | None, devices: list[str] | None,
              ttl: float | None, now: float, wall: float) -> Lease:
        lease = self._own(holder, lease_id, self._devices(devices))
        return self._extend(lease, self._ttl(ttl if ttl is not None else lease.ttl), now, wall)

    def release(self, holder: Holder, lease_id: str | None, devices: list[str] | None,
                *, force: bool = False) -> list[Lease]:
        """Release the holder's lease, or with ``force`` (admins) every lease matching."""
        if force:
            wanted = self._devices(devices)
            gone = [lease for lease in self.leases.values()
                    if (lease_id is None or lease.lease_id == lease_id)
                    and (wanted is None or lease.devices is None or lease.devices & wanted)]
        else:
            gone = [self._own(holder, lease_id, self._devices(devices))]
        for lease in gone:
            self.leases.pop(lease.lease_id, None)
        return gone

    def expire(self, now: float) -> list[Lease]:
        gone = [lease for lease in self.leases.values() if lease.expires <= now]
        for lease in gone:
            del self.leases[lease.lease_id]
        return gone

    def holder_gone(self, client_id: str) -> list[Lease]:
        """The holder's connection ended (disconnect, keepalive timeout, takeover)."""
        gone = [lease for lease in self.leases.values() if lease.holder[1] == client_id]
        for lease in gone:
            del self.leases[lease.lease_id]
        return gone
