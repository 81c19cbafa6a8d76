"""Broker benchmark: our embedded broker and, when installed, Debian's mosquitto, same run.

    .venv/bin/python benchmarks/broker.py [--quick] [--only ours|mosquitto] [--rounds N]
                                          [--clients raw|paho|both] [--taskset CPU]

Scenarios (loopback). Two kinds of client (``--clients``): "raw" are raw sockets in
separate processes, so that the broker, not a Python MQTT client library, is what is
measured; "paho" is paho-mqtt with both ends in one process (the publisher and the
subscriber, or the requester and the responder), as a Python application would use it:
  qos0      1 publisher -> 1 subscriber, QoS 0, 64-byte payloads: delivered msg/s
  qos1      1 -> 1, QoS 1 both legs (publisher keeps a window of 20 unacked): msg/s
  fanout    1 -> 50 subscribers, QoS 0: deliveries/s (raw only)
  rr        MQTT 5 request/response through the broker (Response Topic + Correlation Data),
            sequential round trips: p50 / p99 in microseconds
  rpc       ours only: a gatekeeper RPC (``led`` toggle) from a raw MQTT 5 socket, idle:
            p50 / p99 in microseconds
  starve    8 publishers saturate the broker (QoS 0, one subscriber drains): PINGRESP,
            SUBACK and a new client's CONNACK latency, p50 and max in milliseconds; for
            ours also the gatekeeper RPC's (rpc_p50_ms, to compare with rpc's idle p50)
  idle      1,000 connected idle clients: time to connect them all, broker RSS added; then
            1,000 others once those left (rss_again_mib)
``--taskset CPU`` pins both brokers to that CPU (``taskset -c``), the clients run anywhere.
Prints numbers; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import resource
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from pi_mqtt_gpio.mqtt.codec import FrameReader, decode_frame, encode  # noqa: E402
from pi_mqtt_gpio.mqtt.packets import (  # noqa: E402
    PROTOCOL_50,
    PROTOCOL_311,
    Connect,
    Prop,
    Publish,
    Subscribe,
    Subscription,
)

HOST = "127.0.0.1"


# --- brokers -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Broker:
    def __init__(self, name: str, proc: subprocess.Popen[bytes], port: int) -> None:
        self.name, self.proc, self.port = name, proc, port

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wait_port(port: int, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


PIN: list[str] = []  # ``taskset -c CPU`` before each broker's command (``--taskset``)


def start_ours(tmp: Path) -> Broker:
    port = free_port()
    cfg = tmp / "ours.yaml"
    cfg.write_text(
        "node_id: bench\n"
        "broker:\n"
        f"  listeners: [{{type: tcp, host: {HOST}, port: {port}}}]\n"
        "  limits: {max_connections: 5000}\n"
        "auth: {allow_anonymous: true, anonymous_role: all,\n"
        "       roles: {all: {subscribe: ['#'], publish: ['#']}}}\n"
        "devices: {led: {type: LED, pin: 17}}\n"  # for the gatekeeper RPC probe
    )
    exe = ROOT / ".venv" / "bin" / "pi-mqtt-gatekeeper"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pi_mqtt_gpio.server.main"]
    proc = subprocess.Popen([*PIN, *cmd, "--config", str(cfg), "--simulate", "--log-level",
                             "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return Broker("ours", proc, port)


def start_mosquitto(tmp: Path) -> Broker | None:
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if exe is None:
        return None
    port = free_port()
    cfg = tmp / "mosquitto.conf"
    cfg.write_text(f"listener {port} {HOST}\nallow_anonymous true\nmax_connections -1\n"
                   "persistence false\nlog_type none\n")
    proc = subprocess.Popen([*PIN, exe, "-c", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port)
    return Broker("mosquitto", proc, port)


# --- raw clients ---------------------------------------------------------------------------------
def connect(port: int, cid: str, version: int = PROTOCOL_311) -> socket.socket:
    s = socket.create_connection((HOST, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(encode(Connect(cid, version, keep_alive=600), version))
    data = b""
    while len(data) < 4:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("closed during CONNECT")
        data += chunk
    return s


def subscribe(s: socket.socket, topic: str, qos: int, version: int = PROTOCOL_311) -> None:
    s.sendall(encode(Subscribe(1, [Subscription(topic, qos)]), version))
    reader = FrameReader()
    while True:
        reader.feed(s.recv(4096))
        frame = reader.next_frame()
        if frame is not None and frame[0] >> 4 == 9:
            return


def count_messages(s: socket.socket, expected: int, ack: bool, timeout: float) -> tuple[int, float]:
    """Read PUBLISH packets until ``expected`` arrived (or timeout); returns (count, t_last)."""
    reader = FrameReader()
    count = 0
    last = time.monotonic()
    s.settimeout(timeout)
    while count < expected:
        try:
            data = s.recv(1 << 20)
        except TimeoutError:
            break
        if not data:
            break
        reader.feed(data)
        acks = []
        while (frame := reader.next_frame()) is not None:
            first, body = frame
            if first >> 4 == 3:
                count += 1
                if ack and (first >> 1) & 3:
                    n = (body[0] << 8) | body[1]
                    acks.append(b"\x40\x02" + body[2 + n : 4 + n])
        if acks:
            s.sendall(b"".join(acks))
        last = time.monotonic()
    return count, last


def _subscriber_proc(port: int, topic: str, qos: int, expected: int, conn: Any, n_subs: int
                     ) -> None:
    socks = [connect(port, f"sub{i}-{os.getpid()}") for i in range(n_subs)]
    for s in socks:
        subscribe(s, topic, qos)
    conn.send("ready")
    if n_subs == 1:
        count, last = count_messages(socks[0], expected, qos > 0, timeout=10)
        conn.send((count, last))
        return
    readers = {s.fileno(): (s, FrameReader()) for s in socks}
    total = expected * n_subs
    count = 0
    last = time.monotonic()
    while count < total:
        ready, _, _ = select.select(list(readers), [], [], 10)
        if not ready:
            break
        for fd in ready:
            s, reader = readers[fd]
            data = s.recv(1 << 20)
            if not data:
                continue
            reader.feed(data)
            while (frame := reader.next_frame()) is not None:
                if frame[0] >> 4 == 3:
                    count += 1
        last = time.monotonic()
    conn.send((count, last))


def throughput(port: int, qos: int, n: int, n_subs: int = 1) -> dict[str, float]:
    topic = f"bench/{qos}/{n_subs}"
    parent, child = mp.Pipe()
    proc = mp.Process(target=_subscriber_proc, args=(port, topic, qos, n, child, n_subs))
    proc.start()
    assert parent.recv() == "ready"
    pub = connect(port, f"pub-{os.getpid()}")
    payload = b"x" * 64
    start = time.monotonic()
    if qos == 0:
        packet = encode(Publish(topic, payload, 0), PROTOCOL_311)
        batch = packet * 1000
        for _ in range(n // 1000):
            pub.sendall(batch)
    else:
        window = 20
        reader = FrameReader()
        sent = acked = 0
        while acked < n:
            burst = []
            while sent < n and sent - acked < window:
                sent += 1
                burst.append(encode(Publish(topic, payload, 1, packet_id=sent % 65535 + 1),
                                    PROTOCOL_311))
            if burst:
                pub.sendall(b"".join(burst))
            reader.feed(pub.recv(65536))
            while (frame := reader.next_frame()) is not None:
                if frame[0] >> 4 == 4:
                    acked += 1
    count, last = parent.recv()
    proc.join()
    pub.close()
    elapsed = max(last - start, 1e-9)
    return {"delivered": count, "offered": n * n_subs, "rate": count / elapsed,
            "seconds": elapsed}


def _responder_proc(port: int, conn: Any) -> None:
    s = connect(port, f"responder-{os.getpid()}", PROTOCOL_50)
    subscribe(s, "svc/req", 0, PROTOCOL_50)
    conn.send("ready")
    reader = FrameReader()
    while True:
        data = s.recv(65536)
        if not data:
            return
        reader.feed(data)
        out = []
        while (frame := reader.next_frame()) is not None:
            if frame[0] >> 4 != 3:
                continue
            req = decode_frame(frame[0], frame[1], PROTOCOL_50, from_client=False)
            assert isinstance(req, Publish)
            out.append(encode(Publish(req.properties[Prop.RESPONSE_TOPIC], req.payload, 0,
                                      properties={Prop.CORRELATION_DATA:
                                                  req.properties[Prop.CORRELATION_DATA]}),
                              PROTOCOL_50))
        if out:
            s.sendall(b"".join(out))


def request_response(port: int, n: int) -> dict[str, float]:
    parent, child = mp.Pipe()
    proc = mp.Process(target=_responder_proc, args=(port, child), daemon=True)
    proc.start()
    assert parent.recv() == "ready"
    s = connect(port, f"requester-{os.getpid()}", PROTOCOL_50)
    subscribe(s, "svc/resp/me", 0, PROTOCOL_50)
    try:
        return {**round_trips(s, "svc/req", b"ping", "svc/resp/me", n), "n": n}
    finally:
        s.close()
        proc.terminate()


def round_trips(s: socket.socket, topic: str, payload: bytes, reply: str, n: int
                ) -> dict[str, float]:
    """``n`` sequential MQTT 5 requests on ``topic`` answered on ``reply`` (Response Topic
    + Correlation Data), timed from send to the reply's arrival: p50 / p99 in µs."""
    reader = FrameReader()
    samples = []
    wanted = reply.encode()
    for i in range(n):
        req = encode(Publish(topic, payload, 0, properties={
            Prop.RESPONSE_TOPIC: reply, Prop.CORRELATION_DATA: i.to_bytes(4, "big")}),
            PROTOCOL_50)
        t0 = time.perf_counter()
        s.sendall(req)
        got = False
        while not got:
            reader.feed(s.recv(65536))
            while (frame := reader.next_frame()) is not None:
                if frame[0] >> 4 == 3 and wanted in frame[1][:len(wanted) + 8]:
                    got = True
        samples.append((time.perf_counter() - t0) * 1e6)
    samples.sort()
    return {"p50_us": statistics.median(samples),
            "p99_us": samples[int(len(samples) * 0.99) - 1]}


