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
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from pi_mqtt_gpio.errors import (
    BadArgument,
    BadRequest,
    Busy,
    GatekeeperError,
    LeaseRequired,
    NotAuthorized,
    RequestTimeout,
    UnknownDevice,
    UnknownMethod,
)
from pi_mqtt_gpio.mqtt.hooks import BrokerHooks, ClientInfo, Decision
from pi_mqtt_gpio.mqtt.logguard import LogLimiter, clip
from pi_mqtt_gpio.mqtt.message import Message
from pi_mqtt_gpio.mqtt.packets import PROTOCOL_50, Prop, Properties
from pi_mqtt_gpio.mqtt.topic_tree import topic_matches
from pi_mqtt_gpio.server.covers import CoverController
from pi_mqtt_gpio.server.devices.base import DeviceAdapter, Method, is_active
from pi_mqtt_gpio.server.guards import Guards
from pi_mqtt_gpio.server.hardware import HardwareManager
from pi_mqtt_gpio.server.jsonscan import top_level_scalars
from pi_mqtt_gpio.server.security.leases import ControlLeaseManager, Holder, Lease
from pi_mqtt_gpio.server.twin import Twin, dumps, utc_ts
from pi_mqtt_gpio.topics import Topics

__all__ = ["RpcHandler", "make_safe"]

log = logging.getLogger("pi_mqtt_gpio.rpc")

Send = Callable[..., None]  # (topic, payload, qos, properties[, retain])
MAX_REQUEST_BYTES = 65536
_REPLY_FIELDS = frozenset({"reply_to", "correlation_id"})
CLEAR_LOCKOUT = "clear_lockout"  # the RPC that lifts a flap lockout (manage right)
MAX_LEASE_DEVICES = 256  # device names one lease call may list


class _TooDeep(BadRequest):
    def __init__(self, message: str, request: dict[str, Any]) -> None:
        super().__init__(message)
        self.request = request  # what could be read of it (the reply fields)


