"""Protocol errors raised by the codec and the connection state machine.

Each carries the MQTT 5.0 reason code the server sends in its DISCONNECT (or CONNACK) before
closing; on 3.1.1 the connection is simply closed (MQTT-4.8.0-1).
"""

from __future__ import annotations

from pi_mqtt_gpio.mqtt.packets import RC

__all__ = ["MQTTError", "MalformedPacket", "PacketTooLarge", "ProtocolError"]


class MQTTError(Exception):
    """A violation of the protocol by the peer; ``reason_code`` says which kind."""

    reason_code: int = RC.UNSPECIFIED_ERROR

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        if reason_code is not None:
            self.reason_code = reason_code

    @property
    def message(self) -> str:
        return str(self.args[0])


class MalformedPacket(MQTTError):
    reason_code = RC.MALFORMED_PACKET


class ProtocolError(MQTTError):
    reason_code = RC.PROTOCOL_ERROR


class PacketTooLarge(MQTTError):
    reason_code = RC.PACKET_TOO_LARGE
