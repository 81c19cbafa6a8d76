"""External broker mode: check that the broker's ACL makes the last level of a command topic
the publisher's own user name (``{root}/.../call/<username>``), which is all the gatekeeper
knows about who sent a command.

The probe connects as a broker user of its own (``broker.external.acl_probe``), on the host
the gatekeeper is connected to and with its MQTT version, and publishes a harmless command on
each kind of command topic (a lease call, a device call and a device set, the device being
``acl-probe``, which no config may name): first under another user's name
(``.../<probe>-forged-<nonce>``), which the broker must drop, then under its own name, which
must arrive (the positive control: the probe user can publish on each, the gatekeeper's
subscriptions work). Each kind has its own line in a broker ACL, and one wrong line is
enough to let anyone command in anyone's name. Both publishes are
QoS 0, so a broker that answers a denied QoS 1 publish with PUBACK 0x87 (Mosquitto with
MQTT 5) and one that drops it silently (3.1.1, NATS's MQTT gateway) look the same: what
counts is what arrives.

- the forged one arrives (during the probe or at any time later): *failed*;
- its own one does not arrive within ``timeout_s``, or the broker refuses the probe user:
  *failed* (nothing was proven; commands stay refused);
- its own one arrived and, a short grace later, the forged one did not: *passed*.

The probe's messages carry ``"method": "acl-probe"`` and a nonce; the uplink hands every
message on a lease topic to :meth:`AclProbe.claim` first, and what it claims is never a
command.
"""

from __future__ import annotations

import json
import logging
import secrets
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from pi_mqtt_gpio.topics import Topics

__all__ = ["METHOD", "AclProbe", "Verdict"]

log = logging.getLogger("pi_mqtt_gpio.aclprobe")

METHOD = "acl-probe"
DEVICE = "acl-probe"  # the device its device calls and sets name (they are never commands)
GRACE_S = 0.5  # after its own command arrived, how long the forged one may still come
KEEP_NONCES = 16  # nonces of earlier probes still recognised (a forged one arriving late)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str  # why it failed, or what passed
    elapsed_s: float


