"""A session belongs to the user who made it: another user's CONNECT with its client id is
refused and disturbs nothing; the same user takes over as the spec says."""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt
import pytest

from pi_mqtt_gpio.mqtt.packets import PROTOCOL_50, PROTOCOL_311, Prop
from tests.conftest import Gatekeeper, wait_for
from tests.security.conftest import PW, Watch, login
from tests.security.raw import RawClient

VERSIONS = [pytest.param(PROTOCOL_311, id="v311"), pytest.param(PROTOCOL_50, id="v5")]
ID_REFUSED = {PROTOCOL_311: 0x02, PROTOCOL_50: 0x85}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("clean", [False, True], ids=["resume", "clean"])
def test_viewer_cannot_take_an_admins_session(target: Gatekeeper, version: int,
                                              clean: bool) -> None:
    paho_version = mqtt.MQTTv5 if version == PROTOCOL_50 else mqtt.MQTTv311
    owner_id = f"root-console-{version}-{clean}"
    extra = {} if paho_version == mqtt.MQTTv5 else {"clean": False}
    admin = login(target, "root", paho_version, client_id=owner_id, **extra)
    try:
        admin.subscribe("secret/#", 1)
        raw = RawClient(target.port, version=version)
        props = {Prop.SESSION_EXPIRY_INTERVAL: 300} if version == PROTOCOL_50 else {}
        ack = raw.connect(owner_id, username="guest", password=PW, clean=clean,
                          properties=props)
        assert ack.reason_code == ID_REFUSED[version] and not ack.session_present
        assert raw.recv(2) is None  # closed after the refusal, nothing delivered
        # The owner was not kicked: it is still connected and still subscribed.
        assert admin.disconnects.empty()
        publisher = login(target, "root")
        publisher.publish("secret/x", b"for the admin", qos=1)
        assert admin.get(3).payload == b"for the admin"
        publisher.close()
    finally:
        admin.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_viewer_cannot_break_an_operators_lease(target: Gatekeeper, version: int) -> None:
    from pi_mqtt_gpio.client import Gatekeeper as Stub
    from pi_mqtt_gpio.client import RemoteMotor

    watch = Watch(target)
    owner_id = f"alice-phone-{version}"
    stub = Stub("127.0.0.1", target.port, username="alice", password=PW, node_id="sec",
                client_id=owner_id)
    try:
        with stub.lease(["screen"], ttl=30):
            RemoteMotor("screen", gatekeeper=stub).forward(0.5)
            assert wait_for(lambda: watch.state("screen")["value"] == 0.5, 3)
            raw = RawClient(target.port, version=version)
            ack = raw.connect(owner_id, username="guest", password=PW, clean=False)
            raw.drop()
            assert ack.reason_code == ID_REFUSED[version]
            # refused at CONNECT: had it taken the session over, the owner's connection
            # would have been closed before this CONNACK, and the lease's end and the
            # motor's stop published before a call on the motor is answered
            seen = watch.settle("screen")
            assert watch.state("screen")["value"] == 0.5  # still running: lease intact
            leases = [json.loads(m.payload) for m in seen if m.topic == f"{target.root}/lease"]
            assert all(doc["leases"] for doc in leases), leases
            assert stub.connected
    finally:
        stub.close()
        watch.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_same_user_takes_over(target: Gatekeeper, version: int) -> None:
    first = RawClient(target.port, version=version)
    props = {Prop.SESSION_EXPIRY_INTERVAL: 60} if version == PROTOCOL_50 else {}
    assert first.connect(f"same-{version}", username="alice", password=PW, clean=False,
                         properties=props).reason_code == 0
    assert first.subscribe(f"{target.root}/device/#", qos=1) == [1]
    second = RawClient(target.port, version=version)
    ack = second.connect(f"same-{version}", username="alice", password=PW, clean=False,
                         properties=props)
    assert ack.reason_code == 0 and ack.session_present
    packets = []
    while (packet := first.recv(3)) is not None:
        packets.append(packet)
    if version == PROTOCOL_50:
        assert type(packets[-1]).__name__ == "Disconnect"
        assert packets[-1].reason_code == 0x8E  # type: ignore[union-attr]
    second.close()
