"""The RPC handler on its own: requests in, replies and audit entries out, through a worker
without a thread (tests/server/sync_worker.py) and no broker, no sockets.

The table: a request (topic, payload, MQTT 5 properties, who sent it) and the reply it gets
(``ok``, the error code and a piece of its message, or no reply at all), like the codec's
table of malformed packets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from pi_mqtt_gpio.mqtt.hooks import BrokerHooks, ClientInfo, Decision
from pi_mqtt_gpio.mqtt.message import Message
from pi_mqtt_gpio.mqtt.packets import Prop, Properties
from pi_mqtt_gpio.payloads import (
    AuditRecord,
    ErrorReply,
    LeaseGranted,
    LeaseReleased,
    LeaseTable,
    OkReply,
)
from pi_mqtt_gpio.server.rpc_handler import MAX_REQUEST_BYTES, RpcHandler
from pi_mqtt_gpio.server.security.leases import ControlLeaseManager
from pi_mqtt_gpio.server.twin import Twin
from pi_mqtt_gpio.topics import Topics
from tests.payload_shape import conforms
from tests.server.sync_worker import SyncWorker, settle

DEVICES = """\
  led: {type: LED, pin: 17}
  lamp: {type: LED, pin: 18, lease_required: true}
  button: {type: Button, pin: 4}
