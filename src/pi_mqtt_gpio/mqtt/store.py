"""What the broker keeps across a restart: retained messages and persistent sessions.

Pure: no files and no clock (``now`` is on the core's clock; ``downtime``, the seconds the
broker was down, is passed in). Four steps:

- ``capture`` runs where the core runs and takes references only (a ``Message`` is never
  mutated once created), so that it costs a walk of the tables and no encoding;
- ``encode`` turns a capture into a JSON document, anywhere (a worker thread);
- ``loads`` reads the JSON text and keeps at most what the limits can hold of each list
  (``Caps``: a session's queue, its subscriptions, the sessions, the retained messages): what
  is past them is read and thrown away one entry at a time, never held, so a file of a
  million queued messages costs the memory of a thousand;
- ``parse`` checks a whole document and raises ``ValueError`` on anything it would not
  have written (the file is then moved aside and the broker starts empty);
- ``apply`` puts a parsed document into a fresh core, within the core's limits.

Time spent down counts (as Mosquitto counts it): a session's expiry and a message's expiry
interval go on running while the broker is down, and what expired meanwhile is not restored.
A session connected at the capture (``kill -9``) counts its whole expiry from the capture.
Subscriptions are authorised again when restored (the owner's role may have changed while
the broker was down): a refused one is dropped, and so is every queued or in-flight message
that none of the subscriptions left would deliver, or that the read rule refuses now.
A Will waiting for its delay is not kept.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pi_mqtt_gpio.mqtt.authorize import authorize_subscribe, topic_ok
from pi_mqtt_gpio.mqtt.codec import decode, encode_publish
from pi_mqtt_gpio.mqtt.deliver import affordable, charge, enqueue
from pi_mqtt_gpio.mqtt.errors import MQTTError
from pi_mqtt_gpio.mqtt.handle_subscribe import (
    add_subscription,
    still_delivers,
    subscription_budget,
)
from pi_mqtt_gpio.mqtt.hooks import ClientInfo, Decision
from pi_mqtt_gpio.mqtt.message import NONE_YET, Message
from pi_mqtt_gpio.mqtt.packets import PROTOCOL_50, PROTOCOL_311, Publish, Subscription
from pi_mqtt_gpio.mqtt.session import NEVER_EXPIRES, Inflight, Pending, Session
from pi_mqtt_gpio.mqtt.topic_tree import parse_shared

if TYPE_CHECKING:
    from pi_mqtt_gpio.mqtt.broker import BrokerCore

__all__ = ["SCHEMA_VERSION", "Caps", "Capture", "Loaded", "Parsed", "Restored", "apply",
           "capture", "encode", "loads", "parse", "signature"]

SCHEMA_VERSION = 1
_MAX_NAME = 65535  # client ids, user names, roles, filters: an MQTT string at most
_MAX_LIST = 1 << 20  # entries of any one list


@dataclass(slots=True, eq=False)
class _Held:
    """A queued or in-flight delivery (``pid`` and ``released`` for in-flight ones)."""

    message: Message
    qos: int
    retain: bool
    sub_ids: list[int]
    pid: int = 0
    released: bool = False

    def same(self, other: _Held) -> bool:
        return (self.message is other.message and self.qos == other.qos
                and self.retain == other.retain and self.sub_ids == other.sub_ids
                and self.pid == other.pid and self.released == other.released)


@dataclass(slots=True, eq=False)
class _SessionData:
    client_id: str
    expiry: int  # the Session Expiry Interval (NEVER_EXPIRES: never)
    expires_at: float | None  # offline: when it ends (core clock); None: never, or connected
    connected: bool
    client: ClientInfo | None  # its owner, as authenticated
    subs: list[tuple[Subscription, int | None]]  # as subscribed ($share/... included), id
    queue: list[_Held]
    inflight: list[_Held]
    awaiting_rel: list[int]
    next_pid: int

    def same(self, other: _SessionData) -> bool:
        return (self.client_id == other.client_id and self.expiry == other.expiry
                and self.expires_at == other.expires_at and self.connected == other.connected
                and self.client == other.client and self.subs == other.subs
                and self.awaiting_rel == other.awaiting_rel and self.next_pid == other.next_pid
                and _same_held(self.queue, other.queue)
                and _same_held(self.inflight, other.inflight))


def _same_held(a: list[_Held], b: list[_Held]) -> bool:
    return len(a) == len(b) and all(x.same(y) for x, y in zip(a, b, strict=True))


@dataclass(slots=True, eq=False)
class Capture:
    """References to what is kept, taken at ``now`` (core clock)."""

    now: float
    retained: list[Message]
    sessions: list[_SessionData]

    def same(self, other: Capture | None) -> bool:
        """Whether ``other`` holds the same state (then there is nothing new to write)."""
        if other is None or len(self.retained) != len(other.retained) \
                or len(self.sessions) != len(other.sessions):
            return False
        return all(a is b for a, b in zip(self.retained, other.retained, strict=True)) and \
            all(a.same(b) for a, b in zip(self.sessions, other.sessions, strict=True))


def signature(core: BrokerCore) -> tuple[int, ...]:
    """Changes whenever what ``capture`` takes may have changed (and sometimes when it did
    not): cheap, to skip the capture of an idle broker."""
    stats = core.stats
    return (core.retained.changes, core.subscriptions.version, len(core.sessions),
            stats.messages_in, stats.messages_out, stats.packets_in)


def capture(core: BrokerCore, now: float, keep: Callable[[Message], bool]) -> Capture:
    """What survives a restart: retained messages ``keep`` accepts, not expired; sessions of
    network clients that outlive their connection, with their subscriptions, queue,
    in-flight deliveries and the QoS 2 packet ids they have not released."""
    retained = [msg for _topic, msg in core.retained.items()
                if keep(msg) and (msg.expires_at is None or msg.expires_at > now)]
    sessions: list[_SessionData] = []
    for s in core.sessions.values():
        if s.internal_handler is not None:
            continue
        connected = s.conn is not None
        if connected and s.expiry_interval == 0:
            continue  # ends with its connection (clean session)
        sessions.append(_SessionData(
            s.client_id, s.expiry_interval, None if connected else s.expires_at, connected,
            s.client,
            [(entry.options, entry.subscription_id) for entry in s.subscriptions.values()],
            [_Held(p.message, p.qos, p.retain, list(p.subscription_ids)) for p in s.queue],
            [_Held(i.message, i.qos, i.retain, list(i.subscription_ids), pid, i.released)
             for pid, i in s.inflight.items()],
            sorted(s.awaiting_rel), s.next_pid))
    return Capture(now, retained, sessions)


# ---------------------------------------------------------------------------------- encode
def _message(msg: Message, now: float) -> list[Any]:
    """``[PUBLISH as 5.0 encodes it (base64), expiry left (s) or None, sender, user, role]``."""
    packet = encode_publish(msg.topic, msg.payload, msg.qos, msg.retain, False,
                            1 if msg.qos else None, msg.properties, PROTOCOL_50, msg.raw_props)
    left = None if msg.expires_at is None else round(msg.expires_at - now, 3)
    return [base64.b64encode(packet).decode("ascii"), left, msg.sender, msg.username,
            msg.role]


def _held(h: _Held, now: float) -> list[Any]:
    return [_message(h.message, now), h.qos, h.retain, h.sub_ids, h.pid, h.released]


def encode(cap: Capture) -> dict[str, Any]:
    """The JSON document for ``cap`` (no ``saved_at``: the writer adds the wall clock)."""
    now = cap.now
    sessions = []
    for s in cap.sessions:
        client = s.client
        if s.expiry == NEVER_EXPIRES:
            left: float | None = None
        elif s.connected or s.expires_at is None:
            left = float(s.expiry)
        else:
            left = round(max(s.expires_at - now, 0.0), 3)
        sessions.append({
            "id": s.client_id, "expiry": s.expiry, "left": left,
            "client": None if client is None else [client.username, client.role,
                                                   client.protocol_version, client.transport,
                                                   client.peer],
            "subs": [[o.topic_filter, o.qos, o.no_local, o.retain_as_published,
                      o.retain_handling, sid] for o, sid in s.subs],
            "queue": [_held(h, now) for h in s.queue],
            "inflight": [_held(h, now) for h in s.inflight],
            "rel": s.awaiting_rel, "next_pid": s.next_pid,
        })
    return {"version": SCHEMA_VERSION,
            "retained": [_message(m, now) for m in cap.retained],
            "sessions": sessions}


# ---------------------------------------------------------------------------------- loads
@dataclass(slots=True, frozen=True)
class Caps:
    """The most entries of each list that ``apply`` could restore (the rest is cut)."""

    retained: int
    sessions: int
    subs: int
    queue: int
    inflight: int


@dataclass(slots=True)
class Loaded:
    doc: Any
    cut: int  # entries past the caps, read and thrown away


_WS = re.compile(r"[ \t\n\r]*")
_SESSION_LISTS = ("subs", "queue", "inflight")


class _Reader:
    """The document's outer levels (the top object, its ``retained`` and ``sessions`` lists,
    each session object and its lists) walked here; every entry of a list, and every other
    value, read whole by ``json``'s own scanner."""

    def __init__(self, text: str, caps: Caps, parse_constant: Callable[[str], Any]) -> None:
        self.text = text
        self.caps = caps
        decoder = json.JSONDecoder(parse_constant=parse_constant)
        self.scan: Callable[[str, int], tuple[Any, int]] = decoder.scan_once  # type: ignore[attr-defined]
        self.cut = 0

    def ws(self, i: int) -> int:
        m = _WS.match(self.text, i)
        assert m is not None
        return m.end()

    def expect(self, i: int, char: str) -> int:
        i = self.ws(i)
        if self.text[i:i + 1] != char:
            raise ValueError(f"expected {char!r} at character {i}")
        return i + 1

    def value(self, i: int) -> tuple[Any, int]:
        i = self.ws(i)
        try:
            return self.scan(self.text, i)
        except StopIteration:
            raise ValueError(f"expected a value at character {i}") from None

    def after(self, i: int, close: str) -> tuple[bool, int]:
        """Past what follows an entry: whether its object or list ended there."""
        i = self.ws(i)
        char = self.text[i:i + 1]
        if char != close and char != ",":
            raise ValueError(f"expected ',' or {close!r} at character {i}")
        return char == close, i + 1

    def members(self, i: int, member: Callable[[str, int], tuple[Any, int]]
                ) -> tuple[dict[str, Any], int]:
        """An object at ``i``: ``member(key, position)`` reads each value."""
        i = self.expect(i, "{")
        out: dict[str, Any] = {}
        i = self.ws(i)
        if self.text[i:i + 1] == "}":
            return out, i + 1
        while True:
            key, i = self.value(i)
            if not isinstance(key, str):
                raise ValueError(f"expected a key at character {i}")
            i = self.expect(i, ":")
            out[key], i = member(key, i)
            done, i = self.after(i, "}")
            if done:
                return out, i

    def items(self, i: int, cap: int, item: Callable[[int], tuple[Any, int]] | None = None
              ) -> tuple[Any, int]:
        """A list at ``i`` (anything else is read as it is: ``parse`` refuses it) of which
        the first ``cap`` entries are kept."""
        i = self.ws(i)
        if self.text[i:i + 1] != "[":
            return self.value(i)
        read = item or self.value
        out: list[Any] = []
        i = self.ws(i + 1)
        if self.text[i:i + 1] == "]":
            return out, i + 1
        while True:
            entry, i = read(i)
            if len(out) < cap:
                out.append(entry)
            else:
                self.cut += 1
            del entry
            done, i = self.after(i, "]")
            if done:
                return out, i

    def session(self, i: int) -> tuple[Any, int]:
        if self.text[self.ws(i):self.ws(i) + 1] != "{":
            return self.value(i)

        def member(key: str, j: int) -> tuple[Any, int]:
            if key in _SESSION_LISTS:
                return self.items(j, getattr(self.caps, key))
            return self.value(j)

        return self.members(i, member)

    def document(self) -> Any:
        def member(key: str, j: int) -> tuple[Any, int]:
            if key == "retained":
                return self.items(j, self.caps.retained)
            if key == "sessions":
                return self.items(j, self.caps.sessions, self.session)
            return self.value(j)

        i = self.ws(0)
        doc, i = self.members(i, member) if self.text[i:i + 1] == "{" else self.value(i)
        if self.ws(i) != len(self.text):
            raise ValueError(f"extra data at character {self.ws(i)}")
        return doc


