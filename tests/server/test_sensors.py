"""Sensors: each I²C driver against a fake bus loaded with the datasheets' example
calibration and raw values (the published value is the datasheet's worked result), CRC
failures, a chip that stops answering and comes back, 1-Wire and IIO against a sysfs tree
built here, the publish rule (threshold, heartbeat), the config checks, and the real daemon
under ``--simulate``: a sensor's retained state with units, and a failing sensor making the
node's health degraded by name."""

from __future__ import annotations

import ctypes
import errno
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from pi_mqtt_gpio.server.config_loader import ConfigError, parse_config
from pi_mqtt_gpio.server.devices import registry
from pi_mqtt_gpio.server.devices.sensor_i2c import (
    BH1750,
    BME280,
    BMP280,
    HTU21D,
    INA219,
    LM75,
    ADS1x15,
    SensorError,
    SHT3x,
    SHT4x,
    crc8_htu21d,
    crc8_sensirion,
    ina219_calibration,
)
from pi_mqtt_gpio.server.devices.sensors import SensorAdapter
from tests.conftest import Client, broker_config, start_gatekeeper


class FakeBus:
    """One chip on an I²C bus: a register file, the commands written, the bytes a raw read
    answers after each command; ``present = False``: the chip does not answer."""

    def __init__(self, address: int, regs: dict[int, int] | None = None) -> None:
        self.address = address
        self.regs = dict(regs or {})
        self.answers: dict[Any, list[int]] = {}
        self.last: Any = None
        self.writes: list[tuple[int, list[int]]] = []
        self.present = True
        self.on_write: Callable[[int, list[int]], None] | None = None
        self.closed = False

    def _check(self, addr: int) -> None:
        if not self.present or addr != self.address:
            raise OSError(errno.EREMOTEIO, "Remote I/O error")

    def read_i2c_block_data(self, addr: int, reg: int, n: int, force: Any = None) -> list[int]:
        self._check(addr)
        return [self.regs.get(reg + i, 0) for i in range(n)]

    def write_i2c_block_data(self, addr: int, reg: int, data: list[int],
                             force: Any = None) -> None:
        self._check(addr)
        self.writes.append((reg, list(data)))
        for i, b in enumerate(data):
            self.regs[reg + i] = b
        self.last = (reg, *data)
        if self.on_write is not None:
            self.on_write(reg, list(data))

    def write_byte_data(self, addr: int, reg: int, value: int, force: Any = None) -> None:
        self.write_i2c_block_data(addr, reg, [value])

    def read_word_data(self, addr: int, reg: int, force: Any = None) -> int:
        """SMBus word read: the first byte on the wire is the low byte."""
        first, second = self.read_i2c_block_data(addr, reg, 2)
        return first | (second << 8)

    def write_word_data(self, addr: int, reg: int, value: int, force: Any = None) -> None:
        self.write_i2c_block_data(addr, reg, [value & 0xFF, value >> 8])

    def write_byte(self, addr: int, value: int, force: Any = None) -> None:
        self._check(addr)
        self.writes.append((value, []))
        self.last = value

    def i2c_rdwr(self, *msgs: Any) -> None:
        for msg in msgs:
            self._check(msg.addr)
            data = bytes(self.answers[self.last])
            ctypes.memmove(msg.buf, data, msg.len)

    def close(self) -> None:
        self.closed = True


def le16(value: int) -> list[int]:
    value &= 0xFFFF
    return [value & 0xFF, value >> 8]


