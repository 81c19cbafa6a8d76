"""Mixed hostile traffic against a gatekeeper for a while (run as a separate process by the
soak test): idle sockets, garbage bytes, wrong passwords, forbidden Wills, takeover attempts,
deep and denied subscriptions, denied and oversized publishes, nested JSON calls, wildcard
reads beside mqtt-io's topics (counted: what they received that they may not read), and a
subscriber that never acknowledges. Bounded in count and time; loopback only."""

from __future__ import annotations

import contextlib
import random
import socket
import sys
import threading
import time

from pi_mqtt_gpio.mqtt.packets import PROTOCOL_50, PROTOCOL_311, Prop, Publish, Will
from tests.security.raw import RawClient

PW = sys.argv[3] if len(sys.argv) > 3 else ""
COMPAT_PREFIX = "home/sec"  # mqtt-io's topics in the soak's config
FOREIGN = ["secret/admin/notes", "secret/admin/notes/today", "zigbee2mqtt/bridge/state/x",
           "homeassistant/switch/other/config", "othernode/device/relay/state"]
wildcard_reads: list[int] = []  # one per read that reached its sentinel
leaks: list[str] = []  # "<user> <filter or topic>": a wide grant, or a message it may not read


def _safe(fn):  # type: ignore[no-untyped-def]
    def run(*args):  # type: ignore[no-untyped-def]
        try:
            fn(*args)
        except (OSError, TimeoutError, AssertionError, ValueError):
            pass
    return run


@_safe
def idle_and_garbage(port: int, i: int) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=2,
                                 source_address=(f"127.0.6.{i % 50 + 1}", 0))
    if i % 2:
        s.sendall(random.randbytes(64))
    time.sleep(0.2)
    s.close()


@_safe
def wrong_password(port: int, i: int) -> None:
    raw = RawClient(port, source=f"127.0.7.{i % 50 + 1}", timeout=6)
    raw.connect(f"bad{i}", username="root", password=f"guess{i}")
    raw.close()


@_safe
def viewer_mischief(port: int, root: str, i: int) -> None:
    version = PROTOCOL_50 if i % 2 else PROTOCOL_311
    raw = RawClient(port, version=version, timeout=6)
    raw.connect(f"evil{i}", username="guest", password=PW,
                will=Will(f"{root}/device/led/set", b"ON", 0, False, {}))
    raw.close()
    raw = RawClient(port, version=version, timeout=6)
    ack = raw.connect("root-console", username="guest", password=PW, clean=False)
    if ack.reason_code == 0:
        raw.subscribe(f"{root}/" + "/".join(["a"] * 20_000), f"{root}/#", "#")
        raw.publish(f"{root}/device/led/set", b"ON", qos=1)
        raw.publish(f"{root}/" + "x" * 50_000, b"ON", qos=1)
    raw.close()


@_safe
def nested_calls(port: int, root: str, i: int) -> None:
    raw = RawClient(port, timeout=6)
    raw.connect(f"nest{i}", username="alice", password=PW)
    payload = b'{"method": "on", "kwargs": ' + b"[" * 3000 + b"]" * 3000 + b"}"
    raw.publish(f"{root}/device/relay/call", payload, qos=1,
                properties={Prop.RESPONSE_TOPIC: f"{root}/reply/nest{i}/r"})
    raw.close()


