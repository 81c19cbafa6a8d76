"""One read rule, end to end (the real daemon, paho on MQTT 3.1.1 and 5.0): with mqtt-io's
topics on, a viewer or an anonymous client asking for ``#`` or ``+/+/+/+`` gets nothing of
other programs' topics, retained or live, and still its mirrors under the prefix; with them
off ``#`` stays refused; a role that is denied a device does not find it in the catalogue.

"Nothing arrives" is decided by a sentinel the reader may read, published after everything
it must not get: once the sentinel is in, anything leaked would have been in before it."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import NO_GUARDS, Client, Gatekeeper, cheap_hash, start_gatekeeper, v5_props

PASSWORD = "s3cret-read"
PREFIX = "home/kitchen"
ROOT = "gatekeeper/kitchen"
VERSIONS = pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
READERS = pytest.mark.parametrize("reader", ["view", None], ids=["viewer", "anonymous"])
# Other programs' topics on the same broker; 4 levels each, so that +/+/+/+ matches them too.
FOREIGN = ["secret/admin/notes/today", "zigbee2mqtt/bridge/state/x",
           "homeassistant/switch/other_fan/config", "othernode/device/relay/state"]
FOREIGN_SHORT = ["secret/admin/notes", "zigbee2mqtt/x"]


def config(compat: bool = True) -> dict[str, Any]:
    h = cheap_hash(PASSWORD)
    cfg: dict[str, Any] = {
        "node_id": "kitchen",
        "broker": {"listeners": [{"type": "tcp", "host": "127.0.0.1", "port": 0}]},
        "auth": {"allow_anonymous": True, "anonymous_role": "viewer",
                 "users": {"view": {"password_hash": h, "role": "viewer"},
                           "admin": {"password_hash": h, "role": "admin"},
                           "limited": {"password_hash": h, "role": "limited"}},
                 "roles": {"limited": {"subscribe": ["{root}/#"],
                                       "deny": ["{root}/device/secret_valve/#"]}}},
        "safety": NO_GUARDS,
        "homeassistant": {"discovery": False},
        "devices": {"fan": {"type": "LED", "pin": 22},
                    "secret_valve": {"type": "OutputDevice", "pin": 23,
                                     "description": "the valve nobody may know of"}},
    }
    if compat:
        cfg["compat"] = {"mqtt_io": {"topic_prefix": PREFIX,
                                     "outputs": {"fan": {}, "secret_valve": {}}}}
    return cfg


@pytest.fixture(scope="module")
def gk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gatekeeper]:
    g = start_gatekeeper(tmp_path_factory.mktemp("read-rule"), config())
    yield g
    assert g.stop() == 0


def login(gk: Gatekeeper, user: str | None, version: int = mqtt.MQTTv5) -> Client:
    c = Client(gk.port, version, client_id=f"{user or 'anon'}-{version}-{time.monotonic_ns()}")
    if user is not None:
        c.c.username_pw_set(user, PASSWORD)
    rc, _ = c.connect()
    assert int(getattr(rc, "value", rc)) == 0, rc
    return c


def codes(granted: Any) -> list[int]:
    return [int(getattr(rc, "value", rc)) for rc in granted]


def refused(version: int) -> int:
    return 0x87 if version == mqtt.MQTTv5 else 0x80  # Not authorized / Failure


def toggle(gk: Gatekeeper, device: str) -> None:
    """An admin's call: the device's state (and its mqtt-io mirror) changes after it."""
    c = login(gk, "admin")
    try:
        reply = f"{ROOT}/reply/{c.client_id}/r"
        c.subscribe(reply, 1)
        c.publish(f"{ROOT}/device/{device}/call", json.dumps({"method": "toggle"}), 1,
                  properties=v5_props(ResponseTopic=reply, CorrelationData=b"t"))
        assert json.loads(c.get(5).payload)["ok"]
    finally:
        c.close()


@VERSIONS
@READERS
def test_wildcards_beside_mqtt_io_topics_read_nothing_of_other_programs(
        gk: Gatekeeper, version: int, reader: str | None) -> None:
    admin = login(gk, "admin")
    r = login(gk, reader, version)
    try:
        for t in FOREIGN + FOREIGN_SHORT:
            admin.publish(t, b"retained " + t.encode(), 1, retain=True)
        # Each filter alone (a SUBACK per filter): # and +/+/+/+ match the node's mqtt-io
        # mirrors, which the reader may read; that grants neither (MQTT-3.9.3: 0x87 / 0x80).
        wide = {f: codes(r.subscribe(f, 1)) for f in ("#", "+/+/+/+", "$share/g/#")}
        assert codes(r.subscribe(f"{PREFIX}/#", 1)) == [1]  # the mirrors it may read
        for t in FOREIGN + FOREIGN_SHORT:
            admin.publish(t, b"live " + t.encode(), 1)
        toggle(gk, "fan")  # the sentinel: the fan's mirror, live, after everything else
        got = r.until(lambda m: m.topic == f"{PREFIX}/output/fan" and not m.retain)
        topics = [m.topic for m in got]
        assert all(t.startswith(PREFIX + "/") for t in topics), topics
        assert wide == {f: [refused(version)] for f in wide}, wide
    finally:
        for t in FOREIGN + FOREIGN_SHORT:
            admin.publish(t, b"", 1, retain=True)
        admin.close()
        r.close()


@VERSIONS
def test_a_denied_device_mirror_is_held_back_from_the_prefix_reader(
        gk: Gatekeeper, version: int) -> None:
    """The prefix is granted to a role denied one device: its mirror never arrives (retained
    or live), the others do."""
    r = login(gk, "limited", version)
    try:
        assert codes(r.subscribe("#", 1)) == [refused(version)]
        assert codes(r.subscribe(f"{PREFIX}/#", 1)) == [1]
        toggle(gk, "secret_valve")
        toggle(gk, "fan")
        got = r.until(lambda m: m.topic == f"{PREFIX}/output/fan" and not m.retain)
        topics = [m.topic for m in got]
        assert not any("secret_valve" in t for t in topics), topics
        assert all(t.startswith(PREFIX + "/") for t in topics), topics
    finally:
        r.close()


@VERSIONS
@READERS
def test_without_mqtt_io_topics_a_wildcard_over_everything_stays_refused(
        tmp_path: Path, version: int, reader: str | None) -> None:
    g = start_gatekeeper(tmp_path, config(compat=False))
    try:
        r = login(g, reader, version)
        try:
            assert codes(r.subscribe("#", 1)) == [refused(version)]
            assert codes(r.subscribe("+/+/+/+", 1)) == [refused(version)]
            assert codes(r.subscribe("secret/#", 1)) == [refused(version)]
            assert codes(r.subscribe(f"{ROOT}/#", 1)) == [1]
        finally:
            r.close()
    finally:
        assert g.stop() == 0


def names(m: mqtt.MQTTMessage) -> list[str]:
    return [d["name"] for d in json.loads(m.payload)["devices"]]


@VERSIONS
def test_the_catalogue_lists_only_the_devices_its_reader_may_read(
        gk: Gatekeeper, version: int) -> None:
    """The retained catalogue and a new one published after the subscription: the role
    denied the valve gets both without it (nor its description), an admin and a viewer with
    it. QoS 0 readers of one protocol version share no bytes: each gets its own view."""
    limited, admin, viewer = (login(gk, u, version) for u in ("limited", "admin", "view"))
    try:
        for c in (limited, admin, viewer):
            c.subscribe(f"{ROOT}/devices", 0)
        first = {c: c.get(5) for c in (limited, admin, viewer)}
        assert all(m.retain for m in first.values())
        assert names(first[limited]) == ["fan"], first[limited].payload
        assert b"nobody may know" not in first[limited].payload
        assert names(first[admin]) == names(first[viewer]) == ["fan", "secret_valve"]
        # A change of the catalogue, retained (the general path), then the same not retained
        # (the broker's fast path for a plain publish).
        doc = json.loads(first[admin].payload)
        doc["version"] = "changed"
        publisher = login(gk, "admin")
        try:
            publisher.publish(f"{ROOT}/devices", json.dumps(doc), 1, retain=True)
            doc["version"] = "changed again"
            publisher.publish(f"{ROOT}/devices", json.dumps(doc), 0)
            publisher.publish(f"{ROOT}/devices", json.dumps(doc), 0)
        finally:
            publisher.close()
        for version_seen in ("changed", "changed again", "changed again"):
            seen = {c: c.get(5) for c in (limited, admin, viewer)}
            assert all(json.loads(m.payload)["version"] == version_seen
                       for m in seen.values())
            assert names(seen[limited]) == ["fan"], seen[limited].payload
            assert names(seen[admin]) == names(seen[viewer]) == ["fan", "secret_valve"]
        # and a new reader of the role gets the retained one without the valve too
        late = login(gk, "limited", version)
        try:
            late.subscribe(f"{ROOT}/devices", 1)
            m = late.get(5)
            assert m.retain and names(m) == ["fan"]
            assert json.loads(m.payload)["version"] == "changed"
        finally:
            late.close()
    finally:
        for c in (limited, admin, viewer):
            c.close()


def persistent(gk: Gatekeeper, user: str, client_id: str, version: int) -> Client:
    """``user`` with a session that outlives the connection (3.1.1: clean session 0)."""
    c = Client(gk.port, version, client_id=client_id, clean=False)
    c.c.username_pw_set(user, PASSWORD)
    kw: dict[str, Any] = {}
    if version == mqtt.MQTTv5:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        kw["properties"] = props
    rc, _ = c.connect(**kw)
    assert int(getattr(rc, "value", rc)) == 0, rc
    return c


def readable(m: mqtt.MQTTMessage) -> bool:
    """What a viewer may read here: the node's topics and its mqtt-io mirrors."""
    return m.topic.startswith((ROOT + "/", PREFIX + "/"))