# BMP280 datasheet 3.12: trimming values and raw readings of its worked example
BMP_T = (27504, 26435, -1000)
BMP_P = (36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
ADC_T, ADC_P = 519888, 415148
HUM = (75, 362, 0, 313, 50, 30)  # a BME280's typical humidity trimming


def bosch_regs(chip_id: int, adc_h: int | None = None) -> dict[int, int]:
    calib = [b for v in (*BMP_T, *BMP_P) for b in le16(v)] + [0, HUM[0]]
    regs = {0xD0: chip_id, 0xF3: 0}
    regs.update({0x88 + i: b for i, b in enumerate(calib)})
    h2, h3, h4, h5, h6 = HUM[1:]
    regs.update({0xE1 + i: b for i, b in enumerate(
        [*le16(h2), h3, (h4 >> 4) & 0xFF, (h4 & 0x0F) | ((h5 & 0x0F) << 4), (h5 >> 4) & 0xFF,
         h6 & 0xFF])})
    data = [ADC_P >> 12, (ADC_P >> 4) & 0xFF, (ADC_P & 0xF) << 4,
            ADC_T >> 12, (ADC_T >> 4) & 0xFF, (ADC_T & 0xF) << 4]
    if adc_h is not None:
        data += [adc_h >> 8, adc_h & 0xFF]
    regs.update({0xF7 + i: b for i, b in enumerate(data)})
    return regs


def bosch_int_humidity(adc_t: int, adc_h: int) -> float:
    """The BME280 datasheet's 32-bit integer humidity compensation (section 4.2.3), to check
    the floating point one the driver uses."""
    t1, t2, t3 = BMP_T
    var1 = ((((adc_t >> 3) - (t1 << 1))) * t2) >> 11
    var2 = (((((adc_t >> 4) - t1) * ((adc_t >> 4) - t1)) >> 12) * t3) >> 14
    t_fine = var1 + var2
    h1, h2, h3, h4, h5, h6 = HUM
    v = t_fine - 76800
    v = (((((adc_h << 14) - (h4 << 20) - (h5 * v)) + 16384) >> 15)
         * (((((((v * h6) >> 10) * (((v * h3) >> 11) + 32768)) >> 10) + 2097152) * h2
             + 8192) >> 14))
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * h1) >> 4)
    v = min(max(v, 0), 419430400)
    return (v >> 12) / 1024.0


def test_bmp280_datasheet_example_25_08_c_and_100653_pa() -> None:
    bus = FakeBus(0x76, bosch_regs(0x58))
    drv = BMP280(bus, 0x76)
    drv.setup()
    got = drv.read()
    assert round(got["temperature"], 2) == 25.08
    assert round(got["pressure"] * 100, 2) == pytest.approx(100653.27, abs=0.01)  # hPa out
    assert (0xF4, [0x25]) in bus.writes  # forced mode, x1 oversampling


def test_bme280_same_example_and_humidity_matches_the_integer_formula() -> None:
    bus = FakeBus(0x76, bosch_regs(0x60, adc_h=30000))
    drv = BME280(bus, 0x76)
    drv.setup()
    got = drv.read()
    assert round(got["temperature"], 2) == 25.08
    assert got["humidity"] == pytest.approx(bosch_int_humidity(ADC_T, 30000), abs=0.05)
    assert (0xF2, [0x01]) in bus.writes


def test_a_bmp280_configured_as_bme280_is_refused_by_name() -> None:
    drv = BME280(FakeBus(0x76, bosch_regs(0x58)), 0x76)
    with pytest.raises(SensorError, match="a BMP280 answers at 0x76, not a BME280"):
        drv.setup()


def sensirion(raw_t: int, raw_h: int, *, bad: bool = False) -> list[int]:
    t = [raw_t >> 8, raw_t & 0xFF]
    h = [raw_h >> 8, raw_h & 0xFF]
    return [*t, crc8_sensirion(t) ^ (1 if bad else 0), *h, crc8_sensirion(h)]


def test_sensirion_crc_datasheet_example() -> None:
    assert crc8_sensirion([0xBE, 0xEF]) == 0x92


def test_sht4x_and_sht3x_conversions() -> None:
    bus = FakeBus(0x44)
    bus.answers[0xFD] = sensirion(0x6666, 0x8000)
    got = SHT4x(bus, 0x44).read()
    assert round(got["temperature"], 3) == 25.0
    assert got["humidity"] == pytest.approx(-6 + 125 * 0x8000 / 65535)
    bus.answers[(0x24, 0x00)] = sensirion(0x6666, 0x8000)
    got = SHT3x(bus, 0x44).read()
    assert round(got["temperature"], 3) == 25.0
    assert got["humidity"] == pytest.approx(100 * 0x8000 / 65535)


def test_sht_crc_mismatch_is_a_read_error() -> None:
    bus = FakeBus(0x44)
    bus.answers[0xFD] = sensirion(0x6666, 0x8000, bad=True)
    with pytest.raises(SensorError, match="CRC mismatch"):
        SHT4x(bus, 0x44).read()


