"""The asyncio flavour: the same classes, with coroutine methods.

    import asyncio
    from pi_mqtt_gpio.client import aio

    async def main():
        async with aio.Gatekeeper("localhost", node_id="demo") as gk:
            led = aio.RemoteLED("porch_light", gatekeeper=gk)
            await led.on()
            print(led.is_lit)                     # properties read the twin, no await
            await led.set_value(0)                # property setters become set_<name>()
            bell = aio.RemoteButton("doorbell", gatekeeper=gk)
            bell.when_pressed = lambda: print("ding")   # runs on the event loop
            await bell.wait_for_press(timeout=10)

    asyncio.run(main())

Calls do not block the event loop: a request is published and its reply resolves an asyncio
future. Callbacks (plain functions or coroutine functions) run on the event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Callable
from typing import Any

from pi_mqtt_gpio.client import devices as _sync
from pi_mqtt_gpio.client.connection import Gatekeeper as SyncGatekeeper
from pi_mqtt_gpio.client.connection import check_reply
from pi_mqtt_gpio.errors import RequestTimeout
from pi_mqtt_gpio.payloads import CatalogueEntry, OkReply, State

__all__ = ["Gatekeeper", *(name for name in _sync.__all__ if name.startswith("Remote")
                           and name != "RemoteDevice"), "RemoteDevice"]


class Gatekeeper:
    """``async with aio.Gatekeeper(host, node_id=...) as gk:`` — arguments as for the
    synchronous ``Gatekeeper``. ``await gk.call(device, method, *args, **kwargs)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self._kwargs = kwargs
        self.sync: SyncGatekeeper | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def connect(self) -> Gatekeeper:
        self.loop = asyncio.get_running_loop()
        self.sync = await asyncio.to_thread(SyncGatekeeper, *self._args, **self._kwargs)
        return self

    async def __aenter__(self) -> Gatekeeper:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.sync is not None:
            await asyncio.to_thread(self.sync.close)

    @property
    def connection(self) -> SyncGatekeeper:
        """The synchronous ``Gatekeeper`` underneath (connected)."""
        return self._gk

    @property
    def _gk(self) -> SyncGatekeeper:
        if self.sync is None:
            raise RuntimeError("use 'async with aio.Gatekeeper(...)' or await connect() first")
        return self.sync

    async def call(self, device: str, method: str, *args: Any, timeout: float | None = None,
                   **kwargs: Any) -> OkReply:
        gk = self._gk
        future = await asyncio.to_thread(gk.submit, device, method, args, kwargs) \
            if not gk.connected else gk.submit(device, method, args, kwargs)
        wait = gk.timeout if timeout is None else timeout
        try:
            body = await asyncio.wait_for(asyncio.wrap_future(future), wait)
        except TimeoutError:
            raise RequestTimeout(f"no reply to {device}.{method} within {wait:g} s") from None
        return check_reply(body)

    async def devices(self) -> dict[str, CatalogueEntry]:
        return await asyncio.to_thread(self._gk.devices)

    async def device(self, name: str) -> Any:
        entry = (await self.devices()).get(name)
        if entry is None:
            from pi_mqtt_gpio.errors import UnknownDevice

            raise UnknownDevice(f"no device named {name!r}")
        return _ASYNC.get(entry["type"], RemoteDevice)(name, gatekeeper=self)


_TASKS: set[asyncio.Future[Any]] = set()


class _AsyncMixin:
    """Turns a synchronous Remote class into an asyncio one."""

    name: str
    gatekeeper: Any
    _aio: Gatekeeper

    def __init__(self, name: str, *, gatekeeper: Gatekeeper) -> None:
        self._aio = gatekeeper
        super().__init__(name, gatekeeper=gatekeeper.connection)  # type: ignore[call-arg]

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async def run() -> Any:
            self._check_open()  # type: ignore[attr-defined]
            reply = await self._aio.call(self.name, method, *args, **kwargs)
            return reply.get("result")

        return run()

    def _call_wait(self, wait: float | None, method: str, *args: Any, **kwargs: Any) -> Any:
        async def run() -> Any:
            result = await self._call(method, *args, **kwargs)
            if wait:
                await asyncio.sleep(wait)
            return result

        return run()

    def _set_handler(self, attr: str, fn: Callable[[], Any] | None) -> None:
        if fn is None:
            self._handlers[attr] = None  # type: ignore[attr-defined]
            return
        if not callable(fn):
            raise TypeError(f"{attr} must be callable or None")
        loop = self._aio.loop
        assert loop is not None

        def on_loop() -> None:
            result = fn()
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                _TASKS.add(task)  # keep a reference until it is done
                task.add_done_callback(_TASKS.discard)

        self._handlers[attr] = lambda: loop.call_soon_threadsafe(on_loop)  # type: ignore[attr-defined]

    async def refresh(self) -> State:
        return dict(await self._call("state") or {})


def _asyncify(cls: type[_sync.RemoteDevice]) -> type:
    namespace: dict[str, Any] = {"__doc__": f"asyncio flavour of ``{cls.__name__}``."}
    for attr in dir(cls):
        member = getattr(cls, attr)
        if isinstance(member, property) and member.fset is not None and \
                not attr.startswith("when_"):
            setter_name = f"set_{attr}"

            def make_setter(prop_name: str) -> Callable[..., Any]:
                method = {"value": "value", "color": "color", "angle": "angle"}[prop_name]

                async def setter(self: Any, value: Any) -> None:
                    if isinstance(value, tuple):
                        value = list(value)
                    await self._call(method, value)

                setter.__name__ = f"set_{prop_name}"
                return setter

            def refuse(self: Any, value: Any, _name: str = attr) -> None:
                raise TypeError(f"in asyncio code use 'await device.set_{_name}(...)'")

            namespace[setter_name] = make_setter(attr)
            namespace[attr] = property(member.fget, refuse, doc=member.__doc__)
        elif attr.startswith("wait_for_"):

            def make_wait(sync_wait: Callable[..., bool]) -> Callable[..., Any]:
                async def wait(self: Any, timeout: float | None = None) -> bool:
                    return await asyncio.to_thread(sync_wait, self, timeout)

                return wait

            namespace[attr] = make_wait(member)
    return type(cls.__name__, (_AsyncMixin, cls), namespace)


_ASYNC: dict[str, type] = {}
_module = sys.modules[__name__]
for _name in _sync.__all__:
    _cls = getattr(_sync, _name)
    if isinstance(_cls, type) and issubclass(_cls, _sync.RemoteDevice):
        _acls = _asyncify(_cls)
        setattr(_module, _name, _acls)
        if _cls.device_type:
            _ASYNC[_cls.device_type] = _acls
RemoteDevice: Any = getattr(_module, "RemoteDevice")  # noqa: B009