def _blaster_proc(port: int, index: int, stop: Any) -> None:
    """A publisher that sends QoS 0 as fast as the broker reads it, until told to stop."""
    s = connect(port, f"blaster{index}-{os.getpid()}")
    batch = b"".join(encode(Publish(f"load/{index}", b"x" * 64, 0), PROTOCOL_311)
                     for _ in range(200))
    while not stop.is_set():
        s.sendall(batch)
    s.close()


def _drain_proc(port: int, conn: Any) -> None:
    s = connect(port, f"drain-{os.getpid()}")
    subscribe(s, "load/#", 0)
    conn.send("ready")
    s.settimeout(30)
    with contextlib.suppress(OSError):
        while s.recv(1 << 20):
            pass


def _round_trip(s: socket.socket, packet: bytes, kind: int) -> float:
    t0 = time.perf_counter()
    s.sendall(packet)
    reader = FrameReader()
    while True:
        reader.feed(s.recv(65536))
        while (frame := reader.next_frame()) is not None:
            if frame[0] >> 4 == kind:
                return (time.perf_counter() - t0) * 1000


RPC_TOPIC = "gatekeeper/bench/device/led/call"
RPC_BODY = b'{"method": "toggle"}'


def rpc_client(port: int) -> tuple[socket.socket, str]:
    """A raw MQTT 5 socket subscribed to its gatekeeper reply topic; returns it and the
    Response Topic to use."""
    cid = f"rpc-{os.getpid()}"
    s = connect(port, cid, PROTOCOL_50)
    reply = f"gatekeeper/bench/reply/{cid}"
    subscribe(s, f"{reply}/#", 0, PROTOCOL_50)
    return s, f"{reply}/r"


