"""The one read rule of the ACL (``AccessControl``): what a role may read decides both the
SUBSCRIBE and each delivery; a filter is granted only where every topic it holds that the
rule refuses lies under ``read_protected()`` (checked per delivery by the broker); the
device catalogue is rewritten per reader."""

from __future__ import annotations

import json

import pytest

from pi_mqtt_gpio.mqtt.hooks import ClientInfo, Decision, under_protected
from pi_mqtt_gpio.mqtt.topic_tree import topic_matches
from pi_mqtt_gpio.server.compat.mqtt_io import MqttIoTopics
from pi_mqtt_gpio.server.config_loader import parse_config
from pi_mqtt_gpio.server.security import AccessControl
from pi_mqtt_gpio.topics import Topics

CONFIG = """
node_id: pi
auth:
  allow_anonymous: true
  anonymous_role: viewer
  roles:
    limited: {subscribe: ["{root}/#"], deny: ["{root}/device/secret_valve/#"]}
    nobody: {subscribe: ["elsewhere/#"]}
    prefix_only: {subscribe: ["home/#"]}
    own: {subscribe: ["{root}/#"], deny: ["private/{username}/#"]}
devices:
  porch_light: {type: OutputDevice, pin: 17}
  fan: {type: LED, pin: 22}
  secret_valve: {type: OutputDevice, pin: 23}
  doorbell: {type: DigitalInputDevice, pin: 5}
compat:
  mqtt_io:
    topic_prefix: home
    outputs: {porch_light: {}, fan: {}, secret_valve: {}}
    inputs: {doorbell: {}}
"""

ROOT = "gatekeeper/pi"
# Topics on the broker: the node's own, mqtt-io's mirrors, other programs', other nodes'.
UNIVERSE = [
    f"{ROOT}/status", f"{ROOT}/devices", f"{ROOT}/device/fan/state",
    f"{ROOT}/device/secret_valve/state", f"{ROOT}/device/secret_valve/event",
    f"{ROOT}/reply/me/r1", f"{ROOT}/reply/other/r1",
    "home/status", "home/output/fan", "home/output/fan/set", "home/output/secret_valve",
    "home/output/porch_light", "home/input/doorbell", "home/somebody/else",
    "secret/admin/notes", "zigbee2mqtt/x", "homeassistant/switch/pi_fan/config",
    "othernode/a/b/c", "gatekeeper/other/device/x/state", "elsewhere/a", "private/bob/diary",
    "$SYS/broker/uptime",
    # parent topics: ``x/#`` matches ``x`` too (MQTT-4.7.1-2)
    "home", f"{ROOT}/device/secret_valve", f"{ROOT}/reply", "private/bob", "private",
]
FILTERS = ["#", "+/+/+/+", "+/#", "+/output/#", "home/#", "home/+/+", "home/output/+",
           f"{ROOT}/#", f"{ROOT}/device/+/state", f"{ROOT}/reply/#", f"{ROOT}/reply/me/#",
           "secret/#", "$SYS/#", "+/status", "elsewhere/#", "private/#", "home/output/fan"]


def make() -> AccessControl:
    cfg = parse_config(CONFIG)
    topics = Topics("gatekeeper", "pi")
    assert cfg.compat.mqtt_io is not None
    aliases = MqttIoTopics(cfg.compat.mqtt_io, dict(cfg.devices), topics)
    return AccessControl(cfg.auth, topics, aliases=aliases)


def who(role: str, username: str | None = "u", cid: str = "me") -> ClientInfo:
    return ClientInfo(cid, username, role, 5, "tcp", "127.0.0.1:1")


READERS = [who("viewer"), who("viewer", None), who("admin"), who("limited"), who("nobody"),
           who("prefix_only"), who("own", "bob"), who("own", None), who("operator")]


@pytest.mark.parametrize("client", READERS, ids=lambda c: f"{c.role}-{c.username}")
def test_a_granted_filter_holds_nothing_unreadable_outside_the_checked_prefixes(
        client: ClientInfo) -> None:
    """For every filter a role is granted, every topic it matches that the read rule refuses
    lies under a prefix the broker checks per delivery: so no grant delivers more than the
    rule allows, whatever the filter overlaps."""
    acl = make()
    protected = acl.read_protected()
    for f in FILTERS:
        if acl.authorize_subscribe(client, f, 1) is not Decision.ALLOW:
            continue
        for t in UNIVERSE:
            if topic_matches(f, t) and not acl.readable(client, t):
                assert under_protected(t, protected), (client.role, f, t)


@pytest.mark.parametrize("client", READERS, ids=lambda c: f"{c.role}-{c.username}")
def test_a_topic_is_subscribable_exactly_when_it_is_readable(client: ClientInfo) -> None:
    acl = make()
    for t in UNIVERSE:
        expected = Decision.ALLOW if acl.readable(client, t) else Decision.DENY
        assert acl.authorize_subscribe(client, t, 1) is expected, (client.role, t)


