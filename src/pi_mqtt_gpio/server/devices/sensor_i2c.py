"""Small drivers for I²C sensor chips over smbus2 (no Blinka, no root: the user needs the
``i2c`` group only).

Each driver is given an open bus (``smbus2.SMBus`` or anything with its methods) and the
chip's address; ``setup()`` reads calibration and configures the chip (again after a
failure: the chip may have been power-cycled), ``read()`` returns ``{value name: number}``
and raises ``OSError`` when the chip does not answer, ``SensorError`` when its answer is
wrong (a CRC mismatch). A read waits at most the chip's conversion time.

Formulas and register maps are the manufacturers' datasheets': Bosch BME280/BMP280
(compensation, section 4.2.3 / 3.11.3 and 8.1), Sensirion SHT3x/SHT4x (CRC-8 0x31),
TE HTU21D / Silicon Labs Si7021 (CRC-8 0x31 from 0), ROHM BH1750, TI ADS1x15 and INA219,
NXP LM75.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

__all__ = [
    "BH1750",
    "BME280",
    "HTU21D",
    "INA219",
    "LM75",
    "ADS1x15",
    "Bus",
    "SHT3x",
    "SHT4x",
    "SensorError",
    "crc8_htu21d",
    "crc8_sensirion",
]


class SensorError(Exception):
    """The chip answered, but not with a valid reading."""


class Bus(Protocol):
    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int,
                            force: bool | None = None) -> list[int]: ...

    def write_i2c_block_data(self, i2c_addr: int, register: int, data: list[int],
                             force: bool | None = None) -> None: ...

    def write_byte_data(self, i2c_addr: int, register: int, value: int,
                        force: bool | None = None) -> None: ...

    def write_byte(self, i2c_addr: int, value: int, force: bool | None = None) -> None: ...

    def read_word_data(self, i2c_addr: int, register: int, force: bool | None = None
                       ) -> int: ...

    def write_word_data(self, i2c_addr: int, register: int, value: int,
                        force: bool | None = None) -> None: ...

    def i2c_rdwr(self, *i2c_msgs: Any) -> None: ...


def _raw_read(bus: Bus, address: int, length: int) -> list[int]:
    """Read ``length`` bytes without a register (the chips that answer a command)."""
    from smbus2 import i2c_msg

    msg = i2c_msg.read(address, length)
    bus.i2c_rdwr(msg)
    data: bytes = msg.buf[:length]
    return list(data)


def _swap(word: int) -> int:
    return ((word & 0xFF) << 8) | (word >> 8)


def read_word_be(bus: Bus, address: int, register: int) -> int:
    """A 16-bit register sent most significant byte first (ADS1x15, INA219, LM75) as an SMBus
    word read (the bus takes the first byte as the low one: swapped back), the transfer the
    kernel's own drivers of these chips use: every SMBus adapter carries it."""
    return _swap(bus.read_word_data(address, register))


def write_word_be(bus: Bus, address: int, register: int, value: int) -> None:
    bus.write_word_data(address, register, _swap(value & 0xFFFF))


def _crc8(data: list[int] | bytes, init: int) -> int:
    crc = init
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def crc8_sensirion(data: list[int] | bytes) -> int:
    """Sensirion's CRC-8: polynomial 0x31, initial 0xFF (0xBEEF -> 0x92)."""
    return _crc8(data, 0xFF)


def crc8_htu21d(data: list[int] | bytes) -> int:
    """HTU21D/Si7021 CRC-8: polynomial 0x31 (x^8 + x^5 + x^4 + 1), initial 0."""
    return _crc8(data, 0x00)


def _s16(lo: int, hi: int) -> int:
    value = lo | (hi << 8)
    return value - 0x10000 if value & 0x8000 else value


def _u16(lo: int, hi: int) -> int:
    return lo | (hi << 8)


def _s12(value: int) -> int:
    return value - 0x1000 if value & 0x800 else value


class Driver:
    chip = ""
    settle_s = 0.0

    def __init__(self, bus: Bus, address: int, **options: Any) -> None:
        self.bus = bus
        self.address = address
        self.options = options

    def setup(self) -> None:
        """Calibration and configuration (at start and after a failure)."""

    def read(self) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError


