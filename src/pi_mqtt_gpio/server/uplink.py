"""External broker mode: the gatekeeper as an MQTT client of an existing broker (Mosquitto,
EMQX, a cluster), with paho-mqtt.

- MQTT 5 first; a broker that refuses it (CONNACK "unsupported protocol version", or one that
  closes the connection at the CONNECT) gets 3.1.1, said once in the log; replies then use
  the payload fallback (``reply_to``/``correlation_id``) and QoS stays ≤ 1.
- Will: ``{root}/status`` = ``offline``, retained. Connects to each of ``hosts`` in turn;
  after a loss, reconnects with exponential backoff (0.5 s doubling to 30 s) and jitter.
  After every (re)connect the subscriptions are made again and ``on_connected`` runs (the
  daemon republishes status, catalogue, twin, leases, health and discovery).
- A broker that refuses the credentials is a clear log line (once per change) and backoff,
  never a crash loop.
- Messages arrive on paho's thread and go to the event loop through
  ``loop.call_soon_threadsafe``; publishing from the loop is thread-safe in paho.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pi_mqtt_gpio.mqtt.message import Message
from pi_mqtt_gpio.mqtt.packets import Prop

__all__ = ["Uplink"]

log = logging.getLogger("pi_mqtt_gpio.uplink")

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0


class Uplink:
    def __init__(self, config: Any, *, client_id: str, will_topic: str,
                 on_message: Callable[[Message], None], on_connected: Callable[[], None],
                 subscriptions: list[str],
                 on_v311: Callable[[], str | None] = lambda: None,
                 will_payload: bytes = b"offline", stop_payload: bytes = b"offline") -> None:
        self.config = config
        self.client_id = client_id
        self.will_topic = will_topic
        self.will_payload = will_payload  # what the broker publishes when we are gone
        self.stop_payload = stop_payload  # what we publish on a clean stop
        self.on_message = on_message
        self.on_connected = on_connected
        self.subscriptions = subscriptions
        self.on_v311 = on_v311  # falling back to 3.1.1: a problem (str) stops the uplink
        self.hosts = [(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) if ":" in h
                      else (h, config.port) for h in (config.hosts or [])] \
            or [(config.host, config.port)]
        self.password = self._password()
        self.protocol = mqtt.MQTTv5
        self.connected = threading.Event()
        self.v311_said = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._last_problem: str | None = None
        self._pending_subs: dict[int, str] = {}
        self.connects = 0

    def _password(self) -> str | None:
        path = self.config.password_file
        if not path:
            return None
        return Path(path).read_text().strip()

    @property
    def v5(self) -> bool:
        return self.protocol == mqtt.MQTTv5

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Publish ``offline`` (retained), disconnect cleanly, end the thread."""
        self._stop.set()
        client = self._client
        if client is not None and self.connected.is_set():
            info = client.publish(self.will_topic, self.stop_payload, 1, True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass
            client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the connection thread -----------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        kwargs: dict[str, Any] = {}
        if self.protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = True
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=self.protocol, **kwargs)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, self.password)
        if cfg.tls:
            ctx = ssl.create_default_context(cafile=cfg.ca_file or None)
            client.tls_set_context(ctx)
        client.will_set(self.will_topic, self.will_payload, 1, True)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_paho_message
        client.on_disconnect = self._on_disconnect
        return client

    def _run(self) -> None:
        delay = BACKOFF_MIN_S
        attempt = 0
        while not self._stop.is_set():
            host, port = self.hosts[attempt % len(self.hosts)]
            attempt += 1
            client = self._client = self._make_client()
            self._refused: str | None = None
            try:
                client.connect(host, port, keepalive=30)
            except (OSError, ssl.SSLError) as exc:
                self._problem(f"cannot reach the broker {host}:{port}: {exc}")
            else:
                while not self._stop.is_set():
                    rc = client.loop(timeout=0.5)
                    if rc != mqtt.MQTT_ERR_SUCCESS:
                        break
                was_connected = self.connected.is_set()
                self.connected.clear()
                if self._stop.is_set():
                    return
                if self.protocol == mqtt.MQTTv5 and (
                        self._refused == "protocol"
                        or (not was_connected and self._refused is None)):
                    # Refused MQTT 5, or closed at the CONNECT without a CONNACK: a broker
                    # that speaks 3.1.1 only (NATS's MQTT gateway).
                    self.protocol = mqtt.MQTTv311
                    if self.on_v311() is not None:
                        return  # it cannot carry our topics: the daemon stops
                    attempt -= 1  # the same host again, at once, with 3.1.1
                    continue
                if was_connected:
                    log.warning("lost the broker %s:%s; reconnecting", host, port)
                    delay = BACKOFF_MIN_S
            if self._stop.wait(delay * (0.5 + random.random())):  # backoff with jitter
                return
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _problem(self, text: str) -> None:
        if text != self._last_problem:
            log.error("%s (retrying with backoff)", text)
            self._last_problem = text

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            name = str(reason)
            if "protocol" in name.lower():
                self._refused = "protocol"
                return
            self._refused = name
            self._problem(f"the broker refused the gatekeeper's connection: {name} (check "
                          f"broker.external.username / password_file)")
            return
        if self.protocol != mqtt.MQTTv5 and not self.v311_said:
            log.warning("the broker does not speak MQTT 5: using 3.1.1 (replies carry "
                        "reply_to/correlation_id in the payload, QoS at most 1)")
            self.v311_said = True
        self._last_problem = None
        self.connects += 1
        self._subscribe(client, self.subscriptions)
        self.connected.set()
        host, port = client.host, client.port
        log.info("connected to the broker %s:%s (MQTT %s)", host, port,
                 "5" if self.v5 else "3.1.1")
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self.on_connected)

    def _subscribe(self, client: mqtt.Client, topics: list[str]) -> None:
        for topic in topics:
            # QoS 0: a command is carried out at most once, never twice after a redelivery
            # (a repeated toggle is a different command), and a cluster does not need a
            # durable consumer for it (NATS: no JetStream, so no stall when a node dies).
            _rc, mid = client.subscribe(topic, 0)
            if mid is not None:
                self._pending_subs[mid] = topic

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        """A refused subscription (a cluster still electing its stream leader answers 0x80
        for a while) is made again after a second: commands must keep arriving."""
        topic = self._pending_subs.pop(mid, None)
        if topic is None:
            return
        if any(getattr(r, "is_failure", False) or (isinstance(r, int) and r >= 0x80)
               for r in reasons):
            log.warning("the broker refused the subscription to %s; retrying", topic)
            timer = threading.Timer(1.0, self._resubscribe, (client, topic))
            timer.daemon = True
            timer.start()

    def _resubscribe(self, client: mqtt.Client, topic: str) -> None:
        if client is self._client and self.connected.is_set() and not self._stop.is_set():
            self._subscribe(client, [topic])

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self.connected.clear()

    def _on_paho_message(self, client: mqtt.Client, userdata: Any,
                         m: mqtt.MQTTMessage) -> None:
        props: dict[int, Any] = {}
        p = getattr(m, "properties", None)
        if p is not None:
            topic = getattr(p, "ResponseTopic", None)
            if topic:
                props[Prop.RESPONSE_TOPIC] = topic
            data = getattr(p, "CorrelationData", None)
            if data is not None:
                props[Prop.CORRELATION_DATA] = data
        msg = Message(m.topic, bytes(m.payload), m.qos, bool(m.retain), props)
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self.on_message, msg)
            except RuntimeError:
                pass  # the loop is closing

    # --- publishing (any thread) ---------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False,
                props: dict[Any, Any] | None = None) -> None:
        client = self._client
        if client is None or not self.connected.is_set():
            return  # offline: everything is published again after the reconnect
        properties = None
        if props and self.v5:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            for key, value in props.items():
                if key == Prop.CORRELATION_DATA:
                    properties.CorrelationData = value
                elif key == Prop.CONTENT_TYPE:
                    properties.ContentType = value
        client.publish(topic, payload, min(qos, 1), retain, properties=properties)