class _Reply:
    __slots__ = ("correlation", "problem", "qos", "topic", "v5")

    def __init__(self, topic: str, correlation: Any, v5: bool, qos: int,
                 problem: str | None = None) -> None:
        self.topic = topic
        self.correlation = correlation
        self.v5 = v5
        self.qos = qos
        self.problem = problem  # the request's reply fields are unusable (answered without)


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
        self._lease_timer: asyncio.TimerHandle | None = None
        self._log = LogLimiter(log)

    # --- entry point (event loop, in message order) --------------------------------------------
    def handle(self, msg: Message) -> None:
        if not self.may_command(msg):
            # Nothing the sender may not publish itself is executed, whatever way it took
            # into the broker (a Will is published on its owner's behalf, for instance).
            self.handle_denied(msg)
            return
        if msg.topic == self.topics.lease_call:
            self._lease_call(msg)
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
        reply = self._v5_reply(msg)
        method_name: str | None = None
        try:
            request = self._parse(msg.payload)
            if reply is None:
                reply = self._v311_reply(msg, request)
            self._usable(reply)
            method_name = request.get("method") if isinstance(request.get("method"), str) \
                else None
            if not isinstance(request.get("method"), str) or not request["method"]:
                raise BadRequest("'method' must be a non-empty string")
            if request["method"] == CLEAR_LOCKOUT:
                self._clear_lockout(msg, name, reply)
                return
            adapter, method, kwargs = self._resolve(msg, name, request["method"],
                                                    request.get("args"), request.get("kwargs"))
            future, delay = self._queue(adapter, method, kwargs, msg, rights=source != "binding")
        except GatekeeperError as exc:
            self._refuse(msg, name, method_name, exc, self._salvage(msg, exc, reply), source)
            return
        self._await(msg, adapter, method, kwargs, future, reply, source, delay)

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
            self._refuse(msg, name, method_name, exc, None, source)
            return
        self._await(msg, adapter, method, kwargs, future, None, source, delay)

    # --- checks ---------------------------------------------------------------------------------
    def _parse(self, payload: bytes) -> dict[str, Any]:
        if len(payload) > MAX_REQUEST_BYTES:
            raise BadRequest(f"request larger than {MAX_REQUEST_BYTES} bytes")
        try:
            request = json.loads(payload)
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest(f"request is not valid JSON: {clip(exc, 200)}") from None
        except RecursionError:
            # Still answer a 3.1.1 caller: its reply fields are at the top level.
            raise _TooDeep("request is nested too deeply", top_level_scalars(
                payload.decode("utf-8", "replace"), _REPLY_FIELDS)) from None
        if not isinstance(request, dict):
            raise BadRequest("request must be a JSON object")
        return request

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
        reply = self._v5_reply(msg) if leaf == "call" else None
        method = None
        if leaf == "call":
            try:
                request = self._parse(msg.payload)
                method = request.get("method") if isinstance(request.get("method"), str) \
                    else None
                if reply is None:
                    reply = self._v311_reply(msg, request)
            except GatekeeperError:
                pass
        err = NotAuthorized(reason or f"role {msg.role!r} may not publish to {msg.topic}")
        self._refuse(msg, name, method, err, reply, leaf)

    # --- leases ---------------------------------------------------------------------------------
    def _lease_call(self, msg: Message) -> None:
        """``{root}/lease/call``: acquire, renew or release, answered like any call."""
        reply = self._v5_reply(msg)
        method: str | None = None
        kwargs: dict[str, Any] = {}
        try:
            if self.leases is None:
                raise UnknownMethod("leases are not enabled")
            request = self._parse(msg.payload)
            if reply is None:
                reply = self._v311_reply(msg, request)
            self._usable(reply)
            method = request.get("method") if isinstance(request.get("method"), str) else None
            if method not in ("acquire", "renew", "release"):
                raise UnknownMethod("lease methods: acquire, renew, release")
            kwargs = self._lease_kwargs(method, request.get("kwargs"))
            result = self._lease_action(msg, method, kwargs)
        except GatekeeperError as exc:
            self._refuse(msg, "lease", method, exc, self._salvage(msg, exc, reply), "lease")
            return
        self._log.log(logging.INFO, msg.sender or "", _now(), "lease %s by %r: %s", method,
                      clip(msg.sender), clip(result, 300))
        if reply is not None:
            self._reply(msg, reply, {"ok": True, "result": result})
        self._audit(msg, "lease", method, {k: v for k, v in kwargs.items() if k != "lease_id"},
                    "lease", None)
        self.publish_leases()

    def _lease_kwargs(self, method: str, kwargs: Any) -> dict[str, Any]:
        """The lease call's arguments, checked: devices (known names), ttl, lease_id, force."""
        kwargs = kwargs or {}
        if not isinstance(kwargs, dict):
            raise BadArgument("kwargs must be an object")
        unknown = set(kwargs) - {"devices", "ttl", "lease_id", "force"}
        if unknown:
            raise BadArgument(f"{method}() has no argument {sorted(unknown)[0]!r}")
        devices = kwargs.get("devices")
        if devices is not None:
            if not isinstance(devices, list) or not devices or len(devices) > MAX_LEASE_DEVICES \
                    or not all(isinstance(d, str) for d in devices):
                raise BadArgument("devices must be a non-empty list of device names")
            for device in devices:
                if device not in self.hw.adapters:
                    raise UnknownDevice(f"no device named {clip(device)!r}")
        ttl = kwargs.get("ttl")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
            raise BadArgument("ttl must be a number of seconds")
        if kwargs.get("lease_id") is not None and not isinstance(kwargs["lease_id"], str):
            raise BadArgument("lease_id must be a string")
        if not isinstance(kwargs.get("force", False), bool):
            raise BadArgument("force must be true or false")
        return kwargs

    def _lease_action(self, msg: Message, method: str, kwargs: dict[str, Any]
                      ) -> dict[str, Any]:
        """Carry out a checked lease call for its sender (the holder as the broker saw it)."""
        assert self.leases is not None
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
        if force and not self.has_right(msg, "force_release"):
            raise NotAuthorized("breaking leases (force: true) needs the 'force_release' right")
        gone = self.leases.release(holder, lease_id, devices, force=force)
        if force:
            self.lease_lost([g for g in gone if g.holder != holder], "broken by admin")
        return {"released": [lease.describe() for lease in gone]}

    def publish_leases(self) -> None:
        """Retained ``{root}/lease`` and the expiry timer, after every change."""
        if self.leases is None:
            return
        self.send(self.topics.lease, dumps(self.leases.snapshot()), 1, {}, True)
        if self._lease_timer is not None:
            self._lease_timer.cancel()
            self._lease_timer = None
        deadline = self.leases.next_deadline()
        if deadline is not None:
            self._lease_timer = asyncio.get_running_loop().call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._lease_timer = None
        if self.leases is None:
            return
        gone = self.leases.expire(asyncio.get_running_loop().time())
        self.lease_lost(gone, "expired")
        self.publish_leases()

    def holder_gone(self, holder: Holder, reason: str) -> None:
        """The broker says a client disconnected: its leases end, its devices go safe."""
        if self.leases is None:
            return
        gone = self.leases.holder_gone(holder)
        if gone:
            self.lease_lost(gone, f"holder disconnected ({reason})")
            self.publish_leases()

    def lease_lost(self, gone: list[Lease], reason: str) -> None:
        """Drive the devices of leases that ended against their holder's will to their safe
        state, through the hardware queue, and say so on the audit topic."""
        for lease in gone:
            who = lease.holder[0] or lease.holder[1]
            log.warning("lease of %s on %s %s: driving its devices to safe state", who,
                        "all devices" if lease.devices is None else sorted(lease.devices),
                        reason)
            for name, adapter in self.hw.adapters.items():
                if adapter.kind != "output" or not lease.covers(name):
                    continue
                if not (adapter.config.lease_required or name in lease.written):
                    continue
                cover = self.covers.get(name)
                if cover is not None:
                    cover.safe("lease")  # stops; the position is kept and published
                    continue
                if self.guards is not None:
                    self.guards.safe(adapter, "lease")  # publishes the state it leaves
                    continue
                try:
                    future = self.hw.submit(make_safe, adapter, force=True)
                except GatekeeperError:
                    continue
                future.add_done_callback(self._publish_safe(name))
            entry = {"ts": utc_ts(), "client_id": lease.holder[1], "username": lease.holder[0],
                     "device": "lease", "method": "lost", "source": "lease", "ok": True,
                     "reason": reason, "lease": lease.describe()}
            if self.listening(self.topics.audit):
                self.send(self.topics.audit, dumps(entry), 0, {})

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
            self._refuse(msg, device, method, exc, None, source, kwargs)
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
            self._refuse(msg, device, method, exc, None, source, kwargs)
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
        self._refuse(msg, device, method, exc, None, source)

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

    def _clear_lockout(self, msg: Message, name: str, reply: _Reply | None) -> None:
        """``{"method": "clear_lockout"}``: lift a device's flap lockout (``manage`` right)."""
        self._adapter(name)
        if not self.has_right(msg, "manage"):
            raise NotAuthorized("clear_lockout needs the 'manage' right")
        cleared = self.guards.clear_lockout(name) if self.guards is not None else False
        if reply is not None:
            self._reply(msg, reply, {"ok": True, "result": {"cleared": cleared}})
        self._audit(msg, name, CLEAR_LOCKOUT, {}, "call", None)

    def _publish_safe(self, name: str) -> Callable[[asyncio.Future[Any]], None]:
        def done(future: asyncio.Future[Any]) -> None:
            if not future.cancelled() and future.exception() is None:
                self.twin.state(name, future.result())

        return done

    def _v5_reply(self, msg: Message) -> _Reply | None:
        topic = msg.properties.get(Prop.RESPONSE_TOPIC) if msg.properties else None
        if topic is None:
            return None
        return _Reply(topic, msg.properties.get(Prop.CORRELATION_DATA), True, min(msg.qos, 1))

    def _v311_reply(self, msg: Message, request: dict[str, Any]) -> _Reply | None:
        """The 3.1.1 reply destination. A ``correlation_id`` that is not a string or a
        number makes the request a ``BAD_REQUEST`` (answered without it)."""
        topic = request.get("reply_to")
        if topic is None or not isinstance(topic, str):
            return None
        correlation = request.get("correlation_id")
        if correlation is None or isinstance(correlation, str | int | float):
            return _Reply(topic, correlation, False, min(msg.qos, 1))
        return _Reply(topic, None, False, min(msg.qos, 1),
                      "correlation_id must be a string or a number")

    def _salvage(self, msg: Message, exc: GatekeeperError, reply: _Reply | None
                 ) -> _Reply | None:
        """The reply destination of a request that could not be parsed whole."""
        if reply is not None or not isinstance(exc, _TooDeep) or not exc.request:
            return reply
        return self._v311_reply(msg, exc.request)

    @staticmethod
    def _usable(reply: _Reply | None) -> None:
        if reply is not None and reply.problem:
            raise BadRequest(reply.problem)

    def _reply_allowed(self, msg: Message, topic: str) -> bool:
        if not topic or any(c in topic for c in "+#\x00") or len(topic) > 1024:
            return False
        if msg.sender is None:
            return True
        prefix = self.topics.reply_prefix(msg.sender)
        if topic == prefix or topic.startswith(prefix + "/"):
            return True
        if topic_matches(self.topics.everything, topic):
            return False  # never into the gatekeeper's own tree, except the reply prefix
        client = ClientInfo(msg.sender, msg.username, msg.role, PROTOCOL_50, "", "")
        for hook in self.acl:
            decision = hook.authorize_publish(client, topic, msg.qos, False)
            if decision is not Decision.DEFER:
                return decision is Decision.ALLOW
        return False

    # --- completion -----------------------------------------------------------------------------
    def _await(self, msg: Message, adapter: DeviceAdapter, method: Method,
               kwargs: dict[str, Any], future: asyncio.Future[Any], reply: _Reply | None,
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
                self._refuse(msg, adapter.name, method.name, RequestTimeout(
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
                kwargs: dict[str, Any], future: asyncio.Future[Any], reply: _Reply | None,
                source: str) -> None:
        try:
            result, state = future.result()
        except GatekeeperError as exc:
            self._refuse(msg, adapter.name, method.name, exc, reply, source, kwargs)
            return
        except Exception as exc:  # pragma: no cover - the worker wraps every error
            log.exception("call failed")
            self._refuse(msg, adapter.name, method.name,
                         GatekeeperError(f"internal error: {exc}"), reply, source, kwargs)
            return
        if self.guards is not None and adapter.kind == "output":
            if adapter.name not in self.covers:
                self.guards.ran(adapter, state)
            state = self.guards.decorate(adapter.name, state)
        # The caller waits on the reply: it goes out first, the retained state right after.
        published = self.twin.stamp(state)
        if reply is not None:
            self._reply(msg, reply, {"ok": True, "result": _jsonable(result),
                                     "state": published})
        self.twin.state(adapter.name, state, doc=published)
        after = adapter.refresh_after(method.name, kwargs)
        if after is not None:
            self.twin.refresh_later(adapter.name, after)
        self._audit(msg, adapter.name, method.name, kwargs, source, None)

    def _refuse(self, msg: Message, device: str, method: str | None, exc: GatekeeperError,
                reply: _Reply | None, source: str, kwargs: dict[str, Any] | None = None) -> None:
        if source in ("set", "mqtt_io") and self.on_set_refused is not None \
                and device in self.hw.adapters:
            self.on_set_refused(device)
        self._log.log(logging.INFO, msg.sender or "", _now(), "%s %s.%s from %r refused: %s %s",
                      source, clip(device), clip(method), clip(msg.sender), exc.code.value,
                      clip(exc.message, 200))
        if reply is not None:
            self._reply(msg, reply, {"ok": False, "error": exc.to_json()})
        self._audit(msg, device, method, kwargs, source, exc)

    def _reply(self, msg: Message, reply: _Reply, body: dict[str, Any]) -> None:
        if not self._reply_allowed(msg, reply.topic):
            self._log.log(logging.WARNING, msg.sender or "", _now(),
                          "reply topic %r refused for %r", clip(reply.topic), clip(msg.sender))
            return
        props: Properties = {Prop.CONTENT_TYPE: "application/json"}
        if reply.v5:
            if reply.correlation is not None:
                props[Prop.CORRELATION_DATA] = reply.correlation
        elif reply.correlation is not None:
            body["correlation_id"] = reply.correlation
        try:
            payload = dumps(body)
        except (TypeError, ValueError, RecursionError):
            payload = dumps({"ok": body.get("ok", False), "result": None})
        self.send(reply.topic, payload, reply.qos, props)

    def _audit(self, msg: Message, device: str, method: str | None,
               kwargs: dict[str, Any] | None, source: str, error: GatekeeperError | None) -> None:
        if not self.listening(self.topics.audit):
            return  # not retained: nobody would ever read it
        entry: dict[str, Any] = {
            "ts": utc_ts(), "client_id": msg.sender, "username": msg.username,
            "device": device, "method": method, "source": source, "ok": error is None,
        }
        if kwargs is not None:
            entry["kwargs"] = _jsonable(kwargs)
        if error is not None:
            entry["error"] = error.to_json()
        self.send(self.topics.audit, dumps(entry), 0, {})

    async def drain(self, timeout: float = 1.0) -> None:
        """Wait (briefly) for calls in progress to be answered."""
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=timeout)


def _now() -> float:
    return asyncio.get_running_loop().time()


def make_safe(adapter: DeviceAdapter) -> dict[str, Any]:
    """Runs on the hardware worker: the device's safe state, then the state it left."""
    adapter.safe()
    return adapter.state()


def _execute(adapter: DeviceAdapter, method: str, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """Runs on the hardware worker: the command, then the state it left."""
    result = adapter.invoke(method, kwargs)
    return result, adapter.state()


def _activates(adapter: DeviceAdapter, method: str, kwargs: dict[str, Any]) -> bool:
    """Runs on the hardware worker: whether the command will leave the device active, from
    the value it has now (a toggle's outcome depends on it)."""
    return is_active(adapter.predict(method, kwargs, adapter.state().get("value")))


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)