# --- Bosch BME280 / BMP280 ---------------------------------------------------------------------
BME280_ID, BMP280_IDS = 0x60, (0x56, 0x57, 0x58)


class BME280(Driver):
    """Temperature, pressure (and humidity on the BME280) in forced mode: one measurement
    per read, 1x oversampling, filter off (about 10 ms)."""

    chip = "BME280"
    humidity = True

    def setup(self) -> None:
        chip_id = self.bus.read_i2c_block_data(self.address, 0xD0, 1)[0]
        wanted = (BME280_ID,) if self.humidity else (*BMP280_IDS, BME280_ID)
        if chip_id not in wanted:
            found = "a BME280" if chip_id == BME280_ID else "a BMP280" \
                if chip_id in BMP280_IDS else f"chip id 0x{chip_id:02x}"
            raise SensorError(f"{found} answers at 0x{self.address:02x}, not a {self.chip}: "
                              f"check the type in the config")
        c = self.bus.read_i2c_block_data(self.address, 0x88, 26)
        self.t = (_u16(c[0], c[1]), _s16(c[2], c[3]), _s16(c[4], c[5]))
        self.p = (_u16(c[6], c[7]), *(_s16(c[i], c[i + 1]) for i in range(8, 24, 2)))
        if self.humidity:
            h1 = c[25]
            e = self.bus.read_i2c_block_data(self.address, 0xE1, 7)
            self.h = (h1, _s16(e[0], e[1]), e[2], _s12((e[3] << 4) | (e[4] & 0x0F)),
                      _s12((e[5] << 4) | (e[4] >> 4)), e[6] - 256 if e[6] & 0x80 else e[6])

    def read(self) -> dict[str, float]:
        if self.humidity:
            self.bus.write_byte_data(self.address, 0xF2, 0x01)  # osrs_h x1
        self.bus.write_byte_data(self.address, 0xF4, (1 << 5) | (1 << 2) | 0x01)  # forced
        time.sleep(0.010)  # max. measurement time at x1 oversampling: 9.3 ms
        for _ in range(5):
            if not self.bus.read_i2c_block_data(self.address, 0xF3, 1)[0] & 0x08:
                break
            time.sleep(0.002)
        d = self.bus.read_i2c_block_data(self.address, 0xF7, 8 if self.humidity else 6)
        adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        if adc_t == 0x80000:
            raise SensorError(f"{self.chip} returned no measurement (skipped)")
        t_fine, temperature = self.temperature(adc_t)
        out = {"temperature": temperature, "pressure": self.pressure(adc_p, t_fine) / 100.0}
        if self.humidity:
            out["humidity"] = self.humidity_of((d[6] << 8) | d[7], t_fine)
        return out

    def temperature(self, adc_t: int) -> tuple[float, float]:
        t1, t2, t3 = self.t
        var1 = (adc_t / 16384.0 - t1 / 1024.0) * t2
        var2 = (adc_t / 131072.0 - t1 / 8192.0) ** 2 * t3
        t_fine = var1 + var2
        return t_fine, t_fine / 5120.0

    def pressure(self, adc_p: int, t_fine: float) -> float:
        """Pascal."""
        p1, p2, p3, p4, p5, p6, p7, p8, p9 = self.p
        var1 = t_fine / 2.0 - 64000.0
        var2 = var1 * var1 * p6 / 32768.0
        var2 = var2 + var1 * p5 * 2.0
        var2 = var2 / 4.0 + p4 * 65536.0
        var1 = (p3 * var1 * var1 / 524288.0 + p2 * var1) / 524288.0
        var1 = (1.0 + var1 / 32768.0) * p1
        if var1 == 0:
            raise SensorError(f"{self.chip} pressure calibration is zero")
        p = 1048576.0 - adc_p
        p = (p - var2 / 4096.0) * 6250.0 / var1
        var1 = p9 * p * p / 2147483648.0
        var2 = p * p8 / 32768.0
        return p + (var1 + var2 + p7) / 16.0

    def humidity_of(self, adc_h: int, t_fine: float) -> float:
        h1, h2, h3, h4, h5, h6 = self.h
        var_h = t_fine - 76800.0
        var_h = (adc_h - (h4 * 64.0 + h5 / 16384.0 * var_h)) * (
            h2 / 65536.0 * (1.0 + h6 / 67108864.0 * var_h * (1.0 + h3 / 67108864.0 * var_h)))
        var_h = var_h * (1.0 - h1 * var_h / 524288.0)
        return min(100.0, max(0.0, var_h))


