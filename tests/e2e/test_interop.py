"""Interop with Debian's mosquitto clients (installed by scripts/test when missing)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import Client, Gatekeeper

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_pub") is None and not __import__("os").environ.get("CI"),
    reason="mosquitto-clients not installed (scripts/test installs it)",
)

VERSIONS = pytest.mark.parametrize("proto", ["mqttv311", "mqttv5"])


def _subscribed(broker: Gatekeeper, proc: subprocess.Popen[str]) -> list[str]:
    """Waits until ``mosquitto_sub -v`` that subscribed last to the node's status printed its
    retained message: the broker sends a filter's retained messages with its SUBACK and
    handles one client's SUBSCRIBEs in order, so every filter before it is active. The
    lines it printed before."""
    assert proc.stdout is not None
    before = []
    while (line := proc.stdout.readline()) != f"{broker.root}/status online\n":
        assert line, f"mosquitto_sub ended before it subscribed: {before}"
        before.append(line.rstrip("\n"))
    return before


def _sub(broker: Gatekeeper, proto: str, topic: str, count: int, *extra: str
         ) -> tuple[subprocess.Popen[str], list[str]]:
    """``mosquitto_sub -v`` on ``topic`` for ``count`` messages once subscribed, and the lines
    it printed until then."""
    proc = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", proto, "-t", topic,
         "-t", f"{broker.root}/status", "-C", str(count + 1), "-W", "10", "-v", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    return proc, _subscribed(broker, proc)


@VERSIONS
@pytest.mark.parametrize("qos", ["0", "1", "2"])
def test_mosquitto_pub_sub(broker: Gatekeeper, proto: str, qos: str) -> None:
    topic = f"mosq/{proto}/{qos}"
    sub, before = _sub(broker, proto, topic, 3, "-q", qos)
    for i in range(3):
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", proto,
                        "-q", qos, "-t", topic, "-m", f"hello {i}"], check=True, timeout=10)
    out, err = sub.communicate(timeout=15)
    assert sub.returncode == 0, err
    assert before + out.splitlines() == [f"{topic} hello {i}" for i in range(3)]


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
    sub, before = _sub(broker, proto, topic, 1)
    pub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-V",
                            proto, "-t", f"{broker.root}/status", "-v", "--will-topic", topic,
                            "--will-payload", "bye", "-k", "5"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _subscribed(broker, pub)  # connected, its Will with the broker
    pub.kill()  # no DISCONNECT: the will goes out
    pub.wait()
    out, _ = sub.communicate(timeout=15)
    assert before + out.splitlines() == [f"{topic} bye"]
