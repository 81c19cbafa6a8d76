"""The I²C sensor drivers against a real kernel I²C driver inside the VM (scripts/hw-stage):
``i2c-stub`` through ``i2c-dev``, the character device ``smbus2`` opens on a Pi. One daemon
reads five chips at once; each chip's registers hold its datasheet's example (calibration and
raw values) and the value published on MQTT must be the datasheet's worked result.

i2c-stub is an SMBus register file, not a sensor: it never converts, so the raw values stay
what the test wrote. It carries byte data (a byte-addressed chip: the Bosch BMP280/BME280,
whose blocks it reads on from the pointer) and word data (a chip of 16-bit registers: LM75,
ADS1115, INA219, read and written as SMBus words, as the kernel's own drivers of these chips
do). It does not carry a plain I²C read (no I2C_FUNC_I2C: I2C_RDWR is refused with
EOPNOTSUPP), which is all the command-based chips answer with (SHT3x, SHT4x, HTU21D, SI7021,
BH1750): an SHT4x here shows the daemon's report of that, the host tests hold their datasheet
examples on a fake bus. Its own module: the stub is reloaded with its chips beside 0x20.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import time
from pathlib import Path
from typing import Any

import pytest

from tests.hw.test_expander_watchdog import stub_bus
from tests.hw.test_gpio_sim import Daemon, Mqtt

pytestmark = pytest.mark.skipif("GPIOSIM_SYSFS" not in os.environ,
                                reason="runs inside the gpiosim VM (scripts/hw-stage)")

BMP280, BME280, LM75, ADS1115, INA219, SHT4X = 0x76, 0x77, 0x49, 0x48, 0x40, 0x44

# BMP280 datasheet 3.12 (the BME280's 8.1 is the same): trimming values and raw readings of
# the worked example, 25.08 °C and 100653.27 Pa
DIG_T = (27504, 26435, -1000)
DIG_P = (36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
ADC_T, ADC_P = 519888, 415148
# a BME280's humidity trimming (H1..H6) and raw humidity: the datasheet's 32-bit integer
# formula (4.2.3) gives 54.997 %RH for them at this temperature
DIG_H, ADC_H = (75, 362, 0, 313, 50, 30), 30000


def swap(word: int) -> int:
    """A 16-bit register as i2c-stub's SMBus word holds it: the chip sends its MSB first,
    which SMBus takes as the low byte."""
    return ((word & 0xFF) << 8) | (word >> 8)


def le16(value: int) -> list[int]:
    value &= 0xFFFF
    return [value & 0xFF, value >> 8]


def bosch_registers(chip_id: int, humidity: bool) -> dict[int, int]:
    regs = {0xD0: chip_id, 0xF3: 0x00}  # status: not measuring
    calib = [b for v in (*DIG_T, *DIG_P) for b in le16(v)] + [0, DIG_H[0]]
    regs.update({0x88 + i: b for i, b in enumerate(calib)})
    data = [ADC_P >> 12, (ADC_P >> 4) & 0xFF, (ADC_P & 0xF) << 4,
            ADC_T >> 12, (ADC_T >> 4) & 0xFF, (ADC_T & 0xF) << 4]
    if humidity:
        h2, h3, h4, h5, h6 = DIG_H[1:]
        regs.update({0xE1 + i: b for i, b in enumerate(
            [*le16(h2), h3, h4 >> 4, (h4 & 0x0F) | ((h5 & 0x0F) << 4), h5 >> 4, h6])})
        data += [ADC_H >> 8, ADC_H & 0xFF]
    regs.update({0xF7 + i: b for i, b in enumerate(data)})
    return regs


# 16-bit registers (register: value as the chip's datasheet writes it, MSB first)
LM75_WORDS = {0x00: 0xE700}  # LM75B table 9: E70h (11 bit) = -25 °C
ADS1115_WORDS = {0x00: 0x7FFF}  # table 3: 7FFFh = +FS (2^15 - 1) / 2^15 = 4.095875 V at ±4.096
# INA219 8.5.1 with a 0.01 Ω shunt and 100 µA per bit: calibration 40960 (A000h); a 20 mV
# shunt voltage (2000 x 10 µV) gives current 2000 x 40960 / 4096 = 20000 (2 A) and with a
# 12 V bus (3000 x 4 mV, CNVR set) power 20000 x 3000 / 5000 = 12000 (x 2 mW = 24 W)
INA219_WORDS = {0x01: 2000, 0x02: (3000 << 3) | 0x02, 0x03: 12000, 0x04: 20000}


def load(smbus: Any) -> None:
    for address, chip_id, humidity in ((BMP280, 0x58, False), (BME280, 0x60, True)):
        for reg, value in bosch_registers(chip_id, humidity).items():
            smbus.write_byte_data(address, reg, value)
    for address, words in ((LM75, LM75_WORDS), (ADS1115, ADS1115_WORDS),
                           (INA219, INA219_WORDS)):
        for reg, value in words.items():
            smbus.write_word_data(address, reg, swap(value))


def first_states(client: Mqtt, names: set[str], timeout: float) -> dict[str, dict[str, Any]]:
    """The first published state of each sensor (waits for each, up to ``timeout``)."""
    states: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while names - states.keys():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no state from {sorted(names - states.keys())}: {states}")
        try:
            topic, payload, _at = client.messages.get(timeout=left)
        except queue.Empty:
            continue
        name = topic.split("/")[-2]
        if topic.endswith("/state") and name in names and name not in states:
            states[name] = json.loads(payload)
    return states


def test_i2c_sensors_publish_their_datasheet_results(tmp_path: Path) -> None:
    from smbus2 import SMBus, i2c_msg

    bus_number = stub_bus(BMP280, BME280, LM75, ADS1115, INA219, SHT4X)
    smbus = SMBus(bus_number)
    load(smbus)
    with pytest.raises(OSError) as refused:  # the command-based chips' plain read
        smbus.i2c_rdwr(i2c_msg.read(SHT4X, 6))
    assert refused.value.errno == errno.EOPNOTSUPP
    on_bus = {"bus": bus_number, "interval": 1}
    daemon = Daemon(tmp_path, 1892, devices={
        "baro": {"type": "BMP280", "address": BMP280, **on_bus},
        "climate": {"type": "BME280", "address": BME280, **on_bus},
        "board": {"type": "LM75", "address": LM75, **on_bus},
        "adc": {"type": "ADS1115", "address": ADS1115, "channels": [0], **on_bus},
        "supply": {"type": "INA219", "address": INA219, "shunt_ohms": 0.01,
                   "max_current": 3.2768, **on_bus},
        "air": {"type": "SHT4x", "address": SHT4X, **on_bus},
    })
    client = Mqtt(1892, "sensors-test")
    try:
        client.subscribe("gatekeeper/vm/device/+/state")
        got = first_states(client, {"baro", "climate", "board", "adc", "supply", "air"}, 30)
        assert {k: got["baro"][k] for k in ("temperature", "pressure", "available")} == {
            "temperature": 25.08, "pressure": 1006.53, "available": True}, got["baro"]
        assert {k: got["climate"][k] for k in ("temperature", "pressure", "humidity")} == {
            "temperature": 25.08, "pressure": 1006.53, "humidity": 55.0}, got["climate"]
        assert got["board"]["temperature"] == -25.0, got["board"]
        assert got["adc"]["a0"] == 4.0959, got["adc"]
        assert {k: got["supply"][k] for k in
                ("bus_voltage", "shunt_voltage", "current", "power")} == {
            "bus_voltage": 12.0, "shunt_voltage": 20.0, "current": 2.0, "power": 24.0}, \
            got["supply"]
        # what the drivers wrote: forced mode, the ADS1115's conversion start on AIN0 at
        # ±4.096 V, 128 SPS, and the INA219's configuration and calibration
        assert smbus.read_byte_data(BMP280, 0xF4) == 0x25
        assert smbus.read_byte_data(BME280, 0xF2) == 0x01
        assert swap(smbus.read_word_data(ADS1115, 0x01)) == 0xC383
        assert swap(smbus.read_word_data(INA219, 0x00)) == 0x219F
        assert swap(smbus.read_word_data(INA219, 0x05)) == 0xA000
        assert got["air"]["available"] is False and "SHT4x at 0x44" in got["air"]["error"], \
            got["air"]
    finally:
        client.close()
        daemon.stop()
        smbus.close()
