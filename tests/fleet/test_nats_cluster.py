"""A fleet on a clustered engine: a 3-node NATS cluster (Debian's nats-server 2.9, JetStream,
its MQTT gateway: MQTT 3.1.1 only, QoS ≤ 1), three simulated gatekeepers listing all three
nodes in ``hosts``, callers spread over the nodes, per-user publish permissions as subjects.
``kill -9`` of a node: every gatekeeper comes back through another node, the twin is
intact, calls succeed again within 20 s and no command runs twice; a fresh subscriber on
every surviving node gets the retained ``online`` of a gatekeeper whose node died, and gets it
again after a late ``offline`` (a Will) overwrote it; a spoofed suffix moves nothing."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import Client, Gatekeeper, start_gatekeeper

pytestmark = pytest.mark.skipif(shutil.which("nats-server") is None,
                                reason="Debian's nats-server is not installed (scripts/test "
                                       "installs it)")

NODES = ("n1", "n2", "n3")
PASSWORD = "secret-nats-1"
PROBE_USER = "gk-probe"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def users() -> str:
    """NATS users with MQTT subjects as permissions ('/' becomes '.')."""
    entries = []
    for node in (*NODES, "n4"):  # n4: a node started by a test of its own
        entries.append(
            f'{{user: "gk-{node}", password: "{PASSWORD}", permissions: {{'
            f'publish: {{allow: ["gatekeeper.{node}.>", "homeassistant.>", "$MQTT.>"]}}, '
            f'subscribe: {{allow: ["gatekeeper.{node}.status", '  # its status read back
            f'"gatekeeper.{node}.device.*.call.*", '
            f'"gatekeeper.{node}.device.*.set.*", "gatekeeper.{node}.lease.call.*", '
            f'"homeassistant.status", "$MQTT.>"]}}}}}}')
    for user in ("alice", "bob"):
        entries.append(
            f'{{user: "{user}", password: "{PASSWORD}", permissions: {{'
            f'publish: {{allow: ["gatekeeper.*.device.*.call.{user}", '
            f'"gatekeeper.*.device.*.set.{user}", "gatekeeper.*.lease.call.{user}", '
            f'"$MQTT.>"]}}, '
            f'subscribe: {{allow: ["gatekeeper.*.status", "gatekeeper.*.devices", '
            f'"gatekeeper.*.device.*.state", "gatekeeper.*.reply.{user}.>", "$MQTT.>"]}}}}}}')
    # The ACL probe: it may publish commands only under its own name.
    entries.append(
        f'{{user: "{PROBE_USER}", password: "{PASSWORD}", permissions: {{'
        f'publish: {{allow: ["gatekeeper.*.device.*.call.{PROBE_USER}", '
        f'"gatekeeper.*.device.*.set.{PROBE_USER}", "gatekeeper.*.lease.call.{PROBE_USER}", '
        f'"$MQTT.>"]}}, subscribe: {{allow: ["$MQTT.>"]}}}}}}')
    entries.append(f'{{user: "watcher", password: "{PASSWORD}"}}')
    return ",\n    ".join(entries)


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        ports = free_ports(12)
        self.client_ports, self.route_ports, self.mqtt_ports = ports[:3], ports[3:6], ports[6:9]
        self.http_ports = ports[9:]
        routes = ", ".join(f"nats://127.0.0.1:{p}" for p in self.route_ports)
        self.procs: list[subprocess.Popen[bytes] | None] = [None, None, None]
        for i, name in enumerate("abc"):
            (tmp / f"{name}.conf").write_text(f"""