def test_htu21d_datasheet_crc_and_conversion() -> None:
    assert crc8_htu21d([0x68, 0x3A]) == 0x7C and crc8_htu21d([0x4E, 0x85]) == 0x6B
    bus = FakeBus(0x40)
    bus.answers[0xF3] = [0x68, 0x3A, 0x7C]
    bus.answers[0xF5] = [0x7C, 0x80, crc8_htu21d([0x7C, 0x80])]
    got = HTU21D(bus, 0x40).read()
    assert round(got["temperature"], 1) == 24.7  # datasheet: 0x683A -> 24.7 °C
    assert round(got["humidity"], 1) == 54.8  # datasheet: 0x7C80 -> 54.8 %RH
    bus.answers[0xF5] = [0x4E, 0x85, 0x6A]  # 0x6B would be right
    with pytest.raises(SensorError, match="CRC mismatch"):
        HTU21D(bus, 0x40).read()


def test_bh1750_datasheet_example() -> None:
    bus = FakeBus(0x23)
    bus.answers[0x20] = [0x83, 0x90]
    assert BH1750(bus, 0x23).read()["illuminance"] == pytest.approx(28067, abs=0.5)


def test_lm75_datasheet_table() -> None:
    for msb, lsb, celsius in ((0x19, 0x00, 25.0), (0xE7, 0x00, -25.0), (0x7D, 0x00, 125.0),
                              (0xFF, 0xE0, -0.125), (0x00, 0x20, 0.125)):
        got = LM75(FakeBus(0x48, {0: msb, 1: lsb}), 0x48).read()
        assert got["temperature"] == celsius


class WordBus(FakeBus):
    """A chip with 16-bit big-endian registers (ADS1x15, INA219)."""

    def __init__(self, address: int, words: dict[int, int] | None = None) -> None:
        super().__init__(address)
        self.words = dict(words or {})

    def read_i2c_block_data(self, addr: int, reg: int, n: int, force: Any = None) -> list[int]:
        self._check(addr)
        word = self.words.get(reg, 0)
        return [word >> 8, word & 0xFF]

    def write_i2c_block_data(self, addr: int, reg: int, data: list[int],
                             force: Any = None) -> None:
        self._check(addr)
        self.writes.append((reg, list(data)))
        self.words[reg] = (data[0] << 8) | data[1]
        if self.on_write is not None:
            self.on_write(reg, list(data))

    def read_word_data(self, addr: int, reg: int, force: Any = None) -> int:
        self._check(addr)
        word = self.words.get(reg, 0)
        return (word >> 8) | ((word & 0xFF) << 8)  # MSB first on the wire: SMBus's low byte

    def write_word_data(self, addr: int, reg: int, value: int, force: Any = None) -> None:
        self.write_i2c_block_data(addr, reg, [value & 0xFF, value >> 8])


def test_ads1115_single_ended_channels_and_full_scale() -> None:
    bus = WordBus(0x48)
    raw = {0: 0x7FFF, 1: 0x4000, 2: 0x0000, 3: 0xFFFF}

    def convert(reg: int, data: list[int]) -> None:
        if reg == 0x01:  # a conversion starts: done at once, the result in register 0
            bus.words[0x00] = raw[((data[0] >> 4) & 0x7) - 4]

    bus.on_write = convert
    got = ADS1x15(bus, 0x48, channels=(0, 1, 2, 3), full_scale=4.096, data_rate=860).read()
    configs = [data for reg, data in bus.writes if reg == 0x01]
    for ch, config in enumerate(configs):
        assert config[0] == 0x80 | ((4 + ch) << 4) | (1 << 1) | 1  # OS, AINx, 4.096 V, single
        assert config[1] == (7 << 5) | 0x03  # 860 SPS, comparator off
    assert got["a0"] == pytest.approx(4.096 * 32767 / 32768)  # datasheet: 7FFFh = +FS(1-2^-15)
    assert got["a1"] == pytest.approx(2.048)
    assert got["a2"] == 0.0
    assert got["a3"] == pytest.approx(-4.096 / 32768)  # FFFFh: -1 LSB


