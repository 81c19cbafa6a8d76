"""Where a gatekeeper call's time goes beyond the broker hop: the hand-off to the hardware
worker thread, measured by taking it away.

    .venv/bin/python benchmarks/handoff.py [--calls 5000] [--rounds 3]

Each run starts the daemon inside a fresh measuring process (uvloop, simulated pins, one LED)
and a separate client process that makes sequential calls from a raw MQTT 5 socket
(``lean_round_trips`` of ``benchmarks/rpc.py``) or, on the same daemon, a plain request /
response echo between two raw clients (``request_response``: the broker hop alone). It
prints the client's p50 and the CPU the daemon's event-loop thread and its hardware worker
used per call (from ``/proc/self/task``). Three daemons:

- ``normal``: the daemon as shipped;
- ``pinned``: the same, with every thread of the daemon on one CPU (what ``taskset -c N``
  or systemd's ``CPUAffinity=N`` does); the client may run on any CPU;
- ``no-worker``: an experiment, not a mode of the product: the command runs on the event
  loop instead of being queued for the worker thread (the daemon's ``submit`` replaced),
  to show what the thread hand-off costs. The product always uses the worker.

Last, the gatekeeper's own work per call with neither sockets nor the worker thread: a
connection of the daemon's broker core is fed the call's PUBLISH bytes and the event loop runs
until the reply is written (the same daemon as ``no-worker``; compare ``benchmarks/hop.py``
for one forwarded PUBLISH).

Rounds are interleaved; medians are printed. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

MODES = ("normal", "pinned", "no-worker")
KINDS = ("lean", "echo")

CLIENT = """
import json, sys
sys.path.insert(0, {bench!r})
import rpc
port, n, kind = {port}, {n}, {kind!r}
r = rpc.lean_round_trips(port, n) if kind == "lean" else rpc.request_response(port, n)
print(json.dumps(r))
"""


def _threads() -> dict[int, tuple[int, int]]:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        out[int(tid)] = (int(parts[11]), int(parts[12]))
    return out


async def _measure(mode: str, kind: str, n: int) -> dict[str, Any]:
    from broker import free_port

    from pi_mqtt_gpio.server.config_loader import parse_config
    from pi_mqtt_gpio.server.daemon import Daemon

    port = free_port()
    config = parse_config(f"""
node_id: bench
broker: {{listeners: [{{type: tcp, host: 127.0.0.1, port: {port}}}]}}
auth: {{allow_anonymous: true, anonymous_role: admin}}
devices: {{led: {{type: LED, pin: 17}}}}
""")
    daemon = Daemon(config, simulate=True)
    await daemon.start()
    loop = asyncio.get_running_loop()
    if mode == "no-worker":
        def submit(fn: Any, *args: Any, force: bool = False) -> asyncio.Future[Any]:
            future: asyncio.Future[Any] = loop.create_future()
            future.set_result(fn(*args))
            return future

        daemon.hw.submit = submit  # type: ignore[method-assign]
    names = {t.native_id: t.name for t in threading.enumerate()}
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT.format(bench=str(ROOT / "benchmarks"), port=port, n=n,
                                            kind=kind),
        stdout=subprocess.PIPE,
        preexec_fn=lambda: os.sched_setaffinity(0, set(json.loads(
            os.environ["HANDOFF_CLIENT_CPUS"]))))
    before = _threads()
    out, _ = await client.communicate()
    after = _threads()
    await daemon.stop()
    ticks = os.sysconf("SC_CLK_TCK")
    per: dict[str, float] = {}
    for tid, (u, s) in after.items():
        u0, s0 = before.get(tid, (0, 0))
        name = "loop" if tid == os.getpid() else names.get(tid, "other")
        if name == "hardware-worker":
            name = "worker"
        elif name != "loop":
            name = "other"
        per[name] = per.get(name, 0.0) + ((u - u0) + (s - s0)) / ticks * 1e6 / n
    result = json.loads(out)
    return {"p50_us": result["p50_us"], "p99_us": result["p99_us"],
            "loop_cpu_us": per.get("loop", 0.0), "worker_cpu_us": per.get("worker", 0.0)}


async def _in_process(n: int) -> float:
    from pi_mqtt_gpio.mqtt import packets as pk
    from pi_mqtt_gpio.mqtt.codec import encode
    from pi_mqtt_gpio.mqtt.hooks import AuthResult, Decision
    from pi_mqtt_gpio.server.config_loader import parse_config
    from pi_mqtt_gpio.server.daemon import Daemon

    daemon = Daemon(parse_config("""