server_name: {name}
listen: 127.0.0.1:{self.client_ports[i]}
http: 127.0.0.1:{self.http_ports[i]}
jetstream {{ store_dir: "{tmp / name}" }}
cluster {{ name: fleet, listen: 127.0.0.1:{self.route_ports[i]}, routes: [{routes}] }}
mqtt {{ listen: 127.0.0.1:{self.mqtt_ports[i]}, stream_replicas: 3 }}
authorization {{
  users: [
    {users()}
  ]
}}
""")
        for i in range(3):
            self.start(i)
        self.wait_ready()

    def start(self, i: int) -> None:
        name = "abc"[i]
        with open(self.tmp / f"{name}.log", "ab") as log:
            self.procs[i] = subprocess.Popen(
                ["nats-server", "-c", str(self.tmp / f"{name}.conf")],
                stdout=subprocess.DEVNULL, stderr=log)

    def stream_leader(self) -> int:
        """The node that leads the MQTT gateway's message stream (from NATS monitoring)."""
        return self.leader("$MQTT_msgs") or 0

    def leader(self, name: str) -> int | None:
        """The node that leads the stream ``name``, None while it has none."""
        import urllib.request

        for i in range(3):
            if self.procs[i] is None:
                continue
            try:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{self.http_ports[i]}/jsz?accounts=true&streams=true",
                        timeout=2) as resp:
                    doc = json.loads(resp.read())
            except OSError:
                continue
            for account in doc.get("account_details", []):
                for stream in account.get("stream_detail", []):
                    if stream.get("name") == name:
                        leader = stream.get("cluster", {}).get("leader")
                        if leader in ("a", "b", "c"):
                            return "abc".index(leader)
        return None

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            self.procs[i] = None

    def wait_ready(self, timeout: float = 40) -> None:
        """Until a retained message written on one node is read on another (JetStream up)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                w = client(self.mqtt_ports[0], "watcher")
                w.publish("probe/ready", "1", 1, retain=True)
                w.close()
                r = client(self.mqtt_ports[2], "watcher")
                r.subscribe("probe/ready", 1)
                r.get(2)
                r.close()
                return
            except Exception:
                time.sleep(0.5)
        raise RuntimeError("the NATS cluster did not become ready")

    def stop(self) -> None:
        for i in range(3):
            proc = self.procs[i]
            if proc is not None:
                proc.terminate()
                proc.wait(10)


def external(hosts: list[str], node: str, tmp: Path, probe: str = PROBE_USER
             ) -> dict[str, Any]:
    """A gatekeeper's broker.external for the cluster, with the ACL probe as ``probe``."""
    (tmp / f"{node}.pw").write_text(PASSWORD)
    return {"hosts": hosts, "username": f"gk-{node}", "password_file": str(tmp / f"{node}.pw"),
            "acl_probe": {"username": probe, "password_file": str(tmp / f"{node}.pw")}}


def client(port: int, user: str) -> Client:
    c = Client(port, mqtt.MQTTv311, client_id=f"{user}-{time.monotonic_ns()}")
    c.c.username_pw_set(user, PASSWORD)
    c.connect()
    return c


def call(c: Client, user: str, node: str, method: str, topic: str | None = None,
         timeout: float = 3.0) -> dict[str, Any] | None:
    reply_to = f"gatekeeper/{node}/reply/{user}/{c.client_id}"
    granted = c.subscribe(reply_to, 0)  # as the client stub does
    if any(getattr(r, "is_failure", False) for r in granted):
        return None  # the cluster refuses new subscriptions for a moment after a failover
    c.publish(topic or f"gatekeeper/{node}/device/lamp/call/{user}",
              json.dumps({"method": method, "reply_to": reply_to,
                          "correlation_id": f"{time.monotonic_ns()}"}), 1)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            m = c.get(end - time.monotonic())
        except Exception:
            return None
        if m.topic == reply_to:
            return dict(json.loads(m.payload))
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster,
                                                                      dict[str, Gatekeeper]]]:
    tmp = tmp_path_factory.mktemp("nats")
    c = Cluster(tmp)
    nodes: dict[str, Gatekeeper] = {}
    try:
        hosts = [f"127.0.0.1:{p}" for p in c.mqtt_ports]
        for i, node in enumerate(NODES):
            (tmp / node).mkdir()
            config = {
                "node_id": node,
                "broker": {"mode": "external",
                           "external": external(hosts[i:] + hosts[:i], node, tmp)},
                "auth": {"users": {"alice": {"role": "operator"},
                                   "bob": {"role": "operator"}}},
                "safety": {"min_relay_interval_s": 0, "min_command_interval_s": 0,
                           "flap_lockout_s": 0},
                "homeassistant": {"discovery": False},
                "devices": {"lamp": {"type": "LED", "pin": 17}},
            }
            nodes[node] = start_gatekeeper(tmp / node, config)
        yield c, nodes
    finally:
        for name, gk in nodes.items():
            if gk.alive():
                gk.stop()
            print(f"--- {name}:\n" + "\n".join(gk.log[-15:]))
        c.stop()


