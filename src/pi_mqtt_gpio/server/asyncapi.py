"""An AsyncAPI 3.0 document of a node's topics, messages and payloads, made from the device
registry (the same method and parameter specs that validate calls). Pure: config in, a
JSON-able dict out (``pi-mqtt-gatekeeper asyncapi --config FILE`` prints it)."""

from __future__ import annotations

import re
from typing import Any

from pi_mqtt_gpio.server.devices import registry
from pi_mqtt_gpio.server.devices.base import REQUIRED, Method, Param
from pi_mqtt_gpio.topics import Topics
from pi_mqtt_gpio.version import package_version

__all__ = ["asyncapi"]

_KEY = re.compile(r"[^\w\-.]")


def _key(text: str) -> str:
    """An identifier AsyncAPI accepts as a component or channel key."""
    return _KEY.sub("_", text)


def _param_schema(param: Param) -> dict[str, Any]:
    kind = param.kind
    schema: dict[str, Any]
    if kind == "float":
        schema = {"type": "number"}
    elif kind == "int":
        schema = {"type": "integer"}
    elif kind == "bool":
        schema = {"type": "boolean"}
    elif kind == "str":
        schema = {"type": "string"}
    elif kind == "color":
        schema = {"oneOf": [{"type": "string", "pattern": "^#?[0-9a-fA-F]{6}$"},
                            {"type": "array", "items": {"type": "number", "minimum": 0,
                                                        "maximum": 1},
                             "minItems": 3, "maxItems": 3}]}
    else:  # tone: a note name, a frequency or a MIDI number
        schema = {"oneOf": [{"type": "string"}, {"type": "number"}]}
    if param.ge is not None:
        schema["minimum"] = param.ge
    if param.le is not None:
        schema["maximum"] = param.le
    if param.choices is not None:
        schema["enum"] = list(param.choices)
    if param.nullable:
        schema = {"oneOf": [schema, {"type": "null"}]}
    if param.default is not REQUIRED and param.default is not None:
        schema["default"] = param.default
    return schema


def _call_schema(methods: dict[str, Method], simulate: bool) -> dict[str, Any]:
    """The RPC request: one alternative per method, with its arguments."""
    options = []
    for method in methods.values():
        if method.sim_only and not simulate:
            continue
        kwargs = {p.name: _param_schema(p) for p in method.params}
        required = [p.name for p in method.params if p.default is REQUIRED]
        options.append({
            "type": "object",
            "description": method.doc or method.name,
            "properties": {
                "method": {"const": method.name},
                "args": {"type": "array", "maxItems": len(method.params)},
                "kwargs": {"type": "object", "properties": kwargs,
                           "additionalProperties": False,
                           **({"required": required} if required else {})},
                "reply_to": {"type": "string", "description": "MQTT 3.1.1: the reply topic"},
                "correlation_id": {"type": ["string", "number"]},
            },
            "required": ["method"],
        })
    return {"oneOf": options} if options else {"type": "object"}


STATE = {"type": "object", "description": "The device's state (retained).",
         "properties": {"value": {}, "is_active": {"type": "boolean"},
                        "ts": {"type": "string", "format": "date-time"}},
         "required": ["ts"], "additionalProperties": True}
EVENT = {"type": "object", "properties": {"event": {"type": "string"},
                                          "seq": {"type": "integer"},
                                          "ts": {"type": "string", "format": "date-time"}},
         "required": ["event", "seq", "ts"], "additionalProperties": True}
HISTORY = {"type": "object", "description": "A sensor's readings of the last hour (retained, "
           "at most once a minute; the same as its history method's result): t holds the "
           "seconds after t0 (epoch seconds) of each row, values one list per value aligned "
           "with t (null: the sensor did not answer).",
           "properties": {"step": {"type": "number"}, "window": {"type": "number"},
                          "units": {"type": "object",
                                    "additionalProperties": {"type": "string"}},
                          "t0": {"type": "number"},
                          "t": {"type": "array", "items": {"type": "number"}},
                          "values": {"type": "object", "additionalProperties": {
                              "type": "array", "items": {"type": ["number", "null"]}}},
                          "ts": {"type": "string", "format": "date-time"}},
           "required": ["t0", "t", "values", "ts"]}
REPLY = {"type": "object", "properties": {
    "ok": {"type": "boolean"}, "result": {}, "state": {"type": "object"},
    "error": {"type": "object", "properties": {
        "code": {"enum": ["BAD_REQUEST", "UNKNOWN_DEVICE", "UNKNOWN_METHOD", "BAD_ARGUMENT",
                          "NOT_AUTHORIZED", "LEASE_REQUIRED", "LEASE_HELD", "SAFETY_LOCKOUT",
                          "RATE_LIMITED", "INTERLOCKED", "HARDWARE_ERROR", "BUSY",
                          "TIMEOUT"]},
        "message": {"type": "string"}, "retry_after": {"type": "number"},
        "details": {"type": "object"}}, "required": ["code", "message"]},
    "correlation_id": {"type": ["string", "number"]}}, "required": ["ok"]}