"""
TOPICS = Topics("gk", "n")
REPLY = "gk/n/reply/c1"  # the caller's own reply prefix
ELSEWHERE = "home/kitchen"  # a topic the ACL lets operators publish to
ROLES = {"alice": "operator", "bob": "operator", "guest": "viewer", "root": "admin"}
RIGHTS = {"admin": {"simulate", "manage", "force_release"}, "operator": set(), "viewer": set()}


class _Acl(BrokerHooks):
    """Operators and admins may publish under ``home/``, nobody elsewhere."""

    def authorize_publish(self, client: ClientInfo, topic: str, qos: int, retain: bool
                          ) -> Decision:
        if client.role in ("operator", "admin") and topic.startswith("home/"):
            return Decision.ALLOW
        return Decision.DENY


@dataclass
class Sent:
    topic: str
    payload: bytes
    qos: int
    props: Properties
    retain: bool = False

    @property
    def body(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.payload)
        return doc


@dataclass
class Rig:
    hw: SyncWorker
    twin: Twin
    rpc: RpcHandler
    sent: list[Sent] = field(default_factory=list)
    refused_sets: list[str] = field(default_factory=list)

    def on(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic]

    def replies(self) -> list[Sent]:
        """What was sent that is not the twin's (retained states, events) nor an audit
        entry."""
        return [s for s in self.sent if not s.retain and s.topic != TOPICS.audit
                and not s.topic.endswith("/event")]

    async def request(self, topic: str, payload: bytes, *, props: Properties | None = None,
                      user: str = "alice", client: str = "c1", qos: int = 1) -> None:
        self.sent.clear()
        self.rpc.handle(Message(topic, payload, qos, False, props or {}, None, client, user,
                                ROLES.get(user)))
        await settle()


async def _rig(*, queue_max: int = 256) -> Rig:
    hw = SyncWorker.from_yaml(DEVICES, queue_max=queue_max)
    rig: Rig | None = None

    def send(topic: str, payload: bytes, qos: int, props: Properties,
             retain: bool = False) -> None:
        assert rig is not None
        rig.sent.append(Sent(topic, payload, qos, dict(props), retain))

    twin = Twin(TOPICS, hw, lambda topic, payload, qos, retain: send(topic, payload, qos, {},
                                                                     retain))
    rpc = RpcHandler(
        TOPICS, hw, twin, send, acl=[_Acl()], leases=ControlLeaseManager("device", 60),
        may_command=lambda msg: msg.role in ("operator", "admin"),
        has_right=lambda msg, right: right in RIGHTS.get(msg.role or "", set()))
    rig = Rig(hw, twin, rpc)
    rpc.on_set_refused = rig.refused_sets.append
    for name, state in (await hw.start()).items():
        twin.state(name, state)
    return rig


def run(test: Callable[[Rig], Awaitable[None]], **kwargs: Any) -> None:
    async def main() -> None:
        rig = await _rig(**kwargs)
        try:
            await test(rig)
        finally:
            await rig.hw.stop()

    asyncio.run(main())


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` is true (a timer fired)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


def call(device: str = "led") -> str:
    return TOPICS.device(device, "call")


def v5(correlation: bytes = b"k1", topic: str = REPLY) -> Properties:
    return {Prop.RESPONSE_TOPIC: topic, Prop.CORRELATION_DATA: correlation}


def j(obj: Any) -> bytes:
    return json.dumps(obj).encode()


DEEP = b'{"reply_to": "' + REPLY.encode() + b'", "correlation_id": 7, "x": ' \
    + b"[" * 30_000 + b"]" * 30_000 + b"}"

# (id, topic, payload, MQTT 5 properties, sender's user name,
#  expected reply: None (no reply), or (ok, error code or None, piece of the message))
TABLE: list[tuple[str, str, bytes, Properties | None, str,
                  tuple[bool, str | None, str] | None]] = [
    ("state", call(), j({"method": "state"}), v5(), "alice", (True, None, "")),
    ("on", call(), j({"method": "on"}), v5(), "alice", (True, None, "")),
    ("bad-json", call(), b"{", v5(), "alice", (False, "BAD_REQUEST", "not valid JSON")),
    ("not-utf8", call(), b"\xff\xfe", v5(), "alice", (False, "BAD_REQUEST", "not valid JSON")),
    ("not-an-object", call(), b"[1]", v5(), "alice",
     (False, "BAD_REQUEST", "must be a JSON object")),
    ("too-large", call(), b" " * (MAX_REQUEST_BYTES + 1), v5(), "alice",
     (False, "BAD_REQUEST", "larger than")),
    ("too-deep-v5", call(), DEEP, v5(), "alice", (False, "BAD_REQUEST", "nested too deeply")),
    ("no-method", call(), j({}), v5(), "alice", (False, "BAD_REQUEST", "'method'")),
    ("empty-method", call(), j({"method": ""}), v5(), "alice", (False, "BAD_REQUEST", "'method'")),
    ("method-not-a-string", call(), j({"method": 3}), v5(), "alice",
     (False, "BAD_REQUEST", "'method'")),
    ("unknown-method", call(), j({"method": "fly"}), v5(), "alice",
     (False, "UNKNOWN_METHOD", "has no method 'fly'")),
    ("unknown-device", call("nope"), j({"method": "on"}), v5(), "alice",
     (False, "UNKNOWN_DEVICE", "'nope'")),
    ("args-not-a-list", call(), j({"method": "value", "args": 1}), v5(), "alice",
     (False, "BAD_ARGUMENT", "args must be a list")),
    ("kwargs-not-an-object", call(), j({"method": "value", "kwargs": []}), v5(), "alice",
     (False, "BAD_ARGUMENT", "kwargs must be an object")),
    ("unknown-kwarg", call(), j({"method": "on", "kwargs": {"speed": 1}}), v5(), "alice",
     (False, "BAD_ARGUMENT", "no argument 'speed'")),
    ("too-many-args", call(), j({"method": "on", "args": [1, 2, 3]}), v5(), "alice",
     (False, "BAD_ARGUMENT", "at most")),
    ("missing-arg", call(), j({"method": "value"}), v5(), "alice",
     (False, "BAD_ARGUMENT", "needs argument 'value'")),
    ("sim-only-needs-right", call("button"), j({"method": "sim_press"}), v5(), "alice",
     (False, "NOT_AUTHORIZED", "'simulate' right")),
    ("sim-only-with-right", call("button"), j({"method": "sim_press"}), v5(), "root",
     (True, None, "")),
    ("viewer-may-not-command", call(), j({"method": "on"}), v5(), "guest",
     (False, "NOT_AUTHORIZED", "role 'viewer' may not publish")),
    ("lease-required", call("lamp"), j({"method": "on"}), v5(), "alice",
     (False, "LEASE_REQUIRED", "lamp")),
    ("clear-lockout-needs-manage", call(), j({"method": "clear_lockout"}), v5(), "alice",
     (False, "NOT_AUTHORIZED", "'manage' right")),
    ("clear-lockout", call(), j({"method": "clear_lockout"}), v5(), "root", (True, None, "")),
    ("clear-lockout-unknown-device", call("nope"), j({"method": "clear_lockout"}), v5(), "root",
     (False, "UNKNOWN_DEVICE", "'nope'")),
    # 3.1.1: the reply destination and correlation in the payload
    ("v311", call(), j({"method": "state", "reply_to": REPLY, "correlation_id": 9}), None,
     "alice", (True, None, "")),
    ("v311-bad-correlation", call(), j({"method": "state", "reply_to": REPLY,
                                        "correlation_id": {"a": 1}}), None, "alice",
     (False, "BAD_REQUEST", "correlation_id must be")),
    ("v311-too-deep", call(), DEEP, None, "alice", (False, "BAD_REQUEST", "nested too deeply")),
    ("v311-reply-to-not-a-string", call(), j({"method": "state", "reply_to": 5}), None,
     "alice", None),
    ("no-reply-destination", call(), j({"method": "state"}), None, "alice", None),
    # where a reply may go
    ("reply-elsewhere-allowed", call(), j({"method": "state"}), v5(topic=ELSEWHERE), "alice",
     (True, None, "")),
    ("reply-elsewhere-refused", call(), j({"method": "state"}), v5(topic=ELSEWHERE), "guest",
     None),
    ("reply-to-another-client", call(), j({"method": "state"}), v5(topic="gk/n/reply/c2"),
     "alice", None),
    ("reply-into-own-tree", call(), j({"method": "state"}), v5(topic="gk/n/device/led/state"),
     "alice", None),
    ("reply-wildcard", call(), j({"method": "state"}), v5(topic="home/#"), "alice", None),
    # the lease desk
    ("lease-acquire", TOPICS.lease_call, j({"method": "acquire", "kwargs": {"devices": ["led"]}}),
     v5(), "alice", (True, None, "")),
    ("lease-unknown-method", TOPICS.lease_call, j({"method": "steal"}), v5(), "alice",
     (False, "UNKNOWN_METHOD", "acquire, renew, release")),
    ("lease-bad-json", TOPICS.lease_call, b"{", v5(), "alice",
     (False, "BAD_REQUEST", "not valid JSON")),
    ("lease-kwargs-not-an-object", TOPICS.lease_call, j({"method": "acquire", "kwargs": 1}),
     v5(), "alice", (False, "BAD_ARGUMENT", "kwargs must be an object")),
    ("lease-unknown-kwarg", TOPICS.lease_call, j({"method": "acquire", "kwargs": {"x": 1}}),
     v5(), "alice", (False, "BAD_ARGUMENT", "no argument 'x'")),
    ("lease-devices-empty", TOPICS.lease_call, j({"method": "acquire",
                                                  "kwargs": {"devices": []}}),
     v5(), "alice", (False, "BAD_ARGUMENT", "non-empty list")),
    ("lease-unknown-device", TOPICS.lease_call, j({"method": "acquire",
                                                   "kwargs": {"devices": ["nope"]}}),
     v5(), "alice", (False, "UNKNOWN_DEVICE", "'nope'")),
    ("lease-ttl-not-a-number", TOPICS.lease_call, j({"method": "acquire",
                                                     "kwargs": {"ttl": True}}),
     v5(), "alice", (False, "BAD_ARGUMENT", "ttl must be")),
    ("lease-id-not-a-string", TOPICS.lease_call, j({"method": "renew",
                                                    "kwargs": {"lease_id": 1}}),
     v5(), "alice", (False, "BAD_ARGUMENT", "lease_id must be")),
    ("lease-force-not-a-bool", TOPICS.lease_call, j({"method": "release",
                                                     "kwargs": {"force": 1}}),
     v5(), "alice", (False, "BAD_ARGUMENT", "force must be")),
    ("lease-force-needs-right", TOPICS.lease_call, j({"method": "release",
                                                      "kwargs": {"force": True}}),
     v5(), "alice", (False, "NOT_AUTHORIZED", "'force_release' right")),
    ("lease-viewer", TOPICS.lease_call, j({"method": "acquire"}), v5(), "guest",
     (False, "NOT_AUTHORIZED", "may not publish")),
]


@pytest.mark.parametrize(("name", "topic", "payload", "props", "user", "expected"), TABLE,
                         ids=[row[0] for row in TABLE])
def test_request_and_reply(name: str, topic: str, payload: bytes, props: Properties | None,
                           user: str, expected: tuple[bool, str | None, str] | None) -> None:
    async def test(rig: Rig) -> None:
        await rig.request(topic, payload, props=props, user=user)
        replies = rig.replies()
        if expected is None:
            assert replies == []
        else:
            ok, code, piece = expected
            assert len(replies) == 1, rig.sent
            body = replies[0].body
            assert body["ok"] is ok, body
            if code is not None:
                assert body["error"]["code"] == code
                assert piece in body["error"]["message"]
            assert replies[0].props[Prop.CONTENT_TYPE] == "application/json"
            if props is not None:  # MQTT 5: the correlation comes back as a property
                assert replies[0].topic == props[Prop.RESPONSE_TOPIC]
                assert replies[0].props[Prop.CORRELATION_DATA] == b"k1"
                assert "correlation_id" not in body
            elif code != "BAD_REQUEST" or "correlation" not in piece:
                assert replies[0].topic == REPLY
                assert body["correlation_id"] in (7, 9)
            else:  # a correlation_id that is not a string or a number is not echoed
                assert "correlation_id" not in body
        # Every request is audited, answered or not.
        audit = rig.on(TOPICS.audit)
        assert len(audit) == 1
        if expected is not None:
            assert audit[0].body["ok"] is expected[0]

    run(test)


def test_a_reply_goes_out_before_the_state_it_carries() -> None:
    async def test(rig: Rig) -> None:
        await rig.request(call(), j({"method": "on"}), props=v5())
        topics = [s.topic for s in rig.sent]
        assert topics == [REPLY, TOPICS.device("led", "state"), TOPICS.audit]
        reply, state = rig.sent[0].body, rig.sent[1].body
        assert reply["state"] == state and state["value"] == 1
        assert rig.hw.ran == ["_execute"]
        assert rig.sent[2].body == {**rig.sent[2].body, "device": "led", "method": "on",
                                    "source": "call", "ok": True, "username": "alice",
                                    "client_id": "c1"}

    run(test)


def test_a_refused_call_moves_nothing() -> None:
    async def test(rig: Rig) -> None:
        for user, payload in (("guest", j({"method": "on"})),
                              ("alice", j({"method": "on", "args": [1, 2, 3]}))):
            await rig.request(call(), payload, props=v5(), user=user)
        assert rig.hw.ran == []
        assert rig.twin.states["led"]["value"] == 0

    run(test)


def test_a_lease_held_by_another_refuses_the_write() -> None:
    async def test(rig: Rig) -> None:
        await rig.request(TOPICS.lease_call, j({"method": "acquire",
                                                "kwargs": {"devices": ["led"]}}),
                          props=v5(), user="bob", client="c2")
        assert rig.on(TOPICS.lease)[0].retain
        await rig.request(call(), j({"method": "on"}), props=v5())
        error = rig.replies()[0].body["error"]
        assert error["code"] == "LEASE_HELD" and "bob" in error["message"]
        await rig.request(call(), j({"method": "on"}), props=v5(topic="gk/n/reply/c2"),
                          user="bob", client="c2")
        assert rig.replies()[0].body["ok"] is True  # its holder may

    run(test)


def test_a_lease_id_comes_back_to_its_holder_and_never_onto_the_audit() -> None:
    async def test(rig: Rig) -> None:
        await rig.request(TOPICS.lease_call, j({"method": "acquire", "kwargs": {"ttl": 30}}),
                          props=v5())
        result = rig.replies()[0].body["result"]
        lease_id = result["lease_id"]
        assert result["ttl"] == 30 and result["holder"] == "alice"
        await rig.request(TOPICS.lease_call, j({"method": "release",
                                                "kwargs": {"lease_id": lease_id}}),
                          props=v5())
        assert rig.replies()[0].body["result"]["released"][0]["holder"] == "alice"
        assert lease_id.encode() not in b"".join(s.payload for s in rig.on(TOPICS.audit))
        assert json.loads(rig.on(TOPICS.lease)[-1].payload)["leases"] == []

    run(test)


def test_a_forced_release_drives_the_holders_devices_safe() -> None:
    async def test(rig: Rig) -> None:
        await rig.request(TOPICS.lease_call, j({"method": "acquire",
                                                "kwargs": {"devices": ["lamp"]}}),
                          props=v5(topic="gk/n/reply/c2"), user="bob", client="c2")
        await rig.request(call("lamp"), j({"method": "on"}), props=v5(topic="gk/n/reply/c2"),
                          user="bob", client="c2")
        assert rig.twin.states["lamp"]["value"] == 1
        await rig.request(TOPICS.lease_call, j({"method": "release", "kwargs": {
            "devices": ["lamp"], "force": True}}), props=v5(topic="gk/n/reply/c9"),
            user="root", client="c9")
        assert rig.twin.states["lamp"]["value"] == 0
        lost = [s.body for s in rig.on(TOPICS.audit) if s.body["method"] == "lost"]
        assert lost and lost[0]["reason"] == "broken by admin" and lost[0]["username"] == "bob"

    run(test)


def test_plain_set() -> None:
    async def test(rig: Rig) -> None:
        await rig.request(TOPICS.device("led", "set"), b"ON")
        assert rig.twin.states["led"]["value"] == 1
        assert rig.replies() == []  # a set has no reply
        for payload, piece in ((b"\xff", "not UTF-8"), (b"x" * 257, "longer than 256")):
            await rig.request(TOPICS.device("led", "set"), payload)
            entry = rig.on(TOPICS.audit)[0].body
            assert entry["ok"] is False and piece in entry["error"]["message"]
        # refused: the state is published again unchanged (a dashboard's switch snaps back)
        assert rig.refused_sets == ["led", "led"]

    run(test)


def test_busy_when_shutting_down_or_the_queue_is_full() -> None:
    async def shutting_down(rig: Rig) -> None:
        rig.rpc.accepting = False
        await rig.request(call(), j({"method": "on"}), props=v5())
        error = rig.replies()[0].body["error"]
        assert error["code"] == "BUSY" and "shutting down" in error["message"]

    async def full(rig: Rig) -> None:
        await rig.request(call(), j({"method": "on"}), props=v5())
        error = rig.replies()[0].body["error"]
        assert error["code"] == "BUSY" and "already queued" in error["message"]

    run(shutting_down)
    run(full, queue_max=0)


def test_a_hardware_error_fails_that_call_only() -> None:
    async def test(rig: Rig) -> None:
        adapter = rig.hw.adapters["led"]
        invoke = adapter.invoke

        def broken(method: str, kwargs: dict[str, Any]) -> Any:
            raise OSError("line gone")

        adapter.invoke = broken  # type: ignore[method-assign]
        await rig.request(call(), j({"method": "on"}), props=v5())
        error = rig.replies()[0].body["error"]
        assert error["code"] == "HARDWARE_ERROR" and "line gone" in error["message"]
        adapter.invoke = invoke  # type: ignore[method-assign]
        await rig.request(call(), j({"method": "state"}), props=v5())
        assert rig.replies()[0].body["ok"] is True

    run(test)


def test_a_call_that_does_not_complete_in_time_is_answered_timeout() -> None:
    async def test(rig: Rig) -> None:
        rig.rpc.timeout = 0.01
        never: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        rig.hw.submit = lambda fn, *args, force=False: never  # type: ignore[method-assign]
        await rig.request(call(), j({"method": "on"}), props=v5())
        await until(rig.replies)
        error = rig.replies()[0].body["error"]
        assert error["code"] == "TIMEOUT"
        never.set_result(("late", {"value": 1}))  # it ran after all: the twin learns it
        await settle()
        assert rig.twin.states["led"]["value"] == 1
        assert rig.on(TOPICS.audit)[-1].body["source"] == "call:late"

    run(test)


def test_every_envelope_has_the_shape_of_the_payload_types() -> None:
    """Replies (ok, refused, MQTT 3.1.1 with its correlation id), lease results, the lease
    table and audit records, as payloads.py types them."""

    async def test(rig: Rig) -> None:
        seen: list[Sent] = []

        async def request(topic: str, payload: bytes, **kwargs: Any) -> None:
            await rig.request(topic, payload, **kwargs)
            seen.extend(rig.sent)

        bob = {"user": "bob", "client": "c2", "props": v5(topic="gk/n/reply/c2")}
        await request(TOPICS.lease_call, j({"method": "acquire",
                                            "kwargs": {"devices": ["lamp"]}}), **bob)
        conforms(rig.replies()[0].body, OkReply)
        conforms(rig.replies()[0].body["result"], LeaseGranted)
        await request(call("lamp"), j({"method": "on"}), **bob)
        assert rig.replies()[0].body["ok"] is True and "state" in rig.replies()[0].body
        await request(call("lamp"), j({"method": "on", "reply_to": REPLY,
                                       "correlation_id": "x1"}))
        refused = rig.replies()[0].body
        assert refused["ok"] is False and refused["correlation_id"] == "x1"
        await request(TOPICS.lease_call, j({"method": "release", "kwargs": {
            "devices": ["lamp"], "force": True}}), props=v5(topic="gk/n/reply/c9"),
            user="root", client="c9")
        conforms(rig.replies()[0].body["result"], LeaseReleased)
        kinds = {"reply": 0, "audit": 0, "lease": 0}
        for sent in seen:
            if sent.topic == TOPICS.audit:
                conforms(sent.body, AuditRecord)
                kinds["audit"] += 1
            elif sent.topic == TOPICS.lease:
                conforms(sent.body, LeaseTable)
                kinds["lease"] += 1
            elif sent.topic.startswith(TOPICS.replies):
                conforms(sent.body, OkReply if sent.body["ok"] else ErrorReply)
                kinds["reply"] += 1
        assert kinds == {"reply": 4, "audit": 5, "lease": 2}
        assert any(s.body.get("method") == "lost" for s in seen if s.topic == TOPICS.audit)

    run(test)
