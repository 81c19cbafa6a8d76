"""The RPC handler's lease desk: ``{root}/lease/call`` (acquire, renew, release, answered like
any call), the retained ``{root}/lease`` and its expiry timer, and leases that end against
their holder's will (expired, holder disconnected, broken by an admin): their devices are
driven to their safe state and the audit says so."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from pi_mqtt_gpio.errors import (
    BadArgument,
    GatekeeperError,
    NotAuthorized,
    UnknownDevice,
    UnknownMethod,
)
from pi_mqtt_gpio.mqtt.logguard import clip
from pi_mqtt_gpio.mqtt.message import Message
from pi_mqtt_gpio.payloads import AuditRecord, LeaseGranted, LeaseReleased, State
from pi_mqtt_gpio.server.devices.base import DeviceAdapter
from pi_mqtt_gpio.server.rpc_replies import Incoming
from pi_mqtt_gpio.server.security.leases import ControlLeaseManager, Holder, Lease
from pi_mqtt_gpio.server.twin import dumps, utc_ts

if TYPE_CHECKING:
    from pi_mqtt_gpio.server.rpc_handler import RpcHandler

__all__ = ["LeaseDesk", "make_safe"]

log = logging.getLogger("pi_mqtt_gpio.rpc")

MAX_LEASE_DEVICES = 256  # device names one lease call may list
_LEASE_ARGS = frozenset({"devices", "ttl", "lease_id", "force"})


class LeaseDesk:
    def __init__(self, rpc: RpcHandler, leases: ControlLeaseManager) -> None:
        self.rpc = rpc
        self.leases = leases
        self._timer: asyncio.TimerHandle | None = None

    def call(self, msg: Message) -> None:
        """``{root}/lease/call``: acquire, renew or release, answered like any call."""
        rpc = self.rpc
        call = Incoming(msg)
        kwargs: dict[str, Any] = {}
        try:
            request = call.read()
            if call.method not in ("acquire", "renew", "release"):
                raise UnknownMethod("lease methods: acquire, renew, release")
            kwargs = self._kwargs(call.method, request.get("kwargs"))
            result = self._action(msg, call.method, kwargs)
        except GatekeeperError as exc:
            rpc.refuse_call(msg, "lease", call.method, exc, call.reply_after(exc), "lease")
            return
        method, reply = call.method, call.reply
        rpc.log.log(logging.INFO, msg.sender or "", _now(), "lease %s by %r: %s", method,
                    clip(msg.sender), clip(result, 300))
        if reply is not None:
            rpc.replier.reply(msg, reply, {"ok": True, "result": result})
        rpc.audit(msg, "lease", method, {k: v for k, v in kwargs.items() if k != "lease_id"},
                  "lease", None)
        self.publish()

    def _kwargs(self, method: str, kwargs: Any) -> dict[str, Any]:
        """The lease call's arguments, checked: devices (known names), ttl, lease_id, force."""
        kwargs = kwargs or {}
        if not isinstance(kwargs, dict):
            raise BadArgument("kwargs must be an object")
        unknown = set(kwargs) - _LEASE_ARGS
        if unknown:
            raise BadArgument(f"{method}() has no argument {sorted(unknown)[0]!r}")
        self._check_devices(kwargs.get("devices"))
        ttl = kwargs.get("ttl")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
            raise BadArgument("ttl must be a number of seconds")
        if kwargs.get("lease_id") is not None and not isinstance(kwargs["lease_id"], str):
            raise BadArgument("lease_id must be a string")
        if not isinstance(kwargs.get("force", False), bool):
            raise BadArgument("force must be true or false")
        return kwargs

    def _check_devices(self, devices: Any) -> None:
        if devices is None:
            return
        if not isinstance(devices, list) or not devices or len(devices) > MAX_LEASE_DEVICES \
                or not all(isinstance(d, str) for d in devices):
            raise BadArgument("devices must be a non-empty list of device names")
        for device in devices:
            if device not in self.rpc.hw.adapters:
                raise UnknownDevice(f"no device named {clip(device)!r}")

    def _action(self, msg: Message, method: str, kwargs: dict[str, Any]
                ) -> LeaseGranted | LeaseReleased:
        """Carry out a checked lease call for its sender (the holder as the broker saw it)."""
        holder = (msg.username, msg.sender or "")
        devices, ttl = kwargs.get("devices"), kwargs.get("ttl")
        lease_id, force = kwargs.get("lease_id"), kwargs.get("force", False)
        now, wall = _now(), time.time()
        if method == "acquire":
            lease = self.leases.acquire(holder, devices, ttl, now, wall)
            return {"lease_id": lease.lease_id, **lease.describe()}
        if method == "renew":
            lease = self.leases.renew(holder, lease_id, devices, ttl, now, wall)
            return {"lease_id": lease.lease_id, **lease.describe()}
        if force and not self.rpc.has_right(msg, "force_release"):
            raise NotAuthorized("breaking leases (force: true) needs the 'force_release' right")
        gone = self.leases.release(holder, lease_id, devices, force=force)
        if force:
            self.lost([g for g in gone if g.holder != holder], "broken by admin")
        return {"released": [lease.describe() for lease in gone]}

    def publish(self) -> None:
        """Retained ``{root}/lease`` and the expiry timer, after every change."""
        rpc = self.rpc
        rpc.send(rpc.topics.lease, dumps(self.leases.snapshot()), 1, {}, True)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.leases.next_deadline()
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        gone = self.leases.expire(asyncio.get_running_loop().time())
        self.lost(gone, "expired")
        self.publish()

    def holder_gone(self, holder: Holder, reason: str) -> None:
        """The broker says a client disconnected: its leases end, its devices go safe."""
        gone = self.leases.holder_gone(holder)
        if gone:
            self.lost(gone, f"holder disconnected ({reason})")
            self.publish()

    def lost(self, gone: list[Lease], reason: str) -> None:
        """Drive the devices of leases that ended against their holder's will to their safe
        state, through the hardware queue, and say so on the audit topic."""
        rpc = self.rpc
        for lease in gone:
            who = lease.holder[0] or lease.holder[1]
            log.warning("lease of %s on %s %s: driving its devices to safe state", who,
                        "all devices" if lease.devices is None else sorted(lease.devices),
                        reason)
            for name, adapter in rpc.hw.adapters.items():
                if adapter.kind != "output" or not lease.covers(name):
                    continue
                if adapter.config.lease_required or name in lease.written:
                    self._safe(name, adapter)
            entry: AuditRecord = {"ts": utc_ts(), "client_id": lease.holder[1], "username": lease.holder[0],
                     "device": "lease", "method": "lost", "source": "lease", "ok": True,
                     "reason": reason, "lease": lease.describe()}
            if rpc.listening(rpc.topics.audit):
                rpc.send(rpc.topics.audit, dumps(entry), 0, {})

    def _safe(self, name: str, adapter: DeviceAdapter) -> None:
        """One device of a lost lease to its safe state; the state it leaves is published."""
        rpc = self.rpc
        cover = rpc.covers.get(name)
        if cover is not None:
            cover.safe("lease")  # stops; the position is kept and published
            return
        if rpc.guards is not None:
            rpc.guards.safe(adapter, "lease")  # publishes the state it leaves
            return
        try:
            future = rpc.hw.submit(make_safe, adapter, force=True)
        except GatekeeperError:
            return

        def done(future: asyncio.Future[Any]) -> None:
            if not future.cancelled() and future.exception() is None:
                rpc.twin.state(name, future.result())

        future.add_done_callback(done)


def _now() -> float:
    return asyncio.get_running_loop().time()


def make_safe(adapter: DeviceAdapter) -> State:
    """Runs on the hardware worker: the device's safe state, then the state it left."""
    adapter.safe()
    return adapter.state()
