"""The PCF8574 expander against a real kernel I²C driver inside the VM (scripts/hw-stage):
``i2c-stub`` at 0x20 through ``i2c-dev``, the character device ``smbus2`` opens on a Pi.

A PCF8574 has no registers: a plain byte write sets its port latch, a plain read returns its
pins. i2c-stub is an SMBus register file: a plain write sets its pointer, a plain read returns
the word at the pointer and moves it on. The tests use that: with word N holding N a read
returns the last byte written (the latch); with every word holding V, every read returns V
(the pins). Its own module: nothing else may use the stub meanwhile (the MCP23017 tests'
daemon polls it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.hw.test_expander_watchdog import ADDRESS, events, stub_bus
from tests.hw.test_gpio_sim import Daemon, Mqtt

pytestmark = pytest.mark.skipif("GPIOSIM_SYSFS" not in os.environ,
                                reason="runs inside the gpiosim VM (scripts/hw-stage)")

if "GPIOSIM_SYSFS" in os.environ:
    import gpiosim_vm as sim


def fill(smbus: Any, value: int) -> None:
    """Every i2c-stub word holds ``value``: a PCF857x has no registers, so a plain read (which
    returns the word at the stub's pointer and moves the pointer on) reads ``value``
    wherever the pointer is: a port whose pins read ``value``."""
    for word in range(256):
        smbus.write_byte_data(ADDRESS, word, value)


def test_pcf8574_latch_writes_reach_the_kernel_bus(tmp_path: Path) -> None:
    """A PCF8574's LED through i2c-dev and i2c-stub: a plain byte write sets the stub's
    pointer, so with word N holding N a plain read returns the last byte written (the latch).
    Outputs only: the chip is never read after the start."""
    from smbus2 import SMBus

    bus_number = stub_bus()
    smbus = SMBus(bus_number)
    for word in range(256):
        smbus.write_byte_data(ADDRESS, word, word)
    daemon = Daemon(tmp_path, 1889, devices={"lamp": {"type": "LED", "pin": "pcf:4"}},
                    top={"expanders": {"pcf": {"type": "PCF8574", "bus": bus_number,
                                               "address": ADDRESS}}})
    client = Mqtt(1889, "pcf-latch-test")
    try:
        latches = []
        for method in ("on", "off", "on"):
            assert client.call("lamp", method)["ok"]
            latches.append(smbus.read_byte(ADDRESS))
        # inputs and unused pins stay 1 (quasi-bidirectional); pin 4 follows the LED
        assert latches == [0xFF, 0xEF, 0xFF], [hex(v) for v in latches]
    finally:
        client.close()
        daemon.stop()
        smbus.close()


def test_pcf8574_button_edges_on_its_interrupt_line(tmp_path: Path) -> None:
    """A PCF8574's Button with its INT on a gpio-sim line: the port is read when INT falls
    (a plain byte read through i2c-dev), and pressed/released reach MQTT."""
    from smbus2 import SMBus

    bus_number = stub_bus()
    int_line = 5
    smbus = SMBus(bus_number)
    fill(smbus, 0xFF)  # released: pulled up
    sim.set_pull(int_line, True)
    daemon = Daemon(tmp_path, 1890, devices={"bell": {"type": "Button", "pin": "pcf:3"}},
                    top={"expanders": {"pcf": {"type": "PCF8574", "bus": bus_number,
                                               "address": ADDRESS, "interrupt": int_line}}})
    client = Mqtt(1890, "pcf-int-test")
    try:
        client.subscribe("gatekeeper/vm/device/bell/event")
        for _ in range(3):
            fill(smbus, 0xF7)  # P3 low: pressed
            sim.set_pull(int_line, False)
            event, _at = events(client, "/bell/event", 0.9)
            assert event["event"] == "pressed"
            sim.set_pull(int_line, True)
            fill(smbus, 0xFF)
            sim.set_pull(int_line, False)
            event, _at = events(client, "/bell/event", 0.9)
            assert event["event"] == "released"
            sim.set_pull(int_line, True)
    finally:
        client.close()
        daemon.stop()
        smbus.close()
