"""The PCA9685 against a real kernel I²C driver inside the VM (scripts/hw-stage): ``i2c-stub``
at 0x40 through ``i2c-dev``, the character device ``smbus2`` opens on a Pi.

i2c-stub is an SMBus register file (byte data, word data and I²C block transfers, the pointer
moving on within a block): the daemon's MODE1/MODE2/PRE_SCALE byte writes and its 4-byte
LEDn block writes land in it and the test reads them back. It is memory, not a PCA9685: the
prescaler takes any write (a real chip only while asleep), which the host tests cover on the
simulated chip. Its own module: the stub is reloaded with a chip at 0x40 beside 0x20.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.hw.test_expander_watchdog import stub_bus
from tests.hw.test_gpio_sim import Daemon, Mqtt

pytestmark = pytest.mark.skipif("GPIOSIM_SYSFS" not in os.environ,
                                reason="runs inside the gpiosim VM (scripts/hw-stage)")

PWM_ADDRESS = 0x40
MODE1, MODE2, PRE_SCALE = 0x00, 0x01, 0xFE


def led(n: int) -> int:
    return 0x06 + 4 * n


def test_pca9685_registers_reach_the_kernel_bus(tmp_path: Path) -> None:
    from smbus2 import SMBus

    bus_number = stub_bus(PWM_ADDRESS)
    smbus = SMBus(bus_number)
    daemon = Daemon(tmp_path, 1891, devices={
        "dim": {"type": "PWMLED", "pin": "pwm1:3", "frequency": 50},
        "lamp": {"type": "LED", "pin": "pwm1:5"},
        "arm": {"type": "Servo", "pin": "pwm1:0"},
    }, top={"expanders": {"pwm1": {"type": "PCA9685", "bus": bus_number,
                                   "address": PWM_ADDRESS, "frequency": 50}}})
    client = Mqtt(1891, "pca9685-test")
    try:
        assert smbus.read_byte_data(PWM_ADDRESS, PRE_SCALE) == 0x79  # 50 Hz
        assert smbus.read_byte_data(PWM_ADDRESS, MODE1) == 0x21  # awake, auto-increment
        assert smbus.read_byte_data(PWM_ADDRESS, MODE2) == 0x04  # totem pole
        assert client.call("dim", "value", 0.5)["ok"]
        assert smbus.read_i2c_block_data(PWM_ADDRESS, led(3), 4) == [0, 0, 0x00, 0x08]
        assert client.call("lamp", "on")["ok"]
        assert smbus.read_i2c_block_data(PWM_ADDRESS, led(5), 4) == [0, 0x10, 0, 0]
        assert client.call("lamp", "off")["ok"]
        assert smbus.read_i2c_block_data(PWM_ADDRESS, led(5), 4) == [0, 0, 0, 0x10]
        assert client.call("arm", "mid")["ok"]
        assert smbus.read_i2c_block_data(PWM_ADDRESS, led(0), 4) == [0, 0, 0x33, 0x01]
    finally:
        client.close()
        daemon.stop()
        smbus.close()
