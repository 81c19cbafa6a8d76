"""Retained messages: one per topic, found for a subscription filter by walking a tree.

An empty retained payload deletes the topic's message (MQTT-3.3.1-6/7). Lookups walk only the
branches a filter can reach, so a subscription to ``a/+/c`` does not scan every retained topic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["RetainedStore"]

M = TypeVar("M")


class _Node(Generic[M]):
    __slots__ = ("children", "message")

    def __init__(self) -> None:
        self.children: dict[str, _Node[M]] = {}
        self.message: M | None = None


class RetainedStore(Generic[M]):
    def __init__(self, size: Callable[[M], int] = lambda m: len(getattr(m, "payload", b""))
                 ) -> None:
        self._root: _Node[M] = _Node()
        self._count = 0
        self._size = size
        self.bytes = 0  # total size of the stored messages (for the broker's cap)
        self.changes = 0  # counts every store and delete (whoever saves the store looks)

    def __len__(self) -> int:
        return self._count

    def set(self, topic: str, message: M | None) -> None:
        """Store ``message`` for ``topic``; None deletes it."""
        self.changes += 1
        if message is None:
            self._delete(topic)
            return
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        if node.message is None:
            self._count += 1
        else:
            self.bytes -= self._size(node.message)
        node.message = message
        self.bytes += self._size(message)

    def get(self, topic: str) -> M | None:
        node: _Node[M] | None = self._root
        for level in topic.split("/"):
            assert node is not None
            node = node.children.get(level)
            if node is None:
                return None
        return node.message if node is not None else None

    def _delete(self, topic: str) -> None:
        path: list[tuple[_Node[M], str]] = []
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                return
            path.append((node, level))
            node = child
        if node.message is None:
            return
        self.bytes -= self._size(node.message)
        node.message = None
        self._count -= 1
        for parent, level in reversed(path):
            child = parent.children[level]
            if child.message is not None or child.children:
                break
            del parent.children[level]

    def items(self) -> list[tuple[str, M]]:
        out: list[tuple[str, M]] = []
        stack: list[tuple[_Node[M], str]] = [(c, lvl) for lvl, c in self._root.children.items()]
        while stack:
            node, topic = stack.pop()
            if node.message is not None:
                out.append((topic, node.message))
            for level, child in node.children.items():
                stack.append((child, topic + "/" + level))
        return out

    def match(self, topic_filter: str) -> list[M]:
        """Retained messages whose topic matches the (plain, valid) ``topic_filter``."""
        levels = topic_filter.split("/")
        n = len(levels)
        out: list[M] = []
        stack: list[tuple[_Node[M], int]] = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            if i == n:
                if node.message is not None:
                    out.append(node.message)
                continue
            level = levels[i]
            if level == "#":
                # "#" matches the parent level too ("a/#" matches "a"), MQTT-4.7.1-2.
                if i and node.message is not None:
                    out.append(node.message)
                self._collect(node, i == 0, out)
                continue
            if level == "+":
                for name, child in node.children.items():
                    if i == 0 and name.startswith("$"):
                        continue  # MQTT-4.7.2-1
                    stack.append((child, i + 1))
                continue
            exact = node.children.get(level)
            if exact is not None:
                stack.append((exact, i + 1))
        return out

    @staticmethod
    def _collect(start: _Node[M], at_root: bool, out: list[M]) -> None:
        stack = [
            child
            for name, child in start.children.items()
            if not (at_root and name.startswith("$"))
        ]
        while stack:
            node = stack.pop()
            if node.message is not None:
                out.append(node.message)
            stack.extend(node.children.values())
