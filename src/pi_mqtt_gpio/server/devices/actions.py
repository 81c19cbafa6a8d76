"""A button's bindings and gesture timings: device options of the input adapters, which
``server/bindings.py`` acts on."""

from __future__ import annotations

from typing import Annotated, Any

from pi_mqtt_gpio.server.schema import Range, section

__all__ = ["BUTTON_EVENTS", "GESTURES", "BindingConfig", "GesturesConfig", "PublishConfig"]

GESTURES = ("single", "double", "long_start", "long_end")
BUTTON_EVENTS = ("pressed", "released", "held")


@section
class GesturesConfig:
    double_click_s: Annotated[float, Range(gt=0, le=5)] = 0.3
    long_press_s: Annotated[float, Range(gt=0, le=60)] = 0.8


@section
class PublishConfig:
    topic: str
    payload: str = ""
    qos: Annotated[int, Range(ge=0, le=1)] = 0
    retain: bool = False

    def check(self) -> list[Any]:
        if not self.topic or any(c in self.topic for c in "+#\x00") or len(self.topic) > 1024:
            return [(("topic",), "a topic without wildcards, 1 to 1024 characters")]
        return []


@section
class BindingConfig:
    """``{device, method, args, kwargs}`` or ``{publish: {topic, payload}}``."""

    device: str | None = None
    method: str | None = None
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    publish: PublishConfig | None = None

    def check(self) -> list[str]:
        if (self.device is None) == (self.publish is None):
            return ["a binding names a device (with a method) or a publish, not both"]
        if self.device is not None and not self.method:
            return ["a device binding needs a method"]
        if self.publish is not None and (self.method or self.args or self.kwargs):
            return ["a publish binding takes no method, args or kwargs"]
        return []
