"""Composition root: builds the broker, security, hardware, twin and RPC services from the
config, starts them, and shuts them down safely (DESIGN section 6). The node's health is
health.py's, external broker mode external.py's."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pi_mqtt_gpio.errors import GatekeeperError
from pi_mqtt_gpio.mqtt.broker import BrokerCore, BrokerLimits, InternalClient
from pi_mqtt_gpio.mqtt.hooks import BrokerHooks, ClientInfo, Decision
from pi_mqtt_gpio.mqtt.message import Message
from pi_mqtt_gpio.mqtt.packets import PROTOCOL_50, Properties
from pi_mqtt_gpio.server.bindings import Bindings, ButtonGestures, PublishQueue
from pi_mqtt_gpio.server.broker import BrokerServer
from pi_mqtt_gpio.server.broker_store import BrokerStore
from pi_mqtt_gpio.server.broker_sys import SysPublisher
from pi_mqtt_gpio.server.compat.mqtt_io import MqttIoBridge, MqttIoTopics
from pi_mqtt_gpio.server.config import Config
from pi_mqtt_gpio.server.covers import CoverController
from pi_mqtt_gpio.server.devices.cover import CoverAdapter
from pi_mqtt_gpio.server.devices.sensors import SensorAdapter
from pi_mqtt_gpio.server.external import ExternalMode
from pi_mqtt_gpio.server.fdlimit import fit_open_files
from pi_mqtt_gpio.server.guards import Guards
from pi_mqtt_gpio.server.hardware import (
    DeviceEvent,
    HardwareManager,
    consumer_label,
    make_pin_factory,
)
from pi_mqtt_gpio.server.health import EXPANDER_DEVICE, Health, trim_memory
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
from pi_mqtt_gpio.server.twin import Twin
from pi_mqtt_gpio.server.uplink import Uplink
from pi_mqtt_gpio.server.watchdog import WATCHDOG_DEVICE, Watchdog
from pi_mqtt_gpio.topics import Topics
from pi_mqtt_gpio.version import package_version

__all__ = ["Daemon", "run"]

log = logging.getLogger("pi_mqtt_gpio.daemon")

WAITING_LINE_AFTER_S = 2.0  # external mode: not serving by then -> "waiting for the broker"


class Daemon:
    def __init__(self, config: Config, *, simulate: bool = False) -> None:
        self.config = config
        self.simulate = simulate or config.hardware.pin_factory == "mock"
        self.topics = Topics(config.base_topic, config.node_id)
        self._build_broker()
        self.hw = HardwareManager(
            dict(config.devices),
            lambda: make_pin_factory(config.hardware, self.simulate, _labels(config),
                                     expanders=dict(config.expanders),
                                     on_expander_failure=self.health.expander_failure),
            simulate=self.simulate,
            hardware=config.hardware,
        )
        self.persister: Persister | None = None
        self.broker_store: BrokerStore | None = None  # the embedded broker's, with persistence
        self.sys_publisher: SysPublisher | None = None
        self.client: InternalClient | None = None
        self.twin = Twin(self.topics, self.hw, self._publish)
        # Simulated pins that nobody asked for on the command line: a production config
        # that still says pin_factory: mock.
        self.health = Health(self.topics, self.hw, self.twin, config.devices,
                             simulate=self.simulate,
                             simulated_by_config=self.simulate and not simulate)
        self._build_services()
        self._build_discovery()
        self.rpc.on_set_refused = self._republish
        self.bridge: MqttIoBridge | None = None
        if self.mqtt_io is not None:
            self.bridge = MqttIoBridge(self.mqtt_io, publish=self._publish,
                                       call=self.rpc.command, refuse=self.rpc.refuse,
                                       may_command=self._may_command)
            self.twin.listeners.append(self.bridge.state)
        self.fatal: str | None = None  # why the daemon stopped itself (exit status 1)
        self.request_stop: Callable[[], None] = lambda: None
        self.ready = asyncio.Event()  # external mode: serving (see ExternalMode)
        self._build_external()
        self._build_observers()
        self.core.hooks.append(_GatekeeperHooks(self))
        self.started = False

    # --- building -----------------------------------------------------------------------------
    def _build_broker(self) -> None:
        """Users, ACL and the broker (its core; the listeners in embedded mode)."""
        config = self.config
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

    def _build_services(self) -> None:
        """Guards, covers, the RPC handler, bindings and gestures."""
        config = self.config
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

    def _build_discovery(self) -> None:
        config = self.config
        self.discovery: Discovery | None = None
        if not config.homeassistant.discovery:
            return
        self.discovery = Discovery(
            discovery(self.topics, dict(config.devices), prefix=config.homeassistant.prefix,
                      version=package_version(), watchdog=config.watchdog is not None,
                      command_suffix=config.homeassistant.username
                      if config.broker.mode == "external" else None,
                      events=lambda name: list(self.hw.adapters[name].catalogue()["events"])),
            prefix=config.homeassistant.prefix, publish=self._publish,
            republish_states=self.republish_all,
            call_later=lambda delay, fn: asyncio.get_running_loop().call_later(delay, fn))

    def _build_external(self) -> None:
        """External broker mode: the uplinks (the broker does not say who listens)."""
        self.external: ExternalMode | None = None
        self.uplink: Uplink | None = None
        self.status_link: Uplink | None = None  # holds mqtt-io's status Will
        ext = self.config.broker.external
        if self.config.broker.mode != "external" or ext is None:
            return
        self.external = ExternalMode(self, ext)
        self.uplink, self.status_link = self.external.uplink, self.external.status_link
        self.health.broker_acl = self.external.state
        self.rpc.listening = lambda topic: True
        self.twin.broker_mode = "external"
        self.bindings.link_up = self.uplink.connected.is_set  # publish bindings wait meanwhile

    def _build_observers(self) -> None:
        """Who else looks at device events and states: the health (expanders, sensors), the
        sensor history, the watchdog, gestures and bindings."""
        config = self.config
        self.twin.intercept[EXPANDER_DEVICE] = self.health.expander_event
        self.twin.listeners.append(self.health.sensor_state)
        # the last hour of each sensor's readings (retained .../history, the history method)
        self.history = SensorHistory(self.topics, self._publish)
        for name, adapter in self.hw.adapters.items():
            if isinstance(adapter, SensorAdapter):
                values = adapter.value_list()
                self.history.add_sensor(name, [q.key for q in values],
                                        {q.key: q.unit for q in values}, adapter.poll_interval)
                adapter.history = functools.partial(self.history.doc, name)
        self.twin.listeners.append(self.history.record)
        self.watchdog: Watchdog | None = None
        if config.watchdog is not None:
            self.watchdog = Watchdog(config.watchdog, self.hw, simulate=self.simulate,
                                     on_change=self.health.now)
            self.health.watchdog = self.watchdog
            self.twin.intercept[WATCHDOG_DEVICE] = self._watchdog_edge
        for name in {*self.gestures, *self.bindings.bindings}:
            self.twin.observe[name] = self._button_input

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
        own, topics = self.client.client_id, self.topics
        self.broker_store = BrokerStore(
            Path(path).parent, self.core, self.config.persistence.autosave_s,
            lambda msg: msg.sender != own and not topics.in_tree(msg.topic)
            and not msg.topic.startswith("$SYS/"),
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

    def _watchdog_edge(self, ev: DeviceEvent) -> bool:
        at = ev.state.get("at")
        if self.watchdog is not None:
            self.watchdog.edge(at if isinstance(at, float) else None)
        return True

    def _gesture(self, button: str, gesture: str) -> None:
        self.twin.notice(button, gesture, {})
        self.bindings.trigger(button, gesture)

    def republish_all(self) -> None:
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

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        saved = await self._load_state()  # before any pin is claimed: a bad file refuses start
        if self.uplink is None:
            self.client = self.core.connect_internal(f"gatekeeper-{self.config.node_id}",
                                                     self._on_message)
            await self._load_broker_store()
        states = await self._claim()
        self.twin.catalogue()
        for name, state in states.items():
            if name not in self.covers:  # a cover's state comes with its position below
                self.twin.state(name, state)
        self.guards.start({name: state for name, state in states.items()
                           if self.hw.adapters[name].kind == "output"})
        self._restore(saved)
        self.twin.start()
        self._subscribe(self.topics.any_device("call"), self.topics.any_device("set"),
                        self.topics.lease_call,
                        *(self.mqtt_io.subscriptions() if self.mqtt_io is not None else ()))
        self.rpc.publish_leases()
        self.twin.status(True)
        if self.bridge is not None and self.uplink is None:
            self.bridge.running()
        if self.discovery is not None:
            self._subscribe(self.discovery.birth_topic)
            self.discovery.start(saved.get("homeassistant"))
            if self.persister is not None and saved.get("homeassistant") != \
                    self.discovery.saved():
                self.persister.changed()
        self._start_services()
        self.started = True
        trim_memory()
        log.info("gatekeeper %s up: %d devices (simulate=%s)", self.topics.root,
                 len(self.hw.adapters), self.simulate)
        self.health.warn_simulated()

    async def _claim(self) -> dict[str, dict[str, Any]]:
        """Claim the lines (safe states applied), start the watchdog and the listeners; the
        devices' first states."""
        states = await self.hw.start()
        try:
            if self.watchdog is not None:
                await self.watchdog.start()
            if self.uplink is None:
                await self.server.start()
        except BaseException:
            await self.hw.stop()
            raise
        return states

    def _subscribe(self, *topics: str) -> None:
        """The in-process client's subscriptions (embedded mode; the uplink makes its own)."""
        if self.client is None:
            return
        now = self.server.now()
        for topic in topics:
            self.client.subscribe(topic, now=now, qos=1)

    def _start_services(self) -> None:
        """The health loop, the broker's store and $SYS, the uplinks."""
        self.health.start()
        if self.broker_store is not None:
            self.broker_store.start()
        if self.client is not None:
            self.sys_publisher = SysPublisher(self.server, self.client,
                                              self.config.broker.sys_interval_s,
                                              package_version())
            self.sys_publisher.start()
        if self.external is not None:
            self.external.start(asyncio.get_running_loop())

    async def publish_health(self) -> None:
        """Retained ``{root}/system/health`` now."""
        await self.health.publish()

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
        self.health.stop()
        if self.external is not None:
            self.external.abort()
        if self.sys_publisher is not None:
            await self.sys_publisher.stop()
        if self.started:
            await self._stop_devices()
        if self.external is not None:
            await self.external.stop()
        await self.server.stop()
        if self.broker_store is not None:
            await self.broker_store.close()  # every client is gone: their sessions are offline
        self.authenticator.close()

    async def _stop_devices(self) -> None:
        """Covers halted, pending calls answered, the state saved, outputs safe, lines
        released, ``offline`` published."""
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

    def stop_for(self, problem: str) -> None:
        """Stop the daemon because of ``problem`` (exit status 1)."""
        log.error("stopping: %s", problem)
        self.fatal = problem
        self.request_stop()


