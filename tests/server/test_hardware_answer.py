"""The hardware worker's answers (``Answer``): their done-callbacks run in the loop callback
that hands the answer over, in the order they were added (asyncio would run them one loop
iteration later, which under load is a round of every busy client's turn); a cancelled
answer, one set by anyone else, or a callback added too late behave as asyncio's futures do.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from pi_mqtt_gpio.errors import HardwareError
from pi_mqtt_gpio.server.config_loader import parse_config
from pi_mqtt_gpio.server.hardware import Answer, HardwareManager


def manager() -> HardwareManager:
    cfg = parse_config("devices: {}\n")
    factory = MockFactory(pin_class=MockPWMPin)
    return HardwareManager(dict(cfg.devices), lambda: factory, simulate=True)


def _track_resolve(hw: HardwareManager) -> list[bool]:
    """A flag that is [True] while ``hw._resolve`` runs."""
    inside = [False]
    resolve = hw._resolve

    def tracked(*args: Any) -> None:
        inside[0] = True
        try:
            resolve(*args)
        finally:
            inside[0] = False

    hw._resolve = tracked  # type: ignore[method-assign]
    return inside


def test_callbacks_run_when_the_answer_is_handed_over_in_order() -> None:
    async def main() -> None:
        hw = manager()
        await hw.start()
        inside = _track_resolve(hw)
        seen: list[tuple[str, bool, Any]] = []
        future = hw.submit(lambda: 42)
        assert isinstance(future, Answer)
        for name in ("first", "second", "third"):
            future.add_done_callback(
                lambda f, name=name: seen.append((name, inside[0], f.result())))
        assert await future == 42
        assert seen == [("first", True, 42), ("second", True, 42), ("third", True, 42)]
        # a callback added once the answer is there is scheduled as asyncio does
        late: list[bool] = []
        future.add_done_callback(lambda f: late.append(inside[0]))
        assert late == []
        await asyncio.sleep(0)
        assert late == [False]
        await hw.stop()

    asyncio.run(main())


def test_an_error_reaches_the_callbacks_and_a_failing_callback_stops_no_other() -> None:
    async def main() -> None:
        hw = manager()
        await hw.start()
        reported: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: reported.append(ctx))
        errors: list[BaseException | None] = []

        def boom() -> None:
            raise OSError("line 17: I/O error")

        def bad(_f: asyncio.Future[Any]) -> None:
            raise ValueError("a callback's own bug")

        future = hw.submit(boom)
        future.add_done_callback(bad)
        future.add_done_callback(lambda f: errors.append(f.exception()))
        with pytest.raises(HardwareError, match="line 17"):
            await future
        assert len(errors) == 1 and isinstance(errors[0], HardwareError)
        assert [type(ctx["exception"]) for ctx in reported] == [ValueError]
        await hw.stop()

    asyncio.run(main())


def test_cancelled_removed_and_set_elsewhere_behave_as_asyncio() -> None:
    async def main() -> None:
        hw = manager()
        await hw.start()
        gate = threading.Event()
        blocker = hw.submit(gate.wait, 5)
        seen: list[str] = []
        cancelled = hw.submit(lambda: "never seen")
        cancelled.add_done_callback(lambda f: seen.append(f"cancelled {f.cancelled()}"))
        removed = hw.submit(lambda: "ran")

        def never(_f: asyncio.Future[Any]) -> None:
            seen.append("removed callback ran")

        removed.add_done_callback(never)
        assert removed.remove_done_callback(never) == 1
        assert cancelled.cancel()
        assert seen == []  # scheduled, as asyncio does
        await asyncio.sleep(0)
        assert seen == ["cancelled True"]
        other = Answer(loop=asyncio.get_running_loop())
        other.add_done_callback(lambda f: seen.append(f"set elsewhere {f.result()}"))
        other.set_result(7)
        assert seen == ["cancelled True"]
        await asyncio.sleep(0)
        assert seen[-1] == "set elsewhere 7"
        gate.set()
        assert await blocker is True
        assert await removed == "ran"
        assert "removed callback ran" not in seen
        await hw.stop()

    asyncio.run(main())


def test_awaiting_tasks_wait_for_and_gather_work() -> None:
    async def main() -> None:
        hw = manager()
        await hw.start()
        gate = threading.Event()
        slow = hw.submit(gate.wait, 5)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(slow), 0.05)
        gate.set()
        assert await slow is True

        async def waiter(i: int) -> int:
            return int(await hw.submit(lambda: i * 2))

        assert await asyncio.gather(*(waiter(i) for i in range(50))) == [i * 2 for i in range(50)]
        done, _ = await asyncio.wait([hw.submit(lambda: 1), hw.submit(lambda: 2)])
        assert sorted(f.result() for f in done) == [1, 2]
        await hw.stop()

    asyncio.run(main())


def test_an_event_the_command_raised_goes_before_its_answer() -> None:
    """A command that raised a device event (here posted to the airlock as a simulated press
    would be) is answered after the event is handled: the reply does not overtake it."""
    async def main() -> None:
        hw = manager()
        await hw.start()
        order: list[str] = []

        async def drain() -> None:
            event = await hw.events.get()
            order.append(f"event {event.device}")

        drainer = asyncio.create_task(drain())
        await asyncio.sleep(0)

        def press() -> str:
            hw.airlock("button", "pressed", {"value": 1})
            return "pressed"

        future = hw.submit(press)
        future.add_done_callback(lambda f: order.append(f"answer {f.result()}"))
        await future
        await drainer
        assert order == ["event button", "answer pressed"]
        # and with no event waiting the answer's callbacks run at once
        inside = _track_resolve(hw)
        seen: list[bool] = []
        quiet = hw.submit(lambda: None)
        quiet.add_done_callback(lambda f: seen.append(inside[0]))
        await quiet
        assert seen == [True]
        await hw.stop()

    asyncio.run(main())


def test_system_exit_in_a_callback_leaves_the_others_scheduled() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ran: list[str] = []
        future = Answer(loop=loop)

        def leave(_f: asyncio.Future[Any]) -> None:
            raise SystemExit(3)

        future.add_done_callback(leave)
        future.add_done_callback(lambda f: ran.append("after"))

        def handed_over() -> None:  # a plain loop callback, as _resolve is
            try:
                future.answer(1, None)
            except SystemExit:
                ran.append("exit")

        loop.call_soon(handed_over)
        for _ in range(3):
            await asyncio.sleep(0)
        assert ran == ["exit", "after"]

    asyncio.run(main())
