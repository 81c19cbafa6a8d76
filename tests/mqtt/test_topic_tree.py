"""Topic tree, retained store and filter algebra against the spec's matching rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pi_mqtt_gpio.mqtt.retain import RetainedStore
from pi_mqtt_gpio.mqtt.topic_tree import (
    SubscriptionTree,
    filter_covers,
    parse_shared,
    topic_matches,
    validate_filter,
)

CASES = [
    ("sport/tennis/player1/#", "sport/tennis/player1", True),  # MQTT 4.7.1.2
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/#", "sport", True),
    ("#", "a/b/c", True),
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("#", "$SYS/x", False),  # MQTT-4.7.2-1
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("a/b", "a/b", True),
    ("a/b", "a/B", False),
]


@pytest.mark.parametrize(("flt", "topic", "expected"), CASES)
def test_matching(flt: str, topic: str, expected: bool) -> None:
    assert topic_matches(flt, topic) is expected
    tree: SubscriptionTree[int] = SubscriptionTree()
    tree.add(flt, "c", 1)
    assert any(node.subs for node in tree.match(topic)) is expected
    store: RetainedStore[str] = RetainedStore()
    store.set(topic, "m")
    assert (store.match(flt) == ["m"]) is expected


@pytest.mark.parametrize("flt", ["a/#/b", "a#", "a/b+", "", "#/a", "a/\x00"])
def test_invalid_filters(flt: str) -> None:
    assert not validate_filter(flt)


def test_shared_parsing() -> None:
    assert parse_shared("$share/g/a/+") == ("g", "a/+")
    assert parse_shared("a/b") == (None, "a/b")
    for bad in ("$share/g", "$share//a", "$share/g+/a", "$share/g/a/#/b"):
        assert parse_shared(bad) is None


def test_tree_prunes_and_counts() -> None:
    tree: SubscriptionTree[int] = SubscriptionTree()
    tree.add("a/b/c", "x", 1)
    tree.add("a/+/c", "y", 2, group="g")
    assert tree.count == 2
    assert tree.remove("a/b/c", "x") and tree.remove("a/+/c", "y", group="g")
    assert not tree.remove("a/b/c", "x")
    assert tree.root.children == {} and tree.count == 0


@pytest.mark.parametrize(("allowed", "requested", "expected"), [
    ("#", "a/b", True), ("#", "$SYS/a", False), ("a/#", "a/+/c", True), ("a/+", "a/#", False),
    ("a/+", "a/b", True), ("a/+", "a/b/c", False), ("a/b", "a/+", False), ("+/b", "x/b", True),
    ("$SYS/#", "$SYS/x", True), ("a/#", "a", True),
])
def test_filter_covers(allowed: str, requested: str, expected: bool) -> None:
    assert filter_covers(allowed, requested) is expected


LEVEL = st.sampled_from(["a", "b", "", "$x"])


@settings(max_examples=400, deadline=None)
@given(st.lists(LEVEL, min_size=1, max_size=4),
       st.lists(st.sampled_from(["a", "b", "", "+", "$x"]), min_size=1, max_size=4),
       st.booleans())
def test_tree_agrees_with_reference_matcher(topic_levels: list[str], filter_levels: list[str],
                                            hash_end: bool) -> None:
    topic = "/".join(topic_levels)
    flt = "/".join([*filter_levels, "#"] if hash_end else filter_levels)
    tree: SubscriptionTree[int] = SubscriptionTree()
    tree.add(flt, "c", 1)
    store: RetainedStore[str] = RetainedStore()
    store.set(topic, "m")
    expected = topic_matches(flt, topic)
    assert any(n.subs for n in tree.match(topic)) is expected
    assert (store.match(flt) == ["m"]) is expected
