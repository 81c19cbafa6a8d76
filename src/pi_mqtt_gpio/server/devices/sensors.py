"""Polled sensors: 1-Wire thermometers, DHT11/DHT22 (kernel IIO), and I²C chips (BME280,
BMP280, SHT3x, SHT4x, HTU21D, Si7021, BH1750, ADS1115/ADS1015, INA219, LM75).

Every sensor is read on the hardware worker every ``interval`` seconds, one read at a time
(the longest a read waits is the chip's own conversion time). Its state carries its values,
their units and whether it answers::

    {"temperature": 21.44, "humidity": 40.1, "value": 21.44,
     "units": {"temperature": "°C", "humidity": "%"}, "available": true}

A reading is published when a value moved by ``threshold`` or more since the last one
published (0: any change at the published ``digits``), and at least every ``heartbeat``
polls anyway. A sensor that stops answering (``failures`` failed reads in a row) is
published ``"available": false`` with an ``error`` naming the bus, the address and what to
check; it is read again at its interval and comes back by itself.

Under ``--simulate`` no bus is opened: the values drift slowly around plausible ones, and
``sim_fail`` makes the sensor stop answering (and answer again).
"""

from __future__ import annotations

import errno
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pi_mqtt_gpio.server.devices.base import DeviceAdapter, DeviceConfig, Method, Param
from pi_mqtt_gpio.server.devices.sensor_i2c import (
    ADS1015_RATES,
    ADS1115_RATES,
    ADS_FULL_SCALE,
    DRIVERS,
    SensorError,
)
from pi_mqtt_gpio.server.schema import Range, section

__all__ = ["ADAPTERS", "Quantity", "SensorAdapter", "SensorConfig", "values_of"]

log = logging.getLogger("pi_mqtt_gpio.sensors")


@dataclass(frozen=True, slots=True)
class Quantity:
    key: str  # the state key
    unit: str
    device_class: str  # Home Assistant's sensor device class
    digits: int  # default rounding
    sim: tuple[float, float, float, float]  # simulated: start, low, high, step per read


TEMPERATURE = Quantity("temperature", "°C", "temperature", 2, (21.0, 15.0, 28.0, 0.05))
HUMIDITY = Quantity("humidity", "%", "humidity", 1, (45.0, 30.0, 65.0, 0.2))
PRESSURE = Quantity("pressure", "hPa", "pressure", 2, (1013.0, 990.0, 1035.0, 0.05))
ILLUMINANCE = Quantity("illuminance", "lx", "illuminance", 1, (320.0, 50.0, 800.0, 5.0))
BUS_VOLTAGE = Quantity("bus_voltage", "V", "voltage", 3, (12.0, 11.6, 12.6, 0.01))
SHUNT_VOLTAGE = Quantity("shunt_voltage", "mV", "voltage", 3, (50.0, 5.0, 150.0, 1.0))
CURRENT = Quantity("current", "A", "current", 4, (0.5, 0.05, 1.5, 0.01))
POWER = Quantity("power", "W", "power", 3, (6.0, 0.6, 18.0, 0.1))


def _channel(n: int) -> Quantity:
    return Quantity(f"a{n}", "V", "voltage", 4, (1.65, 0.2, 3.1, 0.01))


Threshold = Annotated[float, Range(ge=0)]


@section
class SensorConfig(DeviceConfig):
    interval: Annotated[float, Range(ge=0.2, le=86400)] = 10.0  # seconds between reads
    # publish when a value moved by this much (its own unit), or per value: {humidity: 1}
    threshold: Threshold | dict[str, Threshold] = 0.0
    heartbeat: Annotated[int, Range(ge=0, le=100000)] = 30  # publish every N polls anyway
    digits: Annotated[int, Range(ge=0, le=6)] | None = None  # decimals (default per value)
    failures: Annotated[int, Range(ge=1, le=100)] = 1  # failed reads in a row: unavailable

    def check(self) -> list[str]:
        if isinstance(self.threshold, dict):
            names = [q.key for q in values_of(self)]
            return [f"threshold.{key}: not a value of a {self.type} (it has "
                    f"{', '.join(names)})" for key in self.threshold if key not in names]
        return []


