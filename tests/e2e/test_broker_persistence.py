"""The embedded broker across restarts (``persistence.path``: retained messages of every
client, persistent sessions, a corrupt store, roles changed while down) and its
``$SYS/broker/...`` statistics, on the real daemon, on MQTT 3.1.1 and 5.0."""

from __future__ import annotations

import base64
import json
import queue
import signal
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pi_mqtt_gpio.mqtt.codec import decode, encode_publish
from pi_mqtt_gpio.mqtt.packets import PROTOCOL_50, Publish
from tests.conftest import Client, Gatekeeper, broker_config, cheap_hash, start_gatekeeper, wait_for

PASSWORD = "s3cret"
PASSWORD_HASH = cheap_hash(PASSWORD)


def persistent_config(tmp: Path, **overrides: Any) -> dict[str, Any]:
    return broker_config(persistence={"path": str(tmp / "state.json"), "autosave_s": 0.5},
                         homeassistant={"discovery": False}, **overrides)


def restart(gk: Gatekeeper, tmp: Path, config: dict[str, Any],
            sig: int = signal.SIGTERM) -> Gatekeeper:
    code = gk.stop(sig)
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), "\n".join(gk.log[-30:])
    return start_gatekeeper(tmp, config)


def stored_topics(tmp: Path) -> dict[str, list[str]]:
    """The retained topics and the sessions' queued topics in the broker's store file."""
    try:
        doc = json.loads((tmp / "broker.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}

    def topic(record: list[Any]) -> str:
        packet = decode(base64.b64decode(record[0]), PROTOCOL_50, from_client=False)
        assert packet is not None and isinstance(packet[0], Publish)
        return packet[0].topic

    out = {"retained": [topic(r) for r in doc["retained"]]}
    for s in doc["sessions"]:
        out[s["id"]] = [topic(h[0]) for h in s["queue"] + s["inflight"]]
    return out


def persistent_client(port: int, version: int, client_id: str, **kw: Any) -> Client:
    """A client whose session outlives its connection (3.1.1 clean session 0; 5.0 clean
    start 0 with a Session Expiry Interval), recording CONNACK's session present flag."""
    if version == mqtt.MQTTv5:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c = Client(port, version, client_id=client_id, clean=False, properties=props, **kw)
    else:
        c = Client(port, version, client_id=client_id, clean=False, **kw)
    c.c.on_connect = lambda _c, _u, flags, rc, _p: c.connack.put((rc, flags.session_present))
    return c


def login(c: Client, user: str) -> Client:
    c.c.username_pw_set(user, PASSWORD)
    return c


def refused(codes: list[Any]) -> bool:
    return all(int(getattr(rc, "value", rc)) >= 0x80 for rc in codes)


# ------------------------------------------------------------------------------ retained
def test_foreign_retained_messages_survive_a_restart(tmp_path: Path, clients: list[Client],
                                                     version: int) -> None:
    config = persistent_config(tmp_path)
    gk = start_gatekeeper(tmp_path, config)
    try:
        pub = Client(gk.port, version)
        clients.append(pub)
        pub.connect()
        pub.publish("zigbee2mqtt/lamp", b'{"state":"ON"}', qos=1, retain=True)
        pub.publish("tasmota/x", b"42", qos=1, retain=True)
        pub.close()
        gk = restart(gk, tmp_path, config)
        # The node's own tree (states, status, catalogue) is published again, never kept.
        assert not [t for t in stored_topics(tmp_path)["retained"]
                    if t.startswith(gk.root + "/") or t.startswith("$SYS")]
        sub = Client(gk.port, version)
        clients.append(sub)
        sub.connect()
        sub.subscribe("zigbee2mqtt/#", 1)
        sub.subscribe("tasmota/#", 1)
        got = {m.topic: (m.payload, m.retain) for m in (sub.get(), sub.get())}
        assert got == {"zigbee2mqtt/lamp": (b'{"state":"ON"}', True),
                       "tasmota/x": (b"42", True)}
    finally:
        gk.stop()


# ------------------------------------------------------------------------------ sessions
def test_queued_message_of_a_persistent_session_survives_a_restart(
        tmp_path: Path, clients: list[Client], version: int) -> None:
    config = persistent_config(tmp_path)
    gk = start_gatekeeper(tmp_path, config)
    cid = f"keeper-{version}"
    try:
        c = persistent_client(gk.port, version, cid)
        clients.append(c)
        assert c.connect() == (0, False)
        c.subscribe("alerts/#", 1)
        c.close()
        pub = Client(gk.port, version)
        clients.append(pub)
        pub.connect()
        pub.publish("alerts/door", b"open", qos=1)
        pub.close()
        gk = restart(gk, tmp_path, config)
        again = persistent_client(gk.port, version, cid)
        clients.append(again)
        assert again.connect() == (0, True)  # session present
        m = again.get()
        assert (m.topic, m.payload, m.qos) == ("alerts/door", b"open", 1)
        # and the subscription itself came back
        pub = Client(gk.port, version)
        clients.append(pub)
        pub.connect()
        pub.publish("alerts/window", b"shut", qos=1)
        assert again.get().topic == "alerts/window"
    finally:
        gk.stop()


def test_kill_9_keeps_what_was_saved(tmp_path: Path, clients: list[Client],
                                     version: int) -> None:
    config = persistent_config(tmp_path)
    gk = start_gatekeeper(tmp_path, config)
    cid = f"crash-{version}"
    try:
        c = persistent_client(gk.port, version, cid)
        clients.append(c)
        c.connect()
        c.subscribe("alerts/#", 1)
        c.close()
        pub = Client(gk.port, version)
        clients.append(pub)
        pub.connect()
        pub.publish("zigbee2mqtt/plug", b"on", qos=1, retain=True)
        pub.publish("alerts/smoke", b"!", qos=1)
        pub.close()
        # the change is older than an autosave: written by the autosave, not at shutdown
        assert wait_for(lambda: stored_topics(tmp_path).get(cid) == ["alerts/smoke"]
                        and "zigbee2mqtt/plug" in stored_topics(tmp_path)["retained"], 10)
        gk = restart(gk, tmp_path, config, signal.SIGKILL)
        again = persistent_client(gk.port, version, cid)
        clients.append(again)
        assert again.connect() == (0, True)
        assert again.get().topic == "alerts/smoke"
        sub = Client(gk.port, version)
        clients.append(sub)
        sub.connect()
        sub.subscribe("zigbee2mqtt/plug", 1)
        assert sub.get().payload == b"on"
    finally:
        gk.stop()


# ------------------------------------------------------------------------------ corrupt file
@pytest.mark.parametrize("content", ["garbage", "oversized", "wrong shape"])
def test_a_corrupt_or_oversized_store_is_moved_aside(tmp_path: Path, clients: list[Client],
                                                     version: int, content: str) -> None:
    limits = {"max_retained_bytes": 65536, "max_queued_bytes": 65536, "max_sessions": 16,
              "max_subscription_bytes_per_client": 1024}
    config = persistent_config(tmp_path, broker={
        "listeners": [{"type": "tcp", "host": "127.0.0.1", "port": 0}], "limits": limits})
    data = {
        "garbage": b"{\"version\": 1, \"retained\": [",
        "oversized": json.dumps({"version": 1, "saved_at": 1.0, "retained": [], "sessions": [],
                                 "pad": "x" * 500_000}).encode(),
        "wrong shape": json.dumps({"version": 1, "saved_at": 1.0, "sessions": [],
                                   "retained": [["bm90IGEgcGFja2V0", None, None, None, None]]
                                   }).encode(),
    }[content]
    (tmp_path / "broker.json").write_bytes(data)
    gk = start_gatekeeper(tmp_path, config)
    try:
        gk.wait_log("broker store", 5)
        aside = list(tmp_path.glob("broker.json.corrupt-*"))
        assert len(aside) == 1 and aside[0].read_bytes() == data
        c = Client(gk.port, version)  # and the broker serves
        clients.append(c)
        c.connect()
        c.subscribe("a/b", 1)
        c.publish("a/b", b"x", qos=1)
        assert c.get().payload == b"x"
    finally:
        assert gk.stop() == 0


# ------------------------------------------------------------------------------ roles
def test_a_subscription_the_role_lost_while_down_delivers_nothing(
        tmp_path: Path, clients: list[Client], version: int) -> None:
    users = tmp_path / "users"
    users.write_text(f"bob:{PASSWORD_HASH}:admin\nroot:{PASSWORD_HASH}:admin\n")
    config = persistent_config(tmp_path, auth={"allow_anonymous": False, "roles": {},
                                               "users_file": str(users)})
    gk = start_gatekeeper(tmp_path, config)
    cid = f"bob-{version}"
    try:
        bob = login(persistent_client(gk.port, version, cid), "bob")
        clients.append(bob)
        bob.connect()
        assert not refused(bob.subscribe("zigbee2mqtt/#", 1))
        assert not refused(bob.subscribe(f"{gk.root}/note", 1))
        bob.close()
        admin = login(Client(gk.port, version), "root")
        clients.append(admin)
        admin.connect()
        admin.publish("zigbee2mqtt/lamp", b"queued secret", qos=1)
        admin.publish(f"{gk.root}/note", b"queued note", qos=1)
        admin.close()
        gk.stop()
        users.write_text(f"bob:{PASSWORD_HASH}:viewer\nroot:{PASSWORD_HASH}:admin\n")
        gk = start_gatekeeper(tmp_path, config)
        bob = login(persistent_client(gk.port, version, cid), "bob")
        clients.append(bob)
        assert bob.connect() == (0, True)
        admin = login(Client(gk.port, version), "root")
        clients.append(admin)
        admin.connect()
        admin.publish("zigbee2mqtt/lamp", b"live secret", qos=1)
        admin.publish(f"{gk.root}/note", b"live note", qos=1)
        admin.publish(f"{gk.root}/note", b"sentinel", qos=1)  # after everything above
        got = [(m.topic, m.payload) for m in bob.until(lambda m: m.payload == b"sentinel")]
        # what the viewer may read arrives (in order); nothing of zigbee2mqtt, queued or live
        assert got == [(f"{gk.root}/note", b"queued note"), (f"{gk.root}/note", b"live note")]
    finally:
        gk.stop()


@pytest.mark.parametrize("change", ["removed", "demoted"])
def test_a_session_dropped_at_a_start_stays_dropped(
        tmp_path: Path, clients: list[Client], version: int, change: str) -> None:
    """bob's persistent session (a queued message) is dropped at a start because bob was
    removed from the users file (or its subscription, because bob became a viewer); the
    gatekeeper stops again with nothing else happening; bob is an admin again: his client id
    gets no session back (removed) or no subscription (demoted), never the old message."""
    users = tmp_path / "users"
    users.write_text(f"bob:{PASSWORD_HASH}:admin\nroot:{PASSWORD_HASH}:admin\n")
    config = persistent_config(tmp_path, auth={"allow_anonymous": False, "roles": {},
                                               "users_file": str(users)})
    gk = start_gatekeeper(tmp_path, config)
    cid = f"bob-{version}"
    try:
        bob = login(persistent_client(gk.port, version, cid), "bob")
        clients.append(bob)
        bob.connect()
        assert not refused(bob.subscribe("zigbee2mqtt/#", 1))
        bob.close()
        admin = login(Client(gk.port, version), "root")
        clients.append(admin)
        admin.connect()
        admin.publish("zigbee2mqtt/lamp", b"for the old bob", qos=1)
        admin.close()
        gk.stop()
        users.write_text(f"root:{PASSWORD_HASH}:admin\n" if change == "removed" else
                         f"bob:{PASSWORD_HASH}:viewer\nroot:{PASSWORD_HASH}:admin\n")
        gk = start_gatekeeper(tmp_path, config)  # bob's session is dropped here
        gk.stop()  # nothing changed since that start
        users.write_text(f"bob:{PASSWORD_HASH}:admin\nroot:{PASSWORD_HASH}:admin\n")
        gk = start_gatekeeper(tmp_path, config)
        bob = login(persistent_client(gk.port, version, cid), "bob")
        clients.append(bob)
        assert bob.connect() == (0, change == "demoted")  # a session only if bob stayed
        admin = login(Client(gk.port, version), "root")
        clients.append(admin)
        admin.connect()
        admin.publish("zigbee2mqtt/lamp", b"live", qos=1)
        admin.publish(f"{gk.root}/marker", b"x", qos=1, retain=True)
        assert not refused(bob.subscribe(f"{gk.root}/marker", 1))
        got = bob.get()
        assert (got.topic, got.payload) == (f"{gk.root}/marker", b"x")  # nothing before it
    finally:
        gk.stop()


# ------------------------------------------------------------------------------ $SYS
def _sys_values(c: Client, want: Any, timeout: float = 10.0) -> dict[str, bytes]:
    """``$SYS`` messages as they come, until ``want(values)`` holds."""
    values: dict[str, bytes] = {}
    while True:
        try:
            m = c.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"$SYS never got there: {values}") from None
        if m.topic.startswith("$SYS/"):
            values[m.topic] = m.payload
        if want(values):
            return values


def _uptime(values: dict[str, bytes]) -> int:
    text = values.get("$SYS/broker/uptime", b"-1 seconds").decode()
    number, unit = text.split(" ")
    assert unit == "seconds"
    return int(number)


def test_sys_statistics_for_admin_only(tmp_path: Path, clients: list[Client],
                                       version: int) -> None:
    config = broker_config(
        broker={"listeners": [{"type": "tcp", "host": "127.0.0.1", "port": 0}],
                "sys_interval_s": 0.2},
        auth={"allow_anonymous": True, "anonymous_role": "everyone",
              "users": {"root": {"password_hash": PASSWORD_HASH, "role": "admin"},
                        "guest": {"password_hash": PASSWORD_HASH, "role": "viewer"},
                        "w": {"password_hash": PASSWORD_HASH, "role": "writer"}},
              "roles": {"everyone": {"subscribe": ["#"], "publish": ["#"]},
                        "writer": {"subscribe": ["#"], "publish": ["$SYS/#", "#"]}}})
    gk = start_gatekeeper(tmp_path, config)
    try:
        admin = login(Client(gk.port, version), "root")
        clients.append(admin)
        admin.connect()
        assert not refused(admin.subscribe("$SYS/broker/#", 0))
        # the retained values at once, then the admin itself counted
        first = _sys_values(admin, lambda v: {"$SYS/broker/uptime", "$SYS/broker/version"}
                            <= set(v) and int(v.get("$SYS/broker/clients/connected", 0)) == 1)
        assert first["$SYS/broker/version"].startswith(b"pi-mqtt-gatekeeper version ")
        # everyone-with-# subscribes: no $SYS for it (MQTT-4.7.2-1), and connected grows
        everyone = Client(gk.port, version)
        clients.append(everyone)
        everyone.connect()
        everyone.subscribe("#", 0)
        later = _sys_values(admin, lambda v: _uptime(v) > _uptime(first)
                            and int(v.get("$SYS/broker/clients/connected", 0)) >= 2)
        assert int(later["$SYS/broker/messages/received"]) > 0
        assert int(later["$SYS/broker/bytes/received"]) > 0
        assert int(later["$SYS/broker/bytes/sent"]) > 0
        # a viewer is refused
        guest = login(Client(gk.port, version), "guest")
        clients.append(guest)
        guest.connect()
        assert refused(guest.subscribe("$SYS/broker/#", 0))
        # no client writes there, not even a role whose publish filters name $SYS/#
        writer = login(Client(gk.port, version), "w")
        clients.append(writer)
        writer.connect()
        writer.subscribe("marker", 0)
        writer.publish("$SYS/broker/uptime", b"forged", qos=1, retain=True)
        writer.publish("$SYS/broker/forged", b"forged", qos=1, retain=True)
        writer.publish("marker", b"after", qos=1)
        assert writer.get().payload == b"after"
        # what the everyone-with-# client got up to the marker: nothing under $
        seen = []
        while True:
            m = everyone.get()
            seen.append(m.topic)
            if m.topic == "marker":
                break
        assert not [t for t in seen if t.startswith("$")], seen
        fresh = login(Client(gk.port, version), "root")
        clients.append(fresh)
        fresh.connect()
        fresh.subscribe("$SYS/broker/#", 0)
        values = _sys_values(fresh, lambda v: "$SYS/broker/uptime" in v)
        assert values["$SYS/broker/uptime"] != b"forged"
        fresh.subscribe("marker", 0)
        writer.publish("marker", b"end", qos=1)
        topics = []
        while True:
            m = fresh.get()
            if m.topic == "marker":
                break
            topics.append(m.topic)
        assert "$SYS/broker/forged" not in topics
    finally:
        gk.stop()


# ------------------------------------------------------------------------------ large files
def _peak_rss_kib(gk: Gatekeeper) -> int:
    with open(f"/proc/{gk.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _long_queue_file(path: Path, messages: int) -> int:
    """``broker.json`` with one session (subscribed to big/#) holding ``messages`` queued
    QoS 1 messages of 40 bytes (written as text: the test itself never holds them)."""
    packet = encode_publish("big/t", b"p" * 40, 1, False, False, 1, {}, PROTOCOL_50, None)
    entry = json.dumps([[base64.b64encode(packet).decode(), None, None, None, None],
                        1, False, [], 0, False])
    head = json.dumps({"version": 1, "saved_at": 1e12, "retained": [], "sessions": [{
        "id": "big", "expiry": 3600, "left": 3600.0,
        "client": [None, "everyone", PROTOCOL_50, "tcp", "127.0.0.1:1"],
        "subs": [["big/#", 1, False, False, 0, None]], "inflight": [], "rel": [],
        "next_pid": 1, "queue": "Q"}]})
    before, after = head.encode().split(b'"Q"')
    with open(path, "wb") as f:
        f.write(before + b"[")
        chunk = ",".join([entry] * 10_000).encode()
        for i in range(messages // 10_000):
            f.write((b"," if i else b"") + chunk)
        f.write(b"]" + after)
    return path.stat().st_size


@pytest.mark.parametrize("messages", [1_000_000, 250_000], ids=["100MiB", "25MiB"])
def test_a_huge_store_costs_no_more_memory_than_the_limits(tmp_path: Path,
                                                           messages: int) -> None:
    """One session with a million queued messages (100 MiB: past what a Pi reads, moved
    aside unread) or a quarter of a million (25 MiB: read, its queue cut to
    max_queued_messages while it is read): the daemon's peak RSS stays within 100 MiB of an
    empty start."""
    config = persistent_config(tmp_path, broker={
        "listeners": [{"type": "tcp", "host": "127.0.0.1", "port": 0}]})
    gk = start_gatekeeper(tmp_path, config)
    try:
        baseline = _peak_rss_kib(gk)
    finally:
        assert gk.stop() == 0
    (tmp_path / "broker.json").unlink(missing_ok=True)
    size = _long_queue_file(tmp_path / "broker.json", messages)
    gk = start_gatekeeper(tmp_path, config, timeout=120)
    try:
        line = gk.wait_log("broker store", 5)
        peak = _peak_rss_kib(gk)
        print(f"{size / 2**20:.0f} MiB file: peak RSS {peak // 1024} MiB, empty start "
              f"{baseline // 1024} MiB; {line}")
        aside = list(tmp_path.glob("broker.json.corrupt-*"))
        if messages == 1_000_000:
            assert "larger than the broker's limits allow" in line and len(aside) == 1
        else:
            assert not aside, line
            assert "1 sessions with 1000 messages restored" in line, line
            assert f"{messages - 1000} past the limits" in line, line
        assert peak - baseline < 100 * 1024
    finally:
        assert gk.stop() == 0