def rpc_idle(port: int, n: int) -> dict[str, float]:
    """Gatekeeper RPC round trips (ours only), nothing else going on."""
    s, reply = rpc_client(port)
    try:
        round_trips(s, RPC_TOPIC, RPC_BODY, reply, 100)  # warm up
        return round_trips(s, RPC_TOPIC, RPC_BODY, reply, n)
    finally:
        s.close()


def starvation(port: int, seconds: float = 3.0, publishers: int = 8, rpc: bool = False
               ) -> dict[str, float]:
    """Control packets while ``publishers`` saturate the broker (and one subscriber drains
    them): PINGREQ->PINGRESP and SUBSCRIBE->SUBACK on a connected probe, and a new
    CONNECT->CONNACK, every 100 ms; with ``rpc`` also a gatekeeper RPC; milliseconds."""
    parent, child = mp.Pipe()
    drain = mp.Process(target=_drain_proc, args=(port, child), daemon=True)
    drain.start()
    assert parent.recv() == "ready"
    stop = mp.Event()
    procs = [mp.Process(target=_blaster_proc, args=(port, i, stop), daemon=True)
             for i in range(publishers)]
    for proc in procs:
        proc.start()
    time.sleep(0.5)  # let them saturate it
    samples: dict[str, list[float]] = {"ping": [], "suback": [], "connack": []}
    if rpc:
        samples["rpc"] = []
    probe: socket.socket | None = None
    caller: socket.socket | None = None
    try:
        probe = connect(port, f"probe-{os.getpid()}")
        if rpc:
            caller, reply = rpc_client(port)
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            i += 1
            samples["ping"].append(_round_trip(probe, b"\xc0\x00", 13))
            samples["suback"].append(_round_trip(
                probe, encode(Subscribe(i % 60000 + 1, [Subscription(f"probe/{i}", 0)]),
                              PROTOCOL_311), 9))
            t0 = time.perf_counter()
            fresh = connect(port, f"fresh{i}-{os.getpid()}")
            samples["connack"].append((time.perf_counter() - t0) * 1000)
            fresh.close()
            if caller is not None:
                samples["rpc"].append(
                    round_trips(caller, RPC_TOPIC, RPC_BODY, reply, 1)["p50_us"] / 1000)
            time.sleep(0.1)
    except (OSError, RuntimeError) as exc:  # e.g. the broker's connect timeout ran out
        print(f"starvation probe failed: {exc!r} (counted as infinite)", file=sys.stderr)
        for values in samples.values():
            values.append(float("inf"))
    stop.set()
    for proc in procs:
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
    drain.terminate()
    for sock in (probe, caller):
        if sock is not None:
            sock.close()
    out: dict[str, float] = {}
    for name, values in samples.items():
        values.sort()
        out[f"{name}_p50_ms"] = statistics.median(values)
        out[f"{name}_max_ms"] = values[-1]
    return out


