"""Time-based covers with injected time: the pure position model, and the controller on a
hand-advanced clock (a 22 s travel runs in milliseconds) switching real gpiozero relays on
MockFactory pins through a worker that runs at once."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from pi_mqtt_gpio.errors import Busy, GatekeeperError
from pi_mqtt_gpio.server.covers import CoverController
from pi_mqtt_gpio.server.devices.cover import CoverAdapter, CoverConfig, CoverModel
from pi_mqtt_gpio.server.guards import Guards
from pi_mqtt_gpio.server.safety import Guard, SafetyPolicy, line_interlocks
from pi_mqtt_gpio.server.schema import build
from tests.conftest import PinRecorder


def cover_config(**over: Any) -> CoverConfig:
    data: dict[str, Any] = {
        "type": "Cover", "up": 5, "down": 6, "travel_time_up_s": 22.0,
        "travel_time_down_s": 21.0, "start_delay_up_s": 0.4, "start_delay_down_s": 0.3,
        "direction_change_pause_s": 0.5, "endstop_overrun_s": 2.0, "initial_position": 100,
        "position_step": 5,
    }
    data.update(over)
    problems: list[Any] = []
    cfg = build(CoverConfig, data, (), problems)
    assert not problems, problems
    assert isinstance(cfg, CoverConfig)
    return cfg


# --- the model ---------------------------------------------------------------------------------
def test_full_travel_down_and_up_with_start_delays() -> None:
    m = CoverModel(cover_config())
    assert m.position == 100 and not m.calibrated
    off = m.begin("down", 0.0, on_at=10.0)
    assert off == pytest.approx(10.0 + 0.3 + 21.0 + 2.0)  # delay + travel + overrun
    assert m.position_at(10.3) == 100  # the motor lag: on, not moving yet
    assert m.position_at(10.3 + 10.5) == pytest.approx(50)
    assert m.position_at(10.3 + 21.0) == 0
    assert m.end(off, arrived=True) == 0 and m.calibrated  # snapped: calibrated
    off = m.begin("up", 100.0, on_at=100.0)
    assert off == pytest.approx(100 + 0.4 + 22.0 + 2.0)
    assert m.position_at(100 + 0.4 + 11.0) == pytest.approx(50)


def test_stop_midway_keeps_the_computed_position() -> None:
    m = CoverModel(cover_config(initial_position=0))
    m.begin("up", 100.0, on_at=0.0)
    assert m.end(0.4 + 5.5, arrived=False) == pytest.approx(25)
    assert not m.calibrated and m.moving is None
    # stopped during the start delay: it never moved
    m.begin("down", 0.0, on_at=50.0)
    assert m.end(50.2, arrived=False) == pytest.approx(25)


def test_partial_target_runs_exactly_the_distance() -> None:
    m = CoverModel(cover_config(initial_position=100))
    off = m.begin("down", 40.0, on_at=0.0)
    assert off == pytest.approx(0.3 + 0.6 * 21.0)  # no overrun short of an end
    assert m.end(off, arrived=True) == 40 and not m.calibrated


def test_endstop_snaps_and_calibrates() -> None:
    m = CoverModel(cover_config(initial_position=30))
    m.begin("up", 100.0, on_at=0.0)
    assert m.endstop("open", 5.0) is None  # not a full travel: nothing learned
    assert m.position == 100 and m.calibrated and m.moving is None


def learning_cover(**learning: Any) -> CoverModel:
    cfg = cover_config(endstops={"open": 16, "closed": 19},
                       learning={"enabled": True, "alpha": 0.2, "clamp_percent": 20,
                                 **learning})
    return CoverModel(cfg, position=0.0, calibrated=True)


def test_learning_from_a_measured_full_travel() -> None:
    m = learning_cover()
    m.begin("up", 100.0, on_at=0.0)
    learned = m.endstop("open", 0.4 + 24.0)  # it took 24 s, 22 configured
    assert learned == pytest.approx(22.0 + 0.2 * (24.0 - 22.0))  # 22.4
    assert m.travel_up_s == pytest.approx(22.4) and m.travel_down_s == 21.0


def test_learning_is_clamped() -> None:
    m = learning_cover()
    for _ in range(30):  # a motor that takes 40 s: at most +20 % (26.4 s)
        m.position, m.calibrated = 0.0, True
        m.begin("up", 100.0, on_at=0.0)
        m.endstop("open", 0.4 + 40.0)
    assert m.travel_up_s == pytest.approx(22.0 * 1.2)
    m.position = 100.0
    for _ in range(30):
        m.position, m.calibrated = 100.0, True
        m.begin("down", 0.0, on_at=0.0)
        m.endstop("closed", 0.3 + 1.0)
    assert m.travel_down_s == pytest.approx(21.0 * 0.8)


def test_no_learning_from_a_travel_that_did_not_start_at_the_other_end() -> None:
    m = learning_cover()
    m.position = 10.0
    m.begin("up", 100.0, on_at=0.0)
    assert m.endstop("open", 30.0) is None and m.travel_up_s == 22.0


def test_position_from_persisted_state() -> None:
    cfg = cover_config(endstops={"open": 16, "closed": 19}, learning={"enabled": True})
    m = CoverModel.from_saved(cfg, {"position": 37.5, "calibrated": True,
                                     "travel_time_up_s": 23.0, "travel_time_down_s": 99.0})
    assert m.position == 37.5 and m.calibrated
    assert m.travel_up_s == 23.0 and m.travel_down_s == pytest.approx(21.0 * 1.2)  # clamped
    for bad in (None, [], {"position": "x"}, {"position": 101}, {"position": float("nan")},
                {"position": True}):
        m = CoverModel.from_saved(cfg, bad)
        assert m.position == 100 and not m.calibrated  # initial_position


def test_position_reports_on_every_step_and_at_least_once_a_second() -> None:
    m = CoverModel(cover_config(initial_position=0, travel_time_up_s=10.0))  # 10 %/s
    m.begin("up", 100.0, on_at=0.0)
    t, seen = 0.0, []
    while (nxt := m.next_report(t)) is not None and nxt < 11:
        seen.append(round(nxt, 3))
        t = nxt
    # 0.4 s start delay, then every 5 % (0.5 s at 10 %/s)
    assert seen[:3] == [0.9, 1.4, 1.9] and all(b - a <= 1.0 for a, b in itertools.pairwise(seen))
    assert [round(m.position_at(x), 6) for x in seen[:3]] == [5.0, 10.0, 15.0]
    m = CoverModel(cover_config(initial_position=0, travel_time_up_s=600.0, position_step=50))
    m.begin("up", 100.0, on_at=0.0)
    assert m.next_report(0.0) == 1.0  # a slow cover: still once a second


# --- the controller on a virtual clock ---------------------------------------------------------
class VirtualTime:
    """A clock and timers advanced by hand; pending asyncio work runs between timers."""

    def __init__(self) -> None:
        self.t = 1000.0
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...], list[bool]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.t

    def call_at(self, when: float, fn: Callable[..., None], *args: Any) -> Any:
        cancelled = [False]
        heapq.heappush(self._heap, (when, next(self._seq), fn, args, cancelled))

        class Handle:
            def cancel(self) -> None:
                cancelled[0] = True

        return Handle()

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        end = self.t + seconds
        await self.settle()
        while self._heap and self._heap[0][0] <= end:
            when, _seq, fn, args, cancelled = heapq.heappop(self._heap)
            if cancelled[0]:
                continue
            self.t = max(self.t, when)
            fn(*args)
            await self.settle()
        self.t = end
        await self.settle()


class InstantWorker:
    """The hardware worker, running each command at once, in order."""

    accepting = True

    def submit(self, fn: Callable[..., Any], *args: Any, force: bool = False
               ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(fn(*args))
        return future


class VirtualGuards(Guards):
    def __init__(self, policy: SafetyPolicy, vt: VirtualTime) -> None:
        super().__init__(policy, InstantWorker(), on_event=lambda *a: None,  # type: ignore[arg-type]
                         on_state=lambda n: None, make_safe=lambda a: None)
        self.vt = vt

    def _now(self) -> float:  # type: ignore[override]
        return self.vt.t


class Rig:
    def __init__(self, vt: VirtualTime, guard: Guard | None = None, **over: Any) -> None:
        cfg = cover_config(**over)
        self.factory = MockFactory()
        self.adapter = CoverAdapter("screen", cfg, simulate=True, emit=lambda *a: None)
        self.adapter.open(self.factory)
        guards = {} if guard is None else {"screen/up": guard, "screen/down": guard}
        policy = SafetyPolicy(guards, line_interlocks({"screen": cfg}))
        self.guards = VirtualGuards(policy, vt)
        self.states: list[dict[str, Any]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.c = CoverController(self.adapter, InstantWorker(), self.guards,
                                 on_state=lambda n, s: self.states.append(s),
                                 on_event=lambda n, e, x: self.events.append((e, x)),
                                 clock=vt.clock, call_at=vt.call_at)
        self.vt = vt
        self.pins = PinRecorder([self.adapter.up.pin, self.adapter.down.pin], clock=vt.clock)

    @property
    def relay_log(self) -> list[tuple[float, int, int]]:
        """(virtual time, up, down) after every relay change."""
        return [(t, int(lv.get(5, False)), int(lv.get(6, False)))
                for t, lv in self.pins.levels()]

    def relays(self) -> tuple[int, int]:
        return int(self.adapter.up.value), int(self.adapter.down.value)

    def close(self) -> None:
        self.adapter.close()
        self.factory.close()


def run_virtual(body: Callable[[VirtualTime], Any]) -> None:
    async def main() -> None:
        await body(VirtualTime())

    asyncio.run(main())


def test_22_s_travel_on_the_virtual_clock() -> None:
    async def body(vt: VirtualTime) -> None:
        rig = Rig(vt, initial_position=0)
        try:
            fut = rig.c.command("open", {})
            await vt.advance(0)
            assert fut.done() and rig.relays() == (1, 0)  # open answers once moving
            await vt.advance(0.4 + 11.0)
            assert rig.states[-1]["position"] == 50 and rig.states[-1]["state"] == "opening"
            await vt.advance(11.0 + 2.0 - 0.001)
            assert rig.relays() == (1, 0)  # the overrun: still on
            await vt.advance(0.002)
            assert rig.relays() == (0, 0)
            last = rig.states[-1]
            assert last["position"] == 100 and last["state"] == "open" and last["calibrated"]
            assert ("opened", {"position": 100}) in rig.events
            # relay on for start delay + travel + overrun, to the (virtual) microsecond
            (on_t, _, _), (off_t, _, _) = rig.relay_log[0], rig.relay_log[-1]
            assert off_t - on_t == pytest.approx(0.4 + 22.0 + 2.0, abs=0.002)
            steps = [s["position"] for s in rig.states if s["state"] == "opening"]
            assert steps[:4] == [0, 3, 5, 10]  # on; 1 s later (0.6 s moving: 2.7 %); 5; 10
            assert all(b - a <= 5 for a, b in itertools.pairwise(steps))
        finally:
            rig.close()

    run_virtual(body)


def test_set_position_replies_on_arrival() -> None:
    async def body(vt: VirtualTime) -> None:
        rig = Rig(vt, initial_position=100)
        try:
            fut = rig.c.command("set_position", {"position": 40.0})
            await vt.advance(0.3 + 0.6 * 21.0 - 0.01)
            assert not fut.done() and rig.relays() == (0, 1)
            await vt.advance(0.02)
            result, state = fut.result()
            assert result == {"position": 40} and state["position"] == 40
            assert state["state"] == "stopped" and rig.relays() == (0, 0)
        finally:
            rig.close()

    run_virtual(body)


def test_stop_midway_answers_the_waiting_set_position_with_busy() -> None:
    async def body(vt: VirtualTime) -> None:
        rig = Rig(vt, initial_position=0)
        try:
            fut = rig.c.command("set_position", {"position": 80.0})
            await vt.advance(0.4 + 5.5)  # 25 %
            stop = rig.c.command("stop", {})
            await vt.advance(0)
            assert stop.done() and rig.relays() == (0, 0)
            with pytest.raises(Busy, match=r"interrupted at 25: stopped by stop\(\)") as err:
                fut.result()
            assert err.value.details == {"interrupted_by": "stop", "position": 25}
            assert stop.result()[1]["position"] == 25
        finally:
            rig.close()

    run_virtual(body)


def test_reversal_stops_pauses_then_starts_the_other_relay() -> None:
    async def body(vt: VirtualTime) -> None:
        rig = Rig(vt, initial_position=0)
        try:
            first = rig.c.command("set_position", {"position": 100.0})
            await vt.advance(0.4 + 11.0)  # at 50, opening
            t_reverse = vt.t
            close = rig.c.command("close", {})
            await vt.advance(0.499)
            assert rig.relays() == (0, 0) and not close.done()  # the pause: both off
            await vt.advance(0.002)
            assert rig.relays() == (0, 1) and close.done()
            with pytest.raises(Busy) as err:
                first.result()
            assert err.value.details["interrupted_by"] == "reverse"
            changes = [(round(t - t_reverse, 3), up, down) for t, up, down in rig.relay_log]
            assert (0.0, 0, 0) in changes and (0.5, 0, 1) in changes
            assert all(not (up and down) for _t, up, down in rig.relay_log)
            # from 50 down: 0.3 delay + 10.5 s + 2 s overrun
            await vt.advance(0.3 + 10.5 + 2.0 + 0.01)
            assert rig.states[-1]["position"] == 0 and rig.relays() == (0, 0)
        finally:
            rig.close()

    run_virtual(body)


def test_a_new_target_the_same_way_keeps_the_relay_on() -> None:
    async def body(vt: VirtualTime) -> None:
        rig = Rig(vt, initial_position=0, start_delay_up_s=0)
        try:
            first = rig.c.command("set_position", {"position": 30.0})
            await vt.advance(2.2)  # at 10
            second = rig.c.command("set_position", {"position": 60.0})
            await vt.advance(0)
            with pytest.raises(Busy, match="superseded"):
                first.result()
            await vt.advance(0.6 * 22.0 - 2.2 + 0.01)
            assert second.result()[0] == {"position": 60}
            assert len(rig.relay_log) == 2  # one on, one off: no edge in between
        finally:
            rig.close()

    run_virtual(body)


def test_safe_state_stops_and_keeps_the_position() -> None:
    async def body(vt: VirtualTime) -> None:
        rig = Rig(vt, initial_position=100)
        try:
            waiting = rig.c.command("set_position", {"position": 0.0})
            await vt.advance(0.3 + 2.1)  # 10 % down
            rig.c.safe("lease")
            await vt.advance(0)
            assert rig.relays() == (0, 0) and rig.states[-1]["position"] == 90
            assert rig.c.saved()["position"] == 90
            with pytest.raises(Busy) as err:
                waiting.result()
            assert err.value.details["interrupted_by"] == "safe_state"
            await rig.c.halt()
            refused = rig.c.command("open", {})
            await vt.advance(0)
            with pytest.raises(Busy, match="shutting down"):
                refused.result()
        finally:
            rig.close()

    run_virtual(body)


def test_relays_go_through_the_safety_guards() -> None:
    """A stop and an immediate restart the same way: the relay's spacing delays the edge;
    flapping locks the relay out; switching off is never refused."""

    async def body(vt: VirtualTime) -> None:
        guard = Guard(min_relay_interval_s=1.0, min_command_interval_s=0, flap_window_s=60,
                      flap_max_edges=4, flap_lockout_s=30)
        rig = Rig(vt, guard, initial_position=50, start_delay_up_s=0)
        try:
            rig.c.command("open", {})
            await vt.advance(0.1)
            rig.c.command("stop", {})
            await vt.advance(0)
            assert rig.relays() == (1, 0)  # the off waits for the spacing (1 s after on)
            await vt.advance(0.9)
            assert rig.relays() == (0, 0)
            rig.c.command("open", {})
            await vt.advance(0.5)
            assert rig.relays() == (0, 0)  # the next on, too
            await vt.advance(0.5)
            assert rig.relays() == (1, 0)
            rig.c.command("stop", {})
            await vt.advance(1.0)
            refused = rig.c.command("open", {})  # the 5th edge of "up" in 60 s
            await vt.advance(1.0)
            with pytest.raises(GatekeeperError) as err:
                refused.result()
            assert err.value.code.value == "SAFETY_LOCKOUT" and rig.relays() == (0, 0)
            assert rig.guards.lockout_until("screen") is not None  # shown on the cover
            other = rig.c.command("close", {})  # the other relay is not locked out
            await vt.advance(0.01)
            assert other.done() and rig.relays() == (0, 1)
        finally:
            rig.close()

    run_virtual(body)


def test_the_adapter_never_leaves_both_relays_on() -> None:
    factory = MockFactory()
    adapter = CoverAdapter("screen", cover_config(), simulate=True, emit=lambda *a: None)
    adapter.open(factory)
    try:
        pins = PinRecorder([adapter.up.pin, adapter.down.pin])
        for direction in ("up", "down", "up", None, "down", "down", "up"):
            adapter.drive(direction)  # type: ignore[arg-type]
        assert len(pins.log) == 9 and pins.never_together(5, 6)
        adapter.safe()
        assert adapter.state() == {"up": 0, "down": 0}
    finally:
        adapter.close()
        factory.close()


@pytest.mark.parametrize(("payload", "expected"), [
    ("OPEN", ("open", {})), ("close", ("close", {})), ("STOP", ("stop", {})),
    ("40", ("set_position", {"position": 40.0})), ("0", ("set_position", {"position": 0.0})),
    (" 100 ", ("set_position", {"position": 100.0})),
])
def test_home_assistant_set_payloads(payload: str, expected: tuple[str, dict[str, Any]]
                                     ) -> None:
    adapter = CoverAdapter("screen", cover_config(), simulate=True, emit=lambda *a: None)
    assert adapter.parse_set(payload) == expected


@pytest.mark.parametrize("payload", ["101", "-1", "nan", "inf", "UP", ""])
def test_bad_set_payloads_are_refused(payload: str) -> None:
    adapter = CoverAdapter("screen", cover_config(), simulate=True, emit=lambda *a: None)
    with pytest.raises(GatekeeperError, match=r"expected OPEN|position must be") as err:
        adapter.parse_set(payload)
    assert err.value.code.value == "BAD_ARGUMENT"


def test_the_safety_layer_interlocks_the_two_relays_and_the_configured_groups() -> None:
    async def body(vt: VirtualTime) -> None:
        cfg = cover_config()
        policy = SafetyPolicy({}, [*line_interlocks({"screen": cfg}),
                                   frozenset({"screen", "heater"})])
        guards = VirtualGuards(policy, vt)
        guards.admit_value("screen/down", 1)
        with pytest.raises(GatekeeperError, match="interlocked") as err:
            guards.admit_value("screen/up", 1)
        assert err.value.code.value == "INTERLOCKED"
        guards.admit_value("screen/down", 0)
        guards.admit_value("screen/up", 1)  # the other one off: allowed
        # a cover interlocked with another device by the config
        rig = Rig(vt, initial_position=0)
        rig.guards.policy.interlocks.append(frozenset({"screen", "heater"}))
        rig.guards.admit_value("heater", 1)
        try:
            refused = rig.c.command("open", {})
            await vt.advance(0)
            with pytest.raises(GatekeeperError) as err:
                refused.result()
            assert err.value.code.value == "INTERLOCKED" and rig.relays() == (0, 0)
        finally:
            rig.close()

    run_virtual(body)


def test_the_rate_limit_is_on_commands_not_on_the_relay_writes_they_cause() -> None:
    """open right after a set_position arrived is not refused (the relay went off just
    before); two moving commands within min_command_interval_s are; stop never is."""

    async def body(vt: VirtualTime) -> None:
        from pi_mqtt_gpio.server.safety import guards_for

        cfg = cover_config(initial_position=80, start_delay_up_s=0)
        defaults = Guard(min_relay_interval_s=0, min_command_interval_s=0.2)
        guards = guards_for(defaults, {"screen": cfg})
        assert guards["screen/up"].min_command_interval_s == 0
        assert guards["screen/commands"].min_command_interval_s == 0.2
        rig = Rig(vt, initial_position=80, start_delay_up_s=0)
        rig.guards.policy.guards.update(guards)
        try:
            arrived = rig.c.command("set_position", {"position": 90.0})
            await vt.advance(0.1 * 22.0 + 0.001)
            assert arrived.result()[0] == {"position": 90}
            opened = rig.c.command("open", {})
            await vt.advance(0)
            assert opened.done() and rig.relays() == (1, 0)
            with pytest.raises(GatekeeperError) as err:
                rig.c.command("close", {})
            assert err.value.code.value == "RATE_LIMITED" and err.value.retry_after
            stopped = rig.c.command("stop", {})
            await vt.advance(0)
            assert stopped.done() and rig.relays() == (0, 0)
        finally:
            rig.close()

    run_virtual(body)


def test_a_flood_of_commands_is_bounded() -> None:
    """Stops are never rate limited, but they queue: past 32 waiting, BUSY (memory stays
    bounded whatever a client sends)."""

    async def body(vt: VirtualTime) -> None:
        rig = Rig(vt, initial_position=50)
        try:
            accepted, refused = 0, 0
            for _ in range(200):
                try:
                    rig.c.command("stop", {})
                    accepted += 1
                except Busy:
                    refused += 1
            assert accepted == 32 and refused == 168
            await vt.advance(0.1)
            rig.c.command("stop", {})  # drained: accepted again
        finally:
            rig.close()

    run_virtual(body)
