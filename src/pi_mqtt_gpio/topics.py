"""The one place where topic strings are built and parsed.

Shared by the server and the client stub. ``{root}`` is ``<base_topic>/<node_id>``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HomeAssistantTopics", "MqttIoTopicNames", "Topics"]


@dataclass(frozen=True, slots=True)
class Topics:
    base_topic: str
    node_id: str

    @property
    def root(self) -> str:
        return f"{self.base_topic}/{self.node_id}"

    @property
    def status(self) -> str:
        return f"{self.root}/status"

    @property
    def devices(self) -> str:
        return f"{self.root}/devices"

    @property
    def lease(self) -> str:
        return f"{self.root}/lease"

    @property
    def lease_call(self) -> str:
        return f"{self.root}/lease/call"

    @property
    def health(self) -> str:
        return f"{self.root}/system/health"

    @property
    def audit(self) -> str:
        return f"{self.root}/audit"

    @property
    def everything(self) -> str:
        """The filter of the node's whole tree."""
        return self.below(self.root)

    def in_tree(self, topic: str) -> bool:
        """Whether ``topic`` is ``{root}`` or under it (what ``everything`` matches)."""
        return self.within(topic, self.root)

    @staticmethod
    def within(topic: str, prefix: str) -> bool:
        """Whether ``topic`` is ``prefix`` or under it (what ``below(prefix)`` matches)."""
        return topic.startswith(prefix) and (len(topic) == len(prefix)
                                             or topic[len(prefix)] == "/")

    @property
    def replies(self) -> str:
        """The start of every client's reply prefix (``{root}/reply/``)."""
        return f"{self.root}/reply/"

    def any_device(self, leaf: str) -> str:
        """The filter ``{root}/device/+/<leaf>`` (every device's state, set, call, ...)."""
        return f"{self.root}/device/+/{leaf}"

    @property
    def any_status(self) -> str:
        """The filter of every node's status under the same base topic."""
        return self.any_node("status")

    def parse_status(self, topic: str) -> str | None:
        """The node id of ``{base_topic}/<node>/status``, else None."""
        return self.parse_node(topic, "status")

    def parse_node(self, topic: str, leaf: str) -> str | None:
        """The node id of ``{base_topic}/<node>/<leaf>`` (a match of ``any_node(leaf)``),
        else None."""
        prefix, suffix = f"{self.base_topic}/", f"/{leaf}"
        if not topic.startswith(prefix) or not topic.endswith(suffix):
            return None
        node = topic[len(prefix):-len(suffix)]
        return node if node and "/" not in node else None

    def device(self, name: str, leaf: str) -> str:
        """``{root}/device/<name>/<leaf>`` with leaf one of state, event, set, call."""
        return f"{self.root}/device/{name}/{leaf}"

    def reply_prefix(self, client_id: str) -> str:
        """Where a client's RPC replies go (its Response Information on MQTT 5)."""
        return f"{self.replies}{client_id}"

    def reply(self, client_id: str, rest: str) -> str:
        """One reply topic under a client's reply prefix."""
        return f"{self.reply_prefix(client_id)}/{rest}"

    def any_node(self, leaf: str) -> str:
        """The filter ``{base_topic}/+/<leaf>`` (every node's status, catalogue, ...)."""
        return f"{self.base_topic}/+/{leaf}"

    @staticmethod
    def sent_by(topic: str, user: str) -> str:
        """A command topic with the sender's user name as its last level (external broker
        mode, where the broker's ACL pins that level to the user). ``user`` ``+``: the
        filter of that command sent by anyone."""
        return f"{topic}/{user}"

    @staticmethod
    def sender(topic: str) -> tuple[str, str]:
        """(command topic, user name) of a topic made by ``sent_by``."""
        base, _, user = topic.rpartition("/")
        return base, user

    @staticmethod
    def below(topic: str) -> str:
        """The filter of ``topic``'s subtree (``<topic>/#``): a reply prefix, the node's
        tree, Home Assistant's discovery prefix."""
        return f"{topic}/#"

    @staticmethod
    def reply_to(prefix: str) -> str:
        """The reply topic the client stub asks for, under its reply prefix (its own, the
        Response Information of its CONNACK, or its fleet prefix)."""
        return f"{prefix}/rpc"

    @classmethod
    def grammar(cls) -> dict[str, str]:
        """Every topic as a template with ``{root}``, ``{base_topic}``, ``{name}``,
        ``{leaf}`` and ``{client_id}`` placeholders, made by the methods above (the web
        dashboard builds and parses its topics from these, served as ``/topics.json``)."""
        t = cls("{base_topic}", "{node_id}")
        under_root = {
            "status": t.status, "devices": t.devices, "lease": t.lease,
            "lease_call": t.lease_call, "health": t.health, "audit": t.audit,
            "device": t.device("{name}", "{leaf}"),
            "reply_prefix": t.reply_prefix("{client_id}"),
        }
        grammar = {k: v.replace(t.root, "{root}", 1) for k, v in under_root.items()}
        grammar["root"] = t.root
        grammar["any_node"] = t.any_node("{leaf}")
        return grammar

    def is_command(self, topic: str) -> bool:
        """A topic that commands the node: a device's ``set``/``call``, or the lease call."""
        if topic == self.lease_call:
            return True
        parsed = self.parse_device(topic)
        return parsed is not None and parsed[1] in ("set", "call")

    def parse_device(self, topic: str) -> tuple[str, str] | None:
        """(device name, leaf) for ``{root}/device/<name>/<leaf>``, else None."""
        prefix = f"{self.root}/device/"
        if not topic.startswith(prefix):
            return None
        name, sep, leaf = topic[len(prefix):].partition("/")
        if not sep or not name or "/" in leaf:
            return None
        return name, leaf


@dataclass(frozen=True, slots=True)
class HomeAssistantTopics:
    """Home Assistant's MQTT discovery topics under its ``prefix`` (``homeassistant``)."""

    prefix: str

    @property
    def status(self) -> str:
        """HA's birth and last-will topic."""
        return f"{self.prefix}/status"

    def config(self, component: str, node_id: str, object_id: str) -> str:
        """Where one entity's discovery config is retained."""
        return f"{self.prefix}/{component}/{node_id}/{object_id}/config"


@dataclass(frozen=True, slots=True)
class MqttIoTopicNames:
    """mqtt-io's topics under its ``topic_prefix`` (the compatibility layer speaks them):
    ``<prefix>/output/<name>[/<command>]``, ``<prefix>/input/<name>``,
    ``<prefix>/sensor/<name>`` and the status topic."""

    prefix: str

    def status(self, leaf: str) -> str:
        return f"{self.prefix}/{leaf}"

    def output(self, name: str, command: str | None = None) -> str:
        """An output's state, or with ``command`` (``set``, ``set_on_ms``, ...) its command."""
        return f"{self.prefix}/output/{name}" + (f"/{command}" if command else "")

    def input(self, name: str) -> str:
        return f"{self.prefix}/input/{name}"

    def sensor(self, name: str) -> str:
        return f"{self.prefix}/sensor/{name}"

    def parse(self, topic: str) -> tuple[str, str, str] | None:
        """(kind, name, rest) of ``<prefix>/<kind>/<name>[/<rest>]``, else None."""
        head = f"{self.prefix}/"
        if not topic.startswith(head):
            return None
        kind, _, rest = topic[len(head):].partition("/")
        name, _, leaf = rest.partition("/")
        return kind, name, leaf
