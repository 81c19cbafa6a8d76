"""HTTP on the WebSocket listener: plain GETs get the dashboard's static files (only those),
with a strict Content-Security-Policy; WebSocket upgrades are MQTT as before; the vendored
MQTT.js is the file its recorded hash names."""

from __future__ import annotations

import hashlib
import http.client
import json
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pi_mqtt_gpio.server.web import STATIC
from pi_mqtt_gpio.topics import Topics
from tests.conftest import Client, Gatekeeper


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_static_files_and_nothing_else(broker: Gatekeeper) -> None:
    port = broker.ports["websocket"]
    status, headers, body = get(port, "/vendor/mqtt.esm.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert body == (STATIC / "vendor" / "mqtt.esm.js").read_bytes()
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    for path in ("/../pyproject.toml", "/vendor/../../web/__init__.py", "/%2e%2e/__init__.py",
                 "/nope.js", "/vendor/", "//etc/passwd"):
        status, _headers, body = get(port, path)
        assert status == 404, path
        assert b"import" not in body


def test_mqtt_over_websocket_still_works_beside_http(broker: Gatekeeper) -> None:
    c = Client(broker.ports["websocket"], mqtt.MQTTv5, transport="websockets")
    c.connect()
    try:
        c.subscribe("web/test", 1)
        c.publish("web/test", "hello", 1)
        assert c.get(5).payload == b"hello"
    finally:
        c.close()


def test_the_vendored_mqtt_js_is_the_recorded_file() -> None:
    vendor: Path = STATIC / "vendor"
    for line in (vendor / "mqtt.sha256").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name


def test_node_json_tells_the_page_what_it_may_know_before_login(broker: Gatekeeper) -> None:
    status, headers, body = get(broker.ports["websocket"], "/node.json")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"node_id": "test", "base_topic": "gatekeeper",
                                "root": "gatekeeper/test", "broker": "embedded",
                                "mqtt_path": "/mqtt", "anonymous": True, "devices": 0}
    status, _h, body = get(broker.ports["websocket"], "/")
    assert status == 200 and b'<script type="module" src="app.js">' in body


def test_topics_json_is_the_servers_own_topic_grammar(broker: Gatekeeper) -> None:
    """The page builds and parses every topic from /topics.json; filled in, each template
    is the topic the server's own Topics builds."""
    status, headers, body = get(broker.ports["websocket"], "/topics.json")
    assert status == 200 and headers["content-type"] == "application/json"
    grammar = json.loads(body)
    t = Topics("gatekeeper", "test")

    def fill(kind: str, **values: str) -> str:
        values.setdefault("root", t.root)
        values.setdefault("base_topic", t.base_topic)
        return str(grammar[kind].format(**values))

    assert fill("root", node_id="test") == t.root
    assert fill("status") == t.status and fill("devices") == t.devices
    assert fill("lease") == t.lease and fill("lease_call") == t.lease_call
    assert fill("health") == t.health and fill("audit") == t.audit
    assert fill("device", name="porch", leaf="call") == t.device("porch", "call")
    assert fill("reply_prefix", client_id="me") == t.reply_prefix("me")
    assert fill("any_node", leaf="status") == t.any_status


def _access(port: int, props: dict[str, object]) -> dict[str, object] | None:
    c = Client(port, mqtt.MQTTv5)
    properties = Properties(PacketTypes.CONNECT)
    for key, value in props.items():
        setattr(properties, key, value)
    _rc, connack = c.connect(properties=properties)
    try:
        for name, value in getattr(connack, "UserProperty", []) or []:
            if name == "gatekeeper-access":
                return dict(json.loads(value))
        return None
    finally:
        c.close()


def test_connack_tells_a_client_that_asks_its_own_access(broker: Gatekeeper) -> None:
    port = broker.ports["tcp"]
    access = _access(port, {"UserProperty": [("gatekeeper-access", "1")],
                            "RequestResponseInformation": 1})
    assert access is not None
    assert access["role"] == "everyone" and access["publish"] == ["#"]
    assert access["rights"] == [] and access["username"] is None
    assert str(access["reply"]).startswith("gatekeeper/test/reply/")
    # Not asked: not told (other clients' CONNACKs stay as they were).
    assert _access(port, {"RequestResponseInformation": 1}) is None
    assert _access(port, {"UserProperty": [("something-else", "1")]}) is None
    # MQTT-3.2.2-20: the property is left out rather than exceed the client's maximum size.
    assert _access(port, {"UserProperty": [("gatekeeper-access", "1")],
                          "MaximumPacketSize": 64}) is None