def test_ina219_datasheet_calibration_and_readings() -> None:
    # 0.1 Ω shunt, 100 µA per bit: calibration 4096, 2 mW per bit of power
    cal, current_lsb, power_lsb = ina219_calibration(0.1, 3.2768)
    assert (cal, current_lsb, power_lsb) == (4096, 0.0001, pytest.approx(0.002))
    bus = WordBus(0x40, {0x01: 2000,  # shunt: 2000 x 10 µV = 20 mV
                         0x02: (3000 << 3) | 0x02,  # bus: 3000 x 4 mV = 12 V, CNVR
                         0x03: 1200,  # power: 1200 x 2 mW = 2.4 W
                         0x04: 2000})  # current: 2000 x 100 µA = 0.2 A
    drv = INA219(bus, 0x40, shunt_ohms=0.1, max_current=3.2768)
    drv.setup()
    assert (0x05, [0x10, 0x00]) in bus.writes
    assert (0x00, [0x39, 0x9F]) in bus.writes  # 32 V, /8 (320 mV), 12 bit, continuous
    got = drv.read()
    assert got == {"bus_voltage": pytest.approx(12.0), "shunt_voltage": pytest.approx(20.0),
                   "current": pytest.approx(0.2), "power": pytest.approx(2.4)}
    bus.words[0x05] = 0  # the chip was reset: calibrated again before the reading
    bus.writes.clear()
    drv.read()
    assert (0x05, [0x10, 0x00]) in bus.writes
    bus.words[0x02] |= 0x01  # math overflow
    with pytest.raises(SensorError, match="overflow"):
        drv.read()


# --- the adapter: availability, recovery, publishing --------------------------------------------
def adapter(yaml_devices: str, name: str = "s") -> SensorAdapter:
    config = parse_config(f"node_id: pi\ndevices:\n{yaml_devices}")
    cfg = config.devices[name]
    made = registry[cfg.type](name, cfg, simulate=False, emit=lambda *a: None)
    assert isinstance(made, SensorAdapter)
    return made


def test_a_chip_that_stops_answering_is_unavailable_then_recovers() -> None:
    bus = FakeBus(0x76, bosch_regs(0x60, adc_h=30000))
    sensor = adapter("  s: {type: BME280, heartbeat: 0}")
    sensor.open_bus = lambda n: bus
    sensor.open(None)
    state = sensor.state()
    assert state["available"] is True and state["temperature"] == 25.08
    assert state["pressure"] == 1006.53 and state["units"] == {
        "temperature": "°C", "humidity": "%", "pressure": "hPa"}
    bus.present = False
    down = sensor.poll_state()
    assert down is not None and down["available"] is False and down["temperature"] is None
    assert down["error"] == ("no answer from BME280 at 0x76 on /dev/i2c-1: check wiring, "
                             "`i2cdetect -y 1`, the address jumper")
    assert sensor.poll_state() is None  # still down: nothing new to say
    bus.present = True
    bus.writes.clear()
    up = sensor.poll_state()
    assert up is not None and up["available"] is True and up["temperature"] == 25.08
    assert any(reg == 0xF4 for reg, _ in bus.writes)  # set up again: calibration re-read


def test_a_crc_failure_makes_the_sensor_unavailable_with_the_reason() -> None:
    bus = FakeBus(0x44)
    bus.answers[0xFD] = sensirion(0x6666, 0x8000, bad=True)
    sensor = adapter("  s: {type: SHT4x}")
    sensor.open_bus = lambda n: bus
    sensor.open(None)
    state = sensor.state()
    assert state["available"] is False and "SHT4x at 0x44 on /dev/i2c-1" in state["error"]
    assert "CRC mismatch" in state["error"]


def test_a_missing_bus_device_says_how_to_enable_i2c() -> None:
    sensor = adapter("  s: {type: LM75, bus: 7}")

    def missing(n: int) -> Any:
        raise FileNotFoundError(errno.ENOENT, "No such file", f"/dev/i2c-{n}")

    sensor.open_bus = missing
    sensor.open(None)
    assert "/dev/i2c-7 does not exist: enable I²C" in sensor.state()["error"]


class Scripted:
    def __init__(self, values: list[Any]) -> None:
        self.values = values

    def read(self) -> dict[str, float]:
        value = self.values.pop(0)
        if isinstance(value, Exception):
            raise value
        return {"temperature": value}


