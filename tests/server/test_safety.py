"""The safety policy with injected time: every verdict, each boundary exactly at the limit
and 1 ms before it."""

from __future__ import annotations

import pytest

from pi_mqtt_gpio.server.safety import Allow, Delay, Guard, Refuse, SafetyPolicy

MS = 0.001


def policy(**guard: float | int | None) -> SafetyPolicy:
    g = Guard(**{"min_relay_interval_s": 0.0, "min_command_interval_s": 0.0,
                 "flap_lockout_s": 0.0, **guard})  # type: ignore[arg-type]
    return SafetyPolicy({"relay": g, "pump_fill": Guard(0, 0, 10, 8, 0),
                         "pump_drain": Guard(0, 0, 10, 8, 0)},
                        [frozenset({"pump_fill", "pump_drain"})])


def write(p: SafetyPolicy, value: int, now: float, device: str = "relay"):  # type: ignore[no-untyped-def]
    verdict = p.check(device, value, bool(value), now)
    p.commit(device, value, bool(value), verdict, now)
    return verdict


@pytest.mark.parametrize(("second_at", "expected"), [
    (0.5, Allow(0.5)),             # exactly at the spacing: runs now
    (0.5 - MS, Delay(0.5)),        # 1 ms before: delayed to the earliest allowed time
    (0.1, Delay(0.5)),
])
def test_relay_spacing_delays_never_drops(second_at: float, expected: object) -> None:
    p = policy(min_relay_interval_s=0.5)
    assert write(p, 1, 0.0) == Allow(0.0)
    assert write(p, 0, second_at) == expected


def test_spaced_edges_keep_their_order() -> None:
    p = policy(min_relay_interval_s=0.5)
    times = [write(p, 1 - i % 2, i * 0.002) for i in range(10)]
    ats = [v.at for v in times]  # type: ignore[union-attr]
    assert ats == pytest.approx([0.5 * i for i in range(10)])  # 10 edges, 0.5 s apart


def test_a_write_that_changes_nothing_is_not_delayed_but_waits_its_turn() -> None:
    p = policy(min_relay_interval_s=0.5)
    write(p, 1, 0.0)
    write(p, 0, 0.1)  # delayed to 0.5
    assert write(p, 0, 0.2) == Delay(0.5)  # a no-op, behind the delayed one (order kept)


@pytest.mark.parametrize(("second_at", "refused"), [(0.2, False), (0.2 - MS, True)])
def test_rate_limit(second_at: float, refused: bool) -> None:
    p = policy(min_command_interval_s=0.2)
    write(p, 1, 0.0)
    verdict = p.check("relay", 1, True, second_at)
    if refused:
        assert isinstance(verdict, Refuse) and verdict.code == "RATE_LIMITED"
        assert verdict.retry_after == pytest.approx(MS)
    else:
        assert verdict == Allow(second_at)


def test_switching_off_is_never_rate_limited() -> None:
    p = policy(min_command_interval_s=1.0)
    write(p, 1, 0.0)
    assert write(p, 0, 0.1) == Allow(0.1)


@pytest.mark.parametrize(("changes", "locked"), [(8, False), (9, True)])
def test_flap_lockout_at_more_than_max_edges(changes: int, locked: bool) -> None:
    p = policy(flap_window_s=10, flap_max_edges=8, flap_lockout_s=15)
    verdicts = [write(p, (i + 1) % 2, float(i)) for i in range(changes)]
    last = verdicts[-1]
    assert isinstance(last, Refuse) == locked
    if locked:
        assert last.code == "SAFETY_LOCKOUT" and last.retry_after == 15  # type: ignore[union-attr]
        assert p.lockout_until("relay", 8.0) == 23.0
        refused = p.check("relay", 1, True, 23.0 - MS)
        assert isinstance(refused, Refuse) and refused.retry_after == pytest.approx(MS)
        assert isinstance(p.check("relay", 1, True, 23.0), Allow)  # exactly at the end
        assert p.lockout_until("relay", 23.0) is None


def test_edges_outside_the_window_do_not_count() -> None:
    p = policy(flap_window_s=10, flap_max_edges=2, flap_lockout_s=15)
    write(p, 1, 0.0)
    write(p, 0, 1.0)
    assert write(p, 1, 10.0 + MS) == Allow(10.0 + MS)  # the edge at 0 has left the window
    assert write(p, 0, 10.5) == Allow(10.5)  # switching off is never locked out
    assert isinstance(write(p, 1, 10.6), Refuse)


def test_lockout_can_be_cleared_and_off_still_works() -> None:
    p = policy(flap_window_s=10, flap_max_edges=1, flap_lockout_s=60)
    write(p, 1, 0.0)
    assert isinstance(write(p, 0, 1.0), Allow)  # off: always allowed
    assert isinstance(p.check("relay", 1, True, 2.0), Refuse)
    assert p.clear_lockout("relay") and isinstance(p.check("relay", 1, True, 2.0), Allow)


def test_no_op_writes_do_not_count_as_flapping() -> None:
    p = policy(flap_window_s=10, flap_max_edges=1, flap_lockout_s=60)
    write(p, 1, 0.0)
    for i in range(20):
        assert isinstance(write(p, 1, 1.0 + i), Allow)


def test_interlock_against_the_predicted_state() -> None:
    p = policy()
    assert write(p, 1, 0.0, "pump_fill") == Allow(0.0)
    # queued, not yet run: the drain must still be refused
    refused = p.check("pump_drain", 1, True, 0.0)
    assert isinstance(refused, Refuse) and refused.code == "INTERLOCKED"
    assert "pump_fill" in refused.message
    assert write(p, 0, 0.0, "pump_fill") == Allow(0.0)  # a member can always be switched off
    assert write(p, 1, 0.0, "pump_drain") == Allow(0.0)


def test_unguarded_devices_are_only_interlocked() -> None:
    p = SafetyPolicy({}, [])
    for i in range(100):
        assert write(p, i % 2, i * MS, "led") == Allow(i * MS)
