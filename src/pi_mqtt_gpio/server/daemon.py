"""Composition root: builds the broker, security, hardware, twin and RPC services from the
config, starts them, and shuts them down safely (DESIGN section 6)."""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pi_mqtt_gpio.errors import GatekeeperError, NotAuthorized
from pi_mqtt_gpio.mqtt.broker import BrokerCore, BrokerLimits, InternalClient
from pi_mqtt_gpio.mqtt.hooks import BrokerHooks, ClientInfo, Decision
from pi_mqtt_gpio.mqtt.logguard import LOG_TOTAL, LogLimiter, clip
from pi_mqtt_gpio.mqtt.message import Message
from pi_mqtt_gpio.mqtt.packets import PROTOCOL_50, Properties
from pi_mqtt_gpio.server.aclprobe import AclProbe, Verdict, forged_reason
from pi_mqtt_gpio.server.bindings import Bindings, ButtonGestures, PublishQueue
from pi_mqtt_gpio.server.broker import BrokerServer
from pi_mqtt_gpio.server.broker_store import BrokerStore
from pi_mqtt_gpio.server.broker_sys import SysPublisher
from pi_mqtt_gpio.server.compat.mqtt_io import MqttIoBridge, MqttIoTopics
from pi_mqtt_gpio.server.config import Config
from pi_mqtt_gpio.server.covers import CoverController
from pi_mqtt_gpio.server.devices.cover import CoverAdapter
from pi_mqtt_gpio.server.devices.sensors import SensorAdapter
from pi_mqtt_gpio.server.fdlimit import fit_open_files
from pi_mqtt_gpio.server.guards import Guards
from pi_mqtt_gpio.server.hardware import (
    DeviceEvent,
    HardwareManager,
    consumer_label,
    make_pin_factory,
)
from pi_mqtt_gpio.server.history import SensorHistory
from pi_mqtt_gpio.server.homeassistant import Discovery, discovery
from pi_mqtt_gpio.server.persistence import (
    SCHEMA_VERSION,
    Persister,
    StateFile,
    StateFileError,
    clamp_lockouts,
    writable_problem,
)
from pi_mqtt_gpio.server.rpc_handler import RpcHandler, make_safe
from pi_mqtt_gpio.server.safety import SafetyPolicy, guards_for, line_interlocks
from pi_mqtt_gpio.server.security import AccessControl, Authenticator, ControlLeaseManager
from pi_mqtt_gpio.server.twin import Twin, dumps, utc_ts
from pi_mqtt_gpio.server.uplink import Uplink
from pi_mqtt_gpio.server.watchdog import WATCHDOG_DEVICE, Watchdog
from pi_mqtt_gpio.topics import Topics
from pi_mqtt_gpio.version import package_version

__all__ = ["Daemon", "run"]

log = logging.getLogger("pi_mqtt_gpio.daemon")

HEALTH_INTERVAL_S = 60.0
EXPANDER_DEVICE = "__expander__"  # the airlock name of expander failures (never a device)
ACL_RETRY_S = 30.0  # after a failed ACL probe, the next one (at most acl_probe.interval_s)
WAITING_LINE_AFTER_S = 2.0  # external mode: not serving by then -> "waiting for the broker"
SIMULATED_WARNING_ROUNDS = 60  # health rounds between two "pins are simulated" warnings (1 h)