class BMP280(BME280):
    chip = "BMP280"
    humidity = False


# --- Sensirion SHT3x / SHT4x -------------------------------------------------------------------
def _sensirion_words(chip: str, data: list[int]) -> tuple[int, int]:
    for i in (0, 3):
        if crc8_sensirion(data[i:i + 2]) != data[i + 2]:
            raise SensorError(f"{chip}: CRC mismatch in its answer (0x{data[i]:02x}"
                              f"{data[i + 1]:02x} crc 0x{data[i + 2]:02x}): check the wiring "
                              f"and pull-ups, a long cable")
    return (data[0] << 8) | data[1], (data[3] << 8) | data[4]


class SHT3x(Driver):
    chip = "SHT3x"

    def read(self) -> dict[str, float]:
        self.bus.write_byte_data(self.address, 0x24, 0x00)  # single shot, high, no stretch
        time.sleep(0.016)  # 15.5 ms max.
        raw_t, raw_h = _sensirion_words(self.chip, _raw_read(self.bus, self.address, 6))
        return {"temperature": -45.0 + 175.0 * raw_t / 65535.0,
                "humidity": min(100.0, max(0.0, 100.0 * raw_h / 65535.0))}


class SHT4x(Driver):
    chip = "SHT4x"

    def read(self) -> dict[str, float]:
        self.bus.write_byte(self.address, 0xFD)  # high precision, no heater
        time.sleep(0.009)  # 8.3 ms max.
        raw_t, raw_h = _sensirion_words(self.chip, _raw_read(self.bus, self.address, 6))
        return {"temperature": -45.0 + 175.0 * raw_t / 65535.0,
                "humidity": min(100.0, max(0.0, -6.0 + 125.0 * raw_h / 65535.0))}


# --- HTU21D / Si7021 ---------------------------------------------------------------------------
class HTU21D(Driver):
    chip = "HTU21D"

    def _measure(self, command: int, wait: float) -> int:
        self.bus.write_byte(self.address, command)  # "no hold master"
        time.sleep(wait)
        data = _raw_read(self.bus, self.address, 3)
        if crc8_htu21d(data[:2]) != data[2]:
            raise SensorError(f"{self.chip}: CRC mismatch in its answer (0x{data[0]:02x}"
                              f"{data[1]:02x} crc 0x{data[2]:02x}): check the wiring")
        return ((data[0] << 8) | data[1]) & 0xFFFC  # the two status bits are not data

    def read(self) -> dict[str, float]:
        raw_t = self._measure(0xF3, 0.050)  # 50 ms max. at 14 bit
        raw_h = self._measure(0xF5, 0.016)  # 16 ms max. at 12 bit
        return {"temperature": -46.85 + 175.72 * raw_t / 65536.0,
                "humidity": min(100.0, max(0.0, -6.0 + 125.0 * raw_h / 65536.0))}


class SI7021(HTU21D):
    chip = "SI7021"


# --- ROHM BH1750 -------------------------------------------------------------------------------
class BH1750(Driver):
    chip = "BH1750"

    def read(self) -> dict[str, float]:
        self.bus.write_byte(self.address, 0x20)  # one time, high resolution (1 lx)
        time.sleep(0.180)  # 180 ms max.
        data = _raw_read(self.bus, self.address, 2)
        return {"illuminance": ((data[0] << 8) | data[1]) / 1.2}


# --- TI ADS1115 / ADS1015 ----------------------------------------------------------------------
ADS_FULL_SCALE = {6.144: 0, 4.096: 1, 2.048: 2, 1.024: 3, 0.512: 4, 0.256: 5}
ADS1115_RATES = {8: 0, 16: 1, 32: 2, 64: 3, 128: 4, 250: 5, 475: 6, 860: 7}
ADS1015_RATES = {128: 0, 250: 1, 490: 2, 920: 3, 1600: 4, 2400: 5, 3300: 6}