# --- paho clients (both ends in one process) --------------------------------------------------
def _paho(port: int, cid: str, v5: bool = False, thread: bool = True) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid,
                    protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
    c.max_inflight_messages_set(20)
    c.max_queued_messages_set(0)
    subscribed: list[bool] = []
    c.on_subscribe = lambda *a: subscribed.append(True)
    c.connect(HOST, port, keepalive=600)
    c.subscribed = subscribed
    if thread:
        c.loop_start()
    return c


def _paho_wait(c: Any, thread: bool) -> None:
    end = time.monotonic() + 10
    while not c.subscribed and time.monotonic() < end:
        if thread:
            time.sleep(0.001)
        else:
            c.loop(0.1)


def _paho_proc(port: int, scenario: str, n: int, conn: Any) -> None:
    import threading

    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    tag = os.getpid()
    if scenario == "rr":
        responder = _paho(port, f"paho-responder-{tag}", v5=True)

        def answer(c: Any, u: Any, m: Any) -> None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = m.properties.CorrelationData
            c.publish(m.properties.ResponseTopic, m.payload, 0, properties=props)

        responder.on_message = answer
        responder.subscribe("svc/req", 0)
        _paho_wait(responder, True)
        # The requester drives its network loop in the calling thread (``loop()``), as a
        # script that makes calls would: no hand-off to paho's thread in the measurement.
        requester = _paho(port, f"paho-requester-{tag}", v5=True, thread=False)
        got: list[bool] = []
        requester.on_message = lambda c, u, m: got.append(True)
        requester.subscribe("svc/resp/me", 0)
        _paho_wait(requester, False)
        samples = []
        for i in range(n + 100):
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "svc/resp/me"
            props.CorrelationData = i.to_bytes(4, "big")
            got.clear()
            t0 = time.perf_counter()
            requester.publish("svc/req", b"ping", 0, properties=props)
            while not got:
                requester.loop(1.0)
            if i >= 100:  # the first 100 warm up
                samples.append((time.perf_counter() - t0) * 1e6)
        samples.sort()
        conn.send({"p50_us": statistics.median(samples),
                   "p99_us": samples[int(len(samples) * 0.99) - 1], "n": n})
        requester.disconnect()
        responder.disconnect()
        responder.loop_stop()
        return
    qos = 0 if scenario == "qos0" else 1
    topic = f"paho/{qos}"
    done = threading.Event()
    state = {"count": 0, "last": 0.0}

    def count(c: Any, u: Any, m: Any) -> None:
        state["count"] += 1
        state["last"] = time.monotonic()
        if state["count"] >= n:
            done.set()

    sub = _paho(port, f"paho-sub-{tag}")
    sub.on_message = count
    sub.subscribe(topic, qos)
    _paho_wait(sub, True)
    # QoS 0: the publisher writes from the calling thread (no network thread: ``publish``
    # sends at once), QoS 1: paho's network thread handles its window of 20 and the PUBACKs.
    pub = _paho(port, f"paho-pub-{tag}", thread=bool(qos))
    if not qos:
        while not pub.is_connected():
            pub.loop(0.1)
    payload = b"x" * 64
    start = time.monotonic()
    for _ in range(n):
        pub.publish(topic, payload, qos)
    while not qos and pub.want_write():  # what a full socket buffer left queued
        pub.loop(0.01)
    seen = -1
    while not done.wait(2.0) and seen != state["count"]:  # until all came or none for 2 s
        seen = state["count"]
    elapsed = max(state["last"] - start, 1e-9)
    conn.send({"delivered": state["count"], "offered": n, "rate": state["count"] / elapsed,
               "seconds": elapsed})
    for c in (pub, sub):
        c.disconnect()
        if c is sub or qos:
            c.loop_stop()