@section
class W1Config(SensorConfig):
    address: str | None = None  # "28-0316a2795bff" (or without "28-"); default: the only one
    base_path: str = "/sys/bus/w1/devices"
    interval: Annotated[float, Range(ge=1, le=86400)] = 10.0


@section
class DhtConfig(SensorConfig):
    device: Annotated[int, Range(ge=0, le=255)] | str | None = None  # iio:deviceN or its name
    base_path: str = "/sys/bus/iio/devices"
    interval: Annotated[float, Range(ge=2, le=86400)] = 10.0  # the chip: one reading per 2 s
    failures: Annotated[int, Range(ge=1, le=100)] = 3  # DHTs miss a reading now and then


I2CAddress = Annotated[int, Range(ge=0x03, le=0x77)]
I2CBus = Annotated[int, Range(ge=0, le=255)]


@section
class I2CSensorConfig(SensorConfig):
    bus: I2CBus = 1  # /dev/i2c-<bus>
    address: I2CAddress | None = None  # default: the chip's usual address


@section
class FastI2CConfig(I2CSensorConfig):
    interval: Annotated[float, Range(ge=0.2, le=86400)] = 2.0


@section
class ADSConfig(FastI2CConfig):
    channels: list[Annotated[int, Range(ge=0, le=3)]] | None = None  # default: all four
    full_scale: Annotated[float, Range(gt=0, le=6.144)] = 4.096  # volts: 6.144 ... 0.256
    data_rate: int | None = None  # samples per second (ADS1115: 128, ADS1015: 1600)

    def check(self) -> list[str]:
        problems = SensorConfig.check(self)
        rates = ADS1115_RATES if self.type == "ADS1115" else ADS1015_RATES
        if self.full_scale not in ADS_FULL_SCALE:
            problems.append(f"full_scale: one of {', '.join(map(str, ADS_FULL_SCALE))} (volts)")
        if self.data_rate is not None and self.data_rate not in rates:
            problems.append(f"data_rate: a {self.type} converts at "
                            f"{', '.join(map(str, rates))} samples per second")
        if self.channels is not None and (not self.channels
                                          or len(set(self.channels)) != len(self.channels)):
            problems.append("channels: a list of distinct channels 0..3")
        return problems


@section
class INA219Config(FastI2CConfig):
    shunt_ohms: Annotated[float, Range(gt=0, le=100)] = 0.1
    max_current: Annotated[float, Range(gt=0, le=100)] = 3.2  # amperes: sets the calibration
    bus_range: Literal[16, 32] = 32  # volts

    def check(self) -> list[str]:
        problems = SensorConfig.check(self)
        if self.shunt_ohms * self.max_current > 0.32 + 1e-9:
            problems.append(f"max_current {self.max_current:g} A through {self.shunt_ohms:g} "
                            f"Ω is more than the INA219's 320 mV shunt range")
        return problems


# --- the adapter -------------------------------------------------------------------------------
class SimulatedDriver:
    """Values that drift slowly inside a plausible band; ``failed`` makes reads fail as a
    chip that stopped answering does."""

    def __init__(self, name: str, quantities: list[Quantity]) -> None:
        self.rng = random.Random(name)
        self.quantities = quantities
        self.values = {q.key: q.sim[0] + self.rng.uniform(-1, 1) * q.sim[3] * 10
                       for q in quantities}
        self.failed = False

    def read(self) -> dict[str, float]:
        if self.failed:
            raise OSError(errno.EREMOTEIO, "Remote I/O error (simulated)")
        for q in self.quantities:
            _start, low, high, step = q.sim
            value = self.values[q.key] + self.rng.gauss(0, step)
            self.values[q.key] = min(high, max(low, value))
        return dict(self.values)


