"""RPC and plain ``set`` commands: decode, check, queue on the hardware worker, answer.

``{root}/device/<name>/call`` carries ``{"method": ..., "args": [...], "kwargs": {...}}``. The
reply goes to the MQTT 5 Response Topic with the request's Correlation Data, or (MQTT 3.1.1)
to the payload's ``reply_to`` with its ``correlation_id``. It is sent after the worker has
executed the command, or refused it, never before. Every request that names a reply
destination gets a reply, malformed ones included; every request gets an audit entry.

Checks happen on the event loop before anything is queued (so a refused command never moves
hardware): JSON shape, device, method, arguments, simulation-only methods (admin only), and
where the reply may go (a client may not make the gatekeeper publish on its behalf where it
could not publish itself).

Reading requests and sending replies is rpc_replies.py's, the lease calls rpc_leases.py's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from pi_mqtt_gpio.errors import (
    BadRequest,
    Busy,
    GatekeeperError,
    LeaseRequired,
    NotAuthorized,
    RequestTimeout,
    UnknownDevice,
    UnknownMethod,
)
from pi_mqtt_gpio.mqtt.hooks import BrokerHooks
from pi_mqtt_gpio.mqtt.logguard import LogLimiter, clip
from pi_mqtt_gpio.mqtt.message import Message
from pi_mqtt_gpio.payloads import AuditRecord
from pi_mqtt_gpio.server.covers import CoverController
from pi_mqtt_gpio.server.devices.base import DeviceAdapter, Method, is_active
from pi_mqtt_gpio.server.guards import Guards
from pi_mqtt_gpio.server.hardware import HardwareManager
from pi_mqtt_gpio.server.rpc_leases import LeaseDesk, make_safe
from pi_mqtt_gpio.server.rpc_replies import (
    MAX_REQUEST_BYTES,
    Incoming,
    Replier,
    Reply,
    Send,
    jsonable,
    method_of,
    parse_request,
    v5_reply,
    v311_reply,
)
from pi_mqtt_gpio.server.security.leases import ControlLeaseManager, Holder, Lease
from pi_mqtt_gpio.server.twin import Twin, dumps, utc_ts
from pi_mqtt_gpio.topics import Topics

__all__ = ["MAX_REQUEST_BYTES", "RpcHandler", "make_safe"]

log = logging.getLogger("pi_mqtt_gpio.rpc")

CLEAR_LOCKOUT = "clear_lockout"  # the RPC that lifts a flap lockout (manage right)


class RpcHandler:
    def __init__(
        self,
        topics: Topics,
        hw: HardwareManager,
        twin: Twin,
        send: Send,
        *,
        acl: list[BrokerHooks],
        timeout: float = 5.0,
        listening: Callable[[str], bool] = lambda topic: True,
        leases: ControlLeaseManager | None = None,
        may_command: Callable[[Message], bool] = lambda msg: True,
        has_right: Callable[[Message, str], bool] = lambda msg, right: False,
        guards: Guards | None = None,
        covers: dict[str, CoverController] | None = None,
    ) -> None:
        self.topics = topics
        self.hw = hw
        self.twin = twin
        self.send = send
        self.acl = acl
        self.timeout = timeout
        self.listening = listening  # is anyone subscribed to a topic? (skip unread audit)
        self.accepting = True
        self._inflight: set[asyncio.Future[Any]] = set()
        self.calls = 0
        self.leases = leases
        self.may_command = may_command
        self.has_right = has_right
        self.guards = guards
        self.covers = covers or {}
        # A refused plain set: the device's state is published again unchanged, so that a
        # dashboard that moved its switch optimistically (Home Assistant) snaps back.
        self.on_set_refused: Callable[[str], None] | None = None
        self.log = LogLimiter(log)
        self.replier = Replier(topics, acl, send, self.log, _now)
        self.desk = LeaseDesk(self, leases) if leases is not None else None

    # --- entry point (event loop, in message order) --------------------------------------------
    def handle(self, msg: Message) -> None:
        if not self.may_command(msg):
            # Nothing the sender may not publish itself is executed, whatever way it took
            # into the broker (a Will is published on its owner's behalf, for instance).
            self.handle_denied(msg)
            return
        if msg.topic == self.topics.lease_call:
            if self.desk is not None:
                self.desk.call(msg)
            else:
                self.refuse_call(msg, "lease", None, UnknownMethod("leases are not enabled"),
                                 v5_reply(msg), "lease")
            return
        parsed = self.topics.parse_device(msg.topic)
        if parsed is None:
            return
        name, leaf = parsed
        if leaf == "call":
            self._call(msg, name)
        elif leaf == "set":
            self._set(msg, name)

    def _call(self, msg: Message, name: str, source: str = "call") -> None:
        self.calls += 1
        call = Incoming(msg)
        try:
            request = call.read()
            if not call.method:
                raise BadRequest("'method' must be a non-empty string")
            if call.method == CLEAR_LOCKOUT:
                self._clear_lockout(msg, name, call.reply)
                return
            adapter, method, kwargs = self._resolve(msg, name, call.method,
                                                    request.get("args"), request.get("kwargs"))
            future, delay = self._queue(adapter, method, kwargs, msg, rights=source != "binding")
        except GatekeeperError as exc:
            self.refuse_call(msg, name, call.method, exc, call.reply_after(exc), source)
            return
        self._await(msg, adapter, method, kwargs, future, call.reply, source, delay)

    def _set(self, msg: Message, name: str, source: str = "set") -> None:
        method_name: str | None = None
        try:
            try:
                text = msg.payload.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest("set payload is not UTF-8 text") from None
            if len(text) > 256:
                raise BadRequest("set payload longer than 256 characters")
            adapter = self._adapter(name)
            method_name, kwargs = adapter.parse_set(text)
            adapter, method, kwargs = self._resolve(msg, name, method_name, [], kwargs)
            future, delay = self._queue(adapter, method, kwargs, msg, rights=source != "binding")
        except GatekeeperError as exc:
            self.refuse_call(msg, name, method_name, exc, None, source)
            return
        self._await(msg, adapter, method, kwargs, future, None, source, delay)

    # --- checks ---------------------------------------------------------------------------------
    def _adapter(self, name: str) -> DeviceAdapter:
        adapter = self.hw.adapters.get(name)
        if adapter is None:
            raise UnknownDevice(f"no device named {name!r}")
        return adapter

    def _resolve(self, msg: Message, name: str, method_name: str, args: Any, kwargs: Any,
                 *, leases: bool = True) -> tuple[DeviceAdapter, Method, dict[str, Any]]:
        if not self.accepting or not self.hw.accepting:
            raise Busy("the gatekeeper is shutting down")
        adapter = self._adapter(name)
        method = adapter.method(method_name)
        if method is None:
            known = ", ".join(m for m in adapter.methods if adapter.method(m))
            raise UnknownMethod(f"{adapter.type_name} {name!r} has no method {method_name!r} "
                                f"(methods: {known})")
        if method.sim_only and not self.has_right(msg, "simulate"):
            raise NotAuthorized(f"{method.name} needs the 'simulate' right")
        bound = method.bind(args, kwargs)
        adapter.validate(method.name, bound)
        if leases and method.writes and adapter.kind == "output" and self.leases is not None:
            self.leases.check_write((msg.username, msg.sender or ""), name,
                                    adapter.config.lease_required)
        return adapter, method, bound

    # --- refused by the ACL ---------------------------------------------------------------------
    def handle_denied(self, msg: Message, reason: str | None = None) -> None:
        """The broker refused ``msg`` (the ACL): answer ``NOT_AUTHORIZED`` when it is a call
        that names a reply destination, and audit it. ``reason``: why, when not the sender's
        role (external mode: the broker's ACL failed its probe)."""
        parsed = self.topics.parse_device(msg.topic)
        is_lease = msg.topic == self.topics.lease_call
        if parsed is None and not is_lease:
            return
        name, leaf = parsed if parsed is not None else ("lease", "call")
        if leaf not in ("call", "set"):
            return
        reply = v5_reply(msg) if leaf == "call" else None
        method = None
        if leaf == "call":
            try:
                request = parse_request(msg.payload)
                method = method_of(request)
                if reply is None:
                    reply = v311_reply(msg, request)
            except GatekeeperError:
                pass
        err = NotAuthorized(reason or f"role {msg.role!r} may not publish to {msg.topic}")
        self.refuse_call(msg, name, method, err, reply, leaf)

    # --- leases (rpc_leases.py) ------------------------------------------------------------------
    def publish_leases(self) -> None:
        """Retained ``{root}/lease`` and the expiry timer, after every change."""
        if self.desk is not None:
            self.desk.publish()

    def holder_gone(self, holder: Holder, reason: str) -> None:
        """The broker says a client disconnected: its leases end, its devices go safe."""
        if self.desk is not None:
            self.desk.holder_gone(holder, reason)

    def lease_lost(self, gone: list[Lease], reason: str) -> None:
        """Drive the devices of leases that ended against their holder's will to their safe
        state, and say so on the audit topic."""
        if self.desk is not None:
            self.desk.lost(gone, reason)

    def _queue(self, adapter: DeviceAdapter, method: Method, kwargs: dict[str, Any],
               msg: Message | None = None, *, rights: bool = False, force: bool = False
               ) -> tuple[asyncio.Future[Any], float]:
        """Queue a checked command on the worker: writes to outputs through the safety
        guards (refused, or delayed: the reply comes after it ran); the delay in seconds.
        A cover's commands go to its controller (which asks the guards relay by relay); the
        "delay" is then how long its reply may take (``set_position`` replies on arrival).

        A write that is held back (relay spacing, or queued behind a command that is; a
        cover's reversal pause) is admitted again when it is handed to the worker: the
        sender of ``msg`` must still hold the lease it was sent under, must not be locked
        out by someone else's, and (with ``rights``) must still be allowed to publish the
        command, or it is cancelled and refused, unless it turns the device towards safe
        (decided on the worker, so that a toggle is judged by what it will do). ``force``:
        past the hardware queue's limit (a turn towards safe)."""
        recheck = self._recheck(msg, adapter, rights) if msg is not None else None
        cover = self.covers.get(adapter.name)
        if cover is not None:
            return (cover.command(method.name, kwargs, recheck=recheck),
                    cover.expected(method.name, kwargs))
        if self.guards is None or not method.writes or adapter.kind != "output":
            return self.hw.submit(_execute, adapter, method.name, kwargs, force=force), 0.0
        at, edge, active = self.guards.admit(adapter, method.name, kwargs)
        future = self.guards.submit(adapter.name, at, edge, _execute, adapter, method.name,
                                    kwargs, active=active, recheck=recheck, force=force,
                                    activates=lambda: _activates(adapter, method.name, kwargs))
        return future, max(0.0, (at or 0.0) - _now()) if at is not None else 0.0

    def _recheck(self, msg: Message, adapter: DeviceAdapter, rights: bool
                 ) -> Callable[[], None]:
        """The checks a held-back write passes again when it is about to run."""
        holder = (msg.username, msg.sender or "")
        name = adapter.name
        under = {lease.lease_id for lease in self.leases.covering(name)
                 if lease.holder == holder} if self.leases is not None else set()

        def recheck() -> None:
            if rights and not self.may_command(msg):
                raise NotAuthorized(f"{clip(msg.username or msg.sender)!r} may no longer "
                                    f"command {name} (its rights changed before the "
                                    f"command ran)")
            if self.leases is None:
                return
            if under and not any(lease.lease_id in under
                                 for lease in self.leases.covering(name)):
                raise LeaseRequired(f"the lease this command to {name} was sent under "
                                    f"ended before it ran")
            self.leases.check_write(holder, name, adapter.config.lease_required)

        return recheck

    def towards_safe(self, device: str, method: str, kwargs: dict[str, Any]) -> bool:
        """Whether ``method`` leaves ``device`` inactive (its safe side): never refused when
        it is the second half of a command that was admitted."""
        adapter = self.hw.adapters.get(device)
        if adapter is None or adapter.kind != "output":
            return False
        current = self.twin.states.get(device, {}).get("value")
        return not is_active(adapter.predict(method, kwargs, current))

    # --- local calls (bindings) -----------------------------------------------------------------
    def local_call(self, principal: str, device: str, method: str, args: list[Any],
                   kwargs: dict[str, Any], *, source: str = "binding") -> None:
        """A call made inside the gatekeeper (a button's binding) as ``principal``
        (``local:<button>``): the same checks as a remote call (validation, leases, safety,
        interlocks) and an audit entry, refused or not; no reply."""
        msg = Message(self.topics.device(device, "call"), b"", 1, sender=principal,
                      username=principal)
        try:
            adapter, spec, bound = self._resolve(msg, device, method, args, kwargs)
            future, delay = self._queue(adapter, spec, bound, msg)
        except GatekeeperError as exc:
            self.refuse_call(msg, device, method, exc, None, source, kwargs)
            return
        self._await(msg, adapter, spec, bound, future, None, source, delay)

    def command(self, msg: Message, device: str, method: str, kwargs: dict[str, Any],
                source: str, *, deferred: bool = False,
                then: Callable[[bool], None] | None = None) -> bool:
        """A command that arrived another way than ``set``/``call`` (mqtt-io's topics): the
        same checks (validation, rights, leases, safety, interlocks) and an audit entry, as
        the sender of ``msg``; no reply. False when refused at once; ``then(ok)`` is told
        when it ran (True) or was refused, at once or later (False).

        ``deferred``: the second half of a command admitted earlier (a timed set turning
        back). A turn towards safe then always runs (no lease can keep a relay on, a full
        hardware queue does not refuse it); a turn towards active is admitted as it is
        now: the sender's current rights and leases, and is cancelled (refused, audited)
        when they no longer allow it."""
        try:
            safe = deferred and self.towards_safe(device, method, kwargs)
            if deferred and not safe and not self.may_command(msg):
                raise NotAuthorized(f"{clip(msg.username or msg.sender)!r} may no longer "
                                    f"command {device}: the deferred {method} is cancelled")
            adapter, spec, bound = self._resolve(msg, device, method, [], kwargs,
                                                 leases=not safe)
            future, delay = self._queue(adapter, spec, bound, None if safe else msg,
                                        rights=True, force=safe)
        except GatekeeperError as exc:
            self.refuse_call(msg, device, method, exc, None, source, kwargs)
            if then is not None:
                then(False)
            return False
        if then is not None:
            future.add_done_callback(
                lambda f: then(not f.cancelled() and f.exception() is None))
        self._await(msg, adapter, spec, bound, future, None, source, delay)
        return True

    def refuse(self, msg: Message, device: str, method: str | None, exc: GatekeeperError,
               source: str) -> None:
        """Refuse (log, audit) a command that could not even be read."""
        self.refuse_call(msg, device, method, exc, None, source)

    def local_publish(self, principal: str, topic: str, trigger: str, payload: bytes) -> bool:
        """A binding publishes to this node's own ``set`` or ``call`` topic: carried out as a
        local call by ``principal`` (True), not sent through the broker."""
        parsed = self.topics.parse_device(topic)
        if parsed is None or parsed[1] not in ("set", "call"):
            return False
        name, leaf = parsed
        msg = Message(topic, payload, 1, sender=principal, username=principal)
        if leaf == "set":
            self._set(msg, name, source="binding")
        else:
            self._call(msg, name, source="binding")
        return True

    def restore(self, name: str, value: Any) -> None:
        """At start: drive an output back to the value saved before the restart, through the
        same checks and guards as a call (a refusal is logged, the safe state stays)."""
        try:
            adapter = self._adapter(name)
            method = adapter.method("value")
            if method is None:
                raise UnknownMethod(f"{name} has no value to restore")
            kwargs = method.bind([value], None)
            adapter.validate(method.name, kwargs)
            future, _delay = self._queue(adapter, method, kwargs)
        except GatekeeperError as exc:
            log.warning("not restoring %s to %r: %s", name, value, exc.message)
            return

        def done(f: asyncio.Future[Any]) -> None:
            if f.cancelled() or f.exception() is not None:
                log.warning("restoring %s failed: %s", name, f.exception())
                return
            _result, state = f.result()
            if self.guards is not None:
                self.guards.ran(adapter, state)
            self.twin.state(name, state)
            log.info("restored %s to %r", name, value)

        future.add_done_callback(done)

    def _clear_lockout(self, msg: Message, name: str, reply: Reply | None) -> None:
        """``{"method": "clear_lockout"}``: lift a device's flap lockout (``manage`` right)."""
        self._adapter(name)
        if not self.has_right(msg, "manage"):
            raise NotAuthorized("clear_lockout needs the 'manage' right")
        cleared = self.guards.clear_lockout(name) if self.guards is not None else False
        if reply is not None:
            self.replier.reply(msg, reply, {"ok": True, "result": {"cleared": cleared}})
        self.audit(msg, name, CLEAR_LOCKOUT, {}, "call", None)

    # --- completion -----------------------------------------------------------------------------
    def _await(self, msg: Message, adapter: DeviceAdapter, method: Method,
               kwargs: dict[str, Any], future: asyncio.Future[Any], reply: Reply | None,
               source: str, delay: float = 0.0) -> None:
        """Complete the call when the worker resolves ``future`` (or time out). Callbacks,
        not a task per call: this is the hot path of every RPC. A call that times out is
        answered ``TIMEOUT``, but the command may still run: when it does, the guards and
        the twin learn what it left (and the audit says it ran late)."""
        loop = asyncio.get_running_loop()
        late: list[bool] = []

        def timed_out() -> None:
            if not future.done():
                late.append(True)
                self.refuse_call(msg, adapter.name, method.name, RequestTimeout(
                    f"{adapter.name}.{method.name} did not complete within "
                    f"{self.timeout:g} s"), reply, source, kwargs)

        timer = loop.call_later(self.timeout + delay, timed_out)
        self._inflight.add(future)

        def done(f: asyncio.Future[Any]) -> None:
            timer.cancel()
            self._inflight.discard(f)
            if late:
                if not f.cancelled() and f.exception() is None:
                    self._finish(msg, adapter, method, kwargs, f, None, f"{source}:late")
                return
            self._finish(msg, adapter, method, kwargs, f, reply, source)

        future.add_done_callback(done)

    def _finish(self, msg: Message, adapter: DeviceAdapter, method: Method,
                kwargs: dict[str, Any], future: asyncio.Future[Any], reply: Reply | None,
                source: str) -> None:
        try:
            result, state = future.result()
        except GatekeeperError as exc:
            self.refuse_call(msg, adapter.name, method.name, exc, reply, source, kwargs)
            return
        except Exception as exc:  # pragma: no cover - the worker wraps every error
            log.exception("call failed")
            self.refuse_call(msg, adapter.name, method.name,
                         GatekeeperError(f"internal error: {exc}"), reply, source, kwargs)
            return
        if self.guards is not None and adapter.kind == "output":
            if adapter.name not in self.covers:
                self.guards.ran(adapter, state)
            state = self.guards.decorate(adapter.name, state)
        # The caller waits on the reply: it goes out first, the retained state right after.
        published = self.twin.stamp(state)
        if reply is not None:
            self.replier.reply(msg, reply, {"ok": True, "result": jsonable(result),
                                     "state": published})
        self.twin.state(adapter.name, state, doc=published)
        after = adapter.refresh_after(method.name, kwargs)
        if after is not None:
            self.twin.refresh_later(adapter.name, after)
        self.audit(msg, adapter.name, method.name, kwargs, source, None)

    def refuse_call(self, msg: Message, device: str, method: str | None, exc: GatekeeperError,
                reply: Reply | None, source: str, kwargs: dict[str, Any] | None = None) -> None:
        if source in ("set", "mqtt_io") and self.on_set_refused is not None \
                and device in self.hw.adapters:
            self.on_set_refused(device)
        self.log.log(logging.INFO, msg.sender or "", _now(), "%s %s.%s from %r refused: %s %s",
                      source, clip(device), clip(method), clip(msg.sender), exc.code.value,
                      clip(exc.message, 200))
        if reply is not None:
            self.replier.reply(msg, reply, {"ok": False, "error": exc.to_json()})
        self.audit(msg, device, method, kwargs, source, exc)

    def audit(self, msg: Message, device: str, method: str | None,
               kwargs: dict[str, Any] | None, source: str, error: GatekeeperError | None) -> None:
        if not self.listening(self.topics.audit):
            return  # not retained: nobody would ever read it
        entry: AuditRecord = {
            "ts": utc_ts(), "client_id": msg.sender, "username": msg.username,
            "device": device, "method": method, "source": source, "ok": error is None,
        }
        if kwargs is not None:
            entry["kwargs"] = jsonable(kwargs)
        if error is not None:
            entry["error"] = error.to_json()
        self.send(self.topics.audit, dumps(entry), 0, {})

    async def drain(self, timeout: float = 1.0) -> None:
        """Wait (briefly) for calls in progress to be answered."""
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=timeout)


def _now() -> float:
    return asyncio.get_running_loop().time()


def _execute(adapter: DeviceAdapter, method: str, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """Runs on the hardware worker: the command, then the state it left."""
    result = adapter.invoke(method, kwargs)
    return result, adapter.state()


def _activates(adapter: DeviceAdapter, method: str, kwargs: dict[str, Any]) -> bool:
    """Runs on the hardware worker: whether the command will leave the device active, from
    the value it has now (a toggle's outcome depends on it)."""
    return is_active(adapter.predict(method, kwargs, adapter.state().get("value")))
