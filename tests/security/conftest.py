"""A gatekeeper set up as the attacks found it: authentication on, anonymous off, admin,
operator and viewer users (in config and in a users file), leases required on a motor."""

from __future__ import annotations

import json
import os
import queue
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from pi_mqtt_gpio.server.security import hash_password
from tests.conftest import Client, Gatekeeper, start_gatekeeper, v5_props

PW = "pw-" + "x" * 8
HASH = hash_password(PW)


def secure_config(tmp: Path, **limits: Any) -> dict[str, Any]:
    if os.environ.get("PI_MQTT_SECURITY_BASELINE"):
        limits = {}  # measuring an older release, which does not know the newer limits
    (tmp / "users").write_text(f"opfile:{HASH}:operator\n")
    return {
        "node_id": "sec",
        "broker": {"listeners": [{"type": "tcp", "host": "127.0.0.1", "port": 0}],
                   **({"limits": limits} if limits else {})},
        "auth": {"allow_anonymous": False, "users_file": str(tmp / "users"),
                 "users": {"root": {"password_hash": HASH, "role": "admin"},
                           "alice": {"password_hash": HASH, "role": "operator"},
                           "guest": {"password_hash": HASH, "role": "viewer"},
                           "aud": {"password_hash": HASH, "role": "auditor"},
                           "tess": {"password_hash": HASH, "role": "tester"}},
                 "roles": {
                     # reads everything but the relay
                     "auditor": {"subscribe": ["{root}/#"], "deny": ["{root}/device/relay/#"]},
                     # may drive simulated inputs, and nothing else
                     "tester": {"subscribe": ["{root}/#"],
                                "publish": ["{root}/device/bell/call"],
                                "rights": ["simulate"]}}},
        "leases": {"scope": "device", "ttl_s": 30},
        "devices": {"led": {"type": "LED", "pin": 17},
                    "relay": {"type": "OutputDevice", "pin": 22},
                    "screen": {"type": "Motor", "forward": 20, "backward": 21,
                               "lease_required": True},
                    "bell": {"type": "Button", "pin": 27}},
    }


def start_secure(tmp: Path, **limits: Any) -> Gatekeeper:
    return start_gatekeeper(tmp, secure_config(tmp, **limits))


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gatekeeper]:
    gk = start_secure(tmp_path_factory.mktemp("target"))
    yield gk
    assert gk.alive(), "the gatekeeper died under attack:\n" + "\n".join(gk.log[-40:])
    assert gk.stop() == 0


def login(gk: Gatekeeper, user: str, version: int = mqtt.MQTTv5, *,
          client_id: str | None = None, **kw: Any) -> Client:
    """A connected paho client of ``user`` (the test closes it)."""
    c = Client(gk.port, version, client_id=client_id, **kw)
    c.c.username_pw_set(user, PW)
    rc, _ = c.connect()
    assert int(getattr(rc, "value", rc)) == 0, f"{user} could not log in: {rc}"
    return c


class Watch:
    """An admin subscriber on ``#``: sees every message anyone could see, so a leak that the
    refused client's own view would hide shows up here."""

    def __init__(self, gk: Gatekeeper, version: int = mqtt.MQTTv5) -> None:
        self.c = login(gk, "root", version)
        self.c.subscribe("#", 1)
        self.root = gk.root
        self.sentinel()  # the retained messages are dropped

    def sentinel(self) -> list[mqtt.MQTTMessage]:
        """Every message seen before a sentinel the watch publishes now: it comes after
        everything the broker routed before (what a refused PUBLISH or CONNECT would have
        published is routed by the time its refusal is acknowledged)."""
        topic = f"probe/watch/{uuid.uuid4().hex[:8]}"
        self.c.publish(topic, b"sentinel", 1)
        return self.c.until(topic)

    def settle(self, device: str = "led") -> list[mqtt.MQTTMessage]:
        """Every message seen before a sentinel that also comes after what the commands
        sent before published: an admin's call on ``device`` runs on the one hardware worker
        after them and is answered after their states, events and replies."""
        c = login_any(self.c.port, "root")
        try:
            reply = f"{self.root}/reply/{c.client_id}/settle"
            c.subscribe(reply, 1)
            c.publish(f"{self.root}/device/{device}/call", b'{"method": "state"}', 1,
                      properties=v5_props(ResponseTopic=reply, CorrelationData=b"s"))
            assert json.loads(c.get(10).payload)["ok"]
        finally:
            c.close()
        return self.sentinel()

    def drain(self) -> list[mqtt.MQTTMessage]:
        out = []
        while True:
            try:
                out.append(self.c.messages.get_nowait())
            except queue.Empty:
                return out

    def state(self, device: str) -> dict[str, Any]:
        """The device's retained state, read fresh by a new subscriber (the pin's value)."""
        c = login_any(self.c.port, "root")
        try:
            c.subscribe(f"{self.root}/device/{device}/state", 0)
            return dict(json.loads(c.get(5).payload))
        finally:
            c.close()

    def close(self) -> None:
        self.c.close()


def until_own_reply(c: Client, gk: Gatekeeper, device: str = "led") -> list[mqtt.MQTTMessage]:
    """Every message ``c`` (MQTT 5, subscribed to its reply prefix) gets before the reply to
    a call of its own on ``device``: the call runs on the one hardware worker after every
    command sent before, and is answered after them."""
    reply = f"{gk.root}/reply/{c.client_id}/sentinel-{uuid.uuid4().hex[:8]}"
    c.publish(f"{gk.root}/device/{device}/call", b'{"method": "state"}', 1,
              properties=v5_props(ResponseTopic=reply, CorrelationData=b"s"))
    return c.until(reply)


def login_any(port: int, user: str) -> Client:
    c = Client(port, mqtt.MQTTv5)
    c.c.username_pw_set(user, PW)
    c.connect()
    return c


def code(rc: Any) -> int:
    return int(getattr(rc, "value", rc))
