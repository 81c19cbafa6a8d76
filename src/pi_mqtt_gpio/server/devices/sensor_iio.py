"""DHT11, DHT22 and AM2302 through the kernel's ``dht11`` IIO driver (``dtoverlay=dht11,
gpiopin=4``): ``<base>/iio:deviceN/in_temp_input`` and ``in_humidityrelative_input`` in
milli-units. The kernel times the pulses (which Python cannot do reliably on a Pi 5); a read
takes a few milliseconds and fails now and then with EIO or ETIMEDOUT, which the adapter
counts across polls instead of retrying in a loop.
"""

from __future__ import annotations

from pathlib import Path

from pi_mqtt_gpio.server.devices.sensor_w1 import the_only

__all__ = ["IioDht"]


class IioDht:
    def __init__(self, base: str, device: int | str | None) -> None:
        self.base = Path(base)
        self.device = device

    def find(self) -> Path:
        try:
            present = sorted(p for p in self.base.iterdir() if p.name.startswith("iio:device"))
        except OSError as exc:
            raise OSError(exc.errno, f"{self.base} is not readable ({exc.strerror}): is the "
                          f"dht11 overlay loaded (dtoverlay=dht11,gpiopin=N)?") from exc

        def name(p: Path) -> str:
            try:
                return (p / "name").read_text().strip()
            except OSError:
                return ""

        if isinstance(self.device, int):
            folder = self.base / f"iio:device{self.device}"
            if folder in present:
                return folder
            raise OSError(f"no {folder}: is the dht11 overlay loaded "
                          f"(dtoverlay=dht11,gpiopin=N)?")
        wanted = self.device or "dht11"
        found = [p for p in present if name(p) == wanted or name(p).startswith(f"{wanted}@")
                 or (self.device is None and name(p).startswith("dht11"))]
        return the_only(found, f"no IIO device named {wanted!r} in {self.base}: load the "
                        f"overlay (dtoverlay=dht11,gpiopin=N) and check the wiring",
                        f"IIO devices named {wanted!r}", "give device: N")

    def read(self) -> dict[str, float]:
        folder = self.find()
        temp = int((folder / "in_temp_input").read_text().strip())
        humidity = int((folder / "in_humidityrelative_input").read_text().strip())
        return {"temperature": temp / 1000.0, "humidity": humidity / 1000.0}
