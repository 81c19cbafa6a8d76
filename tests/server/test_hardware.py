"""HardwareManager: one worker thread, FIFO commands, the airlock, safe states."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from pi_mqtt_gpio.errors import Busy, HardwareError
from pi_mqtt_gpio.server.config_loader import parse_config
from pi_mqtt_gpio.server.hardware import HardwareManager, find_header_chip, resolve_chip


def manager(devices_yaml: str = "{}", **kw: Any) -> tuple[HardwareManager, MockFactory]:
    cfg = parse_config(f"devices: {devices_yaml}\n")
    factory = MockFactory(pin_class=MockPWMPin)
    return HardwareManager(dict(cfg.devices), lambda: factory, simulate=True, **kw), factory


def test_fifo_order_across_concurrent_callers() -> None:
    async def main() -> list[int]:
        hw, _ = manager(queue_max=10_000)
        await hw.start()
        seen: list[int] = []
        threads: set[str] = set()

        def work(i: int) -> int:
            threads.add(threading.current_thread().name)
            seen.append(i)
            return i

        async def caller(offset: int) -> list[int]:
            futures = []
            for i in range(offset, offset + 500):
                futures.append(hw.submit(work, i))
                if i % 7 == 0:
                    await asyncio.sleep(0)
            return list(await asyncio.gather(*futures))

        results = await asyncio.gather(caller(0), caller(1000), caller(2000))
        assert [r for rs in results for r in rs] == [*range(500), *range(1000, 1500),
                                                      *range(2000, 2500)]
        assert threads == {"hardware-worker"}
        await hw.stop()
        return seen

    seen = asyncio.run(main())
    # Submission order is execution order: each caller's numbers appear in increasing order.
    for base in (0, 1000, 2000):
        mine = [i for i in seen if base <= i < base + 500]
        assert mine == sorted(mine)


def test_hardware_exception_does_not_kill_the_worker() -> None:
    async def main() -> None:
        hw, _ = manager()
        await hw.start()

        def boom() -> None:
            raise OSError("line 17: I/O error")

        with pytest.raises(HardwareError, match="OSError: line 17: I/O error"):
            await hw.submit(boom)
        assert await hw.submit(lambda: 42) == 42
        await hw.stop()

    asyncio.run(main())


def test_busy_when_queue_is_full_and_when_stopping() -> None:
    async def main() -> None:
        hw, _ = manager(queue_max=3)
        await hw.start()
        gate = threading.Event()
        futures = [hw.submit(gate.wait, 5) for _ in range(3)]
        with pytest.raises(Busy):
            hw.submit(lambda: None)
        gate.set()
        await asyncio.gather(*futures)
        await hw.stop()
        with pytest.raises(Busy, match="shutting down"):
            hw.submit(lambda: None)

    asyncio.run(main())


def test_airlock_from_many_threads() -> None:
    async def main() -> None:
        hw, _ = manager()
        await hw.start()

        def fire(t: int) -> None:
            for i in range(1000):
                hw.airlock(f"dev{t}", "pressed", {"i": i})

        threads = [threading.Thread(target=fire, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        got: dict[str, list[int]] = {}
        for _ in range(4000):
            ev = await asyncio.wait_for(hw.events.get(), 5)
            got.setdefault(ev.device, []).append(ev.state["i"])
        assert all(v == list(range(1000)) for v in got.values()) and len(got) == 4
        await hw.stop()

    asyncio.run(main())


def test_start_applies_safe_state_and_stop_releases() -> None:
    async def main() -> None:
        hw, factory = manager("{lamp: {type: LED, pin: 17, initial_value: true},"
                              " relay: {type: OutputDevice, pin: 23, safe_state: 'on'},"
                              " motor: {type: Motor, forward: 20, backward: 21}}")
        states = await hw.start()
        assert states["lamp"]["is_active"] is False  # initial_value overridden by safe state
        assert states["relay"]["is_active"] is True
        lamp = hw.adapters["lamp"]
        await hw.submit(lamp.invoke, "on", {})
        await hw.submit(hw.adapters["motor"].invoke, "forward", {"speed": 1.0})
        assert factory.pin(20).state == 1
        final = await hw.stop()
        assert final["lamp"]["is_active"] is False and final["motor"]["value"] == 0
        assert factory.pin(20).state == 0
        assert all(a.closed for a in hw.adapters.values())

    asyncio.run(main())


def test_open_failure_names_the_device_and_releases_the_rest() -> None:
    async def main() -> None:
        hw, factory = manager("{a: {type: LED, pin: 17}, b: {type: LED, pin: 18}}")
        factory.pin(18).function = "output"
        from gpiozero import LED

        blocker = LED(18, pin_factory=factory)  # another "process" holds GPIO18
        with pytest.raises(HardwareError, match=r"b \(LED\)"):
            await hw.start()
        assert hw.adapters["a"].closed
        blocker.close()

    asyncio.run(main())


def test_chip_discovery_by_label() -> None:
    assert find_header_chip({0: "pinctrl-rp1", 1: "gpio-brcmstb@107d508500"}) == 0
    assert find_header_chip({0: "gpio-brcmstb", 4: "pinctrl-rp1"}) == 4  # older Pi 5 kernels
    assert find_header_chip({0: "pinctrl-bcm2711", 1: "raspberrypi-exp-gpio"}) == 0
    with pytest.raises(HardwareError, match="no GPIO chip labelled"):
        find_header_chip({0: "gpio-sim"})
    assert find_header_chip({2: "gpio-sim.0-node0"}, ("gpio-sim.0-node0",)) == 2
    assert resolve_chip(4) == 4 and resolve_chip("/dev/gpiochip3") == 3 and resolve_chip("2") == 2
