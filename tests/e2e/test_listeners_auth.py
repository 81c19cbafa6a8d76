"""TLS listeners, authentication, the minimal ACL, limits and lifecycle of the real daemon."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from pi_mqtt_gpio.mqtt.codec import encode
from pi_mqtt_gpio.mqtt.packets import PROTOCOL_311, Connect
from tests.conftest import Client, Gatekeeper, broker_config, cheap_hash, start_gatekeeper, wait_for

PASSWORD_HASH = cheap_hash("s3cret")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed server certificate for 127.0.0.1 made by Debian's openssl."""
    d = tmp_path_factory.mktemp("certs")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return d


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Gatekeeper:
    cfg = broker_config(
        broker={"listeners": [
            {"type": "tcp", "host": "127.0.0.1", "port": 0},
            {"type": "tls", "host": "127.0.0.1", "port": 0, "certfile": str(certs / "cert.pem"),
             "keyfile": str(certs / "key.pem")},
            {"type": "websocket", "host": "127.0.0.1", "port": 0,
             "certfile": str(certs / "cert.pem"), "keyfile": str(certs / "key.pem")},
        ]},
        auth={"allow_anonymous": False,
              "users": {"alice": {"password_hash": PASSWORD_HASH, "role": "operator"},
                        "guest": {"password_hash": PASSWORD_HASH, "role": "viewer"},
                        "root": {"password_hash": PASSWORD_HASH, "role": "admin"}},
              "roles": {}},
    )
    gk = start_gatekeeper(tmp_path_factory.mktemp("secured"), cfg)
    yield gk  # type: ignore[misc]
    assert gk.stop() == 0


def test_tls_listener(secured: Gatekeeper, certs: Path, clients: list[Client],
                      version: int) -> None:
    c = Client(secured.ports["tls"], version, client_id=f"tls-{version}")
    clients.append(c)
    c.c.tls_set(ca_certs=str(certs / "cert.pem"))
    c.c.username_pw_set("root", "s3cret")
    assert c.connect()[0] == 0
    c.subscribe("tls/x", 1)
    c.publish("tls/x", "secret", 1)
    assert c.get().payload == b"secret"


def test_websocket_over_tls(secured: Gatekeeper, certs: Path, clients: list[Client],
                            version: int) -> None:
    c = Client(secured.ports["websocket+tls"], version, transport="websockets")
    clients.append(c)
    c.c.tls_set(ca_certs=str(certs / "cert.pem"))
    c.c.username_pw_set("root", "s3cret")
    assert c.connect()[0] == 0


def test_plain_client_on_tls_port_fails_cleanly(secured: Gatekeeper) -> None:
    s = socket.create_connection(("127.0.0.1", secured.ports["tls"]), timeout=5)
    s.sendall(b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01z")
    s.settimeout(5)
    try:
        s.recv(100)
    except (ConnectionResetError, TimeoutError):
        pass
    s.close()
    assert secured.alive()


def test_tls_with_wrong_ca_refused(secured: Gatekeeper, tmp_path: Path) -> None:
    ctx = ssl.create_default_context()
    with socket.create_connection(("127.0.0.1", secured.ports["tls"]), timeout=5) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):
        ctx.wrap_socket(raw, server_hostname="127.0.0.1")


@pytest.mark.parametrize(("user", "password", "v5_code", "v311_code"), [
    ("alice", "wrong", 0x86, 4),
    ("nobody", "s3cret", 0x86, 4),
    (None, None, 0x87, 5),
])
def test_bad_credentials_refused(secured: Gatekeeper, clients: list[Client], version: int,
                                 user: str | None, password: str | None, v5_code: int,
                                 v311_code: int) -> None:
    if version == mqtt.MQTTv311:
        # paho reports 3.1.1 return codes as 5.0 reason codes, so check the raw bytes.
        packet = Connect("raw", PROTOCOL_311, username=user,
                         password=password.encode() if password else None)
        with socket.create_connection(("127.0.0.1", secured.port), timeout=5) as s:
            s.sendall(encode(packet, PROTOCOL_311))
            assert s.recv(10) == bytes((0x20, 2, 0, v311_code))
            assert s.recv(10) == b""
        return
    c = Client(secured.port, version)
    clients.append(c)
    if user is not None:
        c.c.username_pw_set(user, password)
    rc, _ = c.connect()
    assert int(rc.value) == v5_code


def test_viewer_reads_but_cannot_publish(secured: Gatekeeper, clients: list[Client],
                                         version: int) -> None:
    root = secured.root
    admin = Client(secured.port, version)
    admin.c.username_pw_set("root", "s3cret")
    viewer = Client(secured.port, version)
    viewer.c.username_pw_set("guest", "s3cret")
    clients.extend([admin, viewer])
    admin.connect()
    assert viewer.connect()[0] == 0
    granted = viewer.subscribe("other/#", 1)
    assert int(granted[0].value) == (0x87 if version == mqtt.MQTTv5 else 0x80)
    viewer.subscribe(f"{root}/status", 1)
    assert viewer.get().payload == b"online"  # the retained twin is readable
    admin.subscribe(f"{root}/device/+/set", 1)
    info = viewer.c.publish(f"{root}/device/x/set", "ON", 1)
    info.wait_for_publish(5)  # dropped (3.1.1) or refused with 0x87 (5.0), and acknowledged
    admin.publish(f"{root}/device/sentinel/set", "ON", 1)  # routed after the refused one
    admin.nothing_until(f"{root}/device/sentinel/set")


