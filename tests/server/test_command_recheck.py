"""The RPC handler re-checks the sender's rights before it executes anything, so a message
that reaches it by a path around the broker's ACL (a Will, a future bridge, a bug) moves
nothing. Here such a message is injected straight into the broker core."""

from __future__ import annotations

import asyncio

from pi_mqtt_gpio.mqtt.message import Message
from pi_mqtt_gpio.server.config_loader import parse_config
from pi_mqtt_gpio.server.daemon import Daemon
from pi_mqtt_gpio.server.security import hash_password

H = hash_password("pw")
CONFIG = f"""
node_id: t
broker: {{listeners: [{{type: tcp, host: 127.0.0.1, port: 0}}]}}
auth:
  users:
    guest: {{password_hash: "{H}", role: viewer}}
    alice: {{password_hash: "{H}", role: operator}}
devices:
  led: {{type: LED, pin: 17}}
"""


def test_a_command_from_a_user_who_may_not_write_is_not_executed() -> None:
    async def main() -> tuple[int, int]:
        daemon = Daemon(parse_config(CONFIG), simulate=True)
        await daemon.start()
        try:
            topic = f"{daemon.topics.root}/device/led/set"
            for sender, user, role in (("evil", "guest", "viewer"),
                                       ("gone", "mallory", "operator")):  # not a user (now)
                daemon.core.publish(Message(topic, b"ON", 0, False, {}, None, sender, user,
                                            role), daemon.server.now())
                daemon.server.pump()
            await asyncio.sleep(0.3)
            refused = daemon.hw.adapters["led"].state()["value"]
            daemon.core.publish(Message(topic, b"ON", 0, False, {}, None, "ok", "alice",
                                        "operator"), daemon.server.now())
            daemon.server.pump()
            await asyncio.sleep(0.3)
            allowed = daemon.hw.adapters["led"].state()["value"]
            return refused, allowed
        finally:
            await daemon.stop()

    refused, allowed = asyncio.run(main())
    assert refused == 0  # the viewer's and the unknown user's commands did nothing
    assert allowed == 1  # the operator's did


def test_the_same_holds_for_mqtt_ios_topics() -> None:
    """``compat.mqtt_io``: a command on mqtt-io's topic injected around the ACL is checked
    again as the device's ``set`` before anything moves."""
    async def main() -> tuple[int, int]:
        daemon = Daemon(parse_config(CONFIG + "compat: {mqtt_io: {topic_prefix: home}}\n"),
                        simulate=True)
        await daemon.start()
        try:
            for sender, user, role in (("evil", "guest", "viewer"),
                                       ("gone", "mallory", "operator")):
                daemon.core.publish(Message("home/output/led/set", b"ON", 0, False, {}, None,
                                            sender, user, role), daemon.server.now())
                daemon.server.pump()
            await asyncio.sleep(0.3)
            refused = daemon.hw.adapters["led"].state()["value"]
            daemon.core.publish(Message("home/output/led/set", b"ON", 0, False, {}, None, "ok",
                                        "alice", "operator"), daemon.server.now())
            daemon.server.pump()
            await asyncio.sleep(0.3)
            return refused, daemon.hw.adapters["led"].state()["value"]
        finally:
            await daemon.stop()

    refused, allowed = asyncio.run(main())
    assert refused == 0
    assert allowed == 1