class Daemon:
    def __init__(self, config: Config, *, simulate: bool = False) -> None:
        self.config = config
        self.simulate = simulate or config.hardware.pin_factory == "mock"
        # Simulated pins that nobody asked for on the command line: a production config
        # that still says pin_factory: mock. Said at start and every hour.
        self.simulated_by_config = self.simulate and not simulate
        self.topics = Topics(config.base_topic, config.node_id)
        self.authenticator = Authenticator(config.auth,
                                           max_concurrent=config.auth.max_concurrent_checks)
        compat = config.compat.mqtt_io
        self.mqtt_io = MqttIoTopics(compat, config.devices, self.topics) \
            if compat is not None else None
        self.acl = AccessControl(config.auth, self.topics, role_of=self.authenticator.role_of,
                                 ha_prefix=config.homeassistant.prefix, aliases=self.mqtt_io)
        # the open files limit raised to what the broker's limits need (or the pool fitted)
        self.core = BrokerCore(fit_open_files(broker_limits(config)), hooks=[self.acl])
        self.leases = ControlLeaseManager(config.leases.scope, config.leases.ttl_s)
        self.server = BrokerServer(
            self.core, self.authenticator.authenticate, list(config.broker.listeners),
            web={"node_id": config.node_id, "base_topic": config.base_topic,
                 "root": self.topics.root, "broker": config.broker.mode, "mqtt_path": "/mqtt",
                 "anonymous": config.auth.allow_anonymous, "devices": len(config.devices)},
        )
        labels = {line: consumer_label(config.hardware.consumer_tag, name, line)
                  for name, dev in config.devices.items() for _k, line, _s in dev.lines()}
        if config.watchdog is not None:
            for role, line in (("watchdog-out", config.watchdog.out),
                               ("watchdog-in", config.watchdog.in_)):
                labels[line] = consumer_label(config.hardware.consumer_tag, role, line)
        self.hw = HardwareManager(
            dict(config.devices),
            lambda: make_pin_factory(config.hardware, self.simulate, labels,
                                     expanders=dict(config.expanders),
                                     on_expander_failure=self._expander_failure),
            simulate=self.simulate,
            hardware=config.hardware,
        )
        self._health_task: asyncio.Task[None] | None = None
        self._health_pending: set[asyncio.Task[None]] = set()
        self.persister: Persister | None = None
        self.broker_store: BrokerStore | None = None  # the embedded broker's, with persistence
        self.sys_publisher: SysPublisher | None = None
        self.client: InternalClient | None = None
        self.twin = Twin(self.topics, self.hw, self._publish)
        self.guards = Guards(
            SafetyPolicy(guards_for(config.safety, config.devices),
                         [*(frozenset(group) for group in config.interlocks),
                          *line_interlocks(config.devices)]),
            self.hw, on_event=self.twin.notice, on_state=self._republish, make_safe=make_safe,
            on_safe=lambda name, state: self.twin.state(name, state))
        self.covers = {
            name: CoverController(adapter, self.hw, self.guards, on_state=self._cover_state,
                                  on_event=self.twin.notice)
            for name, adapter in self.hw.adapters.items() if isinstance(adapter, CoverAdapter)}
        self.rpc = RpcHandler(self.topics, self.hw, self.twin, self._send, acl=[self.acl],
                              listening=self.core.has_subscribers, leases=self.leases,
                              may_command=self._may_command, has_right=self._has_right,
                              guards=self.guards, covers=self.covers)
        self.bindings = Bindings(
            {name: dict(dev.bindings) for name, dev in config.devices.items()
             if getattr(dev, "bindings", None)},
            call=self.rpc.local_call, local_publish=self.rpc.local_publish,
            send=self._publish,
            queue=PublishQueue(max_items=config.bindings_queue.max,
                               max_age_s=config.bindings_queue.max_age_s))
        self.gestures = {
            name: ButtonGestures(name, dev.gestures, emit=self._gesture)
            for name, dev in config.devices.items() if getattr(dev, "gestures", None)}
        for name in self.covers:
            self.twin.intercept[name] = self._cover_input
        self.twin.listeners.append(self._observed)
        self.discovery: Discovery | None = None
        if config.homeassistant.discovery:
            self.discovery = Discovery(
                discovery(self.topics, dict(config.devices), prefix=config.homeassistant.prefix,
                          version=package_version(), watchdog=config.watchdog is not None,
                          command_suffix=config.homeassistant.username
                          if config.broker.mode == "external" else None,
                          events=lambda name: list(self.hw.adapters[name].catalogue()["events"])),
                prefix=config.homeassistant.prefix, publish=self._publish,
                republish_states=self._republish_all,
                call_later=lambda delay, fn: asyncio.get_running_loop().call_later(delay, fn))
        self.rpc.on_set_refused = self._republish
        self.bridge: MqttIoBridge | None = None
        if self.mqtt_io is not None:
            self.bridge = MqttIoBridge(self.mqtt_io, publish=self._publish,
                                       call=self.rpc.command, refuse=self.rpc.refuse,
                                       may_command=self._may_command)
            self.twin.listeners.append(self.bridge.state)
        self.uplink: Uplink | None = None
        self._retained_log = LogLimiter(log, total=LOG_TOTAL)
        self.status_link: Uplink | None = None  # external mode: holds mqtt-io's status Will
        self.fatal: str | None = None  # why the daemon stopped itself (exit status 1)
        self.uplink_loop: asyncio.AbstractEventLoop | None = None
        self.request_stop: Callable[[], None] = lambda: None
        # External mode: ready = serving (CONNACK, every subscription granted, the first ACL
        # probe's verdict); the broker ACL's state: unchecked (acl_probe: false), pending
        # (after each connect, until the probe answers), passed, failed.
        self.ready = asyncio.Event()
        self.acl_probe: AclProbe | None = None
        self.acl_state = "unchecked"
        self.acl_reason: str | None = None
        self._acl_said: tuple[str, str | None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        if config.broker.mode == "external" and config.broker.external is not None:
            ext = config.broker.external
            if ext.acl_probe:
                self.acl_probe = AclProbe(ext.acl_probe, ext, root=self.topics.root,
                                          client_id=ext.client_id or
                                          f"gatekeeper-{config.node_id}")
                self.acl_state = "pending"
            subscriptions = [f"{self.topics.any_device(leaf)}/+" for leaf in ("set", "call")]
            subscriptions.append(f"{self.topics.lease_call}/+")
            if config.homeassistant.discovery:
                subscriptions.append(f"{config.homeassistant.prefix}/status")
            if self.mqtt_io is not None and compat is not None:
                subscriptions.extend(self.mqtt_io.subscriptions())
                # MQTT gives a connection one Will: mqtt-io's "dead" needs its own.
                self.status_link = Uplink(
                    ext, client_id=compat.client_id or f"gatekeeper-{config.node_id}-mqtt-io",
                    will_topic=self.mqtt_io.status_topic,
                    will_payload=compat.status_payload_dead.encode(),
                    stop_payload=compat.status_payload_stopped.encode(),
                    on_message=lambda _msg: None, on_connected=self._status_link_connected,
                    subscriptions=[])
            self.uplink = Uplink(ext, client_id=ext.client_id or
                                 f"gatekeeper-{config.node_id}", will_topic=self.topics.status,
                                 on_message=self._uplink_message,
                                 on_connected=self._uplink_connected,
                                 subscriptions=subscriptions,
                                 on_v311=self._v311_names,
                                 on_serving=self._uplink_serving,
                                 intercept=self._intercept if self.acl_probe else None)
            self.rpc.listening = lambda topic: True  # the broker does not say who listens
            self.twin.broker_mode = "external"
            uplink = self.uplink
            self.bindings.link_up = uplink.connected.is_set  # publish bindings wait meanwhile
        self.watchdog: Watchdog | None = None
        self.expander_problems: dict[str, str] = {}
        self.twin.intercept[EXPANDER_DEVICE] = self._expander_event
        self.sensor_problems: dict[str, str] = {}  # a sensor that stopped answering -> why
        self.twin.listeners.append(self._sensor_state)
        # the last hour of each sensor's readings (retained .../history, the history method)
        self.history = SensorHistory(self.topics, self._publish)
        for name, adapter in self.hw.adapters.items():
            if isinstance(adapter, SensorAdapter):
                values = adapter.value_list()
                self.history.add_sensor(name, [q.key for q in values],
                                        {q.key: q.unit for q in values}, adapter.poll_interval)
                adapter.history = functools.partial(self.history.doc, name)
        self.twin.listeners.append(self.history.record)
        if config.watchdog is not None:
            self.watchdog = Watchdog(config.watchdog, self.hw, simulate=self.simulate,
                                     on_change=self._health_now)
            self.twin.intercept[WATCHDOG_DEVICE] = self._watchdog_edge
        for name in {*self.gestures, *self.bindings.bindings}:
            self.twin.observe[name] = self._button_input
        self.core.hooks.append(_GatekeeperHooks(self))
        self.started = False

    # --- the in-process MQTT client -----------------------------------------------------------
    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self._send(topic, payload, qos, {}, retain)

    def _send(self, topic: str, payload: bytes, qos: int, props: Properties,
              retain: bool = False) -> None:
        if self.uplink is not None:
            self.uplink.publish(topic, payload, qos, retain, props)
            return
        assert self.client is not None
        self.client.publish(topic, payload, now=self.server.now(), qos=qos, retain=retain,
                            properties=props)
        self.server.schedule_pump()

    def _on_message(self, msg: Message, sub_ids: list[int]) -> None:
        if self.discovery is not None and msg.topic == self.discovery.birth_topic:
            self.discovery.birth(msg.payload)
            return
        if self.bridge is not None and self.bridge.handle(msg):
            return
        self.rpc.handle(msg)

    # --- persistence ---------------------------------------------------------------------------
    async def _load_state(self) -> dict[str, Any]:
        persistence = self.config.persistence
        if not persistence.path:
            return {}
        problem = writable_problem(persistence.path)
        if problem is not None:
            raise GatekeeperError(problem)
        state_file = StateFile(persistence.path)
        try:
            saved = await asyncio.to_thread(state_file.load)
        except (StateFileError, OSError) as exc:
            raise GatekeeperError(f"persistence.path: {exc}") from None
        self.persister = Persister(state_file, persistence.autosave_s, self._snapshot)
        self.persister.loaded(saved)
        return saved

    async def _load_broker_store(self) -> None:
        """The embedded broker's retained messages and sessions, beside the state file. The
        node's own retained topics (its tree, Home Assistant discovery, ``$SYS``) are not
        kept: they are published again at start, and a stale state must never reappear."""
        path = self.config.persistence.path
        if not path or self.client is None:
            return
        own, root = self.client.client_id, self.topics.root + "/"
        self.broker_store = BrokerStore(
            Path(path).parent, self.core, self.config.persistence.autosave_s,
            lambda msg: msg.sender != own and msg.topic != root[:-1]
            and not msg.topic.startswith((root, "$SYS/")),
            self.server.now)
        await self.broker_store.load()

    def _snapshot(self) -> dict[str, Any]:
        """What survives a restart: outputs with ``restore: true``, lockouts in force."""
        outputs = {name: self.twin.states[name].get("value")
                   for name, dev in self.config.devices.items()
                   if dev.restore and name in self.twin.states}
        return {"version": SCHEMA_VERSION, "outputs": outputs,
                "lockouts": self.guards.lockouts_wall(),
                "covers": {name: cover.saved() for name, cover in self.covers.items()},
                "homeassistant": self.discovery.saved() if self.discovery is not None else []}

    def _restore(self, saved: dict[str, Any]) -> None:
        if self.persister is None:
            for name, cover in self.covers.items():
                self._cover_state(name, cover.state())
            return
        lockouts = saved.get("lockouts")
        if isinstance(lockouts, dict):
            self.guards.restore_lockouts(clamp_lockouts(lockouts, {
                n: g.flap_lockout_s for n, g in self.guards.policy.guards.items()}, time.time()))
        covers = saved.get("covers")
        for name, cover in self.covers.items():
            if isinstance(covers, dict) and name in covers:
                cover.restore(covers[name])
            self._cover_state(name, cover.state())
        outputs = saved.get("outputs")
        if isinstance(outputs, dict):
            for name, value in outputs.items():
                dev = self.config.devices.get(name)
                if dev is not None and dev.restore:
                    self.rpc.restore(name, value)
        self.twin.on_change = lambda _name: self.persister.changed() \
            if self.persister is not None else None

    # --- covers, gestures, bindings ------------------------------------------------------------
    def _cover_state(self, name: str, state: dict[str, Any]) -> None:
        self.twin.state(name, self.guards.decorate(name, state))

    def _cover_input(self, ev: DeviceEvent) -> bool:
        """A cover's endstop closed: its controller stops and calibrates."""
        if ev.event is not None and ev.event.startswith("endstop_"):
            at = ev.state.get("at")
            self.covers[ev.device].endstop(ev.event.removeprefix("endstop_"),
                                           at if isinstance(at, float) else ev.mono)
        return True

    def _button_input(self, ev: DeviceEvent) -> None:
        """After a button's event was published: its binding, if any, and its presses and
        releases (at the time the edge was seen) feed its gesture recognizer."""
        if ev.event is None:
            return
        self.bindings.trigger(ev.device, ev.event)
        gestures = self.gestures.get(ev.device)
        if gestures is not None and ev.event in ("pressed", "released"):
            loop_now = asyncio.get_running_loop().time()
            at = loop_now - max(0.0, time.monotonic() - ev.mono) if ev.mono else loop_now
            gestures.edge(ev.event == "pressed", at)

    def _expander_failure(self, name: str, problem: str | None) -> None:
        """An expander stopped answering (problem) or answers again (None); from its
        thread, through the airlock."""
        self.hw.airlock(EXPANDER_DEVICE, name, {"problem": problem})

    def _expander_event(self, ev: DeviceEvent) -> bool:
        """Its devices' states say unavailable (or are read again), the health says why."""
        name, problem = ev.event or "", ev.state.get("problem")
        if problem:
            self.expander_problems[name] = str(problem)
        else:
            self.expander_problems.pop(name, None)
        for device, cfg in self.config.devices.items():
            if not any(isinstance(line, str) and line.partition(":")[0] == name
                       for _k, line, _s in cfg.lines()):
                continue
            if problem:
                doc = self.twin.states.get(device, {})
                state = {k: v for k, v in doc.items() if k != "ts"}
                self.twin.state(device, {**state, "available": False,
                                         "error": str(problem)})
            else:
                self.twin.refresh_later(device, 0.0)
        self._health_now()
        return True

    def _sensor_state(self, device: str, doc: dict[str, Any], _again: bool) -> None:
        """A sensor published ``available: false`` (its error is a problem of the node's
        health) or answers again."""
        if not isinstance(self.hw.adapters.get(device), SensorAdapter):
            return
        problem = None if doc.get("available", True) else \
            f"sensor {device}: {doc.get('error') or 'not answering'}"
        if problem == self.sensor_problems.get(device):
            return
        if problem is None:
            self.sensor_problems.pop(device, None)
        else:
            self.sensor_problems[device] = problem
        self._health_now()

    def _watchdog_edge(self, ev: DeviceEvent) -> bool:
        at = ev.state.get("at")
        if self.watchdog is not None:
            self.watchdog.edge(at if isinstance(at, float) else None)
        return True

    def _health_now(self) -> None:
        """Publish the health at once (the watchdog's status changed)."""
        task = asyncio.ensure_future(self.publish_health())
        self._health_pending.add(task)
        task.add_done_callback(self._health_pending.discard)

    def _gesture(self, button: str, gesture: str) -> None:
        self.twin.notice(button, gesture, {})
        self.bindings.trigger(button, gesture)

    def _republish_all(self) -> None:
        """Every device's state again (Home Assistant restarted)."""
        for name in list(self.twin.states):
            self._republish(name)

    def _republish(self, name: str) -> None:
        """A device's state again, with or without its lockout (the guards changed it)."""
        doc = self.twin.states.get(name)
        if doc is None:
            return
        state = {k: v for k, v in doc.items() if k not in ("ts", "lockout_until")}
        self.twin.state(name, self.guards.decorate(name, state), force=True)

    def _observed(self, name: str, doc: dict[str, Any], _again: bool) -> None:
        """Every published state of a plain output tells the guards what it is now (a blink
        that ended turns an interlock partner free)."""
        adapter = self.hw.adapters.get(name)
        if adapter is not None and adapter.kind == "output" and name not in self.covers:
            self.guards.observed(name, doc)

    def _has_right(self, msg: Message, right: str) -> bool:
        if self.client is not None and msg.sender == self.client.client_id:
            return True
        return self.acl.has_right(_sender(msg), right)

    def _may_command(self, msg: Message) -> bool:
        """Whoever sent ``msg`` may publish it now (checked again by the RPC handler, so that
        no path into the broker, a Will included, can bypass the ACL)."""
        if self.client is not None and msg.sender == self.client.client_id:
            return True
        return self.acl.authorize_publish(_sender(msg), msg.topic, msg.qos, False) \
            is Decision.ALLOW

    # --- external broker mode -----------------------------------------------------------------
    def _uplink_message(self, msg: Message) -> None:
        """A command from the external broker: ``.../set/<user>``, ``.../call/<user>`` or
        ``{root}/lease/call/<user>``. The broker's ACL guarantees the last level is the
        publisher's user name; the gatekeeper applies that user's role."""
        if self.discovery is not None and msg.topic == self.discovery.birth_topic:
            self.discovery.birth(msg.payload)
            return
        if msg.retain:
            # A retained command would run again at every (re)connect and for every node
            # that starts later: commands are never taken from the broker's retained store.
            self._retained_log.log(logging.WARNING, msg.topic, asyncio.get_running_loop().time(),
                                   "ignoring a retained command on %s (commands are never "
                                   "retained: clear it with an empty retained publish)",
                                   clip(msg.topic))
            return
        if self.bridge is not None and self.mqtt_io is not None \
                and self.mqtt_io.command(msg.topic) is not None:
            # mqtt-io's topics carry no user name: the broker's ACL decided who may publish
            # them; the gatekeeper applies compat.mqtt_io.username's role.
            user = self.config.compat.mqtt_io.username  # type: ignore[union-attr]
            command = Message(msg.topic, msg.payload, msg.qos, False, msg.properties,
                              sender=user, username=user, role=self.authenticator.role_of(user))
            refusal = self._acl_refusal()
            found = self.mqtt_io.command(msg.topic)
            if refusal is not None and found is not None:
                self.rpc.refuse(command, found[0].name, found[1], NotAuthorized(refusal),
                                "mqtt_io")
                return
            self.bridge.handle(command)
            return
        base, _, user = msg.topic.rpartition("/")  # only command topics are subscribed
        if not user or (self.acl_probe is not None and user == self.acl_probe.username):
            return  # the ACL probe's user never commands
        role = self.authenticator.role_of(user)
        command = Message(base, msg.payload, msg.qos, False, msg.properties,
                          sender=user, username=user, role=role)
        refusal = self._acl_refusal()
        if refusal is not None:
            self.rpc.handle_denied(command, refusal)
            return
        self.rpc.handle(command)

    def _v311_names(self) -> str | None:
        """The broker speaks only MQTT 3.1.1 — in practice NATS's MQTT gateway, which
        refuses '.' and spaces in topics: a node id or device name with them cannot be
        carried. Called on the uplink's thread; a problem stops the gatekeeper."""
        names = [("base_topic", self.config.base_topic), ("node_id", self.config.node_id),
                 *((f"device {name!r}", name) for name in self.config.devices)]
        bad = [f"{what} {value!r}" for what, value in names if "." in value or " " in value]
        if not bad:
            return None
        problem = (f"the broker speaks only MQTT 3.1.1 (like NATS's MQTT gateway, which refuses "
                   f"'.' and spaces in topics): {', '.join(bad)} cannot be carried; rename "
                   f"without '.' and spaces")
        loop = self.uplink_loop
        if loop is not None:
            loop.call_soon_threadsafe(self._stop_for, problem)
        return problem

    # --- the broker ACL's probe (external mode) -------------------------------------------------
    def _acl_refusal(self) -> str | None:
        """Why every command is refused now (the broker ACL is not known to hold), or None."""
        if self.acl_probe is None or self.acl_state == "passed":
            return None
        if self.acl_state == "failed":
            return f"every command is refused until the broker ACL passes its probe: " \
                   f"{self.acl_reason}"
        return "every command is refused until the broker ACL has been checked after " \
               "connecting: try again in a moment"

    def _intercept(self, topic: str, payload: bytes) -> bool:
        """On the uplink's thread: the ACL probe's messages are never commands; one of its
        forged commands arriving late fails the probe all the same."""
        probe = self.acl_probe
        if probe is None:
            return False
        claimed = probe.claim(topic, payload)
        late, probe.late_forgery = probe.late_forgery, None
        loop = self.uplink_loop
        if late is not None and loop is not None:
            verdict = Verdict(False, forged_reason(probe.username, late), 0.0)
            loop.call_soon_threadsafe(self._acl_verdict, verdict)
        return claimed

    def _uplink_serving(self) -> None:
        """Every subscription granted: probe the broker's ACL (ready after its verdict)."""
        if self.acl_probe is None:
            self.ready.set()
            return
        if self._probe_task is not None:
            self._probe_task.cancel()
        self._probe_task = asyncio.create_task(self._probe_loop(self.acl_probe))

    async def _probe_loop(self, probe: AclProbe) -> None:
        """A probe now (after a connect), then every ``interval_s`` (sooner after a failure)."""
        uplink = self.uplink
        assert uplink is not None
        interval = float(probe.config.interval_s)
        while True:
            peer = uplink.peer
            if peer is None:
                return  # disconnected: the next connect starts a new loop
            verdict = await asyncio.to_thread(probe.run, peer[0], peer[1], uplink.v5)
            if uplink.peer != peer:
                return  # reconnected meanwhile: that connection's own probe decides
            self._acl_verdict(verdict)
            await asyncio.sleep(interval if verdict.passed else min(ACL_RETRY_S, interval))

    def _acl_verdict(self, verdict: Verdict) -> None:
        state = "passed" if verdict.passed else "failed"
        reason = None if verdict.passed else verdict.reason
        if self._acl_said != (state, reason):  # one line per change
            if verdict.passed:
                log.info("the broker ACL passed its probe (%.0f ms): %s", verdict.elapsed_s * 1000,
                         verdict.reason)
            else:
                log.error("the broker ACL failed its probe (%.0f ms): %s; every command is "
                          "refused until a probe passes", verdict.elapsed_s * 1000,
                          verdict.reason)
            self._acl_said = (state, reason)
        else:
            log.debug("ACL probe %s (%.0f ms)", state, verdict.elapsed_s * 1000)
        changed = (self.acl_state, self.acl_reason) != (state, reason)
        self.acl_state, self.acl_reason = state, reason
        if changed:
            self._health_now()
        self.ready.set()

    def _status_link_connected(self) -> None:
        """mqtt-io's status goes out on the connection that holds its Will (the main one may
        not be connected yet)."""
        link, names = self.status_link, self.mqtt_io
        if link is not None and names is not None:
            link.publish(names.status_topic, names.cfg.status_payload_running.encode(), 1, True)

    def _stop_for(self, problem: str) -> None:
        log.error("stopping: %s", problem)
        self.fatal = problem
        self.request_stop()

    def _uplink_connected(self) -> None:
        """(Re)connected to the external broker: everything retained is published again;
        commands wait for this connection's ACL probe (it may be another broker now)."""
        if self.acl_probe is not None:
            if self._probe_task is not None:
                self._probe_task.cancel()
                self._probe_task = None
            self.acl_state = "pending"
        self.twin.status(True)
        self.twin.catalogue()
        self._republish_all()
        self.rpc.publish_leases()
        if self.discovery is not None:
            self.discovery.republish()
        if self.bridge is not None and self.status_link is None:
            self.bridge.running()
        self._health_now()
        sent = self.bindings.link_restored()
        if sent:
            log.info("sent %d binding publishes that waited for the broker", sent)

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        saved = await self._load_state()  # before any pin is claimed: a bad file refuses start
        if self.uplink is None:
            self.client = self.core.connect_internal(f"gatekeeper-{self.config.node_id}",
                                                     self._on_message)
            await self._load_broker_store()
        states = await self.hw.start()  # claims the lines; safe states applied
        try:
            if self.watchdog is not None:
                await self.watchdog.start()
            if self.uplink is None:
                await self.server.start()
        except BaseException:
            await self.hw.stop()
            raise
        now = self.server.now()
        self.twin.catalogue()
        for name, state in states.items():
            if name not in self.covers:  # a cover's state comes with its position below
                self.twin.state(name, state)
        self.guards.start({name: state for name, state in states.items()
                           if self.hw.adapters[name].kind == "output"})
        self._restore(saved)
        self.twin.start()
        root = self.topics.root
        if self.client is not None:
            self.client.subscribe(self.topics.any_device("call"), now=now, qos=1)
            self.client.subscribe(self.topics.any_device("set"), now=now, qos=1)
            self.client.subscribe(self.topics.lease_call, now=now, qos=1)
            if self.mqtt_io is not None:
                for topic in self.mqtt_io.subscriptions():
                    self.client.subscribe(topic, now=now, qos=1)
        self.rpc.publish_leases()
        self.twin.status(True)
        if self.bridge is not None and self.uplink is None:
            self.bridge.running()
        if self.discovery is not None:
            if self.client is not None:
                self.client.subscribe(self.discovery.birth_topic, now=now, qos=1)
            self.discovery.start(saved.get("homeassistant"))
            if self.persister is not None and saved.get("homeassistant") != \
                    self.discovery.saved():
                self.persister.changed()
        self._health_task = asyncio.create_task(self._health_loop())
        if self.broker_store is not None:
            self.broker_store.start()
        if self.client is not None:
            self.sys_publisher = SysPublisher(self.server, self.client,
                                              self.config.broker.sys_interval_s,
                                              package_version())
            self.sys_publisher.start()
        if self.uplink is not None:
            self.uplink_loop = asyncio.get_running_loop()
            self.uplink.start(self.uplink_loop)
            if self.status_link is not None:
                self.status_link.start(self.uplink_loop)
        self.started = True
        _trim_memory()
        log.info("gatekeeper %s up: %d devices (simulate=%s)", root, len(self.hw.adapters),
                 self.simulate)
        self._warn_simulated()

    async def publish_health(self) -> None:
        """Retained ``{root}/system/health``: ``ok`` / ``degraded`` / ``failed`` and the GPIO
        line ownership. ``failed``: the hardware worker is gone or does not answer within
        5 s; ``degraded``: events were dropped, the command queue is over half full, or the
        inventory could not be read."""
        status, problems = "ok", []
        if not self.hw.worker_alive:
            status, problems = "failed", ["hardware worker not running"]
            gpio: dict[str, object] = {}
        else:
            try:
                gpio = await asyncio.wait_for(self.hw.submit(self.hw.inventory, force=True), 5)
            except TimeoutError:
                status, gpio = "failed", {}
                problems.append("hardware worker did not answer within 5 s")
            except Exception as exc:
                status, gpio = "degraded", {"error": str(exc)}
                problems.append(f"GPIO inventory: {exc}")
        if self.expander_problems and status == "ok":
            status = "degraded"
        problems.extend(self.expander_problems.values())
        if self.sensor_problems and status == "ok":
            status = "degraded"
        problems.extend(self.sensor_problems.values())
        if self.watchdog is not None and self.watchdog.problem() is not None:
            if status == "ok":
                status = "degraded"
            problems.append(self.watchdog.problem() or "")
        if status == "ok" and self.hw.events_dropped:
            status = "degraded"
            problems.append(f"{self.hw.events_dropped} input events dropped")
        if status == "ok" and self.hw.pending > self.hw.queue_max // 2:
            status = "degraded"
            problems.append(f"{self.hw.pending} hardware commands queued")
        if self.acl_state == "failed":
            if status == "ok":
                status = "degraded"
            problems.append(f"every command is refused: {self.acl_reason}")
        doc = {"status": status, "problems": problems, "ts": utc_ts(), "gpio": gpio,
               "watchdog": self.watchdog.describe() if self.watchdog is not None else None,
               "simulated": self.simulate,
               "events_dropped": self.hw.events_dropped, "commands_queued": self.hw.pending}
        if self.uplink is not None:
            doc["broker_acl"] = {"probe": self.acl_state, "reason": self.acl_reason}
        self._publish(self.topics.health, dumps(doc), 1, True)

    def _warn_simulated(self) -> None:
        if self.simulated_by_config:
            log.warning("the pins are SIMULATED (hardware.pin_factory: mock, no --simulate): "
                        "nothing on the header moves")

    async def _health_loop(self, interval: float = HEALTH_INTERVAL_S) -> None:
        rounds = 0
        while True:
            if rounds and rounds % SIMULATED_WARNING_ROUNDS == 0:
                self._warn_simulated()
            rounds += 1
            await self.publish_health()
            await asyncio.to_thread(_malloc_trim)  # freed heap back to the OS, off the loop
            await asyncio.sleep(interval)

    async def reload(self) -> None:
        """SIGHUP: re-read ``auth.users_file``."""
        try:
            await self.authenticator.reload()
        except (OSError, ValueError) as exc:
            log.error("reloading users failed (keeping the old ones): %s", exc)
        self.core.invalidate_authorization()  # roles may have changed: no cached decision

    async def stop(self) -> None:
        """Refuse new commands, drive outputs to their safe state, publish ``offline``,
        release the lines, disconnect clients."""
        self.rpc.accepting = False
        if self._health_task is not None:
            self._health_task.cancel()
        if self._probe_task is not None:
            self._probe_task.cancel()
        if self.acl_probe is not None:
            self.acl_probe.abort()
        if self.sys_publisher is not None:
            await self.sys_publisher.stop()
        if self.started:
            if self.covers:  # a moving cover stops; its position is saved just below
                await asyncio.wait([asyncio.ensure_future(c.halt())
                                    for c in self.covers.values()], timeout=1.5)
            for gestures in self.gestures.values():
                gestures.close()
            if self.discovery is not None:
                self.discovery.close()
            await self.rpc.drain(0.5)
            if self.persister is not None:
                # Saved before the outputs go safe: what restore: true brings back is the
                # value they had, not their safe state.
                self.twin.on_change = None
                await self.persister.close()
            await self.twin.stop()  # no more polling; queued events are published
            if self.watchdog is not None:
                await self.watchdog.stop()
            states = await self.hw.stop()
            for name, state in states.items():
                if name in self.covers:
                    state = self.covers[name].state()
                self.twin.state(name, state)
            self.twin.status(False)
            if self.bridge is not None and self.status_link is None:
                self.bridge.stopped()
        if self.status_link is not None:
            await asyncio.to_thread(self.status_link.stop)
        if self.uplink is not None:
            await asyncio.to_thread(self.uplink.stop)
        await self.server.stop()
        if self.broker_store is not None:
            await self.broker_store.close()  # every client is gone: their sessions are offline
        self.authenticator.close()


def _sender(msg: Message) -> ClientInfo:
    """The client that published ``msg``, as the ACL needs it."""
    return ClientInfo(msg.sender or "", msg.username, msg.role, PROTOCOL_50, "", "")


def broker_limits(config: Config) -> BrokerLimits:
    """The broker core's limits from ``broker.limits`` (seconds keys lose their ``_s``)."""
    limits = config.broker.limits
    return BrokerLimits(
        max_connections=limits.max_connections,
        max_packet_size=limits.max_packet_size,
        max_queued_messages=limits.max_queued_messages,
        max_keepalive=limits.max_keepalive,
        connect_timeout=limits.connect_timeout_s,
        max_subscriptions_per_client=limits.max_subscriptions_per_client,
        max_sessions=limits.max_sessions,
        max_retained_bytes=limits.max_retained_bytes,
        max_topic_length=limits.max_topic_length,
        max_topic_levels=limits.max_topic_levels,
        max_subscription_bytes_per_client=limits.max_subscription_bytes_per_client,
        max_subscription_levels_per_client=limits.max_subscription_levels_per_client,
        max_subscription_nodes=limits.max_subscription_nodes,
        max_queued_bytes_per_client=limits.max_queued_bytes_per_client,
        max_queued_bytes=limits.max_queued_bytes,
        ack_timeout=limits.ack_timeout_s,
        max_pending_connections=limits.max_pending_connections,
        max_pending_per_address=limits.max_pending_per_address,
        frames_per_turn=limits.frames_per_turn,
    )


class _GatekeeperHooks(BrokerHooks):
    """Broker events the gatekeeper acts on: a lease holder's connection ends (its leases
    end, its devices go safe); a call refused by the ACL (answered ``NOT_AUTHORIZED``);
    commands are never retained.
    Deferred to the next loop iteration: the core is mid-packet when it calls hooks."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def on_disconnected(self, client: ClientInfo, reason: str) -> None:
        if not client.internal:
            asyncio.get_running_loop().call_soon(self.daemon.rpc.holder_gone,
                                                 (client.username, client.client_id), reason)

    def may_retain(self, client: ClientInfo, topic: str) -> bool:
        """Commands are never retained: a stored ``set``/``call`` would be replayed to every
        later subscriber, the gatekeeper included after a restart."""
        mqtt_io = self.daemon.mqtt_io
        return client.internal or not (self.daemon.topics.is_command(topic) or (
            mqtt_io is not None and mqtt_io.command(topic) is not None))

    def on_publish_denied(self, client: ClientInfo, message: Message) -> None:
        bridge = self.daemon.bridge
        if bridge is not None and self.daemon.mqtt_io is not None \
                and self.daemon.mqtt_io.command(message.topic) is not None:
            asyncio.get_running_loop().call_soon(bridge.denied, message)
            return
        asyncio.get_running_loop().call_soon(self.daemon.rpc.handle_denied, message)


_M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc malloc.h)
_MMAP_THRESHOLD = 128 * 1024


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _malloc_trim() -> None:
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _trim_memory() -> None:
    """Give the memory freed after start-up (config parsing, imports) back to the OS, and
    move what is left out of the collector's way: later collections then only walk objects
    made while serving, which keeps their pauses short (edge latency p99).

    glibc's mmap threshold is fixed at 128 KiB: by default it grows after a large block is
    freed, and then large payloads (a client's 255 KiB messages) come from the heap, which
    does not shrink after they are gone; fixed, they are mapped and unmapped, so the memory
    a burst of large messages took comes back when they are delivered or dropped."""
    gc.collect()
    gc.freeze()
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    _malloc_trim()


async def run(config: Config, *, simulate: bool = False) -> int:
    daemon = Daemon(config, simulate=simulate)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def on_sighup() -> None:
        task = asyncio.ensure_future(daemon.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        await daemon.start()
    except GatekeeperError as exc:
        log.error("cannot start: %s", exc.message)
        return 1
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    daemon.request_stop = stop.set
    ready = ", ".join(f"{kind} {host}:{port}" for kind, host, port in daemon.server.bound)
    if daemon.uplink is not None:
        ready = ", ".join(f"external {h}:{p}" for h, p in daemon.uplink.hosts)
        # ready means serving: the broker accepted us and granted the subscriptions
        if not await _first(daemon.ready, stop, WAITING_LINE_AFTER_S):
            problem = daemon.uplink.problem
            _say(f"pi-mqtt-gatekeeper waiting for the broker: {daemon.topics.root} on {ready}"
                 + (f" ({problem})" if problem else ""))
            await _first(daemon.ready, stop, None)
    if not stop.is_set():
        _say(f"pi-mqtt-gatekeeper ready: {daemon.topics.root} on {ready}")
        _hint(daemon)
    await stop.wait()
    log.info("shutting down")
    await daemon.stop()
    return 1 if daemon.fatal else 0


async def _first(ready: asyncio.Event, stop: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``ready`` or ``stop`` is set (or ``timeout``); True when ready."""
    waits = [asyncio.ensure_future(ready.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    return ready.is_set() and not stop.is_set()


def _say(line: str) -> None:
    """Print one line to stdout in a single write.

    ``print`` writes the text and its newline separately; on an unbuffered stdout shared with
    the log (``2>&1``, systemd's journal) a log line from another thread can land between the
    two, and a supervisor waiting for the ready line would never see it whole.
    """
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _hint(daemon: Daemon) -> None:
    """A line telling a new user how to watch and call devices (with the credentials to give
    when anonymous clients are refused: placeholders, never a real password), and one with
    the dashboard's address when there is a WebSocket listener."""
    local = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}
    tcp = [(h, p) for kind, h, p in daemon.server.bound if kind == "tcp"]
    if tcp:
        host, port = tcp[0]
        host = local.get(host, host)
        root = daemon.topics.root
        first = next(iter(daemon.hw.adapters), "DEVICE")
        login = "" if daemon.config.auth.allow_anonymous else " -u <user> -P <password>"
        _say(f"try: mosquitto_sub -h {host} -p {port}{login} -t '{root}/#' -v   |   "
             f"mosquitto_rr -h {host} -p {port}{login} -i me "
             f"-t {daemon.topics.device(first, 'call')} "
             f"-e {daemon.topics.reply_prefix('me')} -m '{{\"method\": \"state\"}}'")
    for kind, host, port in daemon.server.bound:
        if kind.startswith("websocket"):
            scheme = "https" if kind.endswith("+tls") else "http"
            _say(f"dashboard: {scheme}://{local.get(host, host)}:{port}/")
            break