@VERSIONS
def test_a_demoted_user_reads_nothing_more_through_its_old_subscriptions(
        tmp_path: Path, version: int) -> None:
    """Two admins subscribed to ``#`` and ``secret/#``, one connected, one away with a
    persistent session, become viewers (users file + SIGHUP): the subscriptions a viewer
    would not be granted are gone, with what was queued on them; nothing the viewer may not
    read arrives, live or queued, before the sentinels it may read."""
    h = cheap_hash(PASSWORD)
    users = tmp_path / "users"
    users.write_text(f"live:{h}:admin\naway:{h}:admin\n")
    cfg = config()
    cfg["auth"]["users_file"] = str(users)
    g = start_gatekeeper(tmp_path, cfg)
    admin = login(g, "admin")
    live = login(g, "live", version)
    away = persistent(g, "away", f"away-{version}", version)
    filters = ["#", "secret/#", "zigbee2mqtt/#", f"{ROOT}/#"]
    try:
        for c in (live, away):  # what was granted before (a SUBSCRIBE per filter)
            assert [codes(c.subscribe(f, 1)) for f in filters] == [[1]] * 4
        away.close()
        admin.publish("secret/before", b"queued before", 1)
        admin.publish(f"{ROOT}/probe/before", b"queued before, readable", 1)
        got = live.until(lambda m: m.topic == f"{ROOT}/probe/before")
        assert [m.topic for m in got if not m.retain and m.topic.startswith(
            ("secret/", f"{ROOT}/probe/"))] == ["secret/before"]
        users.write_text(f"live:{h}:viewer\naway:{h}:viewer\n")
        mark = len(g.log)
        g.proc.send_signal(signal.SIGHUP)
        g.wait_log("users reloaded", 10, mark)
        assert codes(live.subscribe("#", 1)) == [refused(version)]  # a viewer now
        for t in ("secret/after", "zigbee2mqtt/x", "secret/before"):
            admin.publish(t, b"after " + t.encode(), 1)
        admin.publish(f"{ROOT}/probe/after", b"sentinel", 1)
        got = live.until(lambda m: m.topic == f"{ROOT}/probe/after")
        assert [m.topic for m in got if not readable(m)] == [], [m.topic for m in got]
        back = persistent(g, "away", f"away-{version}", version)
        try:
            got = back.until(lambda m: m.topic == f"{ROOT}/probe/after")
            assert [m.topic for m in got if not readable(m)] == [], [m.topic for m in got]
            assert f"{ROOT}/probe/before" in [m.topic for m in got]  # kept: still readable
            admin.publish("secret/live", b"live", 1)
            admin.publish(f"{ROOT}/probe/live", b"sentinel", 1)
            got = back.until(lambda m: m.topic == f"{ROOT}/probe/live")
            assert [m.topic for m in got if not readable(m)] == [], [m.topic for m in got]
        finally:
            back.close()
    finally:
        admin.close()
        live.close()
        assert g.stop() == 0