class AclProbe:
    def __init__(self, config: Any, external: Any, *, topics: Topics, client_id: str) -> None:
        self.config = config  # AclProbeConfig
        self.external = external  # ExternalBrokerConfig (TLS settings)
        self.username: str = config.username
        # Each kind of command topic (before the user name level): a lease call, a device
        # call, a device set.
        self.kinds = (topics.lease_call, topics.device(DEVICE, "call"),
                      topics.device(DEVICE, "set"))
        self.client_id = client_id
        self._lock = threading.Lock()
        self._running = threading.Lock()  # one probe at a time (a cancelled one may still run)
        self._nonces: list[str] = []
        self._own = threading.Event()  # its own command arrived on every kind of topic
        self._own_kinds: set[str] = set()
        self._forged = threading.Event()
        self._current: str | None = None
        self.late_forgery: str | None = None  # a forged topic that arrived after its probe
        self._stopping = threading.Event()

    def abort(self) -> None:
        """The gatekeeper stops: a running probe ends at once (its verdict is not used)."""
        self._stopping.set()
        self._own.set()
        self._forged.set()

    # --- on the uplink's thread ----------------------------------------------------------------
    def claim(self, topic: str, payload: bytes) -> bool:
        """True for the probe's own messages and for anything sent as the probe user: they
        are never commands. Records what arrived for the running probe."""
        kind, user = Topics.sender(topic)
        if kind not in self.kinds:
            return False
        nonce = _probe_nonce(payload)
        if nonce is None:
            return user == self.username  # the probe user never commands
        with self._lock:
            known = nonce in self._nonces
            current = nonce == self._current
            if current and known and user == self.username:
                self._own_kinds.add(kind)
                if len(self._own_kinds) == len(self.kinds):
                    self._own.set()
        if known and user != self.username:
            if current:
                self._forged.set()
            else:
                self.late_forgery = topic
        return True

    # --- one probe (a worker thread) -----------------------------------------------------------
    def run(self, host: str, port: int, v5: bool) -> Verdict:
        with self._running:
            if self._stopping.is_set():
                return Verdict(False, "the gatekeeper is stopping", 0.0)
            return self._once(host, port, v5)

    def _once(self, host: str, port: int, v5: bool) -> Verdict:
        start = time.monotonic()
        nonce = secrets.token_hex(8)
        with self._lock:
            self._current = nonce
            self._nonces = [*self._nonces[-(KEEP_NONCES - 1):], nonce]
        self._own.clear()
        with self._lock:
            self._own_kinds.clear()
        self._forged.clear()
        try:
            return self._run(host, port, v5, nonce, start)
        finally:
            with self._lock:
                self._current = None

    def _run(self, host: str, port: int, v5: bool, nonce: str, start: float) -> Verdict:
        cfg = self.config
        forged_topics = [Topics.sent_by(kind, f"{self.username}-forged-{nonce[:8]}")
                         for kind in self.kinds]
        own_topics = [Topics.sent_by(kind, self.username) for kind in self.kinds]
        forged_topic = ", ".join(forged_topics)

        def verdict(passed: bool, reason: str) -> Verdict:
            return Verdict(passed, reason, time.monotonic() - start)

        try:
            password = Path(cfg.password_file).read_text().strip()
        except OSError as exc:
            return verdict(False, f"cannot read acl_probe.password_file {cfg.password_file}: "
                                  f"{exc.strerror}")
        client = mqtt.Client(CallbackAPIVersion.VERSION2,
                             client_id=f"{self.client_id}-acl-probe-{nonce[:6]}",
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        client.username_pw_set(self.username, password)
        if self.external.tls:
            client.tls_set_context(ssl.create_default_context(
                cafile=self.external.ca_file or None))
        answered = threading.Event()
        refusal: list[str] = []

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if reason.is_failure:
                refusal.append(str(reason))
            answered.set()

        client.on_connect = on_connect
        try:
            client.connect(host, port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            return verdict(False, f"the ACL probe cannot reach the broker {host}:{port}: {exc}")
        client.loop_start()
        try:
            if not answered.wait(cfg.timeout_s) or self._stopping.is_set():
                return verdict(False, f"the broker {host}:{port} did not answer the ACL probe "
                                      f"user {self.username!r} within {cfg.timeout_s:g} s")
            if refusal:
                return verdict(False, f"the broker refused the ACL probe user "
                                      f"{self.username!r}: {refusal[0]} (create that user on "
                                      f"the broker with acl_probe.password_file's password)")
            body = {"method": METHOD, "nonce": nonce}
            for topic in forged_topics:
                client.publish(topic, json.dumps({**body, "as": "another user"}), 0)
            for topic in own_topics:
                client.publish(topic, json.dumps({**body, "as": "itself"}), 0)
            if not self._own.wait(cfg.timeout_s):
                if self._forged.is_set():
                    return self._forged_verdict(forged_topic, start)
                with self._lock:
                    missing = [t for kind, t in zip(self.kinds, own_topics, strict=True)
                               if kind not in self._own_kinds]
                return verdict(False, f"the ACL probe's commands under its own name "
                                      f"({', '.join(missing)}) did not arrive within "
                                      f"{cfg.timeout_s:g} s: the broker ACL must let "
                                      f"{self.username!r} publish there")
            if self._forged.wait(GRACE_S):
                return self._forged_verdict(forged_topic, start)
            return verdict(True, f"the broker dropped the ACL probe's commands under another "
                                 f"user's name ({forged_topic}) and delivered its own")
        finally:
            client.disconnect()
            client.loop_stop()

    def _forged_verdict(self, topic: str, start: float) -> Verdict:
        return Verdict(False, forged_reason(self.username, topic), time.monotonic() - start)


def forged_reason(username: str, topic: str) -> str:
    return (f"the broker ACL does not make the last level of command topics the publisher's "
            f"user name: the ACL probe user {username!r} published {topic} and it arrived; "
            f"anyone could command in anyone's name")


def _probe_nonce(payload: bytes) -> str | None:
    if METHOD.encode() not in payload:
        return None
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("method") != METHOD:
        return None
    nonce = doc.get("nonce")
    return nonce if isinstance(nonce, str) else ""
