"""Authentication: CONNECT credentials against ``auth.users`` / ``auth.users_file``, or the
verified client-certificate CN; anonymous clients per ``allow_anonymous``.

Password checks run in a small thread pool (never on the event loop), at most
``max_concurrent`` at once (each costs ``ARGON2_MEMORY_KIB``), each after its turn from the
``LoginThrottle``. A check whose connection has gone (closed, timed out) is cancelled by the
transport before it runs: nobody is waiting for its answer.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from pi_mqtt_gpio.mqtt.hooks import AuthRequest, AuthResult, Decision
from pi_mqtt_gpio.mqtt.logguard import LogLimiter, clip
from pi_mqtt_gpio.mqtt.packets import RC
from pi_mqtt_gpio.server.config import BUILTIN_ROLES, AuthConfig, UserConfig
from pi_mqtt_gpio.server.security.passwords import (
    DUMMY_HASH,
    MAX_PASSWORD_BYTES,
    read_users_file,
    verify_password,
)
from pi_mqtt_gpio.server.security.throttle import LoginThrottle, Ticket

__all__ = ["Authenticator"]

log = logging.getLogger("pi_mqtt_gpio.security")

DEFAULT_MAX_CONCURRENT_CHECKS = 2


class Authenticator:
    def __init__(self, auth: AuthConfig, *, max_concurrent: int = DEFAULT_MAX_CONCURRENT_CHECKS,
                 throttle: LoginThrottle | None = None) -> None:
        self.auth = auth
        self.roles = frozenset(BUILTIN_ROLES) | frozenset(auth.roles)
        self.users: dict[str, UserConfig] = dict(auth.users)
        if auth.users_file:
            self.users.update(read_users_file(auth.users_file, self.roles))
        self.throttle = throttle if throttle is not None else LoginThrottle()
        self.max_concurrent = max_concurrent
        self._executor = ThreadPoolExecutor(max_concurrent, thread_name_prefix="argon2")
        self._slots = asyncio.Semaphore(max_concurrent)
        self._log = LogLimiter(log)
        self.checks = 0  # password checks actually run (for tests and health)

    async def reload(self) -> int:
        """Re-read ``auth.users_file`` (SIGHUP); returns the number of users."""
        users = dict(self.auth.users)
        if self.auth.users_file:
            users.update(await asyncio.to_thread(read_users_file, self.auth.users_file,
                                                 self.roles))
        self.users = users
        log.info("users reloaded: %d", len(users))
        return len(users)

    def role_of(self, username: str | None) -> str | None:
        """The role ``username`` has now (after reloads); None if it is no longer a user.
        Anonymous clients (no user name) have the anonymous role while anonymous is allowed."""
        if username is None:
            return self.auth.anonymous_role if self.auth.allow_anonymous else None
        user = self.users.get(username)
        if user is not None:
            return user.role
        if self.auth.allow_anonymous and not self.users:
            return self.auth.anonymous_role  # a broker without users: names are labels
        return None

    async def authenticate(self, req: AuthRequest) -> AuthResult:
        auth = self.auth
        anonymous = AuthResult(Decision.ALLOW, None, auth.anonymous_role)
        if req.cert_cn is not None:
            # A verified client certificate on a use_identity_as_username listener.
            user = self.users.get(req.cert_cn)
            if user is not None:
                return AuthResult(Decision.ALLOW, req.cert_cn, user.role)
            self._warn(req, "certificate CN %r from %s is not a user", clip(req.cert_cn),
                       req.peer)
            return AuthResult(Decision.DENY, reason_code=RC.NOT_AUTHORIZED)
        if req.username is None:
            if auth.allow_anonymous:
                return anonymous
            return AuthResult(Decision.DENY, reason_code=RC.NOT_AUTHORIZED)
        user = self.users.get(req.username)
        if user is None and auth.allow_anonymous and not self.users:
            # A broker without users: a user name is just a label, the client is anonymous.
            return AuthResult(Decision.ALLOW, None, auth.anonymous_role)
        loop = asyncio.get_running_loop()
        ticket = self.throttle.reserve(req.peer, req.username, loop.time())
        if ticket is None:
            self._warn(req, "login from %s for %r refused unchecked: too many failures",
                       req.peer, clip(req.username))
            return AuthResult(Decision.DENY, reason_code=RC.SERVER_BUSY)
        try:
            ok = await self._check(ticket, user, req.password or b"")
        except BaseException:
            self.throttle.abandoned(ticket)
            raise
        if ok and user is not None:
            self.throttle.succeeded(ticket)
            return AuthResult(Decision.ALLOW, req.username, user.role)
        count = self.throttle.failed(ticket, loop.time())
        self._warn(req, "authentication failed for user %r from %s (%d failures)",
                   clip(req.username), req.peer, count)
        return AuthResult(Decision.DENY, reason_code=RC.BAD_USER_NAME_OR_PASSWORD)

    async def _check(self, ticket: Ticket, user: UserConfig | None, password: bytes) -> bool:
        loop = asyncio.get_running_loop()
        wait = ticket.at - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        if len(password) > MAX_PASSWORD_BYTES:
            return False
        known = user is not None and user.password_hash
        async with self._slots:
            self.checks += 1
            ok = await loop.run_in_executor(
                self._executor, verify_password,
                user.password_hash if user is not None and user.password_hash else DUMMY_HASH,
                password,
            )
        return bool(ok and known)

    def _warn(self, req: AuthRequest, fmt: str, *args: object) -> None:
        key = LoginThrottle.address(req.peer)
        self._log.log(logging.WARNING, key, asyncio.get_running_loop().time(), fmt, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
