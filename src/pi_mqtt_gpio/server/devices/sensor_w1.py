"""1-Wire thermometers (DS18B20, DS18S20, DS1822, DS1825, DS28EA00, MAX31850) through the
kernel's ``w1-gpio`` and ``w1_therm`` drivers: ``<base>/<family>-<id>/temperature``
(milli-degrees, newer kernels) or ``w1_slave`` (two lines, ``crc=.. YES`` and ``t=<milli>``).

Reading the file starts a conversion in the kernel and returns when it is done (750 ms at 12
bit): one read, no sleeps of ours.
"""

from __future__ import annotations

import re
from pathlib import Path

from pi_mqtt_gpio.server.devices.sensor_i2c import SensorError

__all__ = ["FAMILIES", "W1Thermometer", "the_only"]

# family code -> chip
FAMILIES = {"10": "DS18S20", "22": "DS1822", "28": "DS18B20", "3b": "DS1825",
            "42": "DS28EA00"}
_T = re.compile(r"t=(-?\d+)")
RESET_VALUE = 85000  # what a DS18B20 says when its conversion did not run (power)


def the_only(found: list[Path], missing: str, several: str, choose: str) -> Path:
    """The one sensor found; none: ``OSError(missing)``; several: say how to choose."""
    if len(found) == 1:
        return found[0]
    if not found:
        raise OSError(missing)
    raise SensorError(f"{len(found)} {several} ({', '.join(p.name for p in found)}): "
                      f"{choose}")


class W1Thermometer:
    def __init__(self, base: str, address: str | None) -> None:
        self.base = Path(base)
        self.address = address.lower() if address else None
        self.where = f"1-Wire thermometer {address or '(the only one)'} in {base}"

    def find(self) -> Path:
        """The sensor's directory: by address (with or without its family prefix) or the
        only thermometer present."""
        try:
            present = sorted(p for p in self.base.iterdir()
                             if p.name[:2].lower() in FAMILIES and "-" in p.name)
        except OSError as exc:
            raise OSError(exc.errno, f"{self.base} is not readable ({exc.strerror}): is the "
                          f"1-Wire bus enabled (dtoverlay=w1-gpio in config.txt)?") from exc
        if self.address:
            for p in present:
                name = p.name.lower()
                if name == self.address or name.split("-", 1)[1] == self.address:
                    return p
            seen = ", ".join(p.name for p in present) or "none"
            raise OSError(f"no 1-Wire thermometer {self.address} in {self.base} (present: "
                          f"{seen}): check its wiring and the 4.7 kΩ pull-up")
        return the_only(present, f"no 1-Wire thermometer in {self.base}: check the wiring, "
                        f"the 4.7 kΩ pull-up and dtoverlay=w1-gpio",
                        f"1-Wire thermometers in {self.base}", "give address")

    def read(self) -> dict[str, float]:
        folder = self.find()
        simple = folder / "temperature"
        if simple.exists():
            text = simple.read_text().strip()
            if not text:
                raise SensorError(f"{folder.name}: empty reading (a CRC error on the bus)")
            milli = int(text)
        else:
            lines = (folder / "w1_slave").read_text().splitlines()
            if not lines or not lines[0].strip().endswith("YES"):
                raise SensorError(f"{folder.name}: CRC check failed ({lines[0].strip() if lines else 'no data'}): "
                                  f"check the wiring and the pull-up, a long cable")
            m = _T.search(lines[1] if len(lines) > 1 else "")
            if m is None:
                raise SensorError(f"{folder.name}: no t= in w1_slave")
            milli = int(m.group(1))
        if milli == RESET_VALUE:
            raise SensorError(f"{folder.name}: 85 °C is the power-on value (the conversion "
                              f"did not run): check the supply, parasite power")
        return {"temperature": milli / 1000.0}