@VERSIONS
def test_the_parent_topic_of_a_checked_prefix_is_checked_too(
        gk: Gatekeeper, version: int) -> None:
    """``home/kitchen/#`` matches ``home/kitchen`` and ``{root}/#`` matches
    ``{root}/device/secret_valve`` (MQTT-4.7.1-2): the viewer gets neither another
    program's ``home/kitchen`` nor the limited role the topic its deny covers, retained or
    live."""
    admin = login(gk, "admin")
    parents = [PREFIX, f"{ROOT}/device/secret_valve"]
    viewer = login(gk, "view", version)
    limited = login(gk, "limited", version)
    try:
        for t in parents:
            admin.publish(t, b"retained " + t.encode(), 1, retain=True)
        assert codes(viewer.subscribe(f"{PREFIX}/#", 1)) == [1]
        assert codes(limited.subscribe(f"{ROOT}/#", 1)) == [1]
        for t in parents:
            admin.publish(t, b"live " + t.encode(), 1)
        toggle(gk, "fan")  # the sentinels, after everything else
        got = viewer.until(lambda m: m.topic == f"{PREFIX}/output/fan" and not m.retain)
        assert PREFIX not in [m.topic for m in got]
        got = limited.until(lambda m: m.topic == f"{ROOT}/device/fan/state" and not m.retain)
        assert not any("secret_valve" in m.topic for m in got), [m.topic for m in got]
    finally:
        for t in parents:
            admin.publish(t, b"", 1, retain=True)
        admin.close()
        viewer.close()
        limited.close()


@VERSIONS
def test_the_audit_of_a_denied_device_reaches_only_who_may_read_it(
        gk: Gatekeeper, version: int) -> None:
    """The role denied the valve does not learn from ``{root}/audit`` what was done to it;
    an admin does."""
    limited = login(gk, "limited", version)
    watcher = login(gk, "admin", version)
    try:
        for c in (limited, watcher):
            assert codes(c.subscribe(f"{ROOT}/audit", 1)) == [1]
        toggle(gk, "secret_valve")
        toggle(gk, "fan")  # the sentinel

        def fan(m: mqtt.MQTTMessage) -> bool:
            return bool(json.loads(m.payload)["device"] == "fan")

        seen = [json.loads(m.payload)["device"] for m in limited.until(fan)]
        assert seen == [], seen
        seen = [json.loads(m.payload)["device"] for m in watcher.until(fan)]
        assert seen == ["secret_valve"], seen
    finally:
        limited.close()
        watcher.close()
