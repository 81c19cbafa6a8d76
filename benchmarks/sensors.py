"""What polling sensors costs: process CPU per sensor per read, and the idle CPU of the daemon
with ten sensors at their default intervals.

    .venv/bin/python benchmarks/sensors.py [--reads 2000] [--seconds 60] [--no-daemon]

1. Each sensor type's poll (the daemon's work every ``interval``: read, round, compare with
   the last published state) ``--reads`` times, simulated (``--simulate``'s drifting values)
   and with the real I²C driver against an in-process fake SMBus that answers with valid
   registers and CRCs. The drivers' conversion waits are skipped (they sleep, which costs
   no CPU): the numbers are the Python side of a read; on a Pi the kernel's i2c-dev adds its
   part per transfer.
2. The daemon (``--simulate``) with ten sensors at their default intervals for ``--seconds``,
   and the same daemon without them: CPU from /proc/<pid>/stat (utime + stime) over the
   window, as a share of one core.

Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import yaml

from pi_mqtt_gpio.server.config_loader import parse_config
from pi_mqtt_gpio.server.devices import registry, sensor_i2c
from pi_mqtt_gpio.server.devices.sensor_i2c import crc8_htu21d, crc8_sensirion
from pi_mqtt_gpio.server.devices.sensors import SensorAdapter

I2C_TYPES = ("BME280", "BMP280", "SHT3x", "SHT4x", "HTU21D", "BH1750", "ADS1115", "INA219",
             "LM75")
TEN_SENSORS: dict[str, dict[str, Any]] = {
    "climate": {"type": "BME280", "address": 0x76},
    "baro": {"type": "BMP280", "address": 0x77},
    "air": {"type": "SHT3x", "address": 0x44},
    "room": {"type": "SHT4x", "address": 0x45},
    "bath": {"type": "HTU21D", "address": 0x40},
    "light": {"type": "BH1750", "address": 0x23},
    "adc": {"type": "ADS1115", "address": 0x48},
    "supply": {"type": "INA219", "address": 0x41},
    "board": {"type": "LM75", "address": 0x49},
    "probe": {"type": "DS18B20"},
}


class FakeSMBus:
    """Every chip at once: a byte register file (Bosch), 16-bit words (LM75, ADS1x15,
    INA219) and the raw answers of the command-based chips, with valid CRCs."""

    def __init__(self) -> None:
        self.regs = {0xD0: 0x60, 0xF3: 0x00}
        calib = [0x70, 0x6B, 0x43, 0x67, 0x18, 0xFC, 0x7D, 0x8E, 0x43, 0xD6, 0xD0, 0x0B,
                 0x27, 0x0B, 0x8C, 0x00, 0xF9, 0xFF, 0x8C, 0x3C, 0xF8, 0xC6, 0x70, 0x17,
                 0x00, 0x4B]
        self.regs.update({0x88 + i: b for i, b in enumerate(calib)})
        self.regs.update({0xE1 + i: b for i, b in enumerate([0x6A, 0x01, 0, 0x13, 0x29, 3,
                                                             0x1E])})
        self.regs.update({0xF7 + i: b for i, b in enumerate([0x65, 0x5A, 0xC0, 0x7E, 0xED,
                                                             0x00, 0x75, 0x30])})
        self.words: dict[int, int] = {}
        self.command = 0
        sht = [0x66, 0x66, crc8_sensirion([0x66, 0x66]), 0x80, 0x00, crc8_sensirion([0x80, 0])]
        self.answers = {0x24: sht, 0xFD: sht, 0xF3: [0x66, 0x64, crc8_htu21d([0x66, 0x64])],
                        0xF5: [0x7C, 0x80, crc8_htu21d([0x7C, 0x80])], 0x20: [0x83, 0x90]}

    def read_i2c_block_data(self, addr: int, reg: int, n: int, force: Any = None) -> list[int]:
        return [self.regs.get(reg + i, 0) for i in range(n)]

    def write_i2c_block_data(self, addr: int, reg: int, data: list[int],
                             force: Any = None) -> None:
        self.command = reg
        for i, b in enumerate(data):
            self.regs[reg + i] = b

    def write_byte_data(self, addr: int, reg: int, value: int, force: Any = None) -> None:
        self.write_i2c_block_data(addr, reg, [value])

    def write_byte(self, addr: int, value: int, force: Any = None) -> None:
        self.command = value

    def read_word_data(self, addr: int, reg: int, force: Any = None) -> int:
        return self.words.get(reg, 0x0019)  # LM75: 19h first on the wire (25 °C)

    def write_word_data(self, addr: int, reg: int, value: int, force: Any = None) -> None:
        self.words[reg] = value

    def i2c_rdwr(self, *msgs: Any) -> None:
        for msg in msgs:
            data = bytes(self.answers[self.command])
            ctypes.memmove(msg.buf, data, msg.len)

    def close(self) -> None:
        pass


def make(kind: str, simulate: bool) -> SensorAdapter:
    config = parse_config(yaml.safe_dump({"node_id": "bench", "devices": {"s": {"type": kind}}}))
    sensor = registry[kind]("s", config.devices["s"], simulate=simulate, emit=lambda *a: None)
    assert isinstance(sensor, SensorAdapter)
    if not simulate:
        bus = FakeSMBus()
        sensor.open_bus = lambda number: bus
    sensor.open(None)
    assert sensor.error is None, sensor.error
    return sensor


def per_read(kind: str, simulate: bool, reads: int) -> float:
    """Microseconds of process CPU per poll."""
    sensor = make(kind, simulate)
    start = time.process_time()
    for _ in range(reads):
        sensor.read_now()
        sensor.poll_state()
    spent = time.process_time() - start
    assert sensor.error is None, sensor.error
    return spent / reads * 1e6


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def daemon_idle(devices: dict[str, Any], seconds: float, port: int) -> float:
    """The daemon's CPU over ``seconds`` after its start, as % of one core."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "gk.yaml")
        path.write_text(yaml.safe_dump({
            "node_id": "bench",
            "broker": {"listeners": [{"type": "tcp", "host": "127.0.0.1", "port": port}]},
            "devices": devices}))
        log = Path(tmp, "gk.log")
        with log.open("w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "pi_mqtt_gpio.server.main",
                                     "--config", str(path), "--simulate"], stdout=out,
                                    stderr=subprocess.STDOUT, cwd=tmp)
        try:
            deadline = time.monotonic() + 60
            while "pi-mqtt-gatekeeper ready" not in log.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the daemon did not start:\n" + log.read_text())
                time.sleep(0.1)
            before, t0 = proc_cpu(proc.pid), time.monotonic()
            time.sleep(seconds)  # the window measured, not a wait for an event
            if proc.poll() is not None:
                raise RuntimeError("the daemon ended:\n" + log.read_text())
            return (proc_cpu(proc.pid) - before) / (time.monotonic() - t0) * 100
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--no-daemon", action="store_true")
    args = parser.parse_args()
    print(f"CPU per sensor per read (µs, {args.reads} reads each; conversion waits skipped)")
    print(f"{'type':10} {'simulated':>10} {'fake SMBus':>11}")
    module = vars(sensor_i2c)
    real_time = module["time"]
    module["time"] = types.SimpleNamespace(sleep=lambda s: None)
    try:
        for kind in I2C_TYPES:
            sim = per_read(kind, True, args.reads)
            fake = per_read(kind, False, args.reads)
            print(f"{kind:10} {sim:10.1f} {fake:11.1f}")
    finally:
        module["time"] = real_time
    if args.no_daemon:
        return
    print(f"\ndaemon idle CPU over {args.seconds:g} s (% of one core, /proc/<pid>/stat)")
    without = daemon_idle({}, args.seconds, 18931)
    print(f"  no devices:                              {without:.2f} %")
    ten = daemon_idle(TEN_SENSORS, args.seconds, 18932)
    print(f"  ten sensors at their default intervals:  {ten:.2f} %")


if __name__ == "__main__":
    main()