def wait_call(port: int, user: str, node: str, method: str, timeout: float
              ) -> tuple[dict[str, Any], float]:
    start = time.monotonic()
    end = start + timeout
    while time.monotonic() < end:
        try:
            c = client(port, user)
        except Exception:
            time.sleep(0.5)
            continue
        try:
            reply = call(c, user, node, method, timeout=2)
        finally:
            c.close()
        if reply is not None and "try again in a moment" not in str(reply.get("error")):
            return reply, time.monotonic() - start  # (not while the ACL probe runs)
    raise AssertionError(f"no reply from {node} within {timeout} s")


def test_calls_through_every_node_of_the_cluster(cluster: Any) -> None:
    c, _nodes = cluster
    for i, node in enumerate(NODES):  # the caller on another cluster node than the gatekeeper
        reply, _ = wait_call(c.mqtt_ports[(i + 1) % 3], "alice", node, "on", 20)
        assert reply["ok"] and reply["state"]["value"] == 1, reply


def test_the_gateway_gets_mqtt_3_1_1_and_the_acl_probe_passes(cluster: Any) -> None:
    """NATS's MQTT gateway answers an MQTT 5 CONNECT with a CONNACK refusing the version:
    each gatekeeper uses 3.1.1; its ACL probe (a user allowed to publish commands only
    under its own name) passes."""
    _c, nodes = cluster
    for gk in nodes.values():
        assert "(MQTT 3.1.1)" in gk.wait_log("connected to the broker", 10)
        gk.wait_log("the broker ACL passed its probe", 20)
    assert not any("failed its probe" in line for gk in nodes.values() for line in gk.log)


def n4_config(hosts: list[str], tmp: Path, probe: str = PROBE_USER) -> dict[str, Any]:
    """A fourth gatekeeper (n4, started by a test of its own) with one LED, for alice."""
    return {"node_id": "n4", "broker": {"mode": "external", "external": external(
        hosts, "n4", tmp, probe=probe)},
        "auth": {"users": {"alice": {"role": "operator"}}},
        "safety": {"min_relay_interval_s": 0, "min_command_interval_s": 0,
                   "flap_lockout_s": 0},
        "homeassistant": {"discovery": False},
        "devices": {"lamp": {"type": "LED", "pin": 17}}}


def test_a_probe_user_without_permissions_fails_closed(cluster: Any, tmp_path: Path) -> None:
    """The probe's user may publish anywhere (as every user of a NATS account without
    permissions): its command under another user's name arrives, so the gatekeeper refuses
    every command and says why."""
    c, _nodes = cluster
    config = n4_config([f"127.0.0.1:{p}" for p in c.mqtt_ports], tmp_path, probe="watcher")
    gk = start_gatekeeper(tmp_path, config, timeout=40)
    try:
        assert "broker ACL" in gk.wait_log("failed its probe", 20)
        reply, _ = wait_call(c.mqtt_ports[1], "alice", "n4", "on", 20)
        assert reply["error"]["code"] == "NOT_AUTHORIZED", reply
        assert "broker ACL" in reply["error"]["message"], reply
    finally:
        gk.stop()


def test_a_spoofed_suffix_moves_nothing(cluster: Any) -> None:
    c, _nodes = cluster
    alice = client(c.mqtt_ports[0], "alice")
    try:
        assert call(alice, "alice", "n1", "off") is not None
        # NATS acknowledges the denied publish and drops it: no reply, nothing moves
        reply_to = f"gatekeeper/n1/reply/alice/{alice.client_id}"
        alice.publish("gatekeeper/n1/device/lamp/call/bob", json.dumps(
            {"method": "on", "reply_to": reply_to, "correlation_id": "spoofed"}), 1)
        # the sentinel: her own call after it (her messages reach the gatekeeper in order,
        # and it runs and answers calls in order)
        reply = call(alice, "alice", "n1", "state", timeout=10)
        assert reply is not None and reply["correlation_id"] != "spoofed", reply
        assert reply["state"]["value"] == 0
    finally:
        alice.close()


