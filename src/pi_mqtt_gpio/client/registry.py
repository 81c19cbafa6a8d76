"""Which Remote class stands for which gatekeeper device type. ``client.devices`` registers
its classes here when it is imported (the ``pi_mqtt_gpio.client`` package does that), so the
connection can build the right object for a name without importing the device classes."""

from __future__ import annotations

from typing import Any

__all__ = ["register", "remote_class"]

_CLASSES: dict[str, Any] = {}  # device type -> Remote class; "" -> the generic one


def register(*classes: Any) -> None:
    """Register Remote classes under their ``device_type`` ("" for the generic base)."""
    for cls in classes:
        _CLASSES[cls.device_type] = cls


def remote_class(device_type: str) -> Any:
    """The Remote class for a gatekeeper device type (``"LED"`` -> ``RemoteLED``); the
    generic ``RemoteDevice`` for a type without its own class."""
    return _CLASSES.get(device_type, _CLASSES[""])
