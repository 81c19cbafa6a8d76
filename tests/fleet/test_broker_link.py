"""External mode against Debian's real Mosquitto: the MQTT version after a broker restart,
and the broker ACL's probe (with the shipped ACL, and with none)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import start_gatekeeper
from tests.fleet.mosquitto import PASSWORD, PROBE_USER, Mosquitto, call, client, node_config

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None
                                or shutil.which("mosquitto_rr") is None,
                                reason="Debian's mosquitto and mosquitto-clients are not "
                                       "installed (scripts/test installs them)")


def rr(port: int, user: str, node: str, method: str = "state") -> dict[str, Any] | None:
    """One request with ``mosquitto_rr`` (MQTT 5: response topic and correlation data)."""
    out = subprocess.run(
        ["mosquitto_rr", "-V", "5", "-h", "127.0.0.1", "-p", str(port), "-u", user, "-P",
         PASSWORD, "-t", f"gatekeeper/{node}/device/lamp/call/{user}",
         "-e", f"gatekeeper/{node}/reply/{user}/rr", "-m", json.dumps({"method": method}),
         "-W", "2"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_after_a_broker_restart_mqtt_5_callers_are_answered(tmp_path: Path) -> None:
    """Mosquitto stops; the gatekeeper's reconnects are refused (ECONNREFUSED), which says
    nothing about MQTT versions; Mosquitto starts again on the same port: the gatekeeper is
    back on MQTT 5 and every mosquitto_rr call is answered."""
    broker = Mosquitto(tmp_path)
    gk = start_gatekeeper(tmp_path, node_config(tmp_path, "n1", broker.port))
    try:
        assert "(MQTT 5)" in gk.wait_log("connected to the broker", 10)
        reply = rr(broker.port, "alice", "n1")
        assert reply is not None and reply["ok"], reply
        mark = len(gk.log)
        broker.stop()
        stopped = time.monotonic()
        gk.wait_log("Connection refused", 30, after=mark)
        broker.start()
        started = time.monotonic()
        back = gk.wait_log("connected to the broker", 60, after=mark)
        reconnected = time.monotonic()
        assert "(MQTT 5)" in back, gk.log[mark:]
        end = time.monotonic() + 30
        while (reply := rr(broker.port, "alice", "n1")) is None or not reply["ok"]:
            assert time.monotonic() < end, f"no answer after the restart: {gk.log[mark:]}"
        answered = time.monotonic()
        replies = [rr(broker.port, "alice", "n1") for _ in range(10)]
        assert all(r is not None and r["ok"] for r in replies), replies
        assert not any("3.1.1" in line for line in gk.log[mark:]), gk.log[mark:]
        print(f"broker down {started - stopped:.2f} s; reconnected {reconnected - started:.2f} s "
              f"after it started; first mosquitto_rr answered {answered - started:.2f} s after")
    finally:
        gk.stop()
        broker.stop()


def health(port: int, node: str) -> dict[str, Any]:
    watcher = client(port, "watcher")
    try:
        watcher.subscribe(f"gatekeeper/{node}/system/health", 1)
        return dict(json.loads(watcher.get(10).payload))
    finally:
        watcher.close()


def probe_ms(line: str) -> float:
    m = re.search(r"\((\d+) ms\)", line)
    assert m, line
    return float(m.group(1))


def test_with_the_shipped_acl_the_probe_passes_and_commands_work(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    gk = start_gatekeeper(tmp_path, node_config(tmp_path, "n1", broker.port))
    try:
        passed = gk.wait_log("the broker ACL passed its probe", 10)
        end = time.monotonic() + 10  # the health follows the log line (retained, republished)
        while (doc := health(broker.port, "n1"))["broker_acl"]["probe"] != "passed":
            assert time.monotonic() < end, doc
        assert doc["status"] == "ok", doc
        alice = client(broker.port, "alice")
        try:
            reply = call(alice, "alice", "n1", "on")
            assert reply is not None and reply["ok"] and reply["state"]["value"] == 1, reply
        finally:
            alice.close()
        # the probe's own messages were never carried out as commands
        assert not any(PROBE_USER in line and "refused" in line for line in gk.log), gk.log
        print(f"ACL probe passed in {probe_ms(passed):.0f} ms (Mosquitto, MQTT 5)")
    finally:
        gk.stop()
        broker.stop()


def test_without_a_broker_acl_a_forged_admin_call_moves_nothing(tmp_path: Path) -> None:
    """A Mosquitto without any ACL: the probe's command under another user's name arrives,
    so the gatekeeper refuses every command; a viewer's call forged as ``.../call/admin``
    does not move the lamp (watched from another client: its retained state), the health
    says degraded naming the broker ACL, and the audit says refused."""
    broker = Mosquitto(tmp_path, acl=False)
    config = node_config(tmp_path, "n1", broker.port)
    config["auth"]["users"]["admin"] = {"role": "admin"}
    gk = start_gatekeeper(tmp_path, config)
    watcher = client(broker.port, "watcher")
    victor = client(broker.port, "victor")
    try:
        failed = gk.wait_log("the broker ACL failed its probe", 10)
        assert "gk-probe" in failed and "every command is refused" in failed, failed
        end = time.monotonic() + 10  # the health follows the log line
        while (doc := health(broker.port, "n1"))["status"] != "degraded":
            assert time.monotonic() < end, doc
        assert any("broker ACL" in p for p in doc["problems"]), doc
        watcher.subscribe("gatekeeper/n1/device/lamp/state", 1)
        watcher.subscribe("gatekeeper/n1/audit", 1)
        first = watcher.get(10)  # the retained state
        assert json.loads(first.payload)["value"] == 0
        # victor (a viewer) as "admin": the topic and the reply topic of admin's
        reply = call(victor, "admin", "n1", "on")
        assert reply is not None and reply["error"]["code"] == "NOT_AUTHORIZED", reply
        assert "broker ACL" in reply["error"]["message"], reply
        audit = None
        end = time.monotonic() + 10
        while audit is None:
            m = watcher.get(max(0.01, end - time.monotonic()))
            if m.topic.endswith("/state"):
                assert json.loads(m.payload)["value"] == 0, m.payload
            else:
                audit = json.loads(m.payload)
        assert audit["username"] == "admin" and audit["ok"] is False, audit
        assert audit["error"]["code"] == "NOT_AUTHORIZED", audit
        state = client(broker.port, "watcher")
        try:
            state.subscribe("gatekeeper/n1/device/lamp/state", 1)
            assert json.loads(state.get(10).payload)["value"] == 0
        finally:
            state.close()
        print(f"ACL probe failed in {probe_ms(failed):.0f} ms (Mosquitto without ACL)")
    finally:
        watcher.close()
        victor.close()
        gk.stop()
        broker.stop()


@pytest.mark.parametrize("line", ["gatekeeper/+/device/+/call/%u", "gatekeeper/+/device/+/set/%u",
                                  "gatekeeper/+/lease/call/%u"])
def test_one_wrong_line_of_the_broker_acl_fails_the_probe(tmp_path: Path, line: str) -> None:
    """The shipped ACL with one command line's ``%u`` made ``+`` (anyone may publish under
    anyone's name on that kind of topic): the probe tries every kind and fails, so the
    gatekeeper refuses commands instead of letting a viewer command as alice."""
    broker = Mosquitto(tmp_path, acl_edit=(f"pattern write {line}",
                                           f"pattern write {line.replace('%u', '+')}"))
    gk = start_gatekeeper(tmp_path, node_config(tmp_path, "n1", broker.port))
    victor = client(broker.port, "victor")
    try:
        gk.wait_log("the broker ACL failed its probe", 10)
        reply = call(victor, "alice", "n1", "on")
        assert reply is None or reply["error"]["code"] == "NOT_AUTHORIZED", reply
        state = client(broker.port, "watcher")
        try:
            state.subscribe("gatekeeper/n1/device/lamp/state", 1)
            assert json.loads(state.get(10).payload)["value"] == 0
        finally:
            state.close()
    finally:
        victor.close()
        gk.stop()
        broker.stop()


def test_a_retained_command_on_the_broker_is_never_carried_out(tmp_path: Path) -> None:
    """alice leaves a retained ``set ON`` on the broker; a gatekeeper that starts (or
    reconnects) later does not switch the lamp on from it; a live command still works."""
    broker = Mosquitto(tmp_path)
    alice = client(broker.port, "alice")
    alice.publish("gatekeeper/n1/device/lamp/set/alice", "ON", 1, retain=True)
    gk = start_gatekeeper(tmp_path, node_config(tmp_path, "n1", broker.port))
    watcher = client(broker.port, "watcher")
    try:
        gk.wait_log("ignoring a retained command on gatekeeper/n1/device/lamp/set/alice", 15)
        watcher.subscribe("gatekeeper/n1/device/lamp/state", 1)
        assert json.loads(watcher.get(10).payload)["value"] == 0
        reply = call(alice, "alice", "n1", "on")  # a live one: carried out
        assert reply is not None and reply["ok"], reply
    finally:
        alice.publish("gatekeeper/n1/device/lamp/set/alice", "", 1, retain=True)
        alice.close()
        watcher.close()
        gk.stop()
        broker.stop()
