"""Authentication (argon2id) and topic authorisation by role.

Both are broker hooks answering allow / deny / defer. Password verification runs in a thread
(never on the event loop) with a cap on concurrent verifications.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import argon2

from pi_mqtt_gpio.mqtt.hooks import AuthRequest, AuthResult, BrokerHooks, ClientInfo, Decision
from pi_mqtt_gpio.mqtt.packets import RC
from pi_mqtt_gpio.mqtt.topic_tree import filter_covers, parse_shared, topic_matches
from pi_mqtt_gpio.server.config import AuthConfig, RoleConfig
from pi_mqtt_gpio.topics import Topics

__all__ = [
    "AccessControl",
    "Authenticator",
    "builtin_roles",
    "hash_password",
    "verify_password",
]

log = logging.getLogger("pi_mqtt_gpio.security")

_hasher = argon2.PasswordHasher()  # argon2id, library defaults (RFC 9106 low-memory profile)
MAX_PASSWORD_BYTES = 1024


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


class Authenticator:
    """Checks CONNECT credentials against ``auth.users``; anonymous per ``allow_anonymous``."""

    def __init__(self, auth: AuthConfig, *, max_concurrent: int = 2) -> None:
        self.auth = auth
        self._executor = ThreadPoolExecutor(max_concurrent, thread_name_prefix="argon2")
        self._slots = asyncio.Semaphore(max_concurrent)
        # Verifying against this keeps the timing of unknown users like that of known ones.
        self._dummy_hash = hash_password("pi-mqtt-gatekeeper-dummy")

    async def authenticate(self, req: AuthRequest) -> AuthResult:
        auth = self.auth
        anonymous = AuthResult(Decision.ALLOW, None, auth.anonymous_role)
        if req.username is None:
            if auth.allow_anonymous:
                return anonymous
            return AuthResult(Decision.DENY, reason_code=RC.NOT_AUTHORIZED)
        user = auth.users.get(req.username)
        password = req.password or b""
        if len(password) > MAX_PASSWORD_BYTES:
            return AuthResult(Decision.DENY, reason_code=RC.BAD_USER_NAME_OR_PASSWORD)
        if user is None and auth.allow_anonymous and not auth.users:
            # A broker without users: a user name is just a label, the client is anonymous.
            return anonymous
        async with self._slots:
            ok = await asyncio.get_running_loop().run_in_executor(
                self._executor, verify_password,
                user.password_hash if user else self._dummy_hash, password,
            )
        if user is not None and ok:
            return AuthResult(Decision.ALLOW, req.username, user.role)
        log.warning("authentication failed for user %r from %s", req.username, req.peer)
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
        if any(filter_covers(s, plain) for s in role.subscribe):
            return Decision.ALLOW
        return Decision.DENY

    def response_information(self, client: ClientInfo) -> str | None:
        return self.topics.reply_prefix(client.client_id)