def test_threshold_and_heartbeat_decide_what_is_published() -> None:
    sensor = adapter("  s: {type: LM75, threshold: 0.5, heartbeat: 3}")
    sensor.driver = Scripted([20.0, 20.2, 20.4, 20.6, 21.2, 21.3])
    sensor.read_now()
    sensor._published = sensor.state()
    assert sensor.poll_state() is None  # 20.2: moved less than 0.5
    assert sensor.poll_state() is None  # 20.4
    beat = sensor.poll_state()  # 20.6: under the threshold, but the third poll: heartbeat
    assert beat is not None and beat["temperature"] == 20.6
    moved = sensor.poll_state()  # 21.2: 0.6 from the last published
    assert moved is not None and moved["temperature"] == 21.2
    assert sensor.poll_state() is None


def test_dht_failures_are_counted_across_polls_before_unavailable() -> None:
    sensor = adapter("  s: {type: DHT22, device: 0, heartbeat: 0}")
    eio = OSError(errno.EIO, "Input/output error")
    sensor.driver = Scripted([21.0, eio, eio, 21.5, eio, eio, eio, 22.0])
    sensor.read_now()
    sensor._published = sensor.state()
    assert sensor.poll_state() is None and sensor.poll_state() is None  # 2 misses: tolerated
    assert sensor.poll_state() is not None  # 21.5
    assert sensor.poll_state() is None and sensor.poll_state() is None
    down = sensor.poll_state()  # the third in a row
    assert down is not None and down["available"] is False
    assert "3 reads in a row failed" in down["error"] and "gpiopin" in down["error"]
    up = sensor.poll_state()
    assert up is not None and up["available"] is True and up["temperature"] == 22.0


# --- sysfs: 1-Wire and IIO ---------------------------------------------------------------------
W1_SLAVE = ("72 01 4b 46 7f ff 0e 10 57 : crc=57 {ok}\n"
            "72 01 4b 46 7f ff 0e 10 57 t=23125\n")


def test_w1_by_address_from_w1_slave_and_the_only_one(tmp_path: Path) -> None:
    one = tmp_path / "28-0316a2795bff"
    one.mkdir()
    (one / "w1_slave").write_text(W1_SLAVE.format(ok="YES"))
    (tmp_path / "w1_bus_master1").mkdir()
    sensor = adapter(f"  s: {{type: DS18B20, base_path: '{tmp_path}'}}")
    sensor.open(None)
    assert sensor.state()["temperature"] == 23.12  # 23.125 at 2 digits
    two = tmp_path / "28-00000a0b0c0d"
    two.mkdir()
    (two / "temperature").write_text("-1250\n")
    sensor = adapter(f"  s: {{type: DS18B20, base_path: '{tmp_path}', address: 00000a0b0c0d}}")
    sensor.open(None)
    assert sensor.state()["temperature"] == -1.25
    sensor = adapter(f"  s: {{type: DS18B20, base_path: '{tmp_path}'}}")
    sensor.open(None)
    assert "2 1-Wire thermometers" in sensor.state()["error"]
    assert "give address" in sensor.state()["error"]


def test_w1_crc_no_and_a_missing_sensor_are_unavailable(tmp_path: Path) -> None:
    one = tmp_path / "28-0316a2795bff"
    one.mkdir()
    (one / "w1_slave").write_text(W1_SLAVE.format(ok="NO"))
    sensor = adapter(f"  s: {{type: DS18B20, base_path: '{tmp_path}'}}")
    sensor.open(None)
    assert sensor.state()["available"] is False
    assert "CRC check failed" in sensor.state()["error"]
    sensor = adapter(f"  s: {{type: DS18B20, base_path: '{tmp_path}', address: 28-aa}}")
    sensor.open(None)
    assert "no 1-Wire thermometer 28-aa" in sensor.state()["error"]
    (one / "w1_slave").write_text(W1_SLAVE.format(ok="YES").replace("t=23125", "t=85000"))
    sensor = adapter(f"  s: {{type: DS18B20, base_path: '{tmp_path}'}}")
    sensor.open(None)
    assert "power-on value" in sensor.state()["error"]