def paho_scenario(port: int, scenario: str, n: int) -> dict[str, float]:
    parent, child = mp.Pipe()
    proc = mp.Process(target=_paho_proc, args=(port, scenario, n, child), daemon=True)
    proc.start()
    if not parent.poll(120):
        proc.terminate()
        raise RuntimeError(f"paho {scenario}: no result")
    result: dict[str, float] = parent.recv()
    proc.join(5)
    if proc.is_alive():
        proc.terminate()
    return result


def idle_clients(broker: Broker, n: int) -> dict[str, float]:
    """``n`` idle clients connected: the time it took and the broker's RSS added; then they
    leave and ``n`` others connect: the RSS added again (the first batch also pays for heap
    growth that stays, in steps of the allocator's arenas)."""
    first = _idle_batch(broker, n, "idle")
    again = _idle_batch(broker, n, "again")
    return {**first, "rss_again_mib": again["rss_added_mib"]}


def _idle_batch(broker: Broker, n: int, tag: str) -> dict[str, float]:
    before = broker.rss_kib()
    socks = []
    start = time.monotonic()
    for i in range(n):
        s = socket.create_connection((HOST, broker.port))
        s.sendall(encode(Connect(f"{tag}{i}", PROTOCOL_311, keep_alive=600), PROTOCOL_311))
        socks.append(s)
    for s in socks:
        s.settimeout(10)
        if s.recv(4) != b"\x20\x02\x00\x00":
            raise RuntimeError("idle client refused")
    elapsed = time.monotonic() - start
    time.sleep(0.5)
    added = (broker.rss_kib() - before) / 1024
    for s in socks:
        s.close()
    time.sleep(0.5)  # the broker notices they left
    return {"connect_s": elapsed, "rss_added_mib": added}


