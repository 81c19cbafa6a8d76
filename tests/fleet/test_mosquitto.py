"""External broker mode against Debian's real Mosquitto with the shipped ACL
(``deploy/mosquitto/fleet.acl``): three simulated gatekeepers on one broker, callers that
append their own user name to command topics, a spoofed suffix dropped by Mosquitto, a viewer
refused by the gatekeeper, a broker restart, a node killed with ``kill -9`` (its Will), and a
gatekeeper whose password the broker refuses."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml

from tests.conftest import (
    READY,
    Gatekeeper,
    GatekeeperThread,
    start_gatekeeper,
    v5_props,
    wait_for,
)
from tests.fleet.mosquitto import (
    NODES,
    PASSWORD,
    Mosquitto,
    call,
    client,
    node_config,
    seen,
)

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None,
                                reason="Debian's mosquitto is not installed (scripts/test "
                                       "installs it)")

@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mosquitto,
                                                                      dict[str, Gatekeeper]]]:
    tmp = tmp_path_factory.mktemp("fleet")
    broker = Mosquitto(tmp)
    nodes: dict[str, Gatekeeper] = {}
    try:
        for node in NODES:
            (tmp / node).mkdir()
            nodes[node] = start_gatekeeper(tmp / node, node_config(tmp, node, broker.port))
        w = client(broker.port, "watcher")
        w.subscribe("gatekeeper/+/status", 1)
        seen(w, lambda got: {t for t, p in got if p == b"online"} ==
             {f"gatekeeper/{n}/status" for n in NODES}, 10)
        w.close()
        yield broker, nodes
    finally:
        for gk in nodes.values():
            if gk.alive():
                gk.stop()
        broker.stop()


def test_calls_through_each_node_with_the_callers_own_name(fleet: Any) -> None:
    broker, _nodes = fleet
    alice = client(broker.port, "alice")
    try:
        for node in NODES:
            reply = call(alice, "alice", node, "on")
            assert reply is not None and reply["ok"] and reply["state"]["value"] == 1, reply
            assert call(alice, "alice", node, "off")["ok"]  # type: ignore[index]
    finally:
        alice.close()


def test_a_spoofed_suffix_is_dropped_by_mosquitto_and_moves_nothing(fleet: Any) -> None:
    broker, _nodes = fleet
    watcher = client(broker.port, "watcher")
    watcher.subscribe("gatekeeper/n1/#", 1)
    alice = client(broker.port, "alice")
    try:
        reply_to = f"gatekeeper/n1/reply/alice/{alice.client_id}"
        alice.subscribe(f"{reply_to}/#", 1)
        # alice publishes as if she were bob: Mosquitto's ACL drops it (she gets no reply)
        alice.publish("gatekeeper/n1/device/lamp/call/bob", json.dumps({"method": "on"}), 1,
                      properties=v5_props(ResponseTopic=f"{reply_to}/spoofed",
                                          CorrelationData=b"1"))
        # the sentinel: her own call after it; Mosquitto passes her messages on in order,
        # and the gatekeeper runs and answers calls in order
        alice.publish("gatekeeper/n1/device/lamp/call/alice", json.dumps({"method": "state"}),
                      1, properties=v5_props(ResponseTopic=f"{reply_to}/sentinel",
                                             CorrelationData=b"2"))
        got = alice.until(f"{reply_to}/sentinel")
        assert got == [], [(m.topic, m.payload) for m in got]  # no reply to the spoofed one
        moved = [(m.topic, m.payload) for m in watcher.until(f"{reply_to}/sentinel")
                 if not m.retain and (m.topic.endswith("/lamp/state")
                                      or m.topic.endswith("/audit")
                                      or m.topic.endswith("/call/bob"))]
        assert moved == []
        reply = call(alice, "alice", "n1", "state")
        assert reply is not None and reply["state"]["value"] == 0
    finally:
        alice.close()
        watcher.close()


def test_a_viewer_is_refused_by_the_gatekeeper(fleet: Any) -> None:
    broker, _nodes = fleet
    victor = client(broker.port, "victor")
    try:
        reply = call(victor, "victor", "n2", "on")
        assert reply is not None and reply["error"]["code"] == "NOT_AUTHORIZED"
    finally:
        victor.close()


def test_the_client_stub_appends_its_user_name(fleet: Any) -> None:
    from pi_mqtt_gpio.client import Gatekeeper as Stub
    from pi_mqtt_gpio.client import RemoteLED

    broker, _nodes = fleet
    gk = Stub("127.0.0.1", broker.port, username="alice", password=PASSWORD, node_id="n3")
    try:
        assert gk.fleet  # found out from the node's catalogue
        led = RemoteLED("lamp", gatekeeper=gk)
        led.on()
        assert led.is_lit
        led.off()
    finally:
        gk.close()


def test_broker_restart_brings_every_node_back_with_its_twin(fleet: Any) -> None:
    broker, _nodes = fleet
    broker.stop()
    stopped = time.monotonic()
    broker.start()
    watcher = client(broker.port, "watcher")
    try:
        watcher.subscribe("gatekeeper/#", 1)
        got = seen(watcher, lambda got: {t for t, p in got if t.endswith("/status")
                                         and p == b"online"} == {f"gatekeeper/{n}/status"
                                                                 for n in NODES}
                   and {t for t, _ in got if t.endswith("/lamp/state")} ==
                   {f"gatekeeper/{n}/device/lamp/state" for n in NODES}, 15)
        back = time.monotonic() - stopped
        print(f"broker restart: all {len(NODES)} nodes online with their twin "
              f"{back:.1f} s after the broker went down")
        assert back < 10
        assert any(t == "gatekeeper/n1/devices" for t, _ in got)
    finally:
        watcher.close()


def test_kill_9_of_a_node_leaves_its_retained_offline(fleet: Any) -> None:
    broker, nodes = fleet
    nodes["n3"].stop(signal.SIGKILL)
    watcher = client(broker.port, "watcher")
    try:
        watcher.subscribe("gatekeeper/n3/status", 1)
        got = seen(watcher, lambda got: got[-1][1] == b"offline", 60)
        assert got[-1] == ("gatekeeper/n3/status", b"offline")
    finally:
        watcher.close()


def test_ready_only_once_the_broker_accepts_the_gatekeeper(tmp_path: Path) -> None:
    """A password the broker refuses: no ready line but one "waiting for the broker" line,
    the refusal said once in the log, no crash loop; the password fixed on the broker (its
    password file and SIGHUP): the ready line, and calls are answered."""
    broker = Mosquitto(tmp_path)
    config = node_config(tmp_path, "n1", broker.port, password="not-yet")
    gk = start_gatekeeper(tmp_path, config, ready=False)
    try:
        waiting = gk.wait_log("pi-mqtt-gatekeeper waiting for the broker", 20)
        assert f"gatekeeper/n1 on external 127.0.0.1:{broker.port}" in waiting, waiting
        refused = gk.wait_log("refused the gatekeeper's connection", 20)
        assert "password_file" in refused
        assert gk.alive() and not any(READY.search(line) for line in gk.log), gk.log
        broker.set_password("gk-n1", "not-yet")
        ready = gk.wait_log("pi-mqtt-gatekeeper ready:", 60)
        assert READY.search(ready) and "gatekeeper/n1 on external" in ready, ready
        assert sum("waiting for the broker" in line for line in gk.log) == 1, gk.log
        assert sum(line.startswith("ERROR") and "refused the gatekeeper's connection" in line
                   for line in gk.log) == 1, gk.log  # said once, retried with backoff
        alice = client(broker.port, "alice")
        try:
            reply = call(alice, "alice", "n1", "on")
            assert reply is not None and reply["ok"], reply
        finally:
            alice.close()
    finally:
        gk.stop()
        broker.stop()


def test_nodes_lists_the_fleet_with_status_and_version(fleet: Any) -> None:
    import sys

    broker, _nodes = fleet
    out = subprocess.run([sys.executable, "-m", "pi_mqtt_gpio.client.cli", "--host",
                          "127.0.0.1", "--port", str(broker.port), "--user", "alice",
                          "--password", PASSWORD, "nodes"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line}
    for node in ("n1", "n2"):
        assert lines[node][0] == "online" and lines[node][1]  # a version


def test_publish_bindings_wait_for_the_broker_and_device_bindings_do_not(tmp_path: Path
                                                                        ) -> None:
    """The broker is down: a button's device binding still switches its light; its publish
    binding waits and goes out when the broker is back."""
    broker = Mosquitto(tmp_path, extra_acl="user gk-n1\ntopic write doorbell/#\n")
    config = node_config(tmp_path, "n1", broker.port)
    config["devices"] = {
        "lamp": {"type": "LED", "pin": 17},
        "wall": {"type": "Button", "pin": 27, "bindings": {
            "pressed": {"device": "lamp", "method": "toggle"},
            "released": {"publish": {"topic": "doorbell/n1/rang", "payload": "rang",
                                     "qos": 1, "retain": True}}}}}  # retained: no race
    gk = GatekeeperThread(yaml.safe_dump(config))
    try:
        gk.start()
        watcher = client(broker.port, "watcher")
        watcher.subscribe("gatekeeper/n1/status", 1)
        seen(watcher, lambda got: got[-1][1] == b"online", 10)
        watcher.close()
        broker.stop()
        pin = gk.pin("wall").pin
        gk.run(lambda: gk.daemon.hw.submit(pin.drive_low, force=True))  # type: ignore[union-attr]
        assert wait_for(lambda: gk.pin("lamp", "value") == 1, 10)  # the binding needed no broker
        gk.run(lambda: gk.daemon.hw.submit(pin.drive_high, force=True))  # type: ignore[union-attr]
        broker.start()
        watcher = client(broker.port, "watcher")
        watcher.subscribe("doorbell/n1/rang", 1)
        got = seen(watcher, lambda got: any(t == "doorbell/n1/rang" for t, _ in got), 20)
        assert (("doorbell/n1/rang", b"rang")) in got
        watcher.close()
    finally:
        gk.close()
        broker.stop()


def test_mqtt_io_topics_through_mosquitto_and_dead_after_kill_9(tmp_path: Path) -> None:
    """External broker mode with ``compat.mqtt_io``: an mqtt-io client (alice, allowed by
    Mosquitto's ACL on mqtt-io's topics) switches an output; the status holds ``running``
    and, after ``kill -9``, the ``dead`` Will of the gatekeeper's second connection."""
    extra = ("\nuser gk-n1\ntopic readwrite home/n1/#\n"
             "user alice\ntopic readwrite home/n1/#\n")
    broker = Mosquitto(tmp_path, extra_acl=extra)
    config = node_config(tmp_path, "n1", broker.port)
    config["auth"]["users"]["mqtt-io"] = {"role": "operator"}
    config["compat"] = {"mqtt_io": {"topic_prefix": "home/n1"}}
    gk = start_gatekeeper(tmp_path, config)
    watcher = client(broker.port, "watcher", mqtt.MQTTv311)
    alice = client(broker.port, "alice", mqtt.MQTTv311)
    try:
        watcher.subscribe("home/n1/#", 1)
        got = seen(watcher, lambda got: ("home/n1/status", b"running") in got, 10)
        alice.publish("home/n1/output/lamp/set", "ON", 1)
        got = seen(watcher, lambda got: ("home/n1/output/lamp", b"ON") in got, 10)
        assert ("home/n1/output/lamp", b"ON") in got
        gk.stop(signal.SIGKILL)
        got = seen(watcher, lambda got: got[-1] == ("home/n1/status", b"dead"), 30)
        assert got[-1] == ("home/n1/status", b"dead")
    finally:
        watcher.close()
        alice.close()
        if gk.alive():
            gk.stop()
        broker.stop()