def test_iio_dht_by_index_and_by_name(tmp_path: Path) -> None:
    for n, name in ((0, "mcp3008"), (1, "dht11@4")):
        folder = tmp_path / f"iio:device{n}"
        folder.mkdir()
        (folder / "name").write_text(name + "\n")
    (tmp_path / "iio:device1" / "in_temp_input").write_text("21400\n")
    (tmp_path / "iio:device1" / "in_humidityrelative_input").write_text("40100\n")
    for device in ("", ", device: 1", ", device: dht11"):
        sensor = adapter(f"  s: {{type: DHT22, base_path: '{tmp_path}'{device}}}")
        sensor.open(None)
        assert sensor.state()["temperature"] == 21.4, device
        assert sensor.state()["humidity"] == 40.1
    sensor = adapter(f"  s: {{type: DHT22, base_path: '{tmp_path}', device: 5, failures: 1}}")
    sensor.open(None)
    assert "iio:device5" in sensor.state()["error"]


# --- config refusals ---------------------------------------------------------------------------
@pytest.mark.parametrize(("device", "phrase"), [
    ("{type: BME280, threshold: {lux: 1}}", "threshold.lux: not a value of a BME280"),
    ("{type: ADS1115, data_rate: 1600}", "data_rate: a ADS1115 converts at"),
    ("{type: ADS1115, full_scale: 3.3}", "full_scale: one of"),
    ("{type: ADS1015, channels: [1, 1]}", "distinct channels"),
    ("{type: INA219, shunt_ohms: 0.1, max_current: 5}", "320 mV"),
    ("{type: DHT22, interval: 1}", "must be >= 2"),
    ("{type: BME280, address: 0x80}", "must be <= 119"),
])
def test_sensor_config_refusals(device: str, phrase: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(f"node_id: pi\ndevices:\n  s: {device}\n")
    assert phrase in str(err.value)


# --- the real daemon ---------------------------------------------------------------------------
def test_simulated_sensor_state_units_and_a_failure_in_health(tmp_path: Path) -> None:
    cfg = broker_config(devices={
        "climate": {"type": "BME280", "interval": 0.2, "heartbeat": 1},
        "probe": {"type": "DS18B20", "interval": 1},
    }, auth={"allow_anonymous": True, "anonymous_role": "admin", "roles": {}})
    gk = start_gatekeeper(tmp_path, cfg)
    c = Client(gk.port, mqtt.MQTTv5)
    try:
        c.connect()
        c.subscribe(f"{gk.root}/device/climate/state", 1)
        state = json.loads(c.get(10).payload)
        assert state["units"] == {"temperature": "°C", "humidity": "%", "pressure": "hPa"}
        assert state["available"] is True
        assert 10 < state["temperature"] < 35 and 900 < state["pressure"] < 1100
        first = state["ts"]
        while state["ts"] == first:  # the heartbeat: a new reading every poll
            state = json.loads(c.get(10).payload)
        c.subscribe(f"{gk.root}/system/health", 1)
        reply = f"{gk.root}/reply/{c.client_id}/r"
        c.subscribe(reply, 1)

        def call(failed: bool) -> None:
            c.publish(f"{gk.root}/device/climate/call",
                      json.dumps({"method": "sim_fail", "kwargs": {"failed": failed}}), 1,
                      properties=_props(reply))

        call(True)

        def until(predicate: Callable[[mqtt.MQTTMessage], bool]) -> mqtt.MQTTMessage:
            for _ in range(200):  # states and health keep coming: a bound on their number
                m = c.get(10)
                if predicate(m):
                    return m
            raise AssertionError("not seen in 200 messages")

        health = until(lambda m: m.topic.endswith("/system/health")
                       and json.loads(m.payload)["status"] == "degraded")
        problems = json.loads(health.payload)["problems"]
        assert any(p.startswith("sensor climate: no answer from BME280 at 0x76 on "
                                "/dev/i2c-1") for p in problems), problems
        down = until(lambda m: m.topic.endswith("/climate/state")
                     and not json.loads(m.payload)["available"])
        assert json.loads(down.payload)["temperature"] is None
        call(False)
        until(lambda m: m.topic.endswith("/system/health")
              and json.loads(m.payload)["status"] == "ok")
    finally:
        c.close()
        assert gk.stop() == 0


def _props(reply: str) -> Any:
    from tests.conftest import v5_props

    return v5_props(ResponseTopic=reply, CorrelationData=b"x")