def asyncapi(config: Any, *, simulate: bool = False) -> dict[str, Any]:
    topics = Topics(config.base_topic, config.node_id)
    external = config.broker.mode == "external"
    def sent(topic: str) -> str:  # commands through an external broker carry the user name
        return Topics.sent_by(topic, "{username}") if external else topic

    user_param = {"username": {"description": "the caller's own user name (the broker's "
                                              "ACL makes sure of it)"}} if external else {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {"State": STATE, "Event": EVENT, "Reply": REPLY,
                               "History": HISTORY}

    def channel(key: str, address: str, message: str, payload: dict[str, Any] | str,
                action: str, summary: str, params: dict[str, Any] | None = None,
                reply: bool = False) -> None:
        ref = payload if isinstance(payload, str) else None
        messages[message] = {"name": message, "contentType": "application/json",
                             "payload": {"$ref": f"#/components/schemas/{ref}"} if ref
                             else payload}
        channels[key] = {"address": address, "summary": summary,
                         "messages": {message: {"$ref": f"#/components/messages/{message}"}}}
        if params:
            channels[key]["parameters"] = params
        op: dict[str, Any] = {"action": action, "channel": {"$ref": f"#/channels/{key}"},
                              "messages": [{"$ref": f"#/channels/{key}/messages/{message}"}]}
        if reply:
            op["reply"] = {"address": {"location": "$message.header#/responseTopic",
                                       "description": "MQTT 5 Response Topic (3.1.1: the "
                                                      "request's reply_to)"},
                           "channel": {"$ref": "#/channels/reply"},
                           "messages": [{"$ref": "#/channels/reply/messages/reply"}]}
        operations[f"{action}_{key}"] = op

    # what the gatekeeper publishes (a client receives) and what it receives (a client sends)
    channel("status", topics.status, "status", {"type": "string", "enum": ["online",
                                                                          "offline"]},
            "receive", "The node's availability (retained; offline is its Will).")
    channel("devices", topics.devices, "catalogue", {"type": "object"}, "receive",
            "The device catalogue (retained): names, types, methods, capabilities.")
    channel("lease", topics.lease, "leases", {"type": "object"}, "receive",
            "Current control leases (retained).")
    channel("health", topics.health, "health", {"type": "object", "properties": {
        "status": {"enum": ["ok", "degraded", "failed"]}}}, "receive",
        "GPIO health and line ownership (retained).")
    channel("audit", topics.audit, "audit", {"type": "object"}, "receive",
            "Who called what, and the outcome.")
    channel("reply", topics.reply("{caller}", "{rest}"), "reply", "Reply", "receive",
            "RPC replies, under the caller's own prefix (its client id; in a fleet its user "
            "name).", {"caller": {}, "rest": {}})
    lease_call = {"type": "object", "properties": {
        "method": {"enum": ["acquire", "renew", "release"]},
        "kwargs": {"type": "object", "properties": {
            "devices": {"type": "array", "items": {"type": "string"}},
            "ttl": {"type": "number"}, "lease_id": {"type": "string"},
            "force": {"type": "boolean"}}}}, "required": ["method"]}
    channel("lease_call", sent(topics.lease_call), "lease_call", lease_call, "send",
            "Acquire, renew or release a control lease.", user_param or None, reply=True)
    for name, dev in config.devices.items():
        adapter = registry[dev.type]
        key = _key(name)
        call_schema = f"Call_{_key(dev.type)}"
        schemas.setdefault(call_schema, _call_schema(adapter.methods, simulate))
        channel(f"{key}_state", topics.device(name, "state"), f"{key}_state", "State", "receive",
                f"{name} ({dev.type}): its state.")
        channel(f"{key}_event", topics.device(name, "event"), f"{key}_event", "Event", "receive",
                f"{name}: its events ({', '.join(adapter.events) or 'none'}).")
        if "history" in adapter.methods:  # a polled sensor's kept readings
            channel(f"{key}_history", topics.device(name, "history"), f"{key}_history", "History",
                    "receive", f"{name}: its readings of the last hour.")
        channel(f"{key}_set", sent(topics.device(name, "set")), f"{key}_set", {"type": "string"},
                "send", f"{name}: a plain command (ON, OFF, TOGGLE, a number, ...).",
                user_param or None)
        channel(f"{key}_call", sent(topics.device(name, "call")), f"{key}_call", call_schema, "send",
                f"{name}: call a method; the reply goes to the Response Topic.",
                user_param or None, reply=True)
    servers: dict[str, Any] = {}
    if external:
        ext = config.broker.external
        hosts = ext.hosts or [f"{ext.host}:{ext.port}"]
        for i, host in enumerate(hosts):
            servers[f"broker{i}"] = {"host": host, "protocol": "secure-mqtt" if ext.tls
                                     else "mqtt"}
    else:
        for i, lst in enumerate(config.broker.listeners):
            tls = bool(lst.certfile)
            protocol = {"tcp": "mqtt", "tls": "secure-mqtt"}.get(
                lst.type, "wss" if tls else "ws")
            servers[f"{lst.type}{i}"] = {"host": f"{lst.host}:{lst.port}",
                                         "protocol": protocol}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": f"pi-mqtt-gpio node {config.node_id}",
                 "version": package_version(),
                 "description": "The topics and payloads of one Raspberry Pi GPIO Gatekeeper "
                                "node (generated from its config)."},
        "defaultContentType": "application/json",
        "servers": servers,
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
