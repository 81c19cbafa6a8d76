"""The connection to a gatekeeper: paho-mqtt 2.x on a background network thread, RPC calls
correlated with their replies, the retained twin cached locally, and user callbacks run on
one callback thread (never on the network thread).

    >>> from pi_mqtt_gpio.client import Gatekeeper
    >>> gk = Gatekeeper("localhost", node_id="demo")          # doctest: +SKIP
    >>> gk.call("porch_light", "on")["state"]["is_lit"]        # doctest: +SKIP
    True
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import logging
import os
import queue
import socket
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pi_mqtt_gpio.client.credentials import apply_credentials
from pi_mqtt_gpio.client.lease import Lease
from pi_mqtt_gpio.client.registry import remote_class
from pi_mqtt_gpio.errors import RequestTimeout, UnknownDevice, error_for
from pi_mqtt_gpio.payloads import (
    CatalogueEntry,
    ErrorReply,
    LeaseTable,
    OkReply,
    ReplyBody,
    Request,
    State,
)
from pi_mqtt_gpio.topics import Topics

__all__ = ["ConnectionLost", "Gatekeeper"]

log = logging.getLogger("pi_mqtt_gpio.client")

StateListener = Callable[[str, State], None]
EventListener = Callable[[str, State], None]


class ConnectionLost(RequestTimeout, ConnectionError):
    """The connection to the broker dropped while a call waited for its reply (or could not
    be made within the timeout). The next call reconnects."""


class UnknownNode(UnknownDevice):
    """No gatekeeper with that node id has ever been online on this broker (there is no
    retained ``{base_topic}/<node>/status``)."""


NODE_CHECK_S = 2.0  # how long a new connection waits for its node's retained status
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 30  # reconnect backoff


class Gatekeeper:
    """A connection to one gatekeeper node.

    Args:
        host: the Pi (or the broker) to connect to; ``PI_MQTT_HOST`` or ``localhost``.
        port: 1883 by default (8883 with ``tls``); ``PI_MQTT_PORT``.
        username, password: credentials; ``PI_MQTT_USER`` / ``PI_MQTT_PASSWORD``.
        node_id: the gatekeeper's ``node_id`` (its host name by default); ``PI_MQTT_NODE``.
        base_topic: ``gatekeeper`` unless the gatekeeper's config says otherwise.
        tls: ``True`` for the system CAs, a path to a CA file, or an ``ssl.SSLContext``.
        transport: ``"tcp"`` or ``"websockets"``.
        protocol: 5 (default) or 4 for MQTT 3.1.1 (replies then use the payload fallback).
        timeout: seconds to wait for a reply (and for the first connection).

    Example::

        with Gatekeeper("pi.local", node_id="living-room") as gk:
            gk.call("porch_light", "blink", on_time=0.5, n=3)
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        node_id: str | None = None,
        base_topic: str = "gatekeeper",
        tls: bool | str | ssl.SSLContext = False,
        transport: str = "tcp",
        protocol: int = 5,
        timeout: float = 5.0,
        client_id: str | None = None,
        keepalive: int = 30,
        fleet: bool | None = None,
    ) -> None:
        env = os.environ
        self.host = host or env.get("PI_MQTT_HOST") or "localhost"
        self.port = int(port or env.get("PI_MQTT_PORT") or (8883 if tls else 1883))
        username = username if username is not None else env.get("PI_MQTT_USER")
        password = password if password is not None else env.get("PI_MQTT_PASSWORD")
        node = node_id or env.get("PI_MQTT_NODE")
        if not node:
            node = socket.gethostname().split(".")[0]
        if protocol not in (4, 5):
            raise ValueError("protocol must be 5 (MQTT 5.0) or 4 (MQTT 3.1.1)")
        if transport not in ("tcp", "websockets"):
            raise ValueError("transport must be 'tcp' or 'websockets'")
        self.topics = Topics(base_topic, node)
        self.timeout = timeout
        self.v5 = protocol == 5
        self.client_id = client_id or f"gk-client-{uuid.uuid4().hex[:12]}"
        self.reply_prefix = self.topics.reply_prefix(self.client_id)
        # Fleet mode (the node uses an external broker): commands carry the user name as
        # their last topic level and replies go under {root}/reply/<username>/. None: found
        # out from the node's catalogue.
        self.username = username
        self.fleet = False
        if fleet:
            self._enter_fleet()
        self._fleet_auto = fleet is None
        self._catalogue_seen = False
        self.states: dict[str, State] = {}
        self._raw: dict[str, bytes] = {}  # state payloads not parsed yet (see _on_message)
        # Devices whose state is a reply's: the next state message replaces it, whatever its
        # time stamp (see _newer).
        self._from_reply: set[str] = set()
        self._waiters = 0
        self.catalogue: dict[str, CatalogueEntry] = {}
        self.status: str | None = None
        self.nodes: dict[str, str] = {}  # node id -> "online"/"offline", as the broker keeps
        self._lease_doc: LeaseTable | None = None
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._pending: dict[Any, concurrent.futures.Future[ReplyBody]] = {}
        self._ids = itertools.count(1)
        self._state_listeners: list[StateListener] = []
        self._event_listeners: list[EventListener] = []
        self._callbacks: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue())
        self._callback_thread = threading.Thread(target=self._run_callbacks,
                                                 name="gatekeeper-callbacks", daemon=True)
        self._connected = threading.Event()
        self._closed = False
        self._leases: list[Any] = []

        self._mqtt = self._paho(transport, username, password, tls)
        self._callback_thread.start()
        self._connect_error: str | None = None
        self._connect(keepalive, timeout)
        self._check_node(min(NODE_CHECK_S, timeout))

    def _paho(self, transport: str, username: str | None, password: str | None,
              tls: bool | str | ssl.SSLContext) -> mqtt.Client:
        """The paho client underneath: credentials, TLS, backoff, our callbacks."""
        kwargs: dict[str, Any] = {}
        if not self.v5:
            kwargs["clean_session"] = True
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
                             transport="websockets" if transport == "websockets" else "tcp",
                             reconnect_on_failure=True, **kwargs)
        apply_credentials(client, username, password, tls)
        client.reconnect_delay_set(min_delay=RECONNECT_MIN_S, max_delay=RECONNECT_MAX_S)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _connect(self, keepalive: int, timeout: float) -> None:
        """Connect in the background loop and wait for the CONNACK (at most ``timeout``)."""
        props = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.RequestResponseInformation = 1
        try:
            clean: Any = True if self.v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY
            self._mqtt.connect_async(self.host, self.port, keepalive, clean_start=clean,
                                     properties=props)
            self._mqtt.loop_start()
        except Exception:
            self.close()
            raise
        if not self._connected.wait(timeout):
            err = self._connect_error or f"no connection to {self.host}:{self.port} " \
                                         f"within {timeout:g} s"
            self.close()
            raise ConnectionLost(err)

    def _enter_fleet(self) -> None:
        if not self.username:
            raise ValueError("a node on an external broker needs a username: the broker "
                             "checks the caller's name in the topic")
        self.fleet = True
        self.reply_prefix = self.topics.reply(self.username, self.client_id)

    def command_topic(self, topic: str) -> str:
        """A command topic as this connection must publish it (``/<username>`` appended
        for a node on an external broker)."""
        return Topics.sent_by(topic, self.username or "") if self.fleet else topic

    def _check_node(self, wait: float) -> None:
        """Fail fast on a node id that is not on this broker, naming the ones that are."""
        with self._changed:
            found = self._changed.wait_for(lambda: self.status is not None, wait)
            seen = sorted(self.nodes)
        if not found:
            self.close()
            raise UnknownNode(f"no gatekeeper node {self.topics.node_id!r} on this broker; "
                              f"nodes seen: {', '.join(seen) if seen else 'none'}")

    # --- paho callbacks (network thread) --------------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self._connect_error = f"connection refused: {rc}"
            log.warning("gatekeeper connection refused: %s", rc)
            if int(rc.value) in (0x86, 0x87, 0x04, 0x05, 134, 135):
                self._mqtt.disconnect()  # credentials will not get better by retrying
            return
        sock = client.socket()
        if hasattr(sock, "setsockopt"):
            try:  # request/response: no Nagle delay behind our own PUBACKs
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if self.v5 and props is not None and not self.fleet:
            info = getattr(props, "ResponseInformation", None)
            if info:
                self.reply_prefix = info
        topics = self.topics
        client.subscribe([(Topics.below(self.reply_prefix), 0), (topics.any_device("state"), 0),
                          (topics.any_device("event"), 1), (topics.devices, 1),
                          (topics.status, 1), (topics.any_status, 1),
                          (self.topics.lease, 1)])
        self._connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any
                       ) -> None:
        self._connected.clear()
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
        for future in pending:
            if not future.done():
                future.set_exception(ConnectionLost(f"connection lost ({rc}) during a call"))

    def _on_message(self, client: Any, userdata: Any, m: mqtt.MQTTMessage) -> None:
        topic = m.topic
        try:
            if topic.startswith(self.reply_prefix):
                self._on_reply(m)
                return
            parsed = self.topics.parse_device(topic)
            if parsed is not None:
                self._on_device(parsed[0], parsed[1], m.payload)
            elif topic == self.topics.devices:
                self._on_catalogue(client, json.loads(m.payload))
            elif topic == self.topics.lease:
                doc = json.loads(m.payload)
                with self._changed:
                    self._lease_doc = cast(LeaseTable, doc if isinstance(doc, dict) else {})
                    self._changed.notify_all()
            elif (node := self.topics.parse_status(topic)) is not None:
                self._on_status(node, m.payload)
        except (ValueError, KeyError, TypeError, AttributeError):
            log.debug("ignored a malformed message on %s", topic)

    def _on_device(self, name: str, leaf: str, payload: bytes | bytearray) -> None:
        """A device's state or event."""
        if leaf == "state":
            with self._lock:
                if not (self._state_listeners or self._waiters):
                    # Nobody waits on it: keep the bytes, parse when the state is read.
                    # The network thread then hands a reply's waiter the GIL sooner.
                    self._raw[name] = bytes(payload)
                    return
        doc = json.loads(payload)
        if not isinstance(doc, dict):
            return
        if leaf == "state":
            self._set_state(name, doc, reply=False)
        elif leaf == "event":
            for listener in list(self._event_listeners):
                self._callbacks.put((listener, (name, doc)))

    def _on_catalogue(self, client: Any, doc: Any) -> None:
        """The node's catalogue (it says whether the node is in a fleet)."""
        if self._fleet_auto and not self.fleet and isinstance(doc, dict) \
                and doc.get("broker") == "external" and self.username:
            self._enter_fleet()
            client.subscribe(Topics.below(self.reply_prefix), 0)
        with self._changed:
            self._catalogue_seen = True
            self.catalogue = {d["name"]: d for d in doc.get("devices", [])}
            self._changed.notify_all()

    def _on_status(self, node: str, payload: bytes | bytearray) -> None:
        """A node's retained status (online, offline)."""
        with self._changed:
            text = payload.decode("utf-8", "replace")
            if text:
                self.nodes[node] = text
            if node == self.topics.node_id:
                self.status = text or None
            self._changed.notify_all()

    def _on_reply(self, m: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(m.payload)
        except ValueError:
            log.debug("ignored a reply that is not JSON")
            return
        if not isinstance(body, dict):
            return
        body = cast(ReplyBody, body)  # the server's JSON: its fields are checked as read
        if self.v5:
            key = getattr(m.properties, "CorrelationData", None) if m.properties else None
        else:
            key = body.get("correlation_id")
        with self._lock:
            future = self._pending.pop(key, None)
        if future is None or future.done():
            return  # not ours, or a late reply to a call that already timed out
        state = body.get("state")
        if isinstance(state, dict) and body.get("ok"):
            name = future.device  # type: ignore[attr-defined]
            self._set_state(name, state, reply=True)
        future.set_result(body)

    def _materialize(self) -> None:
        """Parse the state payloads kept raw (call with the lock held)."""
        if not self._raw:
            return
        raw, self._raw = self._raw, {}
        for name, payload in raw.items():
            try:
                doc = json.loads(payload)
            except ValueError:
                continue
            if isinstance(doc, dict) and self._newer(name, doc, reply=False):
                self.states[name] = doc

    def _newer(self, name: str, state: State, *, reply: bool) -> bool:
        """Whether ``state`` (a reply's, or a state message's) replaces the one held, and
        note where the held one came from (call with the lock held). State messages come in
        the order the gatekeeper published them, so one replaces a reply's state whatever
        its time stamp: a reply's state is read when the call ran but stamped when it is
        answered, and an input's own edge (a smoothed input samples it a few ms after a
        ``sim_release``) may carry an earlier stamp than that stale reading. Otherwise the
        newer time stamp wins (an older retained copy arriving late is ignored)."""
        old = self.states.get(name)
        newer = old is None or "ts" not in state or (not reply and name in self._from_reply) \
            or str(state.get("ts", "")) >= str(old.get("ts", ""))
        if newer:
            if reply:
                self._from_reply.add(name)
            else:
                self._from_reply.discard(name)
        return newer

    def _set_state(self, name: str, state: State, *, reply: bool) -> None:
        with self._changed:
            self._materialize()
            if not self._newer(name, state, reply=reply):
                return
            self.states[name] = state
            self._changed.notify_all()
        for listener in list(self._state_listeners):
            self._callbacks.put((listener, (name, state)))

    # --- the callback thread --------------------------------------------------------------------
    def _run_callbacks(self) -> None:
        while True:
            item = self._callbacks.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:
                log.exception("gatekeeper callback %r failed", fn)

    def add_state_listener(self, fn: StateListener) -> None:
        self._state_listeners.append(fn)

    def add_event_listener(self, fn: EventListener) -> None:
        self._event_listeners.append(fn)

    def remove_listener(self, fn: Callable[..., Any]) -> None:
        for listeners in (self._state_listeners, self._event_listeners):
            if fn in listeners:
                listeners.remove(fn)

    # --- calls ----------------------------------------------------------------------------------
    def submit(self, device: str, method: str, args: Sequence[Any] = (),
               kwargs: dict[str, Any] | None = None, *, topic: str | None = None
               ) -> concurrent.futures.Future[ReplyBody]:
        """Send a call; the future resolves to the reply ``{"ok": ..., ...}``."""
        if self._closed:
            raise ConnectionLost("the Gatekeeper connection is closed")
        if not self._connected.wait(self.timeout):
            raise ConnectionLost(f"not connected to {self.host}:{self.port}")
        if self._fleet_auto and not self._catalogue_seen:
            # Whether the node is on an external broker (commands then carry our user name)
            # is in its catalogue: wait for it briefly before the first call.
            with self._changed:
                self._changed.wait_for(lambda: self._catalogue_seen, self.timeout)
        n = next(self._ids)
        request: Request = {"method": method, "args": list(args), "kwargs": kwargs or {}}
        future: concurrent.futures.Future[ReplyBody] = concurrent.futures.Future()
        future.device = device  # type: ignore[attr-defined]
        reply_topic = Topics.reply_to(self.reply_prefix)  # under our own reply prefix
        props = None
        if self.v5:
            key: Any = n.to_bytes(8, "big")
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = reply_topic
            props.CorrelationData = key
        else:
            key = f"{self.client_id}:{n}"
            request["reply_to"] = reply_topic
            request["correlation_id"] = key
        with self._lock:
            self._pending[key] = future
        future.add_done_callback(lambda _f: self._forget(key))
        # QoS 0: a call is answered or times out; QoS 1 could deliver it twice after a
        # reconnect, and a repeated toggle() is a different command.
        info = self._mqtt.publish(self.command_topic(topic or self.topics.device(device, "call")),
                                  json.dumps(request), 0, properties=props)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and info.rc != MQTTErrorCode.MQTT_ERR_NO_CONN:
            with self._lock:
                self._pending.pop(key, None)
            raise ConnectionLost(f"publish failed: {mqtt.error_string(info.rc)}")
        return future

    def _forget(self, key: Any) -> None:
        with self._lock:
            self._pending.pop(key, None)

    def call(self, device: str, method: str, *args: Any, timeout: float | None = None,
             **kwargs: Any) -> OkReply:
        """Call ``method`` on ``device`` and wait for the reply; raises the
        ``GatekeeperError`` subclass named after the error code when refused."""
        future = self.submit(device, method, args, kwargs)
        return self.result(future, timeout, device, method)

    def result(self, future: concurrent.futures.Future[ReplyBody], timeout: float | None,
               device: str, method: str) -> OkReply:
        wait = self.timeout if timeout is None else timeout
        try:
            body = future.result(wait)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise RequestTimeout(f"no reply to {device}.{method} within {wait:g} s") from None
        return check_reply(body)

    # --- the twin -------------------------------------------------------------------------------
    def state(self, name: str, *, wait: float | None = None) -> State:
        """The cached retained state of ``name`` (waiting for it briefly after connecting)."""
        with self._changed:
            self._materialize()
            if name not in self.states:
                self._waiters += 1
                try:
                    self._changed.wait_for(lambda: name in self.states,
                                           self.timeout if wait is None else wait)
                finally:
                    self._waiters -= 1
            state = self.states.get(name)
        if state is None:
            raise UnknownDevice(f"no state for {name!r} on {self.topics.root}")
        return state

    def wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``predicate()`` (evaluated under the twin's lock) holds."""
        with self._changed:
            self._materialize()
            self._waiters += 1
            try:
                return self._changed.wait_for(predicate, timeout)
            finally:
                self._waiters -= 1

    def devices(self) -> dict[str, CatalogueEntry]:
        """The gatekeeper's device catalogue: name -> {type, methods, capabilities, ...}."""
        with self._changed:
            self._changed.wait_for(lambda: bool(self.catalogue), self.timeout)
            return dict(self.catalogue)

    def device(self, name: str) -> Any:
        """A Remote object of the right class for ``name`` (``RemoteLED`` for an LED, ...)."""
        entry = self.devices().get(name)
        if entry is None:
            raise UnknownDevice(f"no device named {name!r} on {self.topics.root}")
        return remote_class(entry["type"])(name, gatekeeper=self)

    # --- leases ---------------------------------------------------------------------------------
    def leases(self) -> LeaseTable:
        """The node's retained lease table: ``{"scope": ..., "leases": [{holder, devices,
        expires, ttl}, ...]}``."""
        with self._changed:
            self._changed.wait_for(lambda: self._lease_doc is not None, self.timeout)
            return cast(LeaseTable, dict(self._lease_doc or {}))

    @contextmanager
    def lease(self, devices: Sequence[str] | None = None, *, ttl: float = 30) -> Iterator[Any]:
        """Hold a control lease while the block runs: acquired on entry, renewed in the
        background every ttl/3, released on exit. ``devices=None`` asks for the global lease."""
        lease = Lease(self, devices, ttl)
        lease.acquire()
        try:
            yield lease
        finally:
            lease.release()

    # --- lifecycle ------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called (a closed connection does not reconnect)."""
        return self._closed

    def close(self) -> None:
        """Disconnect and stop the threads. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        try:
            self._mqtt.disconnect()
        except Exception:
            pass
        self._mqtt.loop_stop()
        self._callbacks.put(None)
        if threading.current_thread() is not self._callback_thread:
            self._callback_thread.join(2)

    def __enter__(self) -> Gatekeeper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Gatekeeper {self.topics.root} at {self.host}:{self.port}>"


def check_reply(body: ReplyBody) -> OkReply:
    """Return an ``ok`` reply; raise the error's exception otherwise (the body is the
    server's JSON: its fields are checked, not trusted)."""
    if body.get("ok"):
        return cast(OkReply, body)
    error: Any = cast(ErrorReply, body).get("error") or {}
    if not isinstance(error, dict):
        error = {}
    retry = error.get("retry_after")
    raise error_for(str(error.get("code", "BAD_REQUEST")), str(error.get("message", "")),
                    error.get("details") if isinstance(error.get("details"), dict) else None,
                    float(retry) if isinstance(retry, int | float) else None)

