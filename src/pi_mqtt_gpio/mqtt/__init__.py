"""Sans-io MQTT 3.1.1 + 5.0: codec, connection state, topic tree, retained store, sessions and
the broker core. Nothing in this package opens a socket or reads a clock."""

from pi_mqtt_gpio.mqtt.broker import BrokerCore, BrokerLimits, InternalClient
from pi_mqtt_gpio.mqtt.hooks import AuthRequest, AuthResult, BrokerHooks, ClientInfo, Decision
from pi_mqtt_gpio.mqtt.message import Message

__all__ = [
    "AuthRequest",
    "AuthResult",
    "BrokerCore",
    "BrokerHooks",
    "BrokerLimits",
    "ClientInfo",
    "Decision",
    "InternalClient",
    "Message",
]
