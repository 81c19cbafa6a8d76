"""Which gatekeeper nodes a broker knows: every node leaves a retained ``status``
(``online``, or ``offline`` as its Will) and a retained catalogue under the base topic.

    from pi_mqtt_gpio.client.nodes import list_nodes
    for node in list_nodes("localhost"):
        print(node.node_id, node.status, node.version)
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from pi_mqtt_gpio.client.credentials import apply_credentials
from pi_mqtt_gpio.topics import Topics

__all__ = ["NodeInfo", "list_nodes"]


@dataclass
class NodeInfo:
    node_id: str
    status: str  # "online" / "offline"
    version: str | None = None
    devices: int | None = None


def list_nodes(host: str | None = None, port: int | None = None, *,
               username: str | None = None, password: str | None = None,
               base_topic: str = "gatekeeper", tls: bool | str | ssl.SSLContext = False,
               protocol: int = 5, wait: float = 1.0) -> list[NodeInfo]:
    """The nodes under ``base_topic`` with their status, version and device count, sorted
    by node id. Retained messages arrive at once; ``wait`` bounds how long we listen."""
    host = host or os.environ.get("PI_MQTT_HOST") or "localhost"
    port = int(port or os.environ.get("PI_MQTT_PORT") or (8883 if tls else 1883))
    username = username if username is not None else os.environ.get("PI_MQTT_USER")
    password = password if password is not None else os.environ.get("PI_MQTT_PASSWORD")
    probe = _Probe(Topics(base_topic, "+"))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"nodes-{uuid.uuid4().hex[:10]}",
                         protocol=mqtt.MQTTv5 if protocol == 5 else mqtt.MQTTv311)
    apply_credentials(client, username, password, tls)
    client.on_connect = probe.on_connect
    client.on_message = probe.on_message
    client.connect(host, port, 30)
    client.loop_start()
    try:
        if not probe.connected.wait(max(wait, CONNECT_WAIT_S)) or probe.errors:
            raise ConnectionError(probe.errors[0] if probe.errors else
                                  f"no connection to {host}:{port}")
        time.sleep(wait)  # retained messages come at once; a slow broker gets this long
    finally:
        client.disconnect()
        client.loop_stop()
    return probe.nodes()


CONNECT_WAIT_S = 5.0


class _Probe:
    """Collects the retained status and catalogue of every node."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.statuses: dict[str, str] = {}
        self.catalogues: dict[str, dict[str, Any]] = {}
        self.connected = threading.Event()
        self.errors: list[str] = []

    def on_connect(self, c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
        if rc.is_failure:
            self.errors.append(f"connection refused: {rc}")
        else:
            c.subscribe([(self.topics.any_status, 1), (self.topics.devices, 1)])
        self.connected.set()

    def on_message(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        node = self.topics.parse_status(m.topic)
        if node is not None:
            if m.payload:
                self.statuses[node] = m.payload.decode("utf-8", "replace")
            return
        node = self.topics.parse_node(m.topic, "devices")
        if node is not None:
            try:
                self.catalogues[node] = json.loads(m.payload)
            except ValueError:
                pass

    def nodes(self) -> list[NodeInfo]:
        out = []
        for node, status in sorted(self.statuses.items()):
            doc = self.catalogues.get(node, {})
            devices = doc.get("devices")
            out.append(NodeInfo(node, status, doc.get("version"),
                                len(devices) if isinstance(devices, list) else None))
        return out
