"""The remote stub: gpiozero's API over MQTT 5 (runs anywhere; never imports ``server``).

    from pi_mqtt_gpio.client import Gatekeeper, RemoteLED, RemoteButton

    gk = Gatekeeper("pi.local", username="alice", password="...", node_id="living-room")
    led = RemoteLED("porch_light", gatekeeper=gk)
    led.on()                       # returns when the Pi confirms; raises on refusal
"""

from pi_mqtt_gpio.client.connection import ConnectionLost, Gatekeeper, UnknownNode
from pi_mqtt_gpio.client.devices import (
    DeviceClosed,
    RemoteAngularServo,
    RemoteButton,
    RemoteBuzzer,
    RemoteDevice,
    RemoteDigitalInputDevice,
    RemoteDigitalOutputDevice,
    RemoteDistanceSensor,
    RemoteLED,
    RemoteLightSensor,
    RemoteLineSensor,
    RemoteMCP3001,
    RemoteMCP3002,
    RemoteMCP3004,
    RemoteMCP3008,
    RemoteMCP3201,
    RemoteMCP3202,
    RemoteMCP3204,
    RemoteMCP3208,
    RemoteMCP3301,
    RemoteMCP3302,
    RemoteMCP3304,
    RemoteMotionSensor,
    RemoteMotor,
    RemoteOutputDevice,
    RemotePhaseEnableMotor,
    RemotePWMLED,
    RemotePWMOutputDevice,
    RemoteRGBLED,
    RemoteServo,
    RemoteTonalBuzzer,
    WrongDeviceType,
)
from pi_mqtt_gpio.errors import GatekeeperError

__all__ = [
    "ConnectionLost",
    "DeviceClosed",
    "Gatekeeper",
    "GatekeeperError",
    "RemoteAngularServo",
    "RemoteButton",
    "RemoteBuzzer",
    "RemoteDevice",
    "RemoteDigitalInputDevice",
    "RemoteDigitalOutputDevice",
    "RemoteDistanceSensor",
    "RemoteLED",
    "RemoteLightSensor",
    "RemoteLineSensor",
    "RemoteMCP3001",
    "RemoteMCP3002",
    "RemoteMCP3004",
    "RemoteMCP3008",
    "RemoteMCP3201",
    "RemoteMCP3202",
    "RemoteMCP3204",
    "RemoteMCP3208",
    "RemoteMCP3301",
    "RemoteMCP3302",
    "RemoteMCP3304",
    "RemoteMotionSensor",
    "RemoteMotor",
    "RemoteOutputDevice",
    "RemotePWMLED",
    "RemotePWMOutputDevice",
    "RemotePhaseEnableMotor",
    "RemoteRGBLED",
    "RemoteServo",
    "RemoteTonalBuzzer",
    "UnknownNode",
    "WrongDeviceType",
]