def test_operator_may_set_but_not_subscribe_elsewhere(secured: Gatekeeper,
                                                      clients: list[Client]) -> None:
    root = secured.root
    admin = Client(secured.port, mqtt.MQTTv5)
    admin.c.username_pw_set("root", "s3cret")
    op = Client(secured.port, mqtt.MQTTv5)
    op.c.username_pw_set("alice", "s3cret")
    clients.extend([admin, op])
    admin.connect()
    op.connect()
    admin.subscribe(f"{root}/device/+/set", 1)
    op.publish(f"{root}/device/lamp/set", "ON", 1)
    assert admin.get().payload == b"ON"
    # Its own reply prefix is readable, another client's is not.
    ok = op.subscribe(f"{root}/reply/{op.client_id}/#", 1)
    assert int(ok[0].value) == 1
    other = op.subscribe("$SYS/#", 1)
    assert int(other[0].value) == 0x87


def test_connect_timeout_and_limits(tmp_path: Path) -> None:
    cfg = broker_config(broker={"listeners": [{"type": "tcp", "host": "127.0.0.1", "port": 0}],
                                "limits": {"connect_timeout_s": 0.5, "max_connections": 3}})
    gk = start_gatekeeper(tmp_path, cfg)
    try:
        idle = socket.create_connection(("127.0.0.1", gk.port), timeout=60)
        assert idle.recv(10) == b""  # dropped without CONNECT (a socket.timeout otherwise)
        idle.close()
        held = []
        for i in range(3):
            c = Client(gk.port, mqtt.MQTTv5, client_id=f"held{i}")
            assert c.connect()[0] == 0
            held.append(c)
        extra = Client(gk.port, mqtt.MQTTv5, client_id="extra")
        rc, _ = extra.connect()
        assert int(rc.value) == 0x89  # server busy
        extra.close()
        for c in held:
            c.close()
    finally:
        assert gk.stop() == 0


def _packet(s: socket.socket) -> bytes:
    """One short packet (remaining length under 128) read whole."""
    data = b""
    while len(data) < 2 or len(data) < 2 + data[1]:
        chunk = s.recv(2 + data[1] - len(data) if len(data) >= 2 else 2 - len(data))
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def test_slow_consumer_is_bounded(tmp_path: Path) -> None:
    """A subscriber that never reads must not grow the daemon's memory without bound."""
    cfg = broker_config(broker={"listeners": [{"type": "tcp", "host": "127.0.0.1", "port": 0}]})
    gk = start_gatekeeper(tmp_path, cfg)
    try:
        stuck = socket.create_connection(("127.0.0.1", gk.port))
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x00\x00\x00\x01s")
        assert _packet(stuck)[0] == 0x20  # CONNACK
        stuck.sendall(b"\x82\x09\x00\x01\x00\x00\x03big\x01")  # SUBSCRIBE big, QoS 1
        assert _packet(stuck)[0] == 0x90  # SUBACK: subscribed
        rss_before = gk.rss_kib()
        pub = Client(gk.port, mqtt.MQTTv311)
        pub.connect()
        payload = b"x" * 16384
        for _ in range(3000):  # ~48 MiB offered to a reader that takes none
            pub.c.publish("big", payload, 0)
        pub.publish("big", b"end", 1)  # acknowledged: the broker handled all 3000 before
        growth_mib = (gk.rss_kib() - rss_before) / 1024
        assert growth_mib < 30, f"RSS grew {growth_mib:.1f} MiB"
        pub.close()
        # The broker still serves others.
        probe = Client(gk.port, mqtt.MQTTv5)
        assert probe.connect()[0] == 0
        probe.close()
        stuck.close()
    finally:
        assert gk.stop() == 0


def test_sigterm_publishes_offline_and_exits_zero(tmp_path: Path) -> None:
    gk = start_gatekeeper(tmp_path, broker_config())
    watcher = Client(gk.port, mqtt.MQTTv5)
    watcher.connect()
    watcher.subscribe(f"{gk.root}/status", 1)
    assert watcher.get().payload == b"online"
    assert gk.stop(signal.SIGTERM) == 0
    assert watcher.get().payload == b"offline"
    assert wait_for(lambda: not watcher.disconnects.empty())
    watcher.c.loop_stop()


def test_the_dashboard_is_served_over_tls_too(secured: Gatekeeper, certs: Path) -> None:
    import http.client
    import json
    import ssl

    ctx = ssl.create_default_context(cafile=str(certs / "cert.pem"))

    def get(path: str) -> tuple[int, bytes]:
        # one request per connection: the listener answers HTTP and closes
        conn = http.client.HTTPSConnection("127.0.0.1", secured.ports["websocket+tls"],
                                           context=ctx, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    status, body = get("/")
    assert status == 200 and b"app.js" in body
    status, body = get("/node.json")
    assert status == 200 and json.loads(body)["anonymous"] is False