def loads(text: str, caps: Caps, parse_constant: Callable[[str], Any]) -> Loaded:
    """The document in ``text`` (``ValueError`` when it is not JSON), its lists cut to
    ``caps``: an entry past a cap is read (and must be JSON) but never kept."""
    reader = _Reader(text, caps, parse_constant)
    doc = reader.document()
    return Loaded(doc, reader.cut)


# ---------------------------------------------------------------------------------- parse
@dataclass(slots=True)
class _SessionIn:
    client_id: str
    expiry: int
    left: float | None
    client: ClientInfo | None
    subs: list[tuple[Subscription, int | None]]
    queue: list[_Held]
    inflight: list[_Held]
    awaiting_rel: list[int]
    next_pid: int


@dataclass(slots=True)
class Parsed:
    retained: list[Message] = field(default_factory=list)
    sessions: list[_SessionIn] = field(default_factory=list)
    expired: int = 0  # messages and sessions whose time ran out while the broker was down
    cut: int = 0  # list entries past the limits, thrown away while reading (``loads``)


def _int(value: Any, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{what}: not an integer from {lo} to {hi}")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what}: not true or false")
    return value


def _seconds(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or not 0 <= value <= NEVER_EXPIRES:
        raise ValueError(f"{what}: not a number of seconds")
    return float(value)


def _text(value: Any, what: str, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > _MAX_NAME:
        raise ValueError(f"{what}: not a string")
    return value


def _list(value: Any, what: str, size: int | None = None) -> list[Any]:
    if not isinstance(value, list) or len(value) > _MAX_LIST \
            or (size is not None and len(value) != size):
        raise ValueError(f"{what}: not a list" + (f" of {size}" if size is not None else ""))
    return value


def _parse_message(value: Any, now: float, downtime: float, what: str) -> Message | None:
    """The message, with its expiry on ``now``'s clock; None when it expired."""
    sender: Any
    packet_b64, left, sender, username, role = _list(value, what, 5)
    try:
        raw = base64.b64decode(_text(packet_b64, what, False) or "", validate=True)
        decoded = decode(raw, PROTOCOL_50, from_client=False)
    except (binascii.Error, ValueError, MQTTError) as exc:
        raise ValueError(f"{what}: not a PUBLISH ({exc})") from None
    if decoded is None or decoded[1] != len(raw) or not isinstance(decoded[0], Publish):
        raise ValueError(f"{what}: not a PUBLISH")
    p = decoded[0]
    remaining = _seconds(left, what + " expiry")
    expires_at = None
    if remaining is not None:
        remaining -= downtime
        if remaining <= 0:
            return None
        expires_at = now + remaining
    return Message(p.topic, p.payload, p.qos, p.retain, p.properties, expires_at,
                   _text(sender, what), _text(username, what), _text(role, what),
                   p.raw_properties)


def _parse_held(value: Any, now: float, downtime: float, what: str) -> _Held | None:
    msg_doc, qos, retain, sub_ids, pid, released = _list(value, what, 6)
    msg = _parse_message(msg_doc, now, downtime, what)
    ids = [_int(i, 1, 268_435_455, what + " subscription id")
           for i in _list(sub_ids, what + " subscription ids")]
    qos = _int(qos, 0, 2, what + " qos")
    pid = _int(pid, 0, 65535, what + " packet id")
    retain, released = _bool(retain, what), _bool(released, what)
    return None if msg is None else _Held(msg, qos, retain, ids, pid, released)


def _parse_session(doc: Any, now: float, downtime: float, parsed: Parsed, n: int
                   ) -> _SessionIn | None:
    what = f"sessions[{n}]"
    if not isinstance(doc, dict):
        raise ValueError(f"{what}: not an object")
    client_id = _text(doc.get("id"), what + ".id", False)
    assert client_id is not None
    expiry = _int(doc.get("expiry"), 1, NEVER_EXPIRES, what + ".expiry")
    left = _seconds(doc.get("left"), what + ".left")
    client = None
    if doc.get("client") is not None:
        username, role, version, transport, peer = _list(doc["client"], what + ".client", 5)
        client = ClientInfo(client_id, _text(username, what), _text(role, what),
                            _int(version, PROTOCOL_311, PROTOCOL_50, what + " version"),
                            _text(transport, what, False) or "", _text(peer, what, False) or "")
    subs: list[tuple[Subscription, int | None]] = []
    for i, sub in enumerate(_list(doc.get("subs"), what + ".subs")):
        w = f"{what}.subs[{i}]"
        topic_filter, qos, no_local, rap, rh, sid = _list(sub, w, 6)
        subs.append((Subscription(_text(topic_filter, w, False) or "", _int(qos, 0, 2, w),
                                  _bool(no_local, w), _bool(rap, w), _int(rh, 0, 2, w)),
                     None if sid is None else _int(sid, 1, 268_435_455, w)))
    held: dict[str, list[_Held]] = {"queue": [], "inflight": []}
    for key, out in held.items():
        for i, item in enumerate(_list(doc.get(key), f"{what}.{key}")):
            h = _parse_held(item, now, downtime, f"{what}.{key}[{i}]")
            if h is None:
                parsed.expired += 1
            else:
                out.append(h)
    rel = [_int(pid, 1, 65535, what + ".rel") for pid in _list(doc.get("rel"), what + ".rel")]
    next_pid = _int(doc.get("next_pid"), 1, 65535, what + ".next_pid")
    if left is not None:
        left -= downtime
        if left <= 0:
            parsed.expired += 1
            return None
    return _SessionIn(client_id, expiry, left, client, subs, held["queue"], held["inflight"],
                      rel, next_pid)


def parse(doc: Any, now: float, downtime: float) -> Parsed:
    """Check a whole document (``ValueError`` naming the first problem); what expired while
    the broker was down (``downtime`` seconds) is left out and counted."""
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    version = doc.get("version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"version {version!r}: this one reads {SCHEMA_VERSION}")
    downtime = max(downtime, 0.0)  # a clock set back: nothing counts as elapsed
    parsed = Parsed()
    for i, item in enumerate(_list(doc.get("retained"), "retained")):
        msg = _parse_message(item, now, downtime, f"retained[{i}]")
        if msg is None:
            parsed.expired += 1
        else:
            parsed.retained.append(msg)
    for i, item in enumerate(_list(doc.get("sessions"), "sessions")):
        session = _parse_session(item, now, downtime, parsed, i)
        if session is not None:
            parsed.sessions.append(session)
    return parsed


# ---------------------------------------------------------------------------------- apply
@dataclass(slots=True)
class Restored:
    retained: int = 0
    sessions: int = 0
    messages: int = 0  # queued and in flight
    revoked: int = 0  # subscriptions the owner may no longer make (and what they held)
    dropped: int = 0  # past the broker's limits


def apply(core: BrokerCore, parsed: Parsed, now: float) -> Restored:
    """Restore ``parsed`` into ``core`` (before it serves anyone), within its limits:
    ``max_retained_bytes``, ``max_sessions``, the subscription budgets, ``max_queued_*``."""
    out = Restored()
    for msg in parsed.retained:
        if msg.payload and topic_ok(core, msg.topic):
            core.store_retained(msg, now)  # MQTT-3.3.1-5; refused past max_retained_bytes
        if core.retained.get(msg.topic) is msg:
            out.retained += 1
        else:
            out.dropped += 1
    limits = core.limits
    for data in parsed.sessions:
        cid = data.client_id
        if cid in core.sessions or not cid or any(c in cid for c in "/+#") \
                or len(core.sessions) >= limits.max_sessions:
            out.dropped += 1
            continue
        if data.client is not None and not all(
                hook.owner_exists(data.client) for hook in core.hooks):
            out.revoked += 1 + len(data.subs) + len(data.queue) + len(data.inflight)
            continue  # its user was removed: the session ends with it
        session = Session(cid)
        session.client = data.client
        session.expiry_interval = min(data.expiry, limits.max_session_expiry)
        if session.expiry_interval != NEVER_EXPIRES:
            left = session.expiry_interval if data.left is None \
                else min(data.left, session.expiry_interval)
            session.expires_at = now + left
            core.timers.push(session.expires_at, "session", session)
        session.next_pid = data.next_pid
        session.awaiting_rel = set(data.awaiting_rel[:limits.receive_maximum])
        core.sessions[cid] = session
        out.sessions += 1
        for sub, sid in data.subs:
            _restore_subscription(core, session, sub, sid, now, out)
        for h in data.inflight:
            _restore_held(core, session, h, True, now, out)
        for h in data.queue:
            _restore_held(core, session, h, False, now, out)
    return out


def _restore_subscription(core: BrokerCore, session: Session, sub: Subscription,
                          sid: int | None, now: float, out: Restored) -> None:
    """Authorised again (the role as it is now), within the budgets."""
    client = session.client
    parsed = parse_shared(sub.topic_filter)
    if client is None or parsed is None or sub.topic_filter in session.subscriptions:
        out.revoked += 1
        return
    group, plain = parsed
    if authorize_subscribe(core, client, sub.topic_filter, sub.qos) is not Decision.ALLOW:
        out.revoked += 1
        return
    if not topic_ok(core, plain) or not subscription_budget(core, session, plain):
        out.dropped += 1
        return
    add_subscription(core, session, sub, sid, group, plain, now)


def _delivers(core: BrokerCore, session: Session, msg: Message) -> bool:
    """Whether a subscription ``session`` still holds matches ``msg`` and the read rule lets
    its owner read it now (``deliver``'s check, parent topics of protected prefixes too)."""
    return still_delivers(core, session, msg) is not None


def _restore_held(core: BrokerCore, session: Session, h: _Held, inflight: bool, now: float,
                  out: Restored) -> None:
    msg = h.message
    if not _delivers(core, session, msg):
        out.revoked += 1
        return
    cost = msg.cost
    if inflight and h.pid and h.pid not in session.inflight \
            and len(session.inflight) < core.limits.max_inflight_out \
            and affordable(core, session, cost):
        # Sent before and not acknowledged: sent again with DUP at reconnect (MQTT-4.4.0-1).
        if session.inflight is NONE_YET:
            session.inflight = {}
        session.inflight[h.pid] = Inflight(msg, h.qos, h.retain, h.sub_ids, h.released)
        charge(core, session, cost)
        out.messages += 1
        return
    if h.released or not h.qos:
        out.dropped += 1  # past the limits (a released QoS 2 flow needs its packet id)
        return
    before = core.stats.dropped_queue_full
    enqueue(core, session, Pending(msg, h.qos, h.retain, h.sub_ids), now)
    if core.stats.dropped_queue_full == before:
        out.messages += 1
    else:
        out.dropped += core.stats.dropped_queue_full - before
