"""Helpers for the fleet tests on Debian's real Mosquitto: a broker with the shipped ACL
(``deploy/mosquitto/fleet.acl``) on a free port, gatekeeper configs, callers."""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from tests.conftest import ROOT, Client, v5_props

NODES = ("n1", "n2", "n3")
PASSWORD = "secret-fleet-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PROBE_USER = "gk-probe"  # the ACL probe's user, as in the shipped ACL


class Mosquitto:
    """``acl=False``: a Mosquitto without any ACL (every user may publish anything)."""

    def __init__(self, tmp: Path, extra_acl: str = "", *, acl: bool = True,
                 acl_edit: tuple[str, str] | None = None) -> None:
        self.tmp = tmp
        self.port = free_port()
        acl_text = (ROOT / "deploy" / "mosquitto" / "fleet.acl").read_text()
        if acl_edit is not None:  # one line of the shipped ACL changed (a mistake in it)
            assert acl_edit[0] in acl_text, acl_edit
            acl_text = acl_text.replace(*acl_edit)
        block = acl_text[acl_text.index("user gk-kitchen"):acl_text.index("user gk-garage")]
        for node in NODES:  # one user per gatekeeper, as the shipped example for "kitchen"
            acl_text += "\n" + block.replace("kitchen", node)
        acl_text += "\nuser watcher\ntopic read #\n" + extra_acl
        (tmp / "fleet.acl").write_text(acl_text)
        self.passwd = passwd = tmp / "fleet.passwd"
        users = [*(f"gk-{n}" for n in NODES), "alice", "bob", "victor", "watcher",
                 "homeassistant", PROBE_USER]
        for i, user in enumerate(users):
            subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(passwd),
                            user, PASSWORD], check=True, capture_output=True)
        acl_line = f"acl_file {tmp / 'fleet.acl'}\n" if acl else ""
        (tmp / "mosquitto.conf").write_text(
            f"per_listener_settings false\nlistener {self.port} 127.0.0.1\n"
            f"allow_anonymous false\npassword_file {passwd}\n{acl_line}"
            f"persistence false\n"
            # run as whoever runs the tests (as root Mosquitto would switch to its own user,
            # which cannot read the test's files)
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.tmp / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def set_password(self, user: str, password: str) -> None:
        """Change a user's password; Mosquitto reads the file again on SIGHUP."""
        subprocess.run(["mosquitto_passwd", "-b", str(self.passwd), user, password],
                       check=True, capture_output=True)
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)


def node_config(tmp: Path, node: str, port: int, password: str = PASSWORD) -> dict[str, Any]:
    pw = tmp / f"{node}.pw"
    pw.write_text(password + "\n")
    probe_pw = tmp / "probe.pw"
    probe_pw.write_text(PASSWORD + "\n")
    return {
        "node_id": node,
        "broker": {"mode": "external",
                   "external": {"host": "127.0.0.1", "port": port, "username": f"gk-{node}",
                                "password_file": str(pw),
                                "acl_probe": {"username": PROBE_USER,
                                              "password_file": str(probe_pw)}}},
        "auth": {"users": {"alice": {"role": "operator"}, "bob": {"role": "operator"},
                           "victor": {"role": "viewer"}}},
        "safety": {"min_relay_interval_s": 0, "min_command_interval_s": 0,
                   "flap_lockout_s": 0},
        "devices": {"lamp": {"type": "LED", "pin": 17}},
    }


def client(port: int, user: str, version: int = mqtt.MQTTv5) -> Client:
    c = Client(port, version, client_id=f"{user}-{time.monotonic_ns()}")
    c.c.username_pw_set(user, PASSWORD)
    c.connect()
    return c


def call(c: Client, user: str, node: str, method: str, topic: str | None = None
         ) -> dict[str, Any] | None:
    reply_to = f"gatekeeper/{node}/reply/{user}/{c.client_id}"
    c.subscribe(f"{reply_to}/#", 1)
    c.publish(topic or f"gatekeeper/{node}/device/lamp/call/{user}",
              json.dumps({"method": method}), 1,
              properties=v5_props(ResponseTopic=f"{reply_to}/r", CorrelationData=b"1"))
    end = time.monotonic() + 3
    while time.monotonic() < end:
        try:
            m = c.get(end - time.monotonic())
        except Exception:
            return None
        if m.topic.startswith(reply_to):
            return dict(json.loads(m.payload))
    return None


def seen(w: Client, predicate: Any, timeout: float) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            m = w.get(max(0.01, end - time.monotonic()))
        except Exception:
            break
        out.append((m.topic, bytes(m.payload)))
        if predicate(out):
            return out
    raise AssertionError(f"not seen within {timeout} s; last: {out[-5:]}")
