"""``pi-mqtt-gpio`` as a user meets it: ``lease run`` holds a lease while CLI commands act on
it; a lease broken by an admin ends its holder with 1 and one clear line; ``lease acquire
--for`` holds it that long and shows the TTL granted; without ``--node`` the only node on the
broker is used, and with several the user is asked to choose."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from pi_mqtt_gpio.client.lease import Lease
from pi_mqtt_gpio.topics import Topics
from tests.conftest import Client, broker_config, start_gatekeeper
from tests.conftest import Gatekeeper as Daemon

DEVICES = {"porch_light": {"type": "LED", "pin": 17},
           "gate": {"type": "Motor", "forward": 20, "backward": 21, "lease_required": True}}
AUTH = {"allow_anonymous": True, "anonymous_role": "admin", "roles": {}}
CLI = [sys.executable, "-m", "pi_mqtt_gpio.client.cli"]


@pytest.fixture(scope="module")
def yard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    cfg = broker_config(node_id="yard", devices=DEVICES, auth=AUTH,
                        leases={"scope": "device", "ttl_s": 30})
    gk = start_gatekeeper(tmp_path_factory.mktemp("yard"), cfg)
    yield gk
    assert gk.stop() == 0


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PI_MQTT_")}


def _argv(gk: Daemon, args: tuple[str, ...], node: bool) -> list[str]:
    return [*CLI, "--host", "127.0.0.1", "--port", str(gk.port),
            *(["--node", "yard"] if node else []), *args]


def _cli(gk: Daemon, *args: str, node: bool = True, timeout: float = 30
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_argv(gk, args, node), capture_output=True, text=True,
                          timeout=timeout, env=_env())


def _holder(gk: Daemon, *args: str) -> tuple[subprocess.Popen[str], list[str]]:
    """A CLI run in the background; its output lines collected as they come."""
    proc = subprocess.Popen(_argv(gk, args, True), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env())
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        lines.extend(proc.stdout)

    threading.Thread(target=read, daemon=True).start()
    return proc, lines


def _until(lines: list[str], text: str, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while not any(text in line for line in lines):
        assert time.monotonic() < end, f"no {text!r} in {lines}"
        time.sleep(0.05)


def test_lease_run_holds_the_lease_while_the_commands_run(yard: Daemon) -> None:
    refused = _cli(yard, "call", "gate", "forward")
    assert refused.returncode == 1 and "LEASE_REQUIRED" in refused.stderr
    res = _cli(yard, "lease", "run", "gate", "--ttl", "5", "--", "call", "gate", "forward",
               "--", "call", "gate", "stop")
    assert res.returncode == 0, res.stderr
    assert '"direction": "forward"' in res.stdout and '"direction": "stopped"' in res.stdout
    assert "(ttl 5 s, renewed every" in res.stderr and "released" in res.stderr
    table = _cli(yard, "lease", "status")
    assert '"leases": []' in table.stdout, table.stdout  # released when it ended
    # A refused inner command: its status, and the lease released all the same.
    bad = _cli(yard, "lease", "run", "gate", "--", "call", "gate", "no_such_method")
    assert bad.returncode == 1 and "UNKNOWN_METHOD" in bad.stderr
    assert '"leases": []' in _cli(yard, "lease", "status").stdout
    usage = _cli(yard, "lease", "run", "gate")
    assert usage.returncode == 2 and "after --" in usage.stderr


@pytest.mark.parametrize("holding", [("lease", "acquire", "gate", "--ttl", "3"),
                                     ("lease", "run", "gate", "--ttl", "3", "--", "watch",
                                      "gate")])
def test_a_lease_broken_by_an_admin_ends_its_holder(yard: Daemon,
                                                    holding: tuple[str, ...]) -> None:
    proc, lines = _holder(yard, *holding)
    try:
        _until(lines, "held by")
        broken = _cli(yard, "lease", "release", "gate", "--force")
        assert broken.returncode == 0, broken.stderr
        assert proc.wait(timeout=10) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(lines)
    assert "lease" in text and "on gate lost: no such lease (expired or released)" in text
    assert "Traceback" not in text and "renewing" not in text, text


def test_lease_acquire_for_holds_it_that_long(yard: Daemon) -> None:
    start = time.monotonic()
    res = _cli(yard, "lease", "acquire", "gate", "--ttl", "3", "--for", "1.5")
    took = time.monotonic() - start
    assert res.returncode == 0, res.stderr
    assert "held by" in res.stdout and "for 1.5 s (ttl 3 s" in res.stdout
    assert res.stdout.rstrip().endswith("released") and took >= 1.5


class _Granting:
    """A connection whose gatekeeper grants 12 s whatever was asked for."""

    topics = Topics("gatekeeper", "yard")
    timeout = 1.0

    def submit(self, device: str, method: str, args: Any = (), kwargs: Any = None, *,
               topic: str | None = None) -> Any:
        return method

    def result(self, future: Any, timeout: float | None, device: str, method: str
               ) -> dict[str, Any]:
        return {"ok": True, "result": {"lease_id": "abc", "holder": "me", "ttl": 12.0,
                                       "expires": "later"}}


def test_the_ttl_is_the_one_granted() -> None:
    lease = Lease(_Granting(), ["gate"], ttl=30)
    lease.acquire()
    try:
        assert lease.ttl == 12.0  # renewed every 4 s, not every 10 s
    finally:
        lease.release()


def test_without_node_the_only_node_is_used_and_several_are_listed(yard: Daemon) -> None:
    res = _cli(yard, "devices", node=False)
    assert res.returncode == 0, res.stderr
    assert "porch_light" in res.stdout and "gate" in res.stdout
    ghost = Client(yard.port, mqtt.MQTTv5, client_id="ghost-node")
    ghost.connect()
    ghost.publish("gatekeeper/garage/status", b"online", 1, retain=True)
    try:
        several = _cli(yard, "devices", node=False)
        assert several.returncode == 2
        assert "garage (online), yard (online)" in several.stderr
        assert "--node" in several.stderr
    finally:
        ghost.publish("gatekeeper/garage/status", b"", 1, retain=True)
        ghost.close()
