"""In-process cost of one broker hop: the daemon's own broker core (its hooks: the ACL of a
role that may publish and subscribe to everything, the gatekeeper's retain rule) driven
without sockets. A publisher's PUBLISH bytes go in with ``data_received``; the subscriber's
bytes come out with ``data_to_send``; QoS 1 includes the subscriber's PUBACK.

    .venv/bin/python benchmarks/hop.py [--n 200000]

Prints microseconds per forwarded PUBLISH for each scenario, with the fast path and with the
general path only (``BrokerCore(fast_path=False)``); asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from pi_mqtt_gpio.mqtt import packets as pk  # noqa: E402
from pi_mqtt_gpio.mqtt.codec import encode  # noqa: E402
from pi_mqtt_gpio.mqtt.hooks import AuthResult, Decision  # noqa: E402
from pi_mqtt_gpio.server.config_loader import parse_config  # noqa: E402
from pi_mqtt_gpio.server.daemon import Daemon  # noqa: E402

CONFIG = """
node_id: bench
broker: {listeners: [{type: tcp, host: 127.0.0.1, port: 0}], limits: {max_connections: 5000}}
auth: {allow_anonymous: true, anonymous_role: all,
       roles: {all: {subscribe: ['#'], publish: ['#']}}}
homeassistant: {discovery: false}
devices: {}
"""


class Bench:
    def __init__(self, fast: bool = True) -> None:
        self.daemon = Daemon(parse_config(CONFIG), simulate=True)
        self.core = self.daemon.core
        self.core.fast_path = fast
        self.now = 1000.0

    def settle(self) -> None:
        for conn, _req in self.core.take_auth_requests():
            self.core.auth_complete(conn, AuthResult(Decision.ALLOW, None, "all"), self.now)
        self.core.take_dirty()

    def client(self, cid: str, version: int) -> Any:
        conn = self.core.open_connection("bench", "127.0.0.1:1", self.now)
        self.core.data_received(conn, encode(pk.Connect(cid, version), version), self.now)
        self.settle()
        conn.data_to_send()
        return conn


def scenario(name: str, version: int, qos: int, props: dict[int, Any], n: int,
             subscribers: int = 1, fast: bool = True) -> float:
    b = Bench(fast)
    pub = b.client("pub", version)
    subs = []
    for i in range(subscribers):
        sub = b.client(f"sub{i}", version)
        subscribe = pk.Subscribe(1, [pk.Subscription("bench/topic", qos)])
        b.core.data_received(sub, encode(subscribe, version), b.now)
        b.settle()
        sub.data_to_send()
        subs.append(sub)
    core = b.core
    frames = [encode(pk.Publish("bench/topic", b"x" * 64, qos, False, False,
                             (i % 60000) + 1 if qos else None, dict(props)), version)
              for i in range(1000)]
    ack = [encode(pk.PubAck(i + 1), version) for i in range(65535)]
    now = b.now
    samples = []
    for _round in range(5):
        t0 = time.perf_counter()
        for i in range(n // 5):
            core.data_received(pub, frames[i % 1000], now)
            core.take_dirty()
            pub.data_to_send()
            for sub in subs:
                out = sub.data_to_send()
                if qos and out:
                    data = out[0]  # PUBLISH: 1 + 1 (length) + 2 + 11 (topic), then the id
                    core.data_received(sub, ack[((data[15] << 8) | data[16]) - 1], now)
        samples.append((time.perf_counter() - t0) / (n // 5) * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args()
    rr = {pk.Prop.RESPONSE_TOPIC: "bench/reply/me",
          pk.Prop.CORRELATION_DATA: b"0123456789abcdef"}
    rows = [
        ("qos0 v5", pk.PROTOCOL_50, 0, {}),
        ("qos0 v3.1.1", pk.PROTOCOL_311, 0, {}),
        ("qos0 v5 request (response topic, correlation)", pk.PROTOCOL_50, 0, rr),
        ("qos1 v5 (incl. PUBACK in and out)", pk.PROTOCOL_50, 1, {}),
        ("qos1 v3.1.1 (incl. PUBACK in and out)", pk.PROTOCOL_311, 1, {}),
    ]
    print(f"{'scenario':50s} {'fast path':>10s} {'general':>10s}   (µs per hop)")
    for name, version, qos, props in rows:
        fast = scenario(name, version, qos, props, args.n)
        general = scenario(name, version, qos, props, args.n, fast=False)
        print(f"{name:50s} {fast:10.2f} {general:10.2f}")
    b = Bench()
    pub, sub = b.client("p", pk.PROTOCOL_50), b.client("s", pk.PROTOCOL_50)
    t0 = time.perf_counter()
    for _ in range(args.n):  # what the loop above does besides data_received
        b.core.take_dirty()
        pub.data_to_send()
        sub.data_to_send()
    harness = (time.perf_counter() - t0) / args.n * 1e6
    print(f"{'(of which the benchmark loop itself)':50s} {harness:10.2f}")
    name = "qos0 v5, 1 -> 10 subscribers (per publish)"
    fast = scenario(name, pk.PROTOCOL_50, 0, {}, args.n // 5, 10)
    general = scenario(name, pk.PROTOCOL_50, 0, {}, args.n // 5, 10, fast=False)
    print(f"{name:50s} {fast:10.2f} {general:10.2f}")


if __name__ == "__main__":
    main()