def test_kill_9_of_a_cluster_node_every_gatekeeper_comes_back(cluster: Any) -> None:
    c, _nodes = cluster
    leader = c.stream_leader()
    alive = [p for i, p in enumerate(c.mqtt_ports) if i != leader]
    watcher = client(alive[1], "watcher")
    watcher.subscribe("gatekeeper/+/audit", 0)
    watcher.subscribe("probe/audit-watcher", 0)
    prober = client(alive[0], "watcher")
    # subscribed across the cluster once a probe from another node arrives (interest reaches
    # the other nodes after the SUBACK; a node passes one client's subscriptions on in order)
    while True:
        prober.publish("probe/audit-watcher", b"probe", 0)
        try:
            if watcher.get(0.2).topic == "probe/audit-watcher":
                break
        except Exception:
            pass
    prober.close()
    c.kill(leader)  # the node leading the MQTT streams: the hardest case
    killed = time.monotonic()
    times = {}
    for node in NODES:  # until each node answers again (state calls: harmless to repeat)
        reply, _ = wait_call(alive[0], "bob", node, "state", 20)
        assert reply["ok"], reply
        times[node] = time.monotonic() - killed
    print(f"after kill -9 of NATS node {'abc'[leader]} (the stream leader), calls succeed "
          "again after "
          + ", ".join(f"{n} {t:.1f} s" for n, t in times.items()))
    assert max(times.values()) < 20
    bob = client(alive[0], "bob")
    try:
        for node in NODES:  # one toggle each
            reply = call(bob, "bob", node, "toggle", timeout=5)
            assert reply is not None and reply["ok"], reply
        # the sentinels: a state call on each node after its toggle, audited after it
        for node in NODES:
            reply = call(bob, "bob", node, "state", timeout=5)
            assert reply is not None and reply["ok"], reply
    finally:
        bob.close()
    # no command ran twice: exactly one audit entry per toggle before the sentinels
    audits: list[dict[str, Any]] = []
    sentinels: set[str] = set()
    while sentinels != set(NODES):
        m = watcher.get(10)
        if m.topic.startswith("probe/"):
            continue
        doc = json.loads(m.payload)
        node = m.topic.split("/")[1]
        if node in sentinels:
            continue
        if doc.get("method") == "state" and doc.get("username") == "bob" \
                and any(a.get("method") == "toggle" and a["_node"] == node for a in audits):
            sentinels.add(node)
        audits.append({**doc, "_node": node})
    toggles = [a for a in audits if a.get("method") == "toggle"]
    assert len(toggles) == len(NODES), toggles
    watcher.close()
    c.start(leader)


def status_seen(port: int) -> bytes | None:
    """What a fresh subscriber (a user, QoS 0 as ``mosquitto_sub``) gets as n4's retained
    status on that node within a second; None: nothing (or the node refused it)."""
    try:
        c = client(port, "alice")
    except Exception:
        return None
    try:
        granted = c.subscribe("gatekeeper/n4/status", 0)
        if any(getattr(r, "is_failure", False) for r in granted):
            return None
        try:
            m = c.get(1.0)
        except Exception:
            return None
        return bytes(m.payload) if m.retain else None
    finally:
        c.close()


def wait_status(ports: dict[str, int], want: bytes, timeout: float) -> dict[str, float]:
    """Poll fresh subscribers on each node until every one got ``want``; seconds each took."""
    start = time.monotonic()
    took: dict[str, float] = {}
    seen: dict[str, bytes | None] = {}
    while len(took) < len(ports):
        if time.monotonic() - start > timeout:
            raise AssertionError(f"within {timeout} s not every node showed {want!r}: {seen}")
        for name, port in ports.items():
            if name not in took:
                seen[name] = status_seen(port)
                if seen[name] == want:
                    took[name] = time.monotonic() - start
    return took


