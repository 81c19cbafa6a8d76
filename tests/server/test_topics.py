"""Topics: what the helpers build, and that what they parse is what they build."""

from __future__ import annotations

from pi_mqtt_gpio.topics import Topics

T = Topics("gk", "n")


def test_the_tree_and_its_subtrees() -> None:
    assert T.everything == Topics.below(T.root) == "gk/n/#"
    assert T.in_tree("gk/n") and T.in_tree("gk/n/device/a/state")
    assert not T.in_tree("gk/nn/status") and not T.in_tree("gk") and not T.in_tree("gk/m/n")
    prefix = T.reply_prefix("c1")
    assert Topics.within(prefix, prefix) and Topics.within(T.reply("c1", "rpc"), prefix)
    assert not Topics.within(T.reply_prefix("c10"), prefix)
    assert Topics.reply_to(prefix) == T.reply("c1", "rpc") == "gk/n/reply/c1/rpc"


def test_a_command_sent_by_a_user_and_back() -> None:
    for command in (T.lease_call, T.device("a", "call"), T.device("a", "set")):
        assert Topics.sender(Topics.sent_by(command, "alice")) == (command, "alice")
    assert Topics.sent_by(T.any_device("call"), "+") == "gk/n/device/+/call/+"


def test_a_node_of_any_node_filter() -> None:
    assert T.any_node("devices") == "gk/+/devices"
    assert T.parse_node("gk/kitchen/devices", "devices") == "kitchen"
    assert T.parse_status("gk/kitchen/status") == "kitchen"
    for topic in ("gk/devices", "gk/a/b/devices", "other/a/devices", "gk/a/status"):
        assert T.parse_node(topic, "devices") is None
