"""Wills are publishes like any other: authorised at CONNECT and again when they fire."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from pi_mqtt_gpio.mqtt.packets import PROTOCOL_50, PROTOCOL_311, Prop, Will
from tests.conftest import Gatekeeper, wait_for
from tests.security.conftest import HASH, PW, Watch
from tests.security.raw import RawClient

VERSIONS = [pytest.param(PROTOCOL_311, id="v311"), pytest.param(PROTOCOL_50, id="v5")]
NOT_AUTHORIZED = {PROTOCOL_311: 0x05, PROTOCOL_50: 0x87}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("leaf", "payload", "retain"), [
    ("status", b"offline", True),
    ("device/relay/state", b'{"value": 1, "is_active": true}', True),
    ("device/led/set", b"ON", False),
    ("lease/call", b'{"method": "acquire", "kwargs": {"devices": ["screen"], "ttl": 3600}}',
     False),
    ("reply/root-console/x", b'{"ok": true, "result": "forged"}', False),
])
def test_viewer_will_is_refused_at_connect(target: Gatekeeper, version: int, leaf: str,
                                           payload: bytes, retain: bool) -> None:
    watch = Watch(target)
    topic = f"{target.root}/{leaf}"
    try:
        raw = RawClient(target.port, version=version)
        props = {Prop.WILL_DELAY_INTERVAL: 1} if version == PROTOCOL_50 else {}
        cid = f"evil-{leaf.replace('/', '-')}"
        ack = raw.connect(cid, username="guest", password=PW,
                          will=Will(topic, payload, 1, retain, props))
        raw.drop()
        assert ack.reason_code == NOT_AUTHORIZED[version]
        # the same client id again: had the first connection been accepted, it is closed
        # (taken over, if the broker had not seen it drop yet) and its Will published before
        # this CONNACK
        again = RawClient(target.port, version=version)
        assert again.connect(cid, username="guest", password=PW).reason_code == 0
        again.close()
        seen = watch.settle()
        assert topic not in [m.topic for m in seen], f"the viewer's Will was published on {topic}"
        assert watch.state("led")["value"] == 0
        assert not any(m.topic == f"{target.root}/lease" and b"guest" in m.payload
                       for m in seen)
    finally:
        watch.close()


def _set_role(gk: Gatekeeper, role: str) -> None:
    users = Path(gk.config_path).parent / "users"
    users.write_text(f"opfile:{HASH}:{role}\n")
    mark = len(gk.log)
    gk.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: any("users reloaded" in line for line in gk.log[mark:]), 5)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("delay", [0, 2], ids=["at-once", "delayed"])
def test_will_is_authorised_again_when_it_fires(target: Gatekeeper, version: int,
                                                delay: int) -> None:
    """An operator's Will on a set topic is accepted; the operator is made a viewer (users
    file + SIGHUP) before the Will fires; it must not switch the LED."""
    if delay and version != PROTOCOL_50:
        pytest.skip("Will Delay is MQTT 5")
    watch = Watch(target)
    topic = f"{target.root}/device/led/set"
    cid = f"will-{version}-{delay}"
    mark = len(target.log)
    try:
        raw = RawClient(target.port, version=version)
        props = {Prop.WILL_DELAY_INTERVAL: delay} if delay else {}
        conn_props = {Prop.SESSION_EXPIRY_INTERVAL: 60} if delay else {}
        ack = raw.connect(cid, username="opfile", password=PW,
                          will=Will(topic, b"ON", 0, False, props), properties=conn_props)
        assert ack.reason_code == 0
        if delay:
            raw.drop()  # the Will waits 2 s; the rights change meanwhile
            time.sleep(0.3)
            _set_role(target, "viewer")
        else:
            _set_role(target, "viewer")
            raw.drop()
        # the Will fired (after its delay) and was refused then
        target.wait_log(f"will of {cid!r} on {topic!r} not published", delay + 10, mark)
        seen = [m.topic for m in watch.settle()]
        assert topic not in seen
        assert watch.state("led")["value"] == 0
    finally:
        _set_role(target, "operator")
        watch.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_allowed_will_still_fires(target: Gatekeeper, version: int) -> None:
    """The refusal is not a blanket one: an operator's Will on a set topic switches the
    relay when the operator drops off."""
    watch = Watch(target)
    try:
        raw = RawClient(target.port, version=version)
        ack = raw.connect(f"good-will-{version}", username="alice", password=PW,
                          will=Will(f"{target.root}/device/relay/set", b"ON", 0, False, {}))
        assert ack.reason_code == 0
        raw.drop()
        assert wait_for(lambda: watch.state("relay")["value"] == 1, 3)
        raw2 = RawClient(target.port, version=version)
        raw2.connect(f"good-will-{version}", username="alice", password=PW)
        raw2.publish(f"{target.root}/device/relay/set", b"OFF", qos=1)
        raw2.close()
        assert wait_for(lambda: watch.state("relay")["value"] == 0, 3)
    finally:
        watch.close()
