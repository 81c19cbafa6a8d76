"""Writes the device reference (docs/devices.md) from the adapters themselves, so the
documentation cannot drift from the code: ``python -m pi_mqtt_gpio.server.devices.reference``.
A test checks that the committed file is current."""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from typing import Any

from pi_mqtt_gpio.server.devices import registry
from pi_mqtt_gpio.server.devices.base import REQUIRED, DeviceAdapter
from pi_mqtt_gpio.server.schema import Range

__all__ = ["render"]

_SET_EXAMPLES: dict[str, str] = {
    "OutputDevice": "`ON`, `OFF`, `TOGGLE` (also `1`/`0`, `TRUE`/`FALSE`)",
    "DigitalOutputDevice": "`ON`, `OFF`, `TOGGLE`",
    "LED": "`ON`, `OFF`, `TOGGLE`",
    "Buzzer": "`ON`, `OFF`, `TOGGLE`",
    "PWMOutputDevice": "a number 0.0 to 1.0, `ON`, `OFF`, `TOGGLE`",
    "PWMLED": "a number 0.0 to 1.0, `ON`, `OFF`, `TOGGLE`",
    "RGBLED": "`#rrggbb`, `r,g,b` (0 to 255 each, as Home Assistant sends), `ON`, `OFF`, `TOGGLE`",
    "TonalBuzzer": "a note (`A4`), a frequency in Hz (`440`), `STOP`",
    "Motor": "a number -1.0 to 1.0, `FORWARD`/`OPEN`/`ON`, `BACKWARD`/`CLOSE`, `STOP`",
    "PhaseEnableMotor": "a number -1.0 to 1.0, `FORWARD`/`OPEN`/`ON`, `BACKWARD`/`CLOSE`, `STOP`",
    "Servo": "a number -1.0 to 1.0, `MIN`, `MID`, `MAX`, `DETACH`/`OFF`",
    "AngularServo": "an angle in degrees, `MIN`, `MID`, `MAX`, `DETACH`/`OFF`",
}


def _type_text(tp: Any) -> str:
    if tp is type(None):
        return "null"
    text = str(tp).replace("typing.", "")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_text(a) for a in typing.get_args(tp))
    if origin is typing.Annotated:
        base, *extras = typing.get_args(tp)
        text = _type_text(base)
        for extra in extras:
            if isinstance(extra, Range):
                bounds = [f"{op} {v:g}" for op, v in (("≥", extra.ge), (">", extra.gt),
                                                     ("≤", extra.le), ("<", extra.lt))
                          if v is not None]
                text += f" ({', '.join(bounds)})"
        return text
    if origin is dict:
        key, value = typing.get_args(tp)
        return f"mapping of {_type_text(key)} to {_type_text(value)}"
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "mapping (see safety.md)" if getattr(tp, "__name__", "") == "DeviceSafetyConfig" \
            else "mapping"
    return text.replace("<class '", "").replace("'>", "").replace("|", "\\|")


def _config_rows(adapter: type[DeviceAdapter]) -> list[str]:
    hints = typing.get_type_hints(adapter.Config, include_extras=True)
    rows = []
    for f in dataclasses.fields(adapter.Config):
        if f.name == "type":
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "**required**"
        rows.append(f"| `{f.name}` | {_type_text(hints[f.name])} | {default} |")
    return rows


def _method_line(name: str, adapter: type[DeviceAdapter]) -> str:
    method = adapter.methods[name]
    params = []
    for p in method.params:
        text = p.name
        if p.default is not REQUIRED:
            text += f"={p.default!r}"
        params.append(text)
    flag = " *(simulation only, `simulate` right)*" if method.sim_only else ""
    return f"- `{name}({', '.join(params)})`{flag} — {method.doc}"


def render() -> str:
    out = [
        "# Device reference",
        "",
        "Generated from the adapters by `python -m pi_mqtt_gpio.server.devices.reference` "
        "(a test keeps this file current). Names, methods and arguments follow gpiozero; "
        "pins are BCM GPIO numbers. Every device also takes `description` and "
        "`lease_required`.",
        "",
        "Call a method: publish `{\"method\": \"blink\", \"args\": [], \"kwargs\": {...}}` to "
        "`{root}/device/<name>/call` (see docs/gatekeeper.md). Plain commands go to "
        "`{root}/device/<name>/set`. State is retained at `{root}/device/<name>/state`, "
        "events go to `{root}/device/<name>/event`.",
        "",
    ]
    for name in sorted(registry, key=lambda n: (registry[n].kind == "input", n)):
        adapter = registry[name]
        out += [f"## {name} ({adapter.kind})", ""]
        out += ["| key | type | default |", "|---|---|---|", *_config_rows(adapter), ""]
        out += ["Methods:", "", *[_method_line(m, adapter) for m in adapter.methods], ""]
        if adapter.events:
            out += [f"Events: {', '.join(f'`{e}`' for e in adapter.events)}.", ""]
        quantities = getattr(adapter, "quantities", None)
        if quantities or name.startswith("ADS1"):
            values = ", ".join(f"`{q.key}` ({q.unit})" for q in quantities or ()) \
                or "`a0` to `a3` (V), the listed `channels`"
            address = getattr(adapter, "default_address", None)
            where = f" Default address 0x{address:02x}." if address is not None else ""
            out += [f"Values in its state: {values}; `units`, `available` (and `error` "
                    f"while it does not answer).{where} See hardware.md. The last hour of "
                    f"its readings is retained at `{{root}}/device/<name>/history` and "
                    f"returned by `history` (see dashboard.md).", ""]
        if name in _SET_EXAMPLES:
            out += [f"`set` payloads: {_SET_EXAMPLES[name]}.", ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