def _labels(config: Config) -> dict[int, str]:
    """The consumer label of every board line the devices and the watchdog claim."""
    labels = {line: consumer_label(config.hardware.consumer_tag, name, line)
              for name, dev in config.devices.items() for _k, line, _s in dev.lines()}
    if config.watchdog is not None:
        for role, line in (("watchdog-out", config.watchdog.out),
                           ("watchdog-in", config.watchdog.in_)):
            labels[line] = consumer_label(config.hardware.consumer_tag, role, line)
    return labels


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
        first = next(iter(daemon.hw.adapters), "DEVICE")
        login = "" if daemon.config.auth.allow_anonymous else " -u <user> -P <password>"
        _say(f"try: mosquitto_sub -h {host} -p {port}{login} -t '{daemon.topics.everything}' -v   |   "
             f"mosquitto_rr -h {host} -p {port}{login} -i me "
             f"-t {daemon.topics.device(first, 'call')} "
             f"-e {daemon.topics.reply_prefix('me')} -m '{{\"method\": \"state\"}}'")
    for kind, host, port in daemon.server.bound:
        if kind.startswith("websocket"):
            scheme = "https" if kind.endswith("+tls") else "http"
            _say(f"dashboard: {scheme}://{local.get(host, host)}:{port}/")
            break
