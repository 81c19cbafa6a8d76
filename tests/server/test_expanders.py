"""MCP23017 expanders on the simulated register file: gpiozero devices on expander pins
(``io1:3``), events and states over MQTT from a separate client, the latch an LED writes,
the chip's interrupt registers, and an expander that stops answering and comes back."""

from __future__ import annotations

import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from gpiozero import LED, Button

from pi_mqtt_gpio.server.daemon import Daemon
from pi_mqtt_gpio.server.pins.mcp23017 import (
    GPINTEN,
    GPPU,
    INTCAP,
    INTF,
    IODIR,
    MCP23017,
    OLAT,
    ExpanderConfig,
    ExpanderFactory,
    SimulatedMCP23017,
    parse_pin,
)
from pi_mqtt_gpio.server.pins.simulated import simulated_factory
from pi_mqtt_gpio.server.schema import build
from tests.conftest import Client
from tests.server.test_cover_e2e import call, until
from tests.server.test_guards_e2e import run


def chip(**over: Any) -> tuple[MCP23017, SimulatedMCP23017, ExpanderFactory]:
    problems: list[Any] = []
    cfg = build(ExpanderConfig, {"type": "MCP23017", **over}, (), problems)
    assert not problems
    bus = SimulatedMCP23017()
    c = MCP23017("io1", cfg, bus)
    f = ExpanderFactory(simulated_factory(), {"io1": c})
    c.start()
    bus.on_interrupt = c.interrupt
    return c, bus, f


@pytest.mark.parametrize(("text", "parsed"), [("io1:3", ("io1", 3)), ("io1:15", ("io1", 15)),
                                              ("io1:16", None), ("17", None), (17, None),
                                              (":3", None)])
def test_pin_names(text: Any, parsed: Any) -> None:
    assert parse_pin(text) == parsed


def test_gpiozero_devices_on_expander_pins_set_the_registers() -> None:
    _c, bus, f = chip()
    try:
        button = Button("io1:3", pin_factory=f)  # pull-up, input, interrupt-on-change
        led = LED("io1:8", pin_factory=f)
        assert bus.regs[IODIR] & 0x08 and bus.regs[GPPU] & 0x08 and bus.regs[GPINTEN] & 0x08
        assert not bus.regs[IODIR + 1] & 0x01  # GPB0 is an output
        led.on()
        assert bus.regs[OLAT + 1] == 0x01 and led.is_lit
        led.off()
        assert bus.regs[OLAT + 1] == 0x00
        pressed: list[float] = []
        button.when_pressed = lambda: pressed.append(time.monotonic())
        bus.drive(3, False)  # pressed: the chip latches INTF/INTCAP, the INT line falls
        assert bus.regs[INTF] == 0 and bus.regs[INTCAP] & 0x08 == 0  # read back and cleared
        assert pressed and button.is_pressed  # at once, within the drive: no poll brought it
        with pytest.raises(Exception, match="pull-ups only"):
            Button("io1:4", pull_up=False, pin_factory=f)
    finally:
        f.close()


EXPANDER = """
expanders: {io1: {type: MCP23017, bus: 1, address: 0x20}}
devices:
  hall: {type: Button, pin: "io1:3"}
  lamp: {type: LED, pin: "io1:8"}
"""


def watcher_and_caller(port: int) -> tuple[Client, Client]:
    """A client watching the whole node and one making calls (MQTT 5)."""
    w = Client(port, mqtt.MQTTv5, client_id="watcher")
    w.connect()
    w.subscribe("gatekeeper/g/#", 1)
    c = Client(port, mqtt.MQTTv5, client_id="caller")
    c.connect()
    return w, c


def stop_and_recover(watcher: Client, bus: Any) -> tuple[Any, Any]:
    """The simulated chip stops answering until the health says so, then answers again:
    what the watcher saw until degraded, and until ok again."""
    bus.answering = False
    down = until(watcher, lambda t, p: t.endswith("/system/health")
                 and p["status"] == "degraded", timeout=5)
    bus.answering = True
    up = until(watcher, lambda t, p: t.endswith("/system/health") and p["status"] == "ok",
               timeout=5)
    return down, up


def test_expander_devices_end_to_end_and_a_chip_that_stops_answering() -> None:
    def body(daemon: Daemon, port: int) -> dict[str, Any]:
        w, c = watcher_and_caller(port)
        factory: Any = daemon.hw.factory
        bus: SimulatedMCP23017 = factory.chips["io1"].bus
        try:
            assert call(c, "hall", {"method": "sim_press"})["ok"]
            pressed = until(w, lambda t, p: t.endswith("/hall/event") and p["event"] == "pressed")
            assert call(c, "lamp", {"method": "on"})["ok"]
            olat = bus.regs[OLAT + 1]
            down, up = stop_and_recover(w, bus)
            return {"pressed": pressed, "olat": olat, "down": down, "up": up}
        finally:
            c.close()
            w.close()

    got = run(EXPANDER, body)
    assert got["olat"] == 0x01
    health = [p for t, p in got["down"] if t.endswith("/system/health")][-1]
    assert "expander io1 (I2C bus 1, address 0x20) does not answer" in health["problems"][0]
    hall = [p for t, p in got["down"] if t.endswith("/hall/state")]
    assert hall and hall[-1]["available"] is False
    recovered = [p for t, p in got["up"] if t.endswith("/hall/state")]
    assert recovered and "available" not in recovered[-1]


@pytest.mark.parametrize(("extra", "message"), [
    ('devices: {d: {type: PWMLED, pin: "io1:3"}}', "a PWMLED cannot use an expander pin"),
    ('devices: {d: {type: LED, pin: "io9:3"}}', "no expander named 'io9'"),
    ("devices: {d: {type: LED, pin: 4}}", "GPIO4 is expander io1's interrupt line"),
    ('devices: {a: {type: LED, pin: "io1:3"}, b: {type: LED, pin: "io1:3"}}',
     "expander pin io1:3 is already used by a.pin"),
    ("expanders: {io2: {type: MCP23017}}", "bus 1 address 0x20 is io1's"),
])
def test_expander_config_problems(extra: str, message: str) -> None:
    from pi_mqtt_gpio.server.config_loader import ConfigError, parse_config

    if extra.startswith("expanders:"):  # a second expander beside io1
        text = "expanders:\n  io1: {type: MCP23017, interrupt: 4}\n  io2: {type: MCP23017}\n"
    else:
        text = "expanders: {io1: {type: MCP23017, interrupt: 4}}\n" + extra + "\n"
    with pytest.raises(ConfigError, match=message):
        parse_config(text)