def run_all(broker: Broker, quick: bool, clients: str) -> dict[str, dict[str, float]]:
    scale = 0.2 if quick else 1.0
    ours = broker.name == "ours"
    results = {}
    if clients in ("raw", "both"):
        results["qos0"] = throughput(broker.port, 0, int(200_000 * scale) // 1000 * 1000)
        results["qos1"] = throughput(broker.port, 1, int(40_000 * scale))
        results["fanout"] = throughput(broker.port, 0,
                                       int(4000 * scale) // 1000 * 1000 or 1000, 50)
        results["rr"] = request_response(broker.port, int(5000 * scale))
    if clients in ("paho", "both"):
        results["paho qos0"] = paho_scenario(broker.port, "qos0", int(100_000 * scale))
        results["paho qos1"] = paho_scenario(broker.port, "qos1", int(20_000 * scale))
        results["paho rr"] = paho_scenario(broker.port, "rr", int(5000 * scale))
    results["rpc"] = rpc_idle(broker.port, int(2000 * scale)) if ours else {}
    results["idle"] = idle_clients(broker, 1000)
    # last: the publishers leave megabytes in their sockets that the broker still reads
    results["starve"] = starvation(broker.port, 3.0, rpc=ours)
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer messages")
    parser.add_argument("--only", choices=["ours", "mosquitto"])
    parser.add_argument("--rounds", type=int, default=1,
                        help="interleaved rounds (ours, mosquitto, ours, ...): medians")
    parser.add_argument("--clients", choices=["raw", "paho", "both"], default="both",
                        help="client kind: raw sockets, paho-mqtt, or both (default)")
    parser.add_argument("--taskset", metavar="CPU",
                        help="pin both brokers to this CPU list (taskset -c)")
    args = parser.parse_args()
    if args.taskset:
        PIN[:] = ["taskset", "-c", args.taskset]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 8192), hard), hard))
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        rounds: dict[str, list[dict[str, dict[str, float]]]] = {}
        for _round in range(args.rounds):
            for name in ("ours", "mosquitto"):
                if args.only and args.only != name:
                    continue
                broker = start_ours(tmp) if name == "ours" else start_mosquitto(tmp)
                if broker is None:
                    print("mosquitto not installed (apt-get install mosquitto): "
                          "comparison skipped")
                    continue
                try:
                    rounds.setdefault(name, []).append(run_all(broker, args.quick,
                                                               args.clients))
                finally:
                    broker.stop()
        runs = {name: {scenario: {metric: statistics.median(r[scenario][metric] for r in results)
                                  for metric in results[0][scenario]}
                       for scenario in results[0]}
                for name, results in rounds.items()}
        if args.rounds > 1:
            print(f"medians of {args.rounds} interleaved rounds")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)"
          + (f", brokers pinned to CPU {args.taskset}" if args.taskset else ""))
    print(f"\n{'scenario':<10} {'metric':<14} " + " ".join(f"{n:>12}" for n in runs) +
          ("   ratio" if len(runs) == 2 else ""))
    metrics = [("qos0", "rate"), ("qos0", "delivered"), ("qos1", "rate"), ("fanout", "rate"),
               ("fanout", "delivered"), ("rr", "p50_us"), ("rr", "p99_us"),
               ("paho qos0", "rate"), ("paho qos0", "delivered"), ("paho qos1", "rate"),
               ("paho rr", "p50_us"), ("paho rr", "p99_us"),
               ("rpc", "p50_us"), ("rpc", "p99_us"),
               ("starve", "ping_p50_ms"), ("starve", "ping_max_ms"),
               ("starve", "suback_p50_ms"), ("starve", "suback_max_ms"),
               ("starve", "connack_p50_ms"), ("starve", "connack_max_ms"),
               ("starve", "rpc_p50_ms"), ("starve", "rpc_max_ms"),
               ("idle", "connect_s"), ("idle", "rss_added_mib"), ("idle", "rss_again_mib")]
    for scenario, metric in metrics:
        values = [runs[n].get(scenario, {}).get(metric, float("nan")) for n in runs]
        if all(v != v for v in values):
            continue  # not run (client kind) or nobody has it
        line = f"{scenario:<10} {metric:<14} " + " ".join(f"{v:>12.1f}" for v in values)
        if len(values) == 2 and values[1] and values[0] == values[0] and values[1] == values[1]:
            line += f"   {values[0] / values[1]:.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
