"""Login throttling with injected time, and the Authenticator that applies it."""

from __future__ import annotations

import asyncio
import time

import pytest

from pi_mqtt_gpio.mqtt.hooks import AuthRequest, Decision
from pi_mqtt_gpio.mqtt.packets import RC
from pi_mqtt_gpio.server.config_loader import parse_config
from pi_mqtt_gpio.server.security import Authenticator, LoginThrottle, hash_password

PEER = "10.0.0.5:40000"


def _fail(t: LoginThrottle, peer: str, user: str | None, now: float) -> None:
    ticket = t.reserve(peer, user, now)
    assert ticket is not None
    t.failed(ticket, now)


@pytest.mark.parametrize(("failures", "expected"), [
    (0, 0.0), (2, 0.0), (3, 0.5), (4, 1.0), (5, 2.0), (6, 4.0), (12, 4.0),
])
def test_backoff_per_address(failures: int, expected: float) -> None:
    t = LoginThrottle(free=3, base=0.5, cap=4.0, max_wait=100, forget_after=600)
    for i in range(failures):
        _fail(t, PEER, f"user{i}", 100.0 + 10 * i)  # spaced out: no queueing
    now = 100.0 + 10 * failures
    assert t.delay("10.0.0.5:1", now) == expected  # the address, not the port
    assert t.delay("10.0.0.9:1", now) == 0.0  # the real user elsewhere is not slowed


def test_parallel_attempts_are_accounted_before_checking() -> None:
    """60 attempts at the same instant: three free, then turns 0.5, 1.5, 3.5 s away, and the
    rest refused unchecked (their turn would come after ``max_wait``)."""
    t = LoginThrottle(free=3, base=0.5, cap=4.0, max_wait=4.0)
    tickets = [t.reserve(f"10.0.0.5:{i}", "admin", 0.0) for i in range(60)]
    admitted = [tk.at for tk in tickets if tk is not None]
    assert admitted == [0.0, 0.0, 0.0, 0.5, 1.5, 3.5]


def test_success_resets_the_user_only() -> None:
    t = LoginThrottle(free=3, base=0.5, cap=4.0, max_wait=100)
    for i in range(5):
        _fail(t, PEER, "admin", 10.0 * i)
    ok = t.reserve(PEER, "viewer", 100.0)  # the guesser's own account logs in fine ...
    assert ok is not None
    t.succeeded(ok)
    assert t.delay(PEER, 200.0) == 2.0  # ... and the address keeps its five failures
    assert t.delay("10.9.9.9:1", 200.0, "admin") == 2.0  # admin is slowed everywhere
    good = t.reserve("10.9.9.9:1", "admin", 200.0)
    assert good is not None
    t.succeeded(good)
    assert t.delay("10.9.9.9:1", 300.0, "admin") == 0.0  # until admin logs in


def test_boundaries_of_forgetting() -> None:
    t = LoginThrottle(free=1, base=1.0, cap=4.0, max_wait=100, forget_after=60)
    _fail(t, PEER, None, 0.0)
    assert t.delay(PEER, 60.0) == 1.0  # exactly at forget_after: still remembered
    assert t.delay(PEER, 60.001) == 0.0  # just after: forgotten


def test_abandoned_attempt_gives_back_its_turn() -> None:
    t = LoginThrottle(free=0, base=1.0, cap=1.0, max_wait=10)
    first = t.reserve(PEER, None, 0.0)
    assert first is not None and first.at == 1.0
    t.abandoned(first)  # the client closed: nothing was checked
    again = t.reserve(PEER, None, 0.0)
    assert again is not None and again.at == 1.0


def test_memory_is_bounded() -> None:
    t = LoginThrottle(max_keys=100, max_wait=100)
    for i in range(1000):
        _fail(t, f"10.0.{i // 256}.{i % 256}:1", f"u{i}", float(i))
    assert len(t) <= 200


CFG = parse_config(
    "node_id: t\nauth: {users: {alice: {password_hash: '" + hash_password("pw")
    + "', role: operator}}}\n")


def test_authenticator_serialises_a_throttled_address_and_refuses_the_excess() -> None:
    async def main() -> tuple[float, list[int], int]:
        throttle = LoginThrottle(free=0, base=0.2, cap=0.2, max_wait=0.5)
        auth = Authenticator(CFG.auth, throttle=throttle)
        reqs = [AuthRequest(f"c{i}", "alice", b"wrong", 5, "tcp", f"10.1.1.1:{i}")
                for i in range(6)]
        start = time.monotonic()
        results = await asyncio.gather(*(auth.authenticate(r) for r in reqs))
        elapsed = time.monotonic() - start
        checks = auth.checks
        auth.close()
        return elapsed, [r.reason_code for r in results], checks

    elapsed, codes, checks = asyncio.run(main())
    # turns at 0.2 and 0.4 s are checked; the others would wait past 0.5 s: refused unchecked
    assert codes == [RC.BAD_USER_NAME_OR_PASSWORD] * 2 + [RC.SERVER_BUSY] * 4
    assert checks == 2 and elapsed >= 0.35


def test_cancelled_login_runs_no_password_check() -> None:
    async def main() -> tuple[int, str]:
        throttle = LoginThrottle(free=0, base=0.3, cap=0.3, max_wait=1)
        auth = Authenticator(CFG.auth, throttle=throttle)
        task = asyncio.ensure_future(auth.authenticate(
            AuthRequest("c", "alice", b"wrong", 5, "tcp", "10.1.1.1:1")))
        await asyncio.sleep(0.05)
        task.cancel()  # the socket closed while it waited for its turn
        await asyncio.sleep(0.4)
        ok = await auth.authenticate(AuthRequest("d", "alice", b"pw", 5, "tcp", "10.2.2.2:1"))
        auth.close()
        return auth.checks, ok.decision.value

    checks, decision = asyncio.run(main())
    assert checks == 1 and decision == Decision.ALLOW.value


def test_role_of_follows_reloads() -> None:
    auth = Authenticator(CFG.auth)
    assert auth.role_of("alice") == "operator"
    assert auth.role_of("mallory") is None
    assert auth.role_of(None) is None  # anonymous not allowed
    auth.users = {}
    assert auth.role_of("alice") is None
    auth.close()