@_safe
def wildcard_reader(port: int, root: str, i: int) -> None:
    """A viewer (or a role denied the relay) asks for # and +/+/+/+ beside mqtt-io's topics
    and for the prefix; other programs' topics are published, then a sentinel into its own
    reply prefix: until the sentinel, it may get nothing but the node's and the prefix's
    topics it may read."""
    version = PROTOCOL_50 if i % 2 else PROTOCOL_311
    user = "guest" if i % 4 < 2 else "aud"
    cid = f"peek{i}"
    raw = RawClient(port, version=version, timeout=6)
    raw.connect(cid, username=user, password=PW)
    wide = raw.subscribe("#", "+/+/+/+", qos=1)
    leaks.extend(f"{user} granted {f}" for f, rc in zip(("#", "+/+/+/+"), wide, strict=True)
                 if rc < 0x80)
    raw.subscribe(f"{COMPAT_PREFIX}/#", f"{root}/reply/{cid}/#", qos=1)
    admin = RawClient(port, timeout=6)
    admin.connect(f"feed{i}", username="root", password=PW)
    for topic in FOREIGN:
        admin.publish(topic, b"live", qos=1)
    sentinel = f"{root}/reply/{cid}/sentinel"
    admin.publish(sentinel, b"end", qos=1)
    admin.close()
    while True:
        packet = raw.recv(6)
        if packet is None:
            break
        if not isinstance(packet, Publish):
            continue
        if packet.topic == sentinel:
            wildcard_reads.append(i)
            break
        mine = packet.topic.startswith((f"{root}/", f"{COMPAT_PREFIX}/"))
        if not mine or (user == "aud" and "relay" in packet.topic):
            leaks.append(f"{user} {packet.topic}")
    raw.close()


@_safe
def stuck_subscriber(port: int, stop: threading.Event) -> None:
    sub = RawClient(port, timeout=6)
    sub.connect("stuck", username="root", password=PW, properties={Prop.RECEIVE_MAXIMUM: 1})
    sub.subscribe("bulk/#", qos=1)
    pub = RawClient(port, timeout=6)
    pub.connect("bulk", username="root", password=PW)
    n = 0
    while not stop.is_set():
        pub.publish(f"bulk/{n % 100}", b"b" * 200_000, qos=1)
        n += 1
        time.sleep(0.01)


flood = {"opened": 0, "closed_by_server": 0}


def handshake_flood(ports: list[int], stop: threading.Event) -> None:
    """Sockets to the TLS and WebSocket listeners that never finish their TLS handshake or
    upgrade (nothing, half a ClientHello, half an HTTP request), from one address, each
    opened again as soon as the server closes it, 150 at a time."""
    import select

    held: list[socket.socket] = []
    while not stop.is_set():
        while len(held) < 150 and not stop.is_set():
            port = ports[len(held) % len(ports)]
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=2,
                                             source_address=("127.0.12.1", 0))
            except OSError:
                time.sleep(0.05)
                continue
            flood["opened"] += 1
            kind = flood["opened"] % 3
            with contextlib.suppress(OSError):
                if kind == 1:
                    s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
                elif kind == 2:
                    s.sendall(b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
            held.append(s)
        ready, _, _ = select.select(held, [], [], 0.2)
        for s in ready:
            with contextlib.suppress(OSError):
                if s.recv(4096):
                    continue  # an answer (an HTTP error, a TLS alert): the close follows
            flood["closed_by_server"] += 1
            held.remove(s)
            s.close()
    for s in held:
        s.close()


def main() -> None:
    port, seconds, root = int(sys.argv[1]), float(sys.argv[2]), sys.argv[4]
    handshake_ports = [int(p) for p in sys.argv[5:7]]  # TLS, WebSocket
    stop = threading.Event()
    feed = RawClient(port, timeout=6)  # other programs' retained topics, for the readers
    feed.connect("feed", username="root", password=PW)
    for topic in FOREIGN:
        feed.publish(topic, b"retained", qos=1, retain=True)
    feed.close()
    threading.Thread(target=stuck_subscriber, args=(port, stop), daemon=True).start()
    if handshake_ports:
        threading.Thread(target=handshake_flood, args=(handshake_ports, stop),
                         daemon=True).start()
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        workers = [
            threading.Thread(target=idle_and_garbage, args=(port, i)),
            threading.Thread(target=wrong_password, args=(port, i)),
            threading.Thread(target=viewer_mischief, args=(port, root, i)),
            threading.Thread(target=nested_calls, args=(port, root, i)),
            threading.Thread(target=wildcard_reader, args=(port, root, i)),
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(8)
        i += 1
    stop.set()
    print(f"hostile rounds: {i}; wildcard reads: {len(wildcard_reads)}; "
          f"leaks: {len(leaks)} {sorted(set(leaks))[:8]}; handshake flood: "
          f"{flood['opened']} opened, {flood['closed_by_server']} closed by the server",
          flush=True)


if __name__ == "__main__":
    main()
