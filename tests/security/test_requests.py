"""Malformed or hostile requests get a clear answer and leave no trace they should not:
nested JSON, client ids that would share a reply prefix, retained commands, log floods."""

from __future__ import annotations

import json
import signal
import uuid

import paho.mqtt.client as mqtt
import pytest

from pi_mqtt_gpio.mqtt.packets import PROTOCOL_50, PROTOCOL_311, Prop
from tests.conftest import Gatekeeper, v5_props
from tests.security.conftest import PW, Watch, login, until_own_reply
from tests.security.raw import RawClient

VERSIONS = [pytest.param(PROTOCOL_311, id="v311"), pytest.param(PROTOCOL_50, id="v5")]
ID_REFUSED = {PROTOCOL_311: 0x02, PROTOCOL_50: 0x85}


@pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
@pytest.mark.parametrize("where", ["kwargs", "correlation_id"])
def test_deeply_nested_json_gets_bad_request(target: Gatekeeper, version: int,
                                             where: str) -> None:
    if where == "correlation_id" and version == mqtt.MQTTv5:
        pytest.skip("5.0 carries Correlation Data as bytes, not JSON")
    watch = Watch(target)
    c = login(target, "alice", version)
    try:
        me = c.client_id
        reply = f"{target.root}/reply/{me}/x"
        c.subscribe(f"{target.root}/reply/{me}/#", 1)
        nested = "[" * 2000 + "]" * 2000
        body = {"method": "on", "kwargs": "__N__"} if where == "kwargs" else \
            {"method": "on", "correlation_id": "__N__"}
        if version == mqtt.MQTTv311:
            body["reply_to"] = reply
            if where == "kwargs":
                body["correlation_id"] = "c1"
        payload = json.dumps(body).replace('"__N__"', nested)
        props = v5_props(ResponseTopic=reply, CorrelationData=b"c1") \
            if version == mqtt.MQTTv5 else None
        c.publish(f"{target.root}/device/led/call", payload, qos=1, properties=props)
        answer = json.loads(c.get(5).payload)
        assert answer["ok"] is False and answer["error"]["code"] == "BAD_REQUEST"
        if where == "kwargs" and version == mqtt.MQTTv311:
            assert answer["correlation_id"] == "c1"
        audits = [json.loads(m.payload) for m in watch.settle()
                  if m.topic == f"{target.root}/audit"]
        assert any(a["device"] == "led" and a["error"]["code"] == "BAD_REQUEST"
                   for a in audits), audits
        assert watch.state("led")["value"] == 0
    finally:
        c.close()
        watch.close()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("client_id", ["vic/x", "a+b", "x#"])
def test_client_ids_that_would_share_a_reply_prefix_are_refused(target: Gatekeeper,
                                                                version: int,
                                                                client_id: str) -> None:
    raw = RawClient(target.port, version=version)
    ack = raw.connect(client_id, username="alice", password=PW)
    assert ack.reason_code == ID_REFUSED[version]
    raw.close()


def test_replies_of_one_client_never_reach_another(target: Gatekeeper) -> None:
    """``vic`` subscribed to its own reply prefix sees only its own replies, even when
    another client asks for replies under ``.../reply/vic/...``."""
    vic = login(target, "alice", client_id="vic")
    other = login(target, "alice", client_id=f"o-{uuid.uuid4().hex[:6]}")
    try:
        vic.subscribe(f"{target.root}/reply/vic/#", 1)
        other.publish(f"{target.root}/device/led/call", '{"method": "state"}', qos=1,
                      properties=v5_props(ResponseTopic=f"{target.root}/reply/vic/stolen",
                                          CorrelationData=b"x"))
        got = until_own_reply(vic, target)  # vic's own call, answered after the other's
        assert got == [], [(m.topic, m.payload) for m in got]
    finally:
        vic.close()
        other.close()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("leaf", ["device/relay/set", "device/relay/call", "lease/call"])
def test_commands_are_never_retained(target: Gatekeeper, version: int, leaf: str) -> None:
    raw = RawClient(target.port, version=version)
    assert raw.connect(f"ret-{version}", username="alice", password=PW).reason_code == 0
    payload = b"OFF" if leaf.endswith("set") else b'{"method": "state"}'
    raw.publish(f"{target.root}/{leaf}", payload, qos=1, retain=True)
    raw.close()
    late = RawClient(target.port, version=version)
    late.connect(f"late-{version}", username="root", password=PW)
    assert late.subscribe(f"{target.root}/{leaf}") == [0]
    with pytest.raises(TimeoutError):
        late.recv(0.5)  # nothing stored to replay
    late.close()


def test_denied_publishes_and_failed_logins_do_not_flood_the_log(target: Gatekeeper) -> None:
    raw = RawClient(target.port)
    assert raw.connect("flood", username="guest", password=PW).reason_code == 0
    mark = len(target.log)
    big = "x" * 60_000
    for i in range(500):  # 60 KB topics: refused as too long; short ones: denied by the ACL
        raw.publish(f"{target.root}/{big}/{i}" if i % 2 else f"{target.root}/device/led/set",
                    b"ON", qos=1)
    raw.close()
    for i in range(20):  # one each from 20 addresses (not throttled: all checked)
        bad = RawClient(target.port, source=f"127.0.5.{i + 1}")
        bad.connect(f"u{i}", username="u" * 60_000 + str(i), password="nope")
        bad.close()
    # the sentinel: a reload's line, logged after everything the attempts logged
    target.proc.send_signal(signal.SIGHUP)
    target.wait_log("users reloaded", 10, mark)
    end = next(i for i in range(mark, len(target.log)) if "users reloaded" in target.log[i])
    written = sum(len(line) for line in target.log[mark:end])
    print(f"log bytes for 500 denied 60 KB publishes and 20 bad logins: {written}")
    assert written < 20_000


def test_a_v5_client_gets_its_reply_prefix(target: Gatekeeper) -> None:
    raw = RawClient(target.port)
    ack = raw.connect("rri", username="alice", password=PW,
                      properties={Prop.REQUEST_RESPONSE_INFORMATION: 1})
    assert ack.properties[Prop.RESPONSE_INFORMATION] == f"{target.root}/reply/rri"
    raw.close()
