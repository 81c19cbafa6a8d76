"""Publishes the embedded broker's ``$SYS/broker/...`` statistics (``mqtt/sys_topics.py``)
retained every ``broker.sys_interval_s``, from the gatekeeper's own in-process client: only
the values that changed, as Mosquitto does. Who may read them is the ACL's business (the
built-in admin role reads ``$SYS/#``); no client may publish there."""

from __future__ import annotations

import asyncio
import logging

from pi_mqtt_gpio.mqtt.broker import InternalClient
from pi_mqtt_gpio.mqtt.sys_topics import SysTopics
from pi_mqtt_gpio.server.broker import BrokerServer

__all__ = ["SysPublisher"]

log = logging.getLogger("pi_mqtt_gpio.broker")


class SysPublisher:
    def __init__(self, server: BrokerServer, client: InternalClient, interval: float,
                 version: str) -> None:
        self.server = server
        self.client = client
        self.interval = interval
        self.topics = SysTopics(server.core, version, server.now())
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval > 0:
            self._task = asyncio.create_task(self._run())

    def publish(self) -> None:
        now = self.server.now()
        for topic, value in self.topics.changed(now).items():
            self.client.publish(topic, value, now=now, qos=0, retain=True)
        self.server.schedule_pump()

    async def _run(self) -> None:
        while True:
            try:
                self.publish()
            except Exception:
                log.exception("publishing $SYS failed")
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
