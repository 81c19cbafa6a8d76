"""External broker mode: the gatekeeper as an MQTT client of an existing broker (Mosquitto,
EMQX, a cluster), with paho-mqtt.

- MQTT 5 at every connect. Only a CONNACK that refuses the protocol version (MQTT 5's 0x84,
  or the 3.1.1-style return code 1 that NATS's MQTT gateway answers to a version-5 CONNECT)
  selects 3.1.1, at once and on the same host, said once in the log; replies then use the
  payload fallback (``reply_to``/``correlation_id``) and QoS stays ≤ 1. Anything else — a
  refused or timed-out TCP connect, a TLS error, a connection closed before any CONNACK
  (a broker restarting) — is retried with MQTT 5 after the backoff, and a link that fell
  back to 3.1.1 tries 5 again at its next connect.
- Will: ``{root}/status`` = ``offline``, retained. Connects to each of ``hosts`` in turn;
  after a loss, reconnects with exponential backoff (0.5 s doubling to 30 s) and jitter.
  After every (re)connect the subscriptions are made again and ``on_connected`` runs (the
  daemon republishes status, catalogue, twin, leases, health and discovery); once the broker
  has granted every subscription the link is *serving* and ``on_serving`` runs.
- The retained ``{root}/status`` is kept right while connected: the uplink remembers the
  last retained payload its owner published there (``online``; ``offline`` when stopping)
  and reads it back from the broker through a subscription of its own (a fresh SUBSCRIBE
  delivers what the broker stored) 1 s after each publish and each connect, then every
  60 s; a different payload (a late Will of a connection the broker dropped, a store a
  cluster lost while electing) or nothing is published again, read back after 1 s, 2 s,
  4 s, ... at most 10 s apart until it holds. A live message there that differs (a Will
  firing now) is answered at once. Nothing is published there after ``stop()`` but its
  ``offline``.
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
import time
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
PROTOCOL_REFUSED = 0x84  # CONNACK "Unsupported protocol version" (paho maps 3.1.1's 1 to it)
# The retained status's read-back: first 1 s after a publish or connect, again after a
# mismatch with the delay doubling to STATUS_RETRY_MAX_S, every STATUS_VERIFY_EVERY_S once
# it holds; a read waits STATUS_READ_WAIT_S for the broker's retained copy.
STATUS_CHECK_FIRST_S = 1.0
STATUS_RETRY_MAX_S = 10.0
STATUS_VERIFY_EVERY_S = 60.0
STATUS_READ_WAIT_S = 2.0


class Uplink:
    def __init__(self, config: Any, *, client_id: str, will_topic: str,
                 on_message: Callable[[Message], None], on_connected: Callable[[], None],
                 subscriptions: list[str],
                 on_v311: Callable[[], str | None] = lambda: None,
                 on_serving: Callable[[], None] = lambda: None,
                 intercept: Callable[[str, bytes], bool] | None = None,
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
        self.on_serving = on_serving  # every subscription granted (on the event loop)
        self.intercept = intercept  # True: a message that is not for on_message (paho thread)
        self.hosts = [(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) if ":" in h
                      else (h, config.port) for h in (config.hosts or [])] \
            or [(config.host, config.port)]
        self.password = self._password()
        self.protocol = mqtt.MQTTv5
        self.connected = threading.Event()
        self.serving = threading.Event()  # connected and every subscription granted
        self.v311_said = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._last_problem: str | None = None
        self._pending_subs: dict[int, str] = {}
        self._ungranted: set[str] = set()
        self._up = False  # this connection got its CONNACK
        self.connects = 0
        # The retained status kept right (see the module's docstring); under _status_lock.
        self._status_lock = threading.Lock()
        self._status_want: bytes | None = None  # the owner's last retained payload there
        self._status_due: float | None = None  # when to read it back (monotonic)
        self._status_delay = STATUS_CHECK_FIRST_S
        self._status_reading: float | None = None  # a read-back's deadline
        self._status_read: bytes | None = None  # the retained copy that read got
        self._status_said = False  # a mismatch said in the log (once until it holds)
        self.status_republished = 0  # how often the read-back published it again

    def _password(self) -> str | None:
        path = self.config.password_file
        if not path:
            return None
        return Path(path).read_text().strip()

    @property
    def problem(self) -> str | None:
        """The last connection problem, None once connected."""
        return self._last_problem

    @property
    def peer(self) -> tuple[str, int] | None:
        """The broker's host and port while connected."""
        client = self._client
        if client is None or not self.connected.is_set():
            return None
        return client.host, client.port

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
        with self._status_lock:  # no read-back republishes after this
            self._stop.set()
            self._status_want = self.stop_payload
            self._status_due = None
            client = self._client
            info = client.publish(self.will_topic, self.stop_payload, 1, True) \
                if client is not None and self.connected.is_set() else None
        if client is not None and info is not None:
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
        fallback = False  # the next attempt: the same host with 3.1.1
        while not self._stop.is_set():
            host, port = self.hosts[attempt % len(self.hosts)]
            attempt += 1
            # MQTT 5 at every connect; 3.1.1 only right after this host's CONNACK refused 5.
            self.protocol = mqtt.MQTTv311 if fallback else mqtt.MQTTv5
            fallback = False
            client = self._client = self._make_client()
            self._refused: str | None = None
            self._up = False
            try:
                client.connect(host, port, keepalive=30)
            except (OSError, ssl.SSLError) as exc:
                self._problem(f"cannot reach the broker {host}:{port}: {exc}")
            else:
                while not self._stop.is_set():
                    rc = client.loop(timeout=0.5)
                    if rc != mqtt.MQTT_ERR_SUCCESS:
                        break
                    self._keep_status(client)
                self.connected.clear()
                self.serving.clear()
                if self._stop.is_set():
                    return
                if self.protocol == mqtt.MQTTv5 and self._refused == "protocol":
                    # The broker's CONNACK refused MQTT 5: it speaks 3.1.1 only (NATS).
                    if self.on_v311() is not None:
                        return  # it cannot carry our topics: the daemon stops
                    fallback = True
                    attempt -= 1  # the same host again, at once, with 3.1.1
                    continue
                if self._up:
                    log.warning("lost the broker %s:%s; reconnecting", host, port)
                    delay = BACKOFF_MIN_S
                elif self._refused is None:
                    self._problem(f"the broker {host}:{port} closed the connection without "
                                  f"answering the CONNECT")
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
            if reason.value == PROTOCOL_REFUSED and self.protocol == mqtt.MQTTv5:
                self._refused = "protocol"
                return
            self._refused = name
            self._problem(f"the broker refused the gatekeeper's connection: {name} (check "
                          f"broker.external.username / password_file)")
            return
        if self.protocol != mqtt.MQTTv5 and not self.v311_said:
            log.warning("the broker refused MQTT 5 in its CONNACK: using 3.1.1 (replies carry "
                        "reply_to/correlation_id in the payload, QoS at most 1; MQTT 5 is "
                        "tried again at every reconnect)")
            self.v311_said = True
        self._last_problem = None
        self._up = True
        self.connects += 1
        self._ungranted = set(self.subscriptions)
        self._subscribe(client, self.subscriptions)
        with self._status_lock:  # its own subscription, not needed to serve (see _keep_status)
            client.subscribe(self.will_topic, 0)
            self._status_reading = None
            self._status_delay = STATUS_CHECK_FIRST_S
            if self._status_want is not None:
                self._status_due = time.monotonic() + STATUS_CHECK_FIRST_S
        self.connected.set()
        if not self._ungranted:
            self._now_serving()
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
            return
        self._ungranted.discard(topic)
        if not self._ungranted and client is self._client and self.connected.is_set():
            self._now_serving()

    def _now_serving(self) -> None:
        if self.serving.is_set():
            return
        self.serving.set()
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self.on_serving)
            except RuntimeError:
                pass  # the loop is closing

    def _resubscribe(self, client: mqtt.Client, topic: str) -> None:
        if client is self._client and self.connected.is_set() and not self._stop.is_set():
            self._subscribe(client, [topic])

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self.connected.clear()
        self.serving.clear()

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
        payload = bytes(m.payload)
        if m.topic == self.will_topic:
            self._status_message(payload, bool(m.retain))
            return
        if self.intercept is not None and self.intercept(m.topic, payload):
            return
        msg = Message(m.topic, payload, m.qos, bool(m.retain), props)
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self.on_message, msg)
            except RuntimeError:
                pass  # the loop is closing

    # --- the retained status, read back (the connection thread) -------------------------------
    def _status_message(self, payload: bytes, retained: bool) -> None:
        """Our status as the broker delivers it: a read-back's retained copy, or a live
        publish (ours, or a Will the broker fired for a connection it dropped)."""
        with self._status_lock:
            want = self._status_want
            if want is None or self._stop.is_set():
                return
            if retained:
                if self._status_reading is not None and self._status_read is None:
                    self._status_read = payload
            elif payload != want:
                # Someone (a Will firing late) overwrote it: publish ours again at once.
                self._status_reading = None
                self._status_due = time.monotonic()
                self._status_read = None
                self._status_delay = 0.0

    def _keep_status(self, client: mqtt.Client) -> None:
        """Called between network loops: read the retained status back when due; publish it
        again when the broker holds something else or nothing."""
        now = time.monotonic()
        with self._status_lock:
            want = self._status_want
            if want is None or self._stop.is_set() or not self.connected.is_set():
                return
            if self._status_reading is not None:
                got = self._status_read
                if got is None and now < self._status_reading:
                    return  # still waiting for the broker's copy
                self._status_reading = None
                if got == want:
                    if self._status_said:
                        log.info("the broker holds %s = %r again", self.will_topic,
                                 want.decode(errors="replace"))
                        self._status_said = False
                    self._status_delay = STATUS_CHECK_FIRST_S
                    self._status_due = now + STATUS_VERIFY_EVERY_S
                    return
                self._republish_status(client, want, got)
                return
            if self._status_due is None or now < self._status_due:
                return
            if self._status_delay == 0.0:  # a live message overwrote it: no read needed
                self._republish_status(client, want, None, live=True)
                return
            # A fresh SUBSCRIBE makes the broker deliver the retained copy it holds now.
            self._status_read = None
            self._status_reading = now + STATUS_READ_WAIT_S
            self._status_due = None
            client.unsubscribe(self.will_topic)
            client.subscribe(self.will_topic, 0)

    def _republish_status(self, client: mqtt.Client, want: bytes, got: bytes | None,
                          live: bool = False) -> None:
        """Under _status_lock: publish the status again, read back after a growing delay."""
        if not self._status_said:
            held = "nothing" if got is None else repr(got.decode(errors="replace"))
            log.warning("the broker %s %s for %s instead of %r: publishing it again",
                        "published" if live else "holds", held, self.will_topic,
                        want.decode(errors="replace"))
            self._status_said = True
        client.publish(self.will_topic, want, 1, True)
        self.status_republished += 1
        delay = max(self._status_delay, STATUS_CHECK_FIRST_S)
        self._status_due = time.monotonic() + delay
        self._status_delay = min(delay * 2, STATUS_RETRY_MAX_S)

    # --- publishing (any thread) ---------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False,
                props: dict[Any, Any] | None = None) -> None:
        if topic == self.will_topic and retain:
            with self._status_lock:
                if self._stop.is_set():
                    return  # stopped: only stop()'s own payload goes out there
                self._status_want = payload
                self._status_delay = STATUS_CHECK_FIRST_S
                self._status_reading = None
                self._status_due = time.monotonic() + STATUS_CHECK_FIRST_S
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
