"""Which gatekeeper nodes a broker knows: every node leaves a retained ``status``
(``online``, or ``offline`` as its Will) and a retained catalogue under the base topic.

    from pi_mqtt_gpio.client.nodes import list_nodes
    for node in list_nodes("localhost"):
        print(node.node_id, node.status, node.version)
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

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
    import os

    host = host or os.environ.get("PI_MQTT_HOST") or "localhost"
    port = int(port or os.environ.get("PI_MQTT_PORT") or (8883 if tls else 1883))
    username = username if username is not None else os.environ.get("PI_MQTT_USER")
    password = password if password is not None else os.environ.get("PI_MQTT_PASSWORD")
    probe = Topics(base_topic, "+")
    statuses: dict[str, str] = {}
    catalogues: dict[str, dict[str, Any]] = {}
    connected = threading.Event()
    errors: list[str] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"nodes-{uuid.uuid4().hex[:10]}",
                         protocol=mqtt.MQTTv5 if protocol == 5 else mqtt.MQTTv311)
    if username is not None:
        client.username_pw_set(username, password)
    if isinstance(tls, ssl.SSLContext):
        client.tls_set_context(tls)
    elif isinstance(tls, str):
        client.tls_set(ca_certs=tls)
    elif tls:
        client.tls_set()

    def on_connect(c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
        if rc.is_failure:
            errors.append(f"connection refused: {rc}")
        else:
            c.subscribe([(probe.any_status, 1), (probe.devices, 1)])
        connected.set()

    def on_message(c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        node = probe.parse_status(m.topic)
        if node is not None:
            if m.payload:
                statuses[node] = m.payload.decode("utf-8", "replace")
            return
        parts = m.topic.split("/")
        if len(parts) >= 2 and parts[-1] == "devices":
            try:
                catalogues[parts[-2]] = json.loads(m.payload)
            except ValueError:
                pass

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(host, port, 30)
    client.loop_start()
    try:
        if not connected.wait(max(wait, 5.0)) or errors:
            raise ConnectionError(errors[0] if errors else f"no connection to {host}:{port}")
        time.sleep(wait)
    finally:
        client.disconnect()
        client.loop_stop()
    out = []
    for node, status in sorted(statuses.items()):
        doc = catalogues.get(node, {})
        devices = doc.get("devices")
        out.append(NodeInfo(node, status, doc.get("version"),
                            len(devices) if isinstance(devices, list) else None))
    return out
