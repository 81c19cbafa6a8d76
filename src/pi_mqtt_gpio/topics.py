"""The one place where topic strings are built and parsed.

Shared by the server and the client stub. ``{root}`` is ``<base_topic>/<node_id>``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Topics"]


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
        return f"{self.root}/#"

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
        prefix = f"{self.base_topic}/"
        if not topic.startswith(prefix) or not topic.endswith("/status"):
            return None
        node = topic[len(prefix):-len("/status")]
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
        mode, where the broker's ACL pins that level to the user)."""
        return f"{topic}/{user}"

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
