"""Interop with Debian's mosquitto clients (installed by scripts/test when missing)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from tests.conftest import Client, Gatekeeper

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_pub") is None and not __import__("os").environ.get("CI"),
    reason="mosquitto-clients not installed (scripts/test installs it)",
)

VERSIONS = pytest.mark.parametrize("proto", ["mqttv311", "mqttv5"])


def _sub(broker: Gatekeeper, proto: str, topic: str, count: int, *extra: str
         ) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", proto, "-t", topic,
         "-C", str(count), "-W", "10", "-v", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(0.4)  # let it subscribe
    return proc


@VERSIONS
@pytest.mark.parametrize("qos", ["0", "1", "2"])
def test_mosquitto_pub_sub(broker: Gatekeeper, proto: str, qos: str) -> None:
    topic = f"mosq/{proto}/{qos}"
    sub = _sub(broker, proto, topic, 3, "-q", qos)
    for i in range(3):
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", proto,
                        "-q", qos, "-t", topic, "-m", f"hello {i}"], check=True, timeout=10)
    out, err = sub.communicate(timeout=15)
    assert sub.returncode == 0, err
    assert out.splitlines() == [f"{topic} hello {i}" for i in range(3)]


@VERSIONS
def test_mosquitto_retained(broker: Gatekeeper, proto: str) -> None:
    topic = f"mosq-retain/{proto}"
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", proto,
                    "-r", "-q", "1", "-t", topic, "-m", "kept"], check=True, timeout=10)
    out = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-V",
                          proto, "-t", topic, "-C", "1", "-W", "5", "-v"],
                         capture_output=True, text=True, timeout=10)
    assert out.stdout.strip() == f"{topic} kept"


def test_mosquitto_rr_request_response(broker: Gatekeeper, clients: list[Client]) -> None:
    """mosquitto_rr (MQTT 5 Response Topic + Correlation Data) against a paho responder."""
    import paho.mqtt.client as mqtt

    from tests.conftest import v5_props

    responder = Client(broker.port, mqtt.MQTTv5)
    clients.append(responder)
    responder.connect()
    responder.subscribe("rr/service", 1)

    def answer(c: object, u: object, m: mqtt.MQTTMessage) -> None:
        # mosquitto_rr sends a Response Topic and no Correlation Data unless given -D.
        corr = getattr(m.properties, "CorrelationData", None)
        props = v5_props(CorrelationData=corr) if corr is not None else None
        responder.c.publish(m.properties.ResponseTopic, b"pong:" + m.payload, 1,
                            properties=props)

    responder.c.on_message = answer
    out = subprocess.run(["mosquitto_rr", "-h", "127.0.0.1", "-p", str(broker.port), "-t",
                          "rr/service", "-e", "rr/reply/me", "-m", "ping", "-W", "5"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "pong:ping"


@VERSIONS
def test_mosquitto_will_and_websocket_free(broker: Gatekeeper, proto: str) -> None:
    topic = f"mosq-will/{proto}"
    sub = _sub(broker, proto, topic, 1)
    pub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-V",
                            proto, "-t", "nothing", "--will-topic", topic, "--will-payload",
                            "bye", "-k", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.4)
    pub.kill()  # no DISCONNECT: the will goes out
    out, _ = sub.communicate(timeout=15)
    assert out.strip() == f"{topic} bye"
