"""A minute of mixed hostile traffic (another process) while a legitimate client keeps
calling: it never misses a reply, and the daemon's memory stays bounded. mqtt-io's topics
are on, and wildcard readers beside them never receive what they may not read."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from pi_mqtt_gpio.client import Gatekeeper as Stub
from pi_mqtt_gpio.client import RemoteLED
from tests.conftest import Client, Gatekeeper, start_gatekeeper
from tests.security.conftest import PW, secure_config
from tests.security.hostile import COMPAT_PREFIX

ROOT = Path(__file__).resolve().parents[2]
SOAK_S = float(os.environ.get("PI_MQTT_SOAK_S", "60"))
pytestmark = pytest.mark.timeout(SOAK_S + 600)  # the soak, then its checks on a loaded machine


def test_soak_under_hostile_traffic(tmp_path: Path) -> None:
    config = secure_config(tmp_path, ack_timeout_s=5.0)
    config["compat"] = {"mqtt_io": {"topic_prefix": COMPAT_PREFIX,
                                    "outputs": {"led": {}, "relay": {}}}}
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"),
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)
    config["broker"]["listeners"] += [
        {"type": "tls", "host": "127.0.0.1", "port": 0, "certfile": str(tmp_path / "cert.pem"),
         "keyfile": str(tmp_path / "key.pem")},
        {"type": "websocket", "host": "127.0.0.1", "port": 0}]
    gk = start_gatekeeper(tmp_path, config)
    try:
        with Stub("127.0.0.1", gk.port, username="alice", password=PW, node_id="sec",
                  timeout=10) as stub:
            led = RemoteLED("led", gatekeeper=stub)
            led.off()
            base = gk.rss_kib()
            hostile = subprocess.Popen(
                [sys.executable, "-m", "tests.security.hostile", str(gk.port), str(SOAK_S), PW,
                 gk.root, str(gk.ports["tls"]), str(gk.ports["websocket"])],
                cwd=ROOT, stdout=subprocess.PIPE, text=True)
            calls = failures = 0
            other_logins: list[int] = []  # on the TLS and WebSocket listeners, flooded
            worst = 0.0
            peak = base
            try:
                while hostile.poll() is None:
                    start = time.monotonic()
                    try:
                        led.toggle()
                    except Exception as exc:  # a missed reply or a refusal: both count
                        failures += 1
                        print("call failed:", exc)
                    worst = max(worst, time.monotonic() - start)
                    calls += 1
                    if calls % 20 == 0:
                        peak = max(peak, gk.rss_kib())
                    if calls % 50 == 0:
                        other_logins += [_login(gk, "tls", tmp_path / "cert.pem"),
                                         _login(gk, "websocket", None)]
                    time.sleep(0.05)
            finally:
                hostile.kill() if hostile.poll() is None else None
                out = hostile.communicate()[0]
            print(f"{out.strip()}; legit calls {calls}, failed {failures}, worst "
                  f"{worst * 1000:.0f} ms; RSS base {base // 1024} MiB, peak {peak // 1024} MiB")
            assert gk.alive()
            assert calls > 100 and failures == 0
            flood = re.search(r"handshake flood: (\d+) opened, (\d+) closed by the server", out)
            assert flood is not None and int(flood.group(2)) > 0, out
            print("logins on the flooded TLS and WebSocket listeners:", other_logins)
            assert other_logins and set(other_logins) == {0}, other_logins
            reads = re.search(r"wildcard reads: (\d+); leaks: (\d+)", out)
            assert reads is not None, out
            assert int(reads.group(1)) > 0 and reads.group(2) == "0", out
            # Two argon2 checks at once cost 64 MiB each while they run; the rest is bounded.
            assert peak - base < (2 * 64 + 64) * 1024
    finally:
        gk.stop()


def _login(gk: Gatekeeper, kind: str, ca: Path | None) -> int:
    c = Client(gk.ports[kind], mqtt.MQTTv5, transport="websockets" if ca is None else "tcp")
    if ca is not None:
        c.c.tls_set(ca_certs=str(ca))
    c.c.username_pw_set("alice", PW)
    try:
        rc, _ = c.connect()
        return int(getattr(rc, "value", rc))
    except Exception:
        return -1
    finally:
        c.close()