class ADS1x15(Driver):
    """Single-ended channels in single-shot mode, one conversion each (8 ms at 128 SPS)."""

    chip = "ADS1115"
    bits = 16

    def read(self) -> dict[str, float]:
        full_scale = float(self.options.get("full_scale", 4.096))
        rate = int(self.options.get("data_rate", 128))
        rates = ADS1115_RATES if self.bits == 16 else ADS1015_RATES
        out: dict[str, float] = {}
        for channel in self.options.get("channels", (0, 1, 2, 3)):
            config = (1 << 15) | ((4 + channel) << 12) | (ADS_FULL_SCALE[full_scale] << 9) \
                | (1 << 8) | (rates[rate] << 5) | 0x03  # OS, AINx/GND, PGA, single, no comp.
            write_word_be(self.bus, self.address, 0x01, config)
            time.sleep(1.0 / rate + 0.0005)
            for _ in range(3):
                if read_word_be(self.bus, self.address, 0x01) & 0x8000:  # conversion done
                    break
                time.sleep(0.001)
            raw = read_word_be(self.bus, self.address, 0x00)
            if raw & 0x8000:
                raw -= 0x10000
            out[f"a{channel}"] = raw / 32768.0 * full_scale  # ADS1015: low 4 bits are 0
        return out


class ADS1015(ADS1x15):
    chip = "ADS1015"
    bits = 12


# --- TI INA219 ---------------------------------------------------------------------------------
INA219_PGA = {0.04: 0, 0.08: 1, 0.16: 2, 0.32: 3}


def ina219_calibration(shunt_ohms: float, max_current: float) -> tuple[int, float, float]:
    """(calibration register, current LSB in A, power LSB in W): datasheet 8.5.1."""
    current_lsb = max_current / 32768.0
    cal = int(0.04096 / (current_lsb * shunt_ohms) + 1e-6)
    if not 0 < cal <= 0xFFFE:
        raise SensorError(f"INA219: shunt_ohms {shunt_ohms:g} and max_current "
                          f"{max_current:g} give no valid calibration")
    return cal & 0xFFFE, current_lsb, 20.0 * current_lsb  # bit 0 is not used


class INA219(Driver):
    """Bus voltage, shunt voltage, current and power, converting continuously (12 bit)."""

    chip = "INA219"

    def setup(self) -> None:
        shunt = float(self.options.get("shunt_ohms", 0.1))
        max_current = float(self.options.get("max_current", 3.2))
        self.cal, self.current_lsb, self.power_lsb = ina219_calibration(shunt, max_current)
        pga = next((code for limit, code in INA219_PGA.items()
                    if limit + 1e-9 >= max_current * shunt), 3)
        brng = 1 if int(self.options.get("bus_range", 32)) == 32 else 0
        config = (brng << 13) | (pga << 11) | (0x3 << 7) | (0x3 << 3) | 0x7
        write_word_be(self.bus, self.address, 0x00, config)
        write_word_be(self.bus, self.address, 0x05, self.cal)

    def _word(self, register: int) -> int:
        return read_word_be(self.bus, self.address, register)

    @staticmethod
    def _signed(value: int) -> int:
        return value - 0x10000 if value & 0x8000 else value

    def read(self) -> dict[str, float]:
        bus = self._word(0x02)
        if bus & 0x01:
            raise SensorError("INA219: math overflow (current or power out of range): "
                              "raise max_current or check shunt_ohms")
        if self._word(0x05) != self.cal:  # the chip was reset (a brown-out)
            self.setup()
        shunt = self._signed(self._word(0x01))
        current = self._signed(self._word(0x04))
        power = self._word(0x03)
        return {"bus_voltage": (bus >> 3) * 0.004, "shunt_voltage": shunt * 0.01,  # mV
                "current": current * self.current_lsb, "power": power * self.power_lsb}


# --- NXP LM75 ----------------------------------------------------------------------------------
class LM75(Driver):
    chip = "LM75"

    def read(self) -> dict[str, float]:
        raw = read_word_be(self.bus, self.address, 0x00)
        if raw & 0x8000:
            raw -= 0x10000
        return {"temperature": (raw >> 5) * 0.125}  # 11 bit (LM75B); 9-bit chips: low bits 0


DRIVERS: dict[str, type[Driver]] = {
    d.chip: d for d in (BME280, BMP280, SHT3x, SHT4x, HTU21D, SI7021, BH1750, ADS1x15, ADS1015,
                        INA219, LM75)
}