node_id: bench
broker: {listeners: [{type: tcp, host: 127.0.0.1, port: 0}]}
auth: {allow_anonymous: true, anonymous_role: admin}
devices: {led: {type: LED, pin: 17}}
"""), simulate=True)
    await daemon.start()
    loop = asyncio.get_running_loop()

    def submit(fn: Any, *args: Any, force: bool = False) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = loop.create_future()
        future.set_result(fn(*args))
        return future

    daemon.hw.submit = submit  # type: ignore[method-assign]
    core, server = daemon.core, daemon.server
    conn = core.open_connection("bench", "127.0.0.1:1", server.now())
    core.data_received(conn, encode(pk.Connect("me", pk.PROTOCOL_50), pk.PROTOCOL_50),
                       server.now())
    for c, _req in core.take_auth_requests():
        core.auth_complete(c, AuthResult(Decision.ALLOW, None, "admin"), server.now())
    core.take_dirty()
    conn.data_to_send()
    core.data_received(conn, encode(pk.Subscribe(1, [pk.Subscription(
        "gatekeeper/bench/reply/me/#", 0)]), pk.PROTOCOL_50), server.now())
    core.take_dirty()
    conn.data_to_send()

    class Link:  # stands in for the socket: counts what the server writes
        writes = 0

        def write(self, data: list[bytes]) -> None:
            Link.writes += 1

        def buffered(self) -> int:
            return 0

    server.links[conn.id] = Link()  # type: ignore[assignment]
    frames = [encode(pk.Publish(
        "gatekeeper/bench/device/led/call", b'{"method": "toggle"}', 0, False, False, None,
        {pk.Prop.RESPONSE_TOPIC: "gatekeeper/bench/reply/me/r",
         pk.Prop.CORRELATION_DATA: i.to_bytes(4, "big")}), pk.PROTOCOL_50) for i in range(1000)]

    async def calls(count: int) -> float:
        t0 = time.perf_counter()
        for i in range(count):
            core.data_received(conn, frames[i % 1000], server.now())
            server.pump()
            await asyncio.sleep(0)  # the worker's answer, then the reply's write
            await asyncio.sleep(0)
        return (time.perf_counter() - t0) / count * 1e6

    await calls(1000)
    before = Link.writes
    us = min([await calls(n) for _ in range(3)])
    assert Link.writes - before == 3 * n, "not every call was answered"
    del server.links[conn.id]
    await daemon.stop()
    return us


def child(mode: str, kind: str, n: int) -> None:
    import uvloop

    if mode == "in-process":
        print(json.dumps({"us": uvloop.run(_in_process(n))}))
        return
    if mode == "pinned":
        # This thread and every thread the daemon starts from it (the worker) on one CPU.
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print(json.dumps(uvloop.run(_measure(mode, kind, n))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", nargs=2, metavar=("MODE", "KIND"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.calls)
        return
    env = dict(os.environ, HANDOFF_CLIENT_CPUS=json.dumps(sorted(os.sched_getaffinity(0))))
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _ in range(args.rounds):
        for mode in MODES:
            for kind in KINDS:
                out = subprocess.run([sys.executable, __file__, "--calls", str(args.calls),
                                      "--child", mode, kind], env=env, check=True,
                                     capture_output=True, text=True).stdout
                runs.setdefault((mode, kind), []).append(json.loads(out.strip().splitlines()[-1]))
    print(f"{args.calls} calls per run, {args.rounds} interleaved rounds, medians; "
          f"{os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d')}")
    print(f"{'daemon':<10} {'client':<6} {'p50 µs':>8} {'p99 µs':>8} {'loop CPU µs':>12} "
          f"{'worker CPU µs':>14}")
    med: dict[tuple[str, str], float] = {}
    for (mode, kind), rs in runs.items():
        p50 = statistics.median(x["p50_us"] for x in rs)
        med[(mode, kind)] = p50
        print(f"{mode:<10} {kind:<6} {p50:>8.1f} "
              f"{statistics.median(x['p99_us'] for x in rs):>8.1f} "
              f"{statistics.median(x['loop_cpu_us'] for x in rs):>12.1f} "
              f"{statistics.median(x['worker_cpu_us'] for x in rs):>14.1f}")
    for mode in MODES:
        pairs = [a["p50_us"] / b["p50_us"] for a, b in zip(runs[(mode, "lean")],
                                                            runs[(mode, "echo")], strict=True)]
        print(f"ratio call/echo {mode:<10} p50: of the medians "
              f"{med[(mode, 'lean')] / med[(mode, 'echo')]:.2f}x, per round "
              + " ".join(f"{r:.2f}x" for r in pairs))
    out = subprocess.run([sys.executable, __file__, "--calls", str(max(args.calls, 5000)),
                          "--child", "in-process", "-"], check=True, capture_output=True,
                         text=True).stdout
    us = json.loads(out.strip().splitlines()[-1])["us"]
    print(f"gatekeeper work per call, no sockets, no worker thread: {us:.1f} µs")


if __name__ == "__main__":
    main()
