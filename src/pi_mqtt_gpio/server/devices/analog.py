"""SPI analog-to-digital converters of the MCP3xxx family (gpiozero's ``MCP3008`` & co).

The value is sampled every ``publish_interval`` on the hardware worker and published when
it moved by ``publish_delta`` or more. In simulation mode the chip's reading is replaced by
a value set with ``sim_set`` (the SPI bus itself still runs on mock pins).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pi_mqtt_gpio.errors import BadArgument
from pi_mqtt_gpio.server.devices.base import DeviceAdapter, DeviceConfig, Method, Param
from pi_mqtt_gpio.server.devices.inputs import PolledInputAdapter
from pi_mqtt_gpio.server.schema import Range, section

__all__ = ["ADAPTERS"]

# chip -> (channels, bits, signed in differential mode)
CHIPS: dict[str, tuple[int, int, bool]] = {
    "MCP3001": (1, 10, False), "MCP3002": (2, 10, False), "MCP3004": (4, 10, False),
    "MCP3008": (8, 10, False), "MCP3201": (1, 12, False), "MCP3202": (2, 12, False),
    "MCP3204": (4, 12, False), "MCP3208": (8, 12, False), "MCP3301": (1, 13, True),
    "MCP3302": (4, 13, True), "MCP3304": (8, 13, True),
}
# SPI port -> (clock, mosi, miso, chip-select lines by device number), BCM numbering.
SPI_PINS: dict[int, tuple[int, int, int, tuple[int, ...]]] = {
    0: (11, 10, 9, (8, 7)),
    1: (21, 20, 19, (18, 17, 16)),
}


@section
class MCPConfig(DeviceConfig):
    channel: Annotated[int, Range(ge=0, le=7)] = 0
    differential: bool = False
    max_voltage: Annotated[float, Range(gt=0, le=50)] = 3.3
    port: Literal[0, 1] = 0
    device: Annotated[int, Range(ge=0, le=2)] = 0
    publish_interval: Annotated[float, Range(ge=0.05, le=3600)] = 1.0
    publish_delta: Annotated[float, Range(ge=0, le=1)] = 0.01

    def lines(self) -> list[tuple[str, int | str, bool]]:
        clock, mosi, miso, selects = SPI_PINS[self.port]
        return [("port", clock, True), ("port", mosi, True), ("port", miso, True),
                ("device", selects[self.device], False)]

    def check(self) -> list[str]:
        problems = []
        channels, _, _ = CHIPS[self.type]
        if self.channel >= channels:
            problems.append(f"{self.type} has {channels} channel(s): channel must be "
                            f"< {channels}")
        if self.device >= len(SPI_PINS[self.port][3]):
            problems.append(f"SPI port {self.port} has devices 0..{len(SPI_PINS[self.port][3]) - 1}")
        return problems


class MCPAdapter(PolledInputAdapter):
    Config = MCPConfig
    capabilities = ("sensor", "voltage")
    events = ()
    chip: str = "MCP3008"

    @property
    def _range(self) -> tuple[float, float]:
        signed = CHIPS[self.chip][2] and self._differential
        return (-1.0, 1.0) if signed else (0.0, 1.0)

    @property
    def _differential(self) -> bool:
        # The x01 chips always read their one differential pair.
        return self.config.differential or self.chip in ("MCP3001", "MCP3201", "MCP3301")

    def create(self, factory: Any) -> Any:
        import gpiozero

        cfg = self.config
        base: Any = getattr(gpiozero, self.chip)
        cls = base
        if self.simulate:
            adapter = self

            class SimulatedADC(base):  # type: ignore[misc]
                def _read(self) -> int:
                    # gpiozero: value = 2 * (raw - min) / range - 1; invert it.
                    raw = (adapter.sim_value + 1) / 2 * self._range + self._min_value
                    return round(float(raw))

            cls = SimulatedADC
        kwargs: dict[str, Any] = {"max_voltage": cfg.max_voltage, "port": cfg.port,
                                  "device": cfg.device, "pin_factory": factory}
        if self.chip not in ("MCP3001", "MCP3201", "MCP3301"):
            kwargs.update(channel=cfg.channel, differential=cfg.differential)
        return cls(**kwargs)

    def state(self) -> dict[str, Any]:
        dev = self.device
        value = float(dev.value)
        return {"value": round(value, 5), "voltage": round(float(dev.voltage), 5),
                "raw_value": int(dev.raw_value), "is_active": value != 0}

    def validate(self, method: str, kwargs: dict[str, Any]) -> None:
        if method == "sim_set":
            lo, hi = self._range
            if not lo <= kwargs["value"] <= hi:
                raise BadArgument(f"value must be from {lo:g} to {hi:g}")


def _make(chip: str) -> type[DeviceAdapter]:
    return type(f"{chip}Adapter", (MCPAdapter,), {
        "type_name": chip,
        "chip": chip,
        "methods": {
            "state": Method("state", writes=False, doc="The current reading."),
            "sim_set": Method("sim_set", (Param("value", "float", ge=-1, le=1),),
                              sim_only=True, doc="Simulation: set the reading (0..1)."),
        },
    })


ADAPTERS: tuple[type[DeviceAdapter], ...] = tuple(_make(chip) for chip in CHIPS)
