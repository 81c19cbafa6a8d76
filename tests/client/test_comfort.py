"""The client and CLI for a new user: a typo in a node or device name fails fast with the
names that exist; nodes and leases from the terminal; watch shows every change; each change
is published once; a refused plain set is logged and audited."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from pi_mqtt_gpio.client import (
    Gatekeeper,
    RemoteButton,
    RemoteLED,
    UnknownNode,
    WrongDeviceType,
)
from pi_mqtt_gpio.errors import UnknownDevice
from tests.conftest import Client, broker_config, start_gatekeeper, wait_for
from tests.conftest import Gatekeeper as Daemon

DEVICES = {"porch_light": {"type": "LED", "pin": 17}, "doorbell": {"type": "Button", "pin": 27},
           "gate": {"type": "Motor", "forward": 20, "backward": 21, "lease_required": True}}
AUTH = {"allow_anonymous": True, "anonymous_role": "admin", "roles": {}}


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    cfg = broker_config(node_id="kitchen", devices=DEVICES, auth=AUTH,
                        leases={"scope": "device", "ttl_s": 30})
    gk = start_gatekeeper(tmp_path_factory.mktemp("kitchen"), cfg)
    yield gk
    assert gk.stop() == 0


def _cli(port: int, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pi_mqtt_gpio.client.cli", "--host",
                           "127.0.0.1", "--port", str(port), *args], capture_output=True,
                          text=True, timeout=timeout)


def test_unknown_node_fails_fast_naming_the_nodes(kitchen: Daemon) -> None:
    with pytest.raises(UnknownNode) as info:  # not RequestTimeout after the 10 s
        Gatekeeper("127.0.0.1", kitchen.port, node_id="typo", timeout=10)
    assert str(info.value) == "no gatekeeper node 'typo' on this broker; nodes seen: kitchen"
    res = _cli(kitchen.port, "--node", "typo", "devices")
    assert res.returncode == 2 and "nodes seen: kitchen" in res.stderr


def test_nodes_lists_online_and_offline(kitchen: Daemon) -> None:
    ghost = Client(kitchen.port, mqtt.MQTTv5, client_id="ghost")
    ghost.connect()
    ghost.publish("gatekeeper/garage/status", b"offline", 1, retain=True)
    try:
        res = _cli(kitchen.port, "nodes")
        lines = res.stdout.splitlines()
        assert res.returncode == 0, res.stderr
        assert lines[0].split()[:2] == ["garage", "offline"]
        assert lines[1].split()[:2] == ["kitchen", "online"]
        assert "3 devices" in lines[1]
    finally:
        ghost.publish("gatekeeper/garage/status", b"", 1, retain=True)
        ghost.close()


def test_remote_of_an_unknown_name_or_wrong_type_raises_at_construction(kitchen: Daemon
                                                                        ) -> None:
    with Gatekeeper("127.0.0.1", kitchen.port, node_id="kitchen") as g:
        with pytest.raises(UnknownDevice, match="did you mean porch_light"):
            RemoteLED("porch_lite", gatekeeper=g)
        with pytest.raises(WrongDeviceType, match="'doorbell' is a Button, not a LED: use "
                                                  "RemoteButton"):
            RemoteLED("doorbell", gatekeeper=g)
        RemoteButton("doorbell", gatekeeper=g)  # the right class is fine


def test_watch_shows_every_change_once(kitchen: Daemon, tmp_path: Path) -> None:
    watch = subprocess.Popen([sys.executable, "-m", "pi_mqtt_gpio.client.cli", "--host",
                              "127.0.0.1", "--port", str(kitchen.port), "--node", "kitchen",
                              "watch", "porch_light"], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read() -> None:
        for line in watch.stdout or []:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert wait_for(lambda: len(lines) >= 1, 10)  # the retained state: watch is ready
        with Gatekeeper("127.0.0.1", kitchen.port, node_id="kitchen") as g:
            led = RemoteLED("porch_light", gatekeeper=g)
            led.off()
            for _ in range(10):
                led.toggle()  # as fast as the replies come
            final = led.value
            assert wait_for(lambda: lines and f'"value": {json.dumps(final)}' in lines[-1], 10)
            mark = len(lines)
            led.toggle()  # the sentinel: its state follows anything the 10 could still print
            assert wait_for(lambda: any(f'"value": {json.dumps(led.value)}' in line
                                        for line in lines[mark:]), 10)
    finally:
        watch.terminate()
        watch.wait(5)
        reader.join(2)
    values = [json.loads(line.split(" ", 2)[2])["value"] for line in lines if " state " in line]
    # the retained state, maybe the off(), then exactly 10 alternating changes, the sentinel
    assert values[-11:] == [1, 0] * 5 + [1], values
    assert all(a != b for a, b in itertools.pairwise(values)), values


def test_each_state_change_is_published_once(kitchen: Daemon) -> None:
    c = Client(kitchen.port, mqtt.MQTTv5, client_id="counter")
    c.connect()
    try:
        for device in ("porch_light", "doorbell"):
            c.subscribe(f"{kitchen.root}/device/{device}/state", 1)
            assert c.get(5).retain  # the retained one
        with Gatekeeper("127.0.0.1", kitchen.port, node_id="kitchen") as g:
            bell = RemoteButton("doorbell", gatekeeper=g)
            bell.sim_press()
            bell.sim_release()  # replied to after its events were published
            # the sentinel: the worker runs commands in order; the events of a command are
            # published before its reply, the state of a later one after it
            RemoteLED("porch_light", gatekeeper=g).toggle()
        got = [json.loads(m.payload)["value"]
               for m in c.until(f"{kitchen.root}/device/porch_light/state")]
        assert got == [1, 0]
    finally:
        c.close()


def test_refused_set_is_logged_and_audited(kitchen: Daemon) -> None:
    c = Client(kitchen.port, mqtt.MQTTv5, client_id="auditor")
    c.connect()
    try:
        c.subscribe(f"{kitchen.root}/audit", 0)
        mark = len(kitchen.log)
        c.publish(f"{kitchen.root}/device/gate/set", b"OPEN", 1)
        entry = json.loads(c.get(5).payload)
        assert entry["device"] == "gate" and entry["source"] == "set"
        assert entry["error"]["code"] == "LEASE_REQUIRED"
        assert wait_for(lambda: any("set gate.forward from 'auditor' refused: LEASE_REQUIRED"
                                    in line for line in kitchen.log[mark:]), 3)
    finally:
        c.close()


def test_lease_cli(kitchen: Daemon) -> None:
    holder = subprocess.Popen([sys.executable, "-m", "pi_mqtt_gpio.client.cli", "--host",
                               "127.0.0.1", "--port", str(kitchen.port), "--node", "kitchen",
                               "lease", "acquire", "gate", "--ttl", "5", "--for", "20"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line.startswith("lease ") and "on gate held by" in line, line
        status = _cli(kitchen.port, "--node", "kitchen", "lease", "status")
        doc = json.loads(status.stdout)
        assert doc["scope"] == "device" and doc["leases"][0]["devices"] == ["gate"]
        mine = _cli(kitchen.port, "--node", "kitchen", "lease", "release", "gate")
        assert mine.returncode == 1 and "LEASE_REQUIRED" in mine.stderr  # not this process's
        broken = _cli(kitchen.port, "--node", "kitchen", "lease", "release", "gate", "--force")
        assert broken.returncode == 0, broken.stderr
        assert json.loads(broken.stdout)["released"][0]["devices"] == ["gate"]
        after = json.loads(_cli(kitchen.port, "--node", "kitchen", "lease", "status").stdout)
        assert after["leases"] == []
    finally:
        holder.terminate()
        holder.wait(5)
