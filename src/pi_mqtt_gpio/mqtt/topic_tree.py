"""Subscription store: a tree of topic levels, matched without scanning a list.

A filter ``a/+/c`` lives at the node reached by the levels ``a``, ``+``, ``c``. Matching a
topic walks the tree once, following the exact level, ``+`` and ``#`` children. Results are
cached per topic (the node list only; what is subscribed at a node may change freely) and the
cache is dropped whenever a node is created or pruned.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = [
    "SubscriptionTree",
    "TopicNode",
    "filter_covers",
    "parse_shared",
    "topic_levels",
    "topic_matches",
    "validate_filter",
]

V = TypeVar("V")
_CACHE_MAX = 8192


def topic_levels(topic: str) -> int:
    """How many levels ``topic`` (or a filter) has: ``a/b`` 2, ``/`` 2, ``a`` 1."""
    return topic.count("/") + 1


def validate_filter(topic_filter: str) -> bool:
    """True when ``topic_filter`` is a valid (non-shared) filter (MQTT-4.7.1-1/2/3, 4.7.3-1)."""
    if not topic_filter or "\x00" in topic_filter:
        return False
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            return False  # MQTT-4.7.1-2
        if "+" in level and level != "+":
            return False  # MQTT-4.7.1-3
    return True


def parse_shared(topic_filter: str) -> tuple[str | None, str] | None:
    """Split ``$share/group/filter`` into (group, filter); (None, filter) if not shared.

    Returns None when the filter is invalid (MQTT-4.8.2-1/2).
    """
    if not topic_filter.startswith("$share/"):
        return (None, topic_filter) if validate_filter(topic_filter) else None
    rest = topic_filter[7:]
    group, sep, inner = rest.partition("/")
    if not sep or not group or "+" in group or "#" in group or not validate_filter(inner):
        return None
    return group, inner


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` (a plain filter), MQTT rules incl. ``$``."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False  # MQTT-4.7.2-1
    flevels = topic_filter.split("/")
    tlevels = topic.split("/")
    for i, f in enumerate(flevels):
        if f == "#":
            return True
        if i >= len(tlevels):
            return False
        if f != "+" and f != tlevels[i]:
            return False
    return len(flevels) == len(tlevels)


class TopicNode(Generic[V]):
    """One level of the tree. ``subs`` maps subscriber id to value; ``shared`` maps a share
    group name to its members."""

    __slots__ = ("children", "level", "parent", "share_cursor", "shared", "subs")

    def __init__(self, parent: TopicNode[V] | None, level: str) -> None:
        self.children: dict[str, TopicNode[V]] = {}
        self.parent = parent
        self.level = level
        self.subs: dict[str, V] = {}
        self.shared: dict[str, dict[str, V]] = {}
        self.share_cursor: dict[str, int] = {}  # round-robin position per share group

    def empty(self) -> bool:
        return not (self.children or self.subs or self.shared)


class SubscriptionTree(Generic[V]):
    def __init__(self) -> None:
        self.root: TopicNode[V] = TopicNode(None, "")
        self._cache: dict[str, list[TopicNode[V]]] = {}
        self.count = 0  # subscriptions held
        self.nodes = 0  # tree nodes below the root (what subscriptions cost in memory)
        self.version = 0  # changes with every subscription added, changed or removed

    def _node(self, topic_filter: str, create: bool) -> TopicNode[V] | None:
        node = self.root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                if not create:
                    return None
                child = TopicNode(node, level)
                node.children[level] = child
                self.nodes += 1
                self._cache.clear()
            node = child
        return node

    def add(self, topic_filter: str, key: str, value: V, group: str | None = None) -> bool:
        """Store a subscription; True if it replaced an existing one (same filter and key)."""
        node = self._node(topic_filter, True)
        assert node is not None
        bucket = node.subs if group is None else node.shared.setdefault(group, {})
        existed = key in bucket
        bucket[key] = value
        self.version += 1
        if not existed:
            self.count += 1
        return existed

    def get(self, topic_filter: str, key: str, group: str | None = None) -> V | None:
        node = self._node(topic_filter, False)
        if node is None:
            return None
        bucket = node.subs if group is None else node.shared.get(group, {})
        return bucket.get(key)

    def remove(self, topic_filter: str, key: str, group: str | None = None) -> bool:
        node = self._node(topic_filter, False)
        if node is None:
            return False
        if group is None:
            if node.subs.pop(key, None) is None:
                return False
        else:
            members = node.shared.get(group)
            if members is None or members.pop(key, None) is None:
                return False
            if not members:
                del node.shared[group]
        self.count -= 1
        self.version += 1
        while node.parent is not None and node.empty():
            del node.parent.children[node.level]
            self.nodes -= 1
            node = node.parent
            self._cache.clear()
        return True

    def match(self, topic: str) -> list[TopicNode[V]]:
        """Nodes whose filter matches ``topic`` (each node once)."""
        nodes = self._cache.get(topic)
        if nodes is not None:
            return nodes
        nodes = []
        levels = topic.split("/")
        n = len(levels)
        dollar = topic.startswith("$")
        stack: list[tuple[TopicNode[V], int]] = [(self.root, 0)]
        while stack:
            node, i = stack.pop()
            children = node.children
            if not children:
                if i == n:
                    nodes.append(node)
                continue
            if not (dollar and i == 0):  # MQTT-4.7.2-1: no wildcard at level 0 for $-topics
                hash_node = children.get("#")
                if hash_node is not None:
                    nodes.append(hash_node)  # "a/#" also matches "a" (MQTT-4.7.1-2 note)
            if i == n:
                nodes.append(node)
                continue
            child = children.get(levels[i])
            if child is not None:
                stack.append((child, i + 1))
            if not (dollar and i == 0):
                plus = children.get("+")
                if plus is not None:
                    stack.append((plus, i + 1))
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[topic] = nodes
        return nodes


def filter_covers(allowed: str, requested: str) -> bool:
    """Whether every topic matched by ``requested`` is matched by ``allowed`` (both plain
    filters). Used by ACLs to decide whether a SUBSCRIBE stays within what a role may read."""
    a = allowed.split("/")
    r = requested.split("/")
    if requested.startswith("$") != allowed.startswith("$") and allowed[:1] in ("+", "#"):
        return False  # MQTT-4.7.2-1: a leading wildcard never covers $-topics
    for i, level in enumerate(a):
        if level == "#":
            return True
        if i >= len(r):
            return False
        if level == "+":
            if r[i] == "#":
                return False
            continue
        if level != r[i]:
            return False
    return len(a) == len(r)
