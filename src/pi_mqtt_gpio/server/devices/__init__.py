"""Device adapters, registered by gpiozero type name. The only importers of gpiozero (with
``server/hardware.py``), and only when a device is opened."""

from __future__ import annotations

from pi_mqtt_gpio.server.devices import analog, cover, inputs, mixer, outputs, sensors
from pi_mqtt_gpio.server.devices.base import DeviceAdapter

__all__ = ["DeviceAdapter", "registry"]

registry: dict[str, type[DeviceAdapter]] = {
    adapter.type_name: adapter
    for adapter in (*outputs.ADAPTERS, *cover.ADAPTERS, *mixer.ADAPTERS, *inputs.ADAPTERS,
                    *analog.ADAPTERS, *sensors.ADAPTERS)
}
