"""A hardware worker without its thread, for unit tests of what sits on top of it (the RPC
handler, the twin): every command runs when it is submitted, on the event loop's thread, and
its future is already resolved; the pins are simulated. What was run is listed in ``ran``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pi_mqtt_gpio.errors import GatekeeperError, HardwareError
from pi_mqtt_gpio.server.config_loader import parse_config
from pi_mqtt_gpio.server.hardware import HardwareManager
from pi_mqtt_gpio.server.pins.simulated import simulated_factory


class SyncWorker(HardwareManager):
    def __init__(self, devices: dict[str, Any], *, queue_max: int = 256) -> None:
        super().__init__(devices, simulated_factory, simulate=True, queue_max=queue_max)
        self.ran: list[str] = []  # the names of the functions run, in order

    @classmethod
    def from_yaml(cls, devices_yaml: str, **kwargs: Any) -> SyncWorker:
        config = parse_config("node_id: n\ndevices:\n" + devices_yaml)
        return cls(dict(config.devices), **kwargs)

    @property
    def worker_alive(self) -> bool:
        """"Alive" between start and stop (there is no thread)."""
        return self.accepting

    async def start(self) -> dict[str, dict[str, Any]]:
        self._loop = asyncio.get_running_loop()
        states = self._open_all()
        self.accepting = True
        return states

    async def stop(self) -> dict[str, dict[str, Any]]:
        self.accepting = False
        return self._close_all()

    def submit(self, fn: Callable[..., Any], *args: Any, force: bool = False
               ) -> asyncio.Future[Any]:
        assert self._loop is not None, "SyncWorker not started"
        if not force:
            self.admit()
        future: asyncio.Future[Any] = self._loop.create_future()
        self.ran.append(getattr(fn, "__name__", repr(fn)))
        try:
            future.set_result(fn(*args))
        except GatekeeperError as exc:
            future.set_exception(exc)
        except Exception as exc:
            future.set_exception(HardwareError(f"{type(exc).__name__}: {exc}"))
        return future


async def settle() -> None:
    """Let the callbacks of resolved futures run (they are scheduled with call_soon)."""
    for _ in range(5):
        await asyncio.sleep(0)
