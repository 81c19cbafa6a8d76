"""Authorization checks watched from outside: a separate admin subscriber on ``#`` sees
whatever a refused client might have leaked. Each on MQTT 3.1.1 and 5.0."""

from __future__ import annotations

import json
import uuid

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import Gatekeeper, v5_props
from tests.security.conftest import Watch, login, until_own_reply

PAHO = [pytest.param(mqtt.MQTTv311, id="v311"), pytest.param(mqtt.MQTTv5, id="v5")]


def _call(c, gk: Gatekeeper, device: str, body: dict, reply: str, version: int) -> None:  # type: ignore[no-untyped-def]
    if version == mqtt.MQTTv5:
        c.publish(f"{gk.root}/device/{device}/call", json.dumps(body), qos=1,
                  properties=v5_props(ResponseTopic=reply, CorrelationData=b"k"))
    else:
        c.publish(f"{gk.root}/device/{device}/call",
                  json.dumps({**body, "reply_to": reply, "correlation_id": "k"}), qos=1)


@pytest.mark.parametrize("version", PAHO)
def test_denied_topics_never_reach_the_role(target: Gatekeeper, version: int) -> None:
    """(a) The auditor may read {root}/# but not the relay: a subscription to the relay is
    refused, and its wider {root}/# subscription never delivers relay messages."""
    watch = Watch(target)
    aud = login(target, "aud", version)
    try:
        refused = aud.subscribe(f"{target.root}/device/relay/state", 1)
        code = refused[0] if isinstance(refused, list) else refused
        assert int(getattr(code, "value", code)) in (0x80, 0x87)
        aud.subscribe(f"{target.root}/#", 1)  # retained: the catalogue, states
        admin = login(target, "root")
        admin.publish(f"{target.root}/device/relay/set", b"ON", qos=1)
        admin.publish(f"{target.root}/device/relay/set", b"OFF", qos=1)
        state = f"{target.root}/device/relay/state"
        watch.c.until(lambda m: m.topic == state and json.loads(m.payload)["value"] == 0)
        # it happened; every copy of it was routed when the watch got it, so a sentinel
        # published now comes after anything the auditor could have got
        sentinel = f"{target.root}/probe/{uuid.uuid4().hex[:8]}"
        admin.publish(sentinel, b"sentinel", qos=1)
        got = [m.topic for m in aud.until(sentinel)]
        assert got, "the auditor got none of the retained messages"
        assert not any("/device/relay/" in t for t in got), got  # ... the auditor saw none
        admin.close()
    finally:
        aud.close()
        watch.close()


@pytest.mark.parametrize("version", PAHO)
@pytest.mark.parametrize(("user", "allowed"), [("alice", False), ("tess", True)])  # operator / tester
def test_sim_methods_need_the_simulate_right(target: Gatekeeper, version: int, user: str,
                                            allowed: bool) -> None:
    """(b) sim_press without the simulate right: NOT_AUTHORIZED, and the button never
    changed (no state, no event seen by the watcher)."""
    watch = Watch(target)
    c = login(target, user, version)
    try:
        reply = f"{target.root}/reply/{c.client_id}/r"
        c.subscribe(f"{target.root}/reply/{c.client_id}/#", 1)
        _call(c, target, "bell", {"method": "sim_press"}, reply, version)
        answer = json.loads(c.get(5).payload)
        events = [m for m in watch.settle("bell") if m.topic in (
            f"{target.root}/device/bell/state", f"{target.root}/device/bell/event")]
        if allowed:
            assert answer["ok"] is True and events
            _call(c, target, "bell", {"method": "sim_release"}, reply, version)
            c.get(5)
        else:
            assert answer["error"]["code"] == "NOT_AUTHORIZED"
            assert "simulate" in answer["error"]["message"]
            assert events == [], [m.topic for m in events]
            assert watch.state("bell")["value"] == 0
    finally:
        c.close()
        watch.close()


def _reply_targets(gk: Gatekeeper, victim: str) -> list[tuple[str, str]]:
    return [
        ("own tree: a set topic", f"{gk.root}/device/led/set"),
        ("own tree: status", f"{gk.root}/status"),
        ("own tree: a state", f"{gk.root}/device/relay/state"),
        ("another client's reply prefix", f"{gk.root}/reply/{victim}/x"),
        ("wildcards", f"{gk.root}/reply/+/x"),
        ("wildcards", "elsewhere/#"),
    ]


@pytest.mark.parametrize("version", PAHO)
@pytest.mark.parametrize("case", range(6))
def test_replies_go_nowhere_they_should_not(target: Gatekeeper, version: int,
                                           case: int) -> None:
    """(c) a Response Topic / reply_to into the gatekeeper's own tree, (d) into another
    client's reply prefix, (e) with wildcards: nothing is published there. The caller is an
    admin (who may publish anywhere itself), so only the gatekeeper's own check stands
    between the request and the leak; the victim of (d) watches its own reply prefix, which
    even the admin watcher cannot read."""
    victim_id = f"victim-{uuid.uuid4().hex[:6]}"
    label, topic = _reply_targets(target, victim_id)[case]
    watch = Watch(target)
    victim = login(target, "alice", client_id=victim_id)
    victim.subscribe(f"{target.root}/reply/{victim_id}/#", 1)
    c = login(target, "root", version)
    try:
        _call(c, target, "led", {"method": "state"}, topic, version)
        leaked = [m for m in watch.settle() if m.topic == topic]
        assert leaked == [], f"{label}: the reply was published on {topic}"
        got = until_own_reply(victim, target)  # the victim's own call, answered after
        assert got == [], [(m.topic, m.payload) for m in got]
        assert watch.state("led")["value"] == 0
    finally:
        c.close()
        victim.close()
        watch.close()