class SensorAdapter(DeviceAdapter):
    """Base of the polled sensors: subclasses set ``quantities`` and ``make_driver``."""

    kind = "input"
    Config: ClassVar[Any] = SensorConfig
    capabilities: ClassVar[tuple[str, ...]] = ("sensor",)
    events: ClassVar[tuple[str, ...]] = ()
    methods = {
        "state": Method("state", writes=False, doc="The last reading."),
        "history": Method("history", (Param("since_s", "float", 3600.0, ge=0, le=3600),),
                          writes=False,
                          doc="The readings of the last hour the gatekeeper kept (at most "
                              "one per max(interval, 10 s)): t0, t (seconds after t0) and "
                              "each value's list; since_s: only the last so many seconds."),
        "sim_fail": Method("sim_fail", (Param("failed", "bool", True),), sim_only=True,
                           doc="Simulation: the sensor stops answering (or answers again)."),
    }
    chip: ClassVar[str] = ""
    bus_kind: ClassVar[str] = ""
    default_address: ClassVar[int | None] = None
    quantities: ClassVar[tuple[Quantity, ...]] = ()
    # the bus opener (smbus2.SMBus); tests put a fake here
    open_bus: Callable[[int], Any] | None = None

    def __init__(self, name: str, config: Any, *, simulate: bool, emit: Any) -> None:
        super().__init__(name, config, simulate=simulate, emit=emit)
        self.driver: Any = None
        self.values: dict[str, float | None] = {q.key: None for q in self.value_list()}
        self.error: str | None = None
        self.failed_reads = 0
        self.ready = False  # setup() done since the last failure
        self._published: dict[str, Any] | None = None
        self._polls_since = 0
        # the gatekeeper's kept readings of this sensor (server/history.py), by since_s
        self.history: Callable[[float], dict[str, Any]] | None = None

    @classmethod
    def quantities_for(cls, config: Any) -> list[Quantity]:
        return list(cls.quantities)

    def value_list(self) -> list[Quantity]:
        return self.quantities_for(self.config)

    # --- worker thread ---------------------------------------------------------------------
    def open(self, factory: Any) -> None:
        if self.simulate:
            self.driver = SimulatedDriver(self.name, self.value_list())
        else:
            self.driver = self.make_driver()
        self.device = self.driver
        self.read_now()
        self._published = self.state()

    def make_driver(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True
        bus = getattr(self, "_bus", None)
        if bus is not None:
            self._bus = None
            try:
                bus.close()
            except OSError:
                pass

    @property
    def where(self) -> str:
        """The sensor as the errors name it."""
        return self.chip

    def hint(self) -> str:
        return "check its wiring"

    def explain(self, exc: Exception) -> str:
        if isinstance(exc, SensorError):
            return f"{self.where}: {exc}"
        if isinstance(exc, OSError) and exc.errno in (errno.EIO, errno.EREMOTEIO,
                                                      errno.ENXIO, errno.ETIMEDOUT):
            return f"no answer from {self.where}: {self.hint()}"
        return f"{self.where}: {exc}"

    def read_now(self) -> bool:
        """Read the chip once; returns whether it answered."""
        try:
            if not self.ready:
                setup = getattr(self.driver, "setup", None)
                if setup is not None:
                    setup()
                self.ready = True
            raw = self.driver.read()
        except (OSError, SensorError, ValueError) as exc:
            self.ready = False
            self.failed_reads += 1
            text = self.explain(exc)
            if self.failed_reads >= self.config.failures:
                if self.error != text:
                    log.warning("%s: %s", self.name, text)
                self.error = text
                self.values = dict.fromkeys(self.values)
            return False
        if self.error is not None:
            log.warning("%s: answers again", self.name)
        self.failed_reads = 0
        self.error = None
        self.values = {q.key: self._round(q, raw.get(q.key)) for q in self.value_list()}
        return True

    def _round(self, q: Quantity, value: float | None) -> float | None:
        if value is None or not math.isfinite(value):
            return None
        digits = self.config.digits if self.config.digits is not None else q.digits
        return round(float(value), digits)

    def state(self) -> dict[str, Any]:
        values = self.values
        keys = [q.key for q in self.value_list()]
        out: dict[str, Any] = dict(values)
        out["value"] = values.get(keys[0]) if keys else None
        out["units"] = {q.key: q.unit for q in self.value_list()}
        out["available"] = self.error is None
        if self.error is not None:
            out["error"] = self.error
        return out

    def poll_state(self) -> dict[str, Any] | None:
        """One poll (the twin's, every ``interval``): the state to publish, or None when
        nothing moved enough and no heartbeat is due."""
        self.read_now()
        state = self.state()
        self._polls_since += 1
        last = self._published
        heartbeat = self.config.heartbeat
        if last is None or self._moved(last, state) or (
                heartbeat and self._polls_since >= heartbeat):
            self._published = state
            self._polls_since = 0
            return state
        return None

    def _moved(self, last: dict[str, Any], state: dict[str, Any]) -> bool:
        if last.get("available") != state.get("available"):
            return True
        threshold = self.config.threshold
        for q in self.value_list():
            old, new = last.get(q.key), state.get(q.key)
            if old is None or new is None:
                if old != new:
                    return True
                continue
            limit = threshold.get(q.key, 0.0) if isinstance(threshold, dict) else threshold
            if new != old and abs(new - old) >= limit:
                return True
        return False

    @property
    def poll_interval(self) -> float:
        return float(self.config.interval)

    def do_history(self, since_s: float = 3600.0) -> dict[str, Any]:
        if self.history is None:  # not kept (an adapter outside a gatekeeper)
            return {"t0": 0.0, "t": [], "values": {q.key: [] for q in self.value_list()}}
        return self.history(since_s)

    def do_sim_fail(self, failed: bool = True) -> dict[str, Any]:
        if isinstance(self.driver, SimulatedDriver):
            self.driver.failed = failed
        return self.state()


class W1Adapter(SensorAdapter):
    type_name = "DS18B20"
    chip = "DS18B20"
    Config = W1Config
    capabilities = ("sensor", "temperature")
    quantities = (TEMPERATURE,)

    def make_driver(self) -> Any:
        from pi_mqtt_gpio.server.devices.sensor_w1 import W1Thermometer

        return W1Thermometer(self.config.base_path, self.config.address)

    @property
    def where(self) -> str:
        return f"1-Wire thermometer {self.config.address or ''}".rstrip()

    def hint(self) -> str:
        return "check its wiring and the 4.7 kΩ pull-up"


class DhtAdapter(SensorAdapter):
    Config = DhtConfig
    capabilities = ("sensor", "temperature", "humidity")
    quantities = (TEMPERATURE, HUMIDITY)

    def make_driver(self) -> Any:
        from pi_mqtt_gpio.server.devices.sensor_iio import IioDht

        return IioDht(self.config.base_path, self.config.device)

    @property
    def where(self) -> str:
        device = self.config.device
        return f"{self.chip} (IIO device {device if device is not None else 'dht11'})"

    def explain(self, exc: Exception) -> str:
        if isinstance(exc, OSError) and exc.errno in (errno.EIO, errno.ETIMEDOUT):
            return (f"{self.where}: {self.failed_reads} reads in a row failed "
                    f"({exc.strerror or exc}): check the wiring, the data pin's pull-up and "
                    f"the overlay's gpiopin")
        return super().explain(exc)


class I2CAdapter(SensorAdapter):
    Config: ClassVar[Any] = I2CSensorConfig
    _bus: Any = None

    @property
    def address(self) -> int:
        address = self.config.address
        return int(address if address is not None else self.default_address or 0)

    @property
    def where(self) -> str:
        return f"{self.chip} at 0x{self.address:02x} on /dev/i2c-{self.config.bus}"

    def hint(self) -> str:
        return (f"check wiring, `i2cdetect -y {self.config.bus}`, the address jumper")

    def driver_options(self) -> dict[str, Any]:
        return {}

    def make_driver(self) -> Any:
        adapter = self

        class Lazy:
            """Opens /dev/i2c-N at the first read (and again after it went away)."""

            def __init__(self) -> None:
                self.inner: Any = None

            def setup(self) -> None:
                if adapter._bus is None:
                    opener = adapter.open_bus
                    if opener is None:
                        from smbus2 import SMBus

                        opener = SMBus
                    try:
                        adapter._bus = opener(adapter.config.bus)
                    except FileNotFoundError as exc:
                        raise SensorError(f"/dev/i2c-{adapter.config.bus} does not exist: "
                                          f"enable I²C (raspi-config, dtparam=i2c_arm=on)"
                                          ) from exc
                    except PermissionError as exc:
                        raise SensorError(f"/dev/i2c-{adapter.config.bus}: permission "
                                          f"denied: add the user to the i2c group") from exc
                self.inner = DRIVERS[adapter.chip](adapter._bus, adapter.address,
                                                   **adapter.driver_options())
                self.inner.setup()

            def read(self) -> dict[str, float]:
                return dict(self.inner.read())

        return Lazy()


class ADSAdapter(I2CAdapter):
    Config = ADSConfig
    default_address = 0x48
    capabilities = ("sensor", "voltage")

    @classmethod
    def quantities_for(cls, config: Any) -> list[Quantity]:
        return [_channel(n) for n in (config.channels or (0, 1, 2, 3))]

    def driver_options(self) -> dict[str, Any]:
        cfg = self.config
        return {"channels": tuple(cfg.channels or (0, 1, 2, 3)), "full_scale": cfg.full_scale,
                "data_rate": cfg.data_rate or (128 if self.chip == "ADS1115" else 1600)}


class INA219Adapter(I2CAdapter):
    type_name = "INA219"
    chip = "INA219"
    Config = INA219Config
    default_address = 0x40
    capabilities = ("sensor", "voltage", "current", "power")
    quantities = (BUS_VOLTAGE, SHUNT_VOLTAGE, CURRENT, POWER)

    def driver_options(self) -> dict[str, Any]:
        cfg = self.config
        return {"shunt_ohms": cfg.shunt_ohms, "max_current": cfg.max_current,
                "bus_range": cfg.bus_range}


def _i2c(chip: str, address: int, quantities: tuple[Quantity, ...],
         config: type = I2CSensorConfig, base: type[I2CAdapter] = I2CAdapter
         ) -> type[DeviceAdapter]:
    return type(f"{chip}Adapter", (base,), {
        "type_name": chip, "chip": chip, "Config": config, "default_address": address,
        "quantities": quantities,
        "capabilities": ("sensor", *dict.fromkeys(q.device_class for q in quantities)),
    })


def _dht(chip: str) -> type[DeviceAdapter]:
    return type(f"{chip}Adapter", (DhtAdapter,), {"type_name": chip, "chip": chip})


ADAPTERS: tuple[type[DeviceAdapter], ...] = (
    W1Adapter, _dht("DHT11"), _dht("DHT22"), _dht("AM2302"),
    _i2c("BME280", 0x76, (TEMPERATURE, HUMIDITY, PRESSURE)),
    _i2c("BMP280", 0x76, (TEMPERATURE, PRESSURE)),
    _i2c("SHT3x", 0x44, (TEMPERATURE, HUMIDITY)),
    _i2c("SHT4x", 0x44, (TEMPERATURE, HUMIDITY)),
    _i2c("HTU21D", 0x40, (TEMPERATURE, HUMIDITY)),
    _i2c("SI7021", 0x40, (TEMPERATURE, HUMIDITY)),
    _i2c("BH1750", 0x23, (ILLUMINANCE,), FastI2CConfig),
    _i2c("ADS1115", 0x48, (), ADSConfig, ADSAdapter),
    _i2c("ADS1015", 0x48, (), ADSConfig, ADSAdapter),
    INA219Adapter,
    _i2c("LM75", 0x48, (Quantity("temperature", "°C", "temperature", 3, TEMPERATURE.sim),)),
)
SENSOR_TYPES = tuple(a.type_name for a in ADAPTERS)


def values_of(config: Any) -> list[Quantity]:
    """The values a sensor device publishes (its config decides for an ADS1x15)."""
    for adapter in ADAPTERS:
        if adapter.type_name == config.type:
            assert issubclass(adapter, SensorAdapter)
            return adapter.quantities_for(config)
    return []
