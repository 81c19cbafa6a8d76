"""Reading a call's request and answering it: the JSON request, where its reply goes (the
MQTT 5 Response Topic with the request's Correlation Data, or on MQTT 3.1.1 the payload's
``reply_to`` with its ``correlation_id``), and whether it may go there (a client may not make
the gatekeeper publish on its behalf where it could not publish itself)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, cast

from pi_mqtt_gpio.errors import BadRequest, GatekeeperError
from pi_mqtt_gpio.mqtt.hooks import BrokerHooks, ClientInfo, Decision
from pi_mqtt_gpio.mqtt.logguard import LogLimiter, clip
from pi_mqtt_gpio.mqtt.message import Message
from pi_mqtt_gpio.mqtt.packets import PROTOCOL_50, Prop, Properties
from pi_mqtt_gpio.payloads import ReplyBody, Request
from pi_mqtt_gpio.server.jsonscan import top_level_scalars
from pi_mqtt_gpio.server.twin import dumps
from pi_mqtt_gpio.topics import Topics

__all__ = ["MAX_REQUEST_BYTES", "Incoming", "Replier", "Reply", "jsonable", "parse_request", "v5_reply"]

Send = Callable[..., None]  # (topic, payload, qos, properties[, retain])
MAX_REQUEST_BYTES = 65536
_REPLY_FIELDS = frozenset({"reply_to", "correlation_id"})


class TooDeep(BadRequest):
    def __init__(self, message: str, request: Request) -> None:
        super().__init__(message)
        self.request = request  # what could be read of it (the reply fields)


class Reply:
    __slots__ = ("correlation", "problem", "qos", "topic", "v5")

    def __init__(self, topic: str, correlation: Any, v5: bool, qos: int,
                 problem: str | None = None) -> None:
        self.topic = topic
        self.correlation = correlation
        self.v5 = v5
        self.qos = qos
        self.problem = problem  # the request's reply fields are unusable (answered without)


def parse_request(payload: bytes) -> Request:
    """The request, a JSON object (``BadRequest`` when it is not one)."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise BadRequest(f"request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        request = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"request is not valid JSON: {clip(exc, 200)}") from None
    except RecursionError:
        # Still answer a 3.1.1 caller: its reply fields are at the top level.
        raise TooDeep("request is nested too deeply", cast(Request, top_level_scalars(
            payload.decode("utf-8", "replace"), _REPLY_FIELDS))) from None
    if not isinstance(request, dict):
        raise BadRequest("request must be a JSON object")
    return cast(Request, request)  # its fields' types are checked where they are read


def v5_reply(msg: Message) -> Reply | None:
    topic = msg.properties.get(Prop.RESPONSE_TOPIC) if msg.properties else None
    if topic is None:
        return None
    return Reply(topic, msg.properties.get(Prop.CORRELATION_DATA), True, min(msg.qos, 1))


def v311_reply(msg: Message, request: Request) -> Reply | None:
    """The 3.1.1 reply destination. A ``correlation_id`` that is not a string or a
    number makes the request a ``BAD_REQUEST`` (answered without it)."""
    topic = request.get("reply_to")
    if topic is None or not isinstance(topic, str):
        return None
    correlation = request.get("correlation_id")
    if correlation is None or isinstance(correlation, str | int | float):
        return Reply(topic, correlation, False, min(msg.qos, 1))
    return Reply(topic, None, False, min(msg.qos, 1),
                 "correlation_id must be a string or a number")


class Incoming:
    """A call as far as it could be read: its request, its method name, where its reply goes
    (also when the request could not be read whole)."""

    def __init__(self, msg: Message) -> None:
        self.msg = msg
        self.reply = v5_reply(msg)
        self.method: str | None = None

    def read(self) -> Request:
        """The request; ``BadRequest`` when it cannot be read or its reply fields are
        unusable (``reply`` is then what can still be answered)."""
        request = parse_request(self.msg.payload)
        if self.reply is None:
            self.reply = v311_reply(self.msg, request)
        check_usable(self.reply)
        self.method = method_of(request)
        return request

    def reply_after(self, exc: GatekeeperError) -> Reply | None:
        """Where the refusal ``exc`` is answered."""
        return salvage(self.msg, exc, self.reply)


def check_usable(reply: Reply | None) -> None:
    """``BadRequest`` when the request's reply fields are unusable (it is answered all the
    same, without them)."""
    if reply is not None and reply.problem:
        raise BadRequest(reply.problem)


def salvage(msg: Message, exc: GatekeeperError, reply: Reply | None) -> Reply | None:
    """The reply destination of a request that could not be parsed whole."""
    if reply is not None or not isinstance(exc, TooDeep) or not exc.request:
        return reply
    return v311_reply(msg, exc.request)


def method_of(request: Request) -> str | None:
    method = request.get("method")
    return method if isinstance(method, str) else None


def jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)


class Replier:
    """Sends replies where they are allowed to go."""

    def __init__(self, topics: Topics, acl: list[BrokerHooks], send: Send,
                 log: LogLimiter, now: Callable[[], float]) -> None:
        self.topics = topics
        self.acl = acl
        self.send = send
        self._log = log
        self._now = now

    def allowed(self, msg: Message, topic: str) -> bool:
        if not topic or any(c in topic for c in "+#\x00") or len(topic) > 1024:
            return False
        if msg.sender is None:
            return True
        prefix = self.topics.reply_prefix(msg.sender)
        if Topics.within(topic, prefix):
            return True
        if self.topics.in_tree(topic):
            return False  # never into the gatekeeper's own tree, except the reply prefix
        client = ClientInfo(msg.sender, msg.username, msg.role, PROTOCOL_50, "", "")
        for hook in self.acl:
            decision = hook.authorize_publish(client, topic, msg.qos, False)
            if decision is not Decision.DEFER:
                return decision is Decision.ALLOW
        return False

    def reply(self, msg: Message, reply: Reply, body: ReplyBody) -> None:
        if not self.allowed(msg, reply.topic):
            self._log.log(logging.WARNING, msg.sender or "", self._now(),
                          "reply topic %r refused for %r", clip(reply.topic), clip(msg.sender))
            return
        props: Properties = {Prop.CONTENT_TYPE: "application/json"}
        if reply.v5:
            if reply.correlation is not None:
                props[Prop.CORRELATION_DATA] = reply.correlation
        elif reply.correlation is not None:
            body["correlation_id"] = reply.correlation
        try:
            payload = dumps(body)
        except (TypeError, ValueError, RecursionError):
            payload = dumps({"ok": body["ok"], "result": None})
        self.send(reply.topic, payload, reply.qos, props)
