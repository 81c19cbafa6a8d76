"""Composition root: builds the broker, security and gatekeeper services from the config,
starts them, and shuts them down safely (DESIGN section 6)."""

from __future__ import annotations

import asyncio
import logging
import signal

from pi_mqtt_gpio.mqtt.broker import BrokerCore, BrokerLimits, InternalClient
from pi_mqtt_gpio.mqtt.session import Message
from pi_mqtt_gpio.server.broker import BrokerServer
from pi_mqtt_gpio.server.config import Config
from pi_mqtt_gpio.server.security import AccessControl, Authenticator
from pi_mqtt_gpio.topics import Topics

__all__ = ["Daemon", "run"]

log = logging.getLogger("pi_mqtt_gpio.daemon")


class Daemon:
    def __init__(self, config: Config, *, simulate: bool = False) -> None:
        self.config = config
        self.simulate = simulate
        self.topics = Topics(config.base_topic, config.node_id)
        limits = config.broker.limits
        self.core = BrokerCore(
            BrokerLimits(
                max_connections=limits.max_connections,
                max_packet_size=limits.max_packet_size,
                max_queued_messages=limits.max_queued_messages,
                max_keepalive=limits.max_keepalive,
                connect_timeout=limits.connect_timeout_s,
            ),
            hooks=[AccessControl(config.auth, self.topics)],
        )
        self.authenticator = Authenticator(config.auth)
        self.server = BrokerServer(
            self.core, self.authenticator.authenticate, list(config.broker.listeners)
        )
        self.client: InternalClient | None = None
        self.stopped = asyncio.Event()

    def _on_message(self, msg: Message, sub_ids: list[int]) -> None:
        """Messages for the gatekeeper itself (device commands arrive here)."""
        log.debug("gatekeeper got %s", msg.topic)

    async def start(self) -> None:
        if self.config.broker.mode != "embedded":
            raise SystemExit("broker.mode external is not implemented yet; use embedded")
        await self.server.start()
        now = self.server.now()
        self.client = self.core.connect_internal(f"gatekeeper-{self.config.node_id}",
                                                 self._on_message)
        self.client.publish(self.topics.status, b"online", now=now, qos=1, retain=True)
        self.server.pump()
        log.info("gatekeeper %s up (simulate=%s)", self.topics.root, self.simulate)

    async def stop(self) -> None:
        """Refuse new work, publish ``offline`` (retained), disconnect clients, close."""
        if self.client is not None:
            self.client.publish(self.topics.status, b"offline", now=self.server.now(), qos=1,
                                retain=True)
            self.server.pump()
        await self.server.stop()
        self.authenticator.close()
        self.stopped.set()


async def run(config: Config, *, simulate: bool = False) -> int:
    daemon = Daemon(config, simulate=simulate)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await daemon.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    ready = ", ".join(f"{kind} {host}:{port}" for kind, host, port in daemon.server.bound)
    print(f"pi-mqtt-gatekeeper ready: {daemon.topics.root} on {ready}", flush=True)
    await stop.wait()
    log.info("shutting down")
    await daemon.stop()
    return 0