def test_kill_9_of_its_node_every_surviving_node_shows_it_online(cluster: Any,
                                                                 tmp_path: Path) -> None:
    """A gatekeeper on the node leading the gateway's message stream; ``kill -9`` of that
    node: it serves again through another node, and a fresh subscriber on each surviving node
    gets its retained ``online`` within 30 s. A retained ``offline`` published over it later
    (as a Will the cluster fires late, for a connection it dropped) is replaced by ``online``
    within 30 s. A clean stop leaves ``offline`` on every node."""
    c, _nodes = cluster
    for i in range(3):  # the previous test restarted a node: the whole cluster again
        if c.procs[i] is None:
            c.start(i)
    c.wait_ready()
    end = time.monotonic() + 20
    while c.leader("$MQTT_msgs") is None or c.leader("$MQTT_rmsgs") is None:
        assert time.monotonic() < end, "the MQTT streams have no leader"
        time.sleep(0.2)
    leader = c.stream_leader()
    ports = {"abc"[i]: c.mqtt_ports[i] for i in range(3)}
    hosts = [f"127.0.0.1:{p}" for p in c.mqtt_ports]
    config = n4_config(hosts[leader:] + hosts[:leader], tmp_path)  # first: the leader
    gk = start_gatekeeper(tmp_path, config, timeout=40)
    try:
        assert f":{c.mqtt_ports[leader]} " in gk.wait_log("connected to the broker", 10)
        wait_status(ports, b"online", 20)
        c.kill(leader)
        killed = time.monotonic()
        alive = {name: port for name, port in ports.items() if name != "abc"[leader]}
        for port in alive.values():
            reply, _ = wait_call(port, "alice", "n4", "state", 30)
            assert reply["ok"], reply
        calls = time.monotonic() - killed
        took = wait_status(alive, b"online", 30 - calls)
        print(f"after kill -9 of NATS node {'abc'[leader]} (n4's node, the stream leader): "
              f"calls answered after {calls:.1f} s, retained online on "
              + ", ".join(f"{n} after {calls + t:.1f} s" for n, t in took.items()))
        # A late Will: a retained offline over the status of a gatekeeper that serves
        watcher = client(next(iter(alive.values())), "watcher")
        try:
            watcher.subscribe("gatekeeper/n4/status", 0)
            assert watcher.get(5).payload == b"online"  # its retained copy
            watcher.publish("gatekeeper/n4/status", "offline", 1, retain=True)
            assert watcher.get(5).payload == b"offline"  # the broker took it
            overwritten = time.monotonic()
            assert watcher.get(30).payload == b"online"  # the gatekeeper's answer
        finally:
            watcher.close()
        since = time.monotonic() - overwritten
        took = wait_status(alive, b"online", 30)
        print("a late retained offline over n4's status: online again on "
              + ", ".join(f"{n} after {since + t:.1f} s" for n, t in took.items()))
        assert any("publishing it again" in line for line in gk.log), gk.log[-10:]
        gk.stop()
        wait_status(alive, b"offline", 10)  # the process is gone: nothing can follow it
    finally:
        if gk.alive():
            gk.stop()
        c.start(leader)
        c.wait_ready()


def test_a_name_the_3_1_1_gateway_cannot_carry_stops_the_gatekeeper(cluster: Any,
                                                                    tmp_path: Path) -> None:
    c, _nodes = cluster
    config = {"node_id": "n1", "broker": {"mode": "external", "external": external(
        [f"127.0.0.1:{p}" for p in c.mqtt_ports[1:]], "n1", tmp_path)},
        "homeassistant": {"discovery": False},
        "devices": {"porch.light": {"type": "LED", "pin": 17}}}
    gk = start_gatekeeper(tmp_path, config, ready=False)  # it never serves: no ready line
    try:
        assert gk.proc.wait(30) == 1
    finally:
        if gk.alive():
            gk.stop()
    line = gk.wait_log("speaks only MQTT 3.1.1", 10)
    assert "device 'porch.light'" in line, line
