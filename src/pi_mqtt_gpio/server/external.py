"""External broker mode, the daemon's side: the uplink to the external broker (and the
second connection that holds mqtt-io's status Will), the commands it carries, what is
published again after every (re)connect, and the broker ACL's probe.

Ready means serving: CONNACK, every subscription granted, and the first ACL probe's verdict.
The broker ACL's state: unchecked (``acl_probe: false``), pending (after each connect, until
the probe answers), passed, failed; while it is not passed every command is refused."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from pi_mqtt_gpio.errors import NotAuthorized
from pi_mqtt_gpio.mqtt.logguard import LOG_TOTAL, LogLimiter, clip
from pi_mqtt_gpio.mqtt.message import Message
from pi_mqtt_gpio.server.aclprobe import AclProbe, Verdict, forged_reason
from pi_mqtt_gpio.server.config import ExternalBrokerConfig
from pi_mqtt_gpio.server.uplink import Uplink
from pi_mqtt_gpio.topics import HomeAssistantTopics, Topics

if TYPE_CHECKING:
    from pi_mqtt_gpio.server.daemon import Daemon

__all__ = ["ExternalMode"]

log = logging.getLogger("pi_mqtt_gpio.daemon")

ACL_RETRY_S = 30.0  # after a failed ACL probe, the next one (at most acl_probe.interval_s)


class ExternalMode:
    """The uplinks of a daemon in external broker mode (built by ``Daemon.__init__``, after
    the services the uplink's callbacks reach through ``daemon``)."""

    def __init__(self, daemon: Daemon, ext: ExternalBrokerConfig) -> None:
        self.daemon = daemon
        config, topics = daemon.config, daemon.topics
        self.ready = daemon.ready
        self.loop: asyncio.AbstractEventLoop | None = None
        self.acl_probe: AclProbe | None = None
        self.acl_state = "unchecked"
        self.acl_reason: str | None = None
        self._acl_said: tuple[str, str | None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._retained_log = LogLimiter(log, total=LOG_TOTAL)
        client_id = ext.client_id or f"gatekeeper-{config.node_id}"
        if ext.acl_probe:
            self.acl_probe = AclProbe(ext.acl_probe, ext, topics=topics, client_id=client_id)
            self.acl_state = "pending"
        self.status_link = self._status_link(ext)  # holds mqtt-io's status Will
        self.uplink = Uplink(ext, client_id=client_id, will_topic=topics.status,
                             on_message=self.message, on_connected=self.connected,
                             subscriptions=self._subscriptions(), on_v311=self.v311_names,
                             on_serving=self.serving,
                             intercept=self.intercept if self.acl_probe else None)

    def _subscriptions(self) -> list[str]:
        topics, daemon = self.daemon.topics, self.daemon
        subscriptions = [Topics.sent_by(topics.any_device(leaf), "+") for leaf in ("set", "call")]
        subscriptions.append(Topics.sent_by(topics.lease_call, "+"))
        if daemon.config.homeassistant.discovery:
            subscriptions.append(HomeAssistantTopics(daemon.config.homeassistant.prefix).status)
        if daemon.mqtt_io is not None:
            subscriptions.extend(daemon.mqtt_io.subscriptions())
        return subscriptions

    def _status_link(self, ext: ExternalBrokerConfig) -> Uplink | None:
        """MQTT gives a connection one Will: mqtt-io's "dead" needs its own."""
        compat, names = self.daemon.config.compat.mqtt_io, self.daemon.mqtt_io
        if names is None or compat is None:
            return None
        return Uplink(
            ext, client_id=compat.client_id or f"gatekeeper-{self.daemon.config.node_id}-mqtt-io",
            will_topic=names.status_topic, will_payload=compat.status_payload_dead.encode(),
            stop_payload=compat.status_payload_stopped.encode(),
            on_message=lambda _msg: None, on_connected=self._status_link_connected,
            subscriptions=[])

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.uplink.start(loop)
        if self.status_link is not None:
            self.status_link.start(loop)

    def abort(self) -> None:
        """Stopping: no more probes."""
        if self._probe_task is not None:
            self._probe_task.cancel()
        if self.acl_probe is not None:
            self.acl_probe.abort()

    async def stop(self) -> None:
        if self.status_link is not None:
            await asyncio.to_thread(self.status_link.stop)
        await asyncio.to_thread(self.uplink.stop)

    # --- commands -----------------------------------------------------------------------------
    def message(self, msg: Message) -> None:
        """A command from the external broker: ``.../set/<user>``, ``.../call/<user>`` or
        ``{root}/lease/call/<user>``. The broker's ACL guarantees the last level is the
        publisher's user name; the gatekeeper applies that user's role."""
        daemon = self.daemon
        if daemon.discovery is not None and msg.topic == daemon.discovery.birth_topic:
            daemon.discovery.birth(msg.payload)
            return
        if msg.retain:
            # A retained command would run again at every (re)connect and for every node
            # that starts later: commands are never taken from the broker's retained store.
            self._retained_log.log(logging.WARNING, msg.topic, asyncio.get_running_loop().time(),
                                   "ignoring a retained command on %s (commands are never "
                                   "retained: clear it with an empty retained publish)",
                                   clip(msg.topic))
            return
        if daemon.bridge is not None and daemon.mqtt_io is not None \
                and daemon.mqtt_io.command(msg.topic) is not None:
            self._mqtt_io_command(msg)
            return
        base, user = Topics.sender(msg.topic)  # only command topics are subscribed
        if not user or (self.acl_probe is not None and user == self.acl_probe.username):
            return  # the ACL probe's user never commands
        role = daemon.authenticator.role_of(user)
        command = Message(base, msg.payload, msg.qos, False, msg.properties,
                          sender=user, username=user, role=role)
        refusal = self.refusal()
        if refusal is not None:
            daemon.rpc.handle_denied(command, refusal)
            return
        daemon.rpc.handle(command)

    def _mqtt_io_command(self, msg: Message) -> None:
        """mqtt-io's topics carry no user name: the broker's ACL decided who may publish
        them; the gatekeeper applies compat.mqtt_io.username's role."""
        daemon = self.daemon
        assert daemon.bridge is not None and daemon.mqtt_io is not None
        user = daemon.config.compat.mqtt_io.username  # type: ignore[union-attr]
        command = Message(msg.topic, msg.payload, msg.qos, False, msg.properties,
                          sender=user, username=user, role=daemon.authenticator.role_of(user))
        refusal = self.refusal()
        found = daemon.mqtt_io.command(msg.topic)
        if refusal is not None and found is not None:
            daemon.rpc.refuse(command, found[0].name, found[1], NotAuthorized(refusal),
                              "mqtt_io")
            return
        daemon.bridge.handle(command)

    def v311_names(self) -> str | None:
        """The broker speaks only MQTT 3.1.1 — in practice NATS's MQTT gateway, which
        refuses '.' and spaces in topics: a node id or device name with them cannot be
        carried. Called on the uplink's thread; a problem stops the gatekeeper."""
        config = self.daemon.config
        names = [("base_topic", config.base_topic), ("node_id", config.node_id),
                 *((f"device {name!r}", name) for name in config.devices)]
        bad = [f"{what} {value!r}" for what, value in names if "." in value or " " in value]
        if not bad:
            return None
        problem = (f"the broker speaks only MQTT 3.1.1 (like NATS's MQTT gateway, which refuses "
                   f"'.' and spaces in topics): {', '.join(bad)} cannot be carried; rename "
                   f"without '.' and spaces")
        loop = self.loop
        if loop is not None:
            loop.call_soon_threadsafe(self.daemon.stop_for, problem)
        return problem

    # --- the broker ACL's probe -----------------------------------------------------------------
    def state(self) -> tuple[str, str | None]:
        """The probe's state and, when it failed, why (the health shows both)."""
        return self.acl_state, self.acl_reason

    def refusal(self) -> str | None:
        """Why every command is refused now (the broker ACL is not known to hold), or None."""
        if self.acl_probe is None or self.acl_state == "passed":
            return None
        if self.acl_state == "failed":
            return f"every command is refused until the broker ACL passes its probe: " \
                   f"{self.acl_reason}"
        return "every command is refused until the broker ACL has been checked after " \
               "connecting: try again in a moment"

    def intercept(self, topic: str, payload: bytes) -> bool:
        """On the uplink's thread: the ACL probe's messages are never commands; one of its
        forged commands arriving late fails the probe all the same."""
        probe = self.acl_probe
        if probe is None:
            return False
        claimed = probe.claim(topic, payload)
        late, probe.late_forgery = probe.late_forgery, None
        loop = self.loop
        if late is not None and loop is not None:
            verdict = Verdict(False, forged_reason(probe.username, late), 0.0)
            loop.call_soon_threadsafe(self.verdict, verdict)
        return claimed

    def serving(self) -> None:
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
        interval = float(probe.config.interval_s)
        while True:
            peer = uplink.peer
            if peer is None:
                return  # disconnected: the next connect starts a new loop
            verdict = await asyncio.to_thread(probe.run, peer[0], peer[1], uplink.v5)
            if uplink.peer != peer:
                return  # reconnected meanwhile: that connection's own probe decides
            self.verdict(verdict)
            await asyncio.sleep(interval if verdict.passed else min(ACL_RETRY_S, interval))

    def verdict(self, verdict: Verdict) -> None:
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
            self.daemon.health.now()
        self.ready.set()

    # --- (re)connected --------------------------------------------------------------------------
    def _status_link_connected(self) -> None:
        """mqtt-io's status goes out on the connection that holds its Will (the main one may
        not be connected yet)."""
        link, names = self.status_link, self.daemon.mqtt_io
        if link is not None and names is not None:
            link.publish(names.status_topic, names.cfg.status_payload_running.encode(), 1, True)

    def connected(self) -> None:
        """(Re)connected to the external broker: everything retained is published again;
        commands wait for this connection's ACL probe (it may be another broker now)."""
        daemon = self.daemon
        if self.acl_probe is not None:
            if self._probe_task is not None:
                self._probe_task.cancel()
                self._probe_task = None
            self.acl_state = "pending"
        daemon.twin.status(True)
        daemon.twin.catalogue()
        daemon.republish_all()
        daemon.rpc.publish_leases()
        if daemon.discovery is not None:
            daemon.discovery.republish()
        if daemon.bridge is not None and self.status_link is None:
            daemon.bridge.running()
        daemon.health.now()
        sent = daemon.bindings.link_restored()
        if sent:
            log.info("sent %d binding publishes that waited for the broker", sent)