def test_the_read_rule() -> None:
    acl = make()
    viewer, anon, admin = who("viewer"), who("viewer", None), who("admin")
    limited, prefix_only = who("limited"), who("prefix_only")
    for c in (viewer, anon):
        assert acl.readable(c, f"{ROOT}/device/fan/state")
        assert acl.readable(c, "home/output/fan")  # read as the device's state
        assert acl.readable(c, "home/status")  # as the node's status
        assert not acl.readable(c, "home/somebody/else")  # another program's: own filters
        assert not acl.readable(c, "secret/admin/notes")
        assert not acl.readable(c, "zigbee2mqtt/x")
        assert not acl.readable(c, f"{ROOT}/reply/other/r1")
    assert acl.readable(viewer, f"{ROOT}/reply/me/r1")
    assert not acl.readable(admin, f"{ROOT}/reply/other/r1")  # replies: their requester's
    assert acl.readable(admin, "secret/admin/notes")
    assert not acl.readable(limited, f"{ROOT}/device/secret_valve/state")
    assert not acl.readable(limited, "home/output/secret_valve")  # the device's deny holds
    assert acl.readable(limited, "home/output/porch_light")
    # A grant of mqtt-io's prefix reads other programs' topics there, never a device's
    # mirror: that is read as the device topic it stands for, and nothing else.
    assert acl.readable(prefix_only, "home/somebody/else")
    assert not acl.readable(prefix_only, "home/output/fan")
    # A deny filter whose placeholder cannot be filled is widened, never dropped.
    assert not acl.readable(who("own", None), "private/bob/diary")
    assert not acl.readable(who("own", "bob"), "private/bob/diary")
    assert acl.readable(who("own", "bob"), f"{ROOT}/status")


@pytest.mark.parametrize("client", [who("viewer"), who("viewer", None), who("operator")],
                         ids=["viewer", "anonymous", "operator"])
def test_overlapping_something_readable_grants_nothing(client: ClientInfo) -> None:
    """``#`` and ``+/+/+/+`` match the node's mqtt-io mirrors, which these roles may read:
    still refused, as with mqtt-io's topics off. The prefix itself and the node's tree are
    granted (their unreadable topics are checked per delivery)."""
    acl = make()
    for f in ("#", "+/+/+/+", "+/#", "+/output/#", "secret/#", "$share/g/#"):
        assert acl.authorize_subscribe(client, f, 1) is Decision.DENY, f
    for f in ("home/#", "home/output/+", f"{ROOT}/#", f"{ROOT}/reply/me/#"):
        assert acl.authorize_subscribe(client, f, 1) is Decision.ALLOW, f
    assert acl.authorize_subscribe(client, f"{ROOT}/reply/#", 1) is Decision.DENY
    plain = make()
    plain.aliases = None  # mqtt-io's topics off: the same answers for the wildcards
    assert plain.authorize_subscribe(client, "#", 1) is Decision.DENY
    nobody = who("nobody")
    assert acl.authorize_subscribe(nobody, "home/#", 1) is Decision.DENY  # nothing there
    assert acl.authorize_subscribe(who("admin"), "#", 1) is Decision.ALLOW


def catalogue(*names: str) -> bytes:
    return json.dumps({"node_id": "pi", "root": ROOT, "devices": [
        {"name": n, "type": "LED", "state_topic": f"{ROOT}/device/{n}/state",
         "description": f"the {n}"} for n in names]}, separators=(",", ":")).encode()


def test_the_catalogue_lists_only_what_its_reader_may_read() -> None:
    acl = make()
    doc = catalogue("fan", "secret_valve", "porch_light")
    topic = f"{ROOT}/devices"
    assert topic in acl.read_protected()
    limited = who("limited")
    view = acl.reader_payload(limited, topic, doc)
    assert [d["name"] for d in json.loads(view)["devices"]] == ["fan", "porch_light"]
    assert b"secret_valve" not in view
    assert json.loads(view)["root"] == ROOT  # the rest of the document as published
    # the same view for every reader with the same filters (made once)
    assert acl.reader_payload(who("limited", "other", "c9"), topic, doc) is view
    # readers that may read every device get the catalogue as published (the same bytes)
    for c in (who("admin"), who("viewer"), who("viewer", None), ClientInfo(
            "gk", None, None, 5, "internal", "", internal=True)):
        assert acl.reader_payload(c, topic, doc) is doc
    # a reader of no device gets an empty list; other topics are never touched
    assert json.loads(acl.reader_payload(who("nobody"), topic, doc))["devices"] == []
    assert acl.reader_payload(limited, f"{ROOT}/status", doc) is doc
    # a changed catalogue is filtered again
    doc2 = catalogue("secret_valve", "bell")
    assert [d["name"] for d in json.loads(acl.reader_payload(limited, topic, doc2))
            ["devices"]] == ["bell"]
    assert acl.reader_payload(limited, topic, b"not json") == b"not json"



def audit(device: str, **more: object) -> bytes:
    return json.dumps({"ts": "t", "client_id": "c", "username": "u", "device": device,
                       "method": "toggle", "source": "call", "ok": True, **more}).encode()


def test_an_audit_entry_reaches_only_readers_of_the_devices_it_names() -> None:
    """``{root}/audit`` names devices and what was done to them: a reader gets an entry only
    when it may read the state of every device the entry names (a lease's too)."""
    acl = make()
    topic = f"{ROOT}/audit"
    assert topic in acl.read_protected()
    limited, admin, viewer = who("limited"), who("admin"), who("viewer")
    internal = ClientInfo("gk", None, None, 5, "internal", "", internal=True)
    hidden = [audit("secret_valve"),
              audit("lease", kwargs={"devices": ["fan", "secret_valve"], "ttl": 5}),
              audit("lease", method="lost", lease={"devices": ["secret_valve"]})]
    shown = [audit("fan"), audit("lease", kwargs={"devices": ["fan"]}),
             audit("lease", lease={"devices": None}), b"not json"]
    for entry in hidden:
        assert acl.reader_payload(limited, topic, entry) is None, entry
    for entry in hidden + shown:
        for c in (admin, viewer, internal):
            assert acl.reader_payload(c, topic, entry) is entry
    for entry in shown:
        assert acl.reader_payload(limited, topic, entry) is entry, entry
    assert acl.reader_payload(who("nobody"), topic, audit("fan")) is None
