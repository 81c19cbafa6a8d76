"""PCF8574/PCF8575 expanders on the simulated quasi-bidirectional port: gpiozero devices on
their pins, the latch an LED writes (inputs stay high), edges from the INT line and from
polling, events and states over MQTT from a separate client, a chip that stops answering
and comes back, and the config's refusals."""

from __future__ import annotations

import time
from typing import Any

import pytest
from gpiozero import LED, Button

from pi_mqtt_gpio.server.daemon import Daemon
from pi_mqtt_gpio.server.pins.mcp23017 import ExpanderConfig, ExpanderFactory
from pi_mqtt_gpio.server.pins.pcf857x import PCF857x, SimulatedPCF857x
from pi_mqtt_gpio.server.pins.simulated import simulated_factory
from pi_mqtt_gpio.server.schema import build
from tests.server.test_cover_e2e import call, until
from tests.server.test_expanders import stop_and_recover, watcher_and_caller
from tests.server.test_guards_e2e import run


def chip(kind: str, interrupt: bool = True, **over: Any
         ) -> tuple[PCF857x, SimulatedPCF857x, ExpanderFactory]:
    problems: list[Any] = []
    cfg = build(ExpanderConfig, {"type": kind, **over}, (), problems)
    assert not problems
    bus = SimulatedPCF857x(1 if kind == "PCF8574" else 2)
    c = PCF857x("io2", cfg, bus)
    f = ExpanderFactory(simulated_factory(), {"io2": c})
    c.start()
    if interrupt:
        bus.on_interrupt = c.interrupt
    return c, bus, f


@pytest.mark.parametrize(("kind", "led_pin", "button_pin"), [("PCF8574", 6, 3),
                                                             ("PCF8575", 12, 9)])
def test_devices_on_the_port(kind: str, led_pin: int, button_pin: int) -> None:
    _c, bus, f = chip(kind)
    try:
        full = (1 << bus.count) - 1
        assert bus.latch == full  # power-on: every pin an input (high)
        button = Button(f"io2:{button_pin}", pin_factory=f)
        led = LED(f"io2:{led_pin}", pin_factory=f)
        assert bus.latch == full & ~(1 << led_pin)  # the LED drives low; inputs stay 1
        led.on()
        assert bus.latch == full and led.is_lit
        led.off()
        assert bus.latch == full & ~(1 << led_pin)
        pressed: list[float] = []
        button.when_pressed = lambda: pressed.append(time.monotonic())
        bus.drive(button_pin, False)  # pressed: INT falls, the port is read
        assert pressed and button.is_pressed  # at once, within the drive: no poll brought it
        assert not bus.int_low  # reading the port released INT
        assert bus.latch & (1 << button_pin)  # an input's latch bit stays 1
        with pytest.raises(Exception, match=f"an {kind} has pull-ups only"):
            Button(f"io2:{button_pin + 1}", pull_up=False, pin_factory=f)
    finally:
        f.close()


def test_without_an_interrupt_line_inputs_are_polled() -> None:
    _c, bus, f = chip("PCF8574", interrupt=False, poll_interval_s=0.01)
    try:
        button = Button("io2:0", pin_factory=f)
        seen: list[int] = []
        button.when_pressed = lambda: seen.append(1)
        bus.drive(0, False)
        deadline = time.monotonic() + 2
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen and button.is_pressed
    finally:
        f.close()


EXPANDER = """
expanders: {io2: {type: PCF8574, bus: 1, address: 0x38}}
devices:
  hall: {type: Button, pin: "io2:3"}
  lamp: {type: LED, pin: "io2:7"}
"""


def test_end_to_end_and_a_chip_that_stops_answering() -> None:
    def body(daemon: Daemon, port: int) -> dict[str, Any]:
        w, c = watcher_and_caller(port)
        factory: Any = daemon.hw.factory
        bus: SimulatedPCF857x = factory.chips["io2"].port
        try:
            assert call(c, "hall", {"method": "sim_press"})["ok"]
            pressed = until(w, lambda t, p: t.endswith("/hall/event") and p["event"] == "pressed")
            assert call(c, "lamp", {"method": "off"})["ok"]
            off = bus.latch
            assert call(c, "lamp", {"method": "on"})["ok"]
            on = bus.latch
            down, up = stop_and_recover(w, bus)
            return {"pressed": pressed, "off": off, "on": on, "down": down, "up": up}
        finally:
            c.close()
            w.close()

    got = run(EXPANDER, body)
    assert got["off"] == 0x7F and got["on"] == 0xFF  # the lamp's bit; the button's stays 1
    health = [p for t, p in got["down"] if t.endswith("/system/health")][-1]
    assert "expander io2 (I2C bus 1, address 0x38) does not answer" in health["problems"][0]
    recovered = [p for t, p in got["up"] if t.endswith("/hall/state")]
    assert recovered and "available" not in recovered[-1]


@pytest.mark.parametrize(("text", "message"), [
    ('expanders: {io2: {type: PCF8574}}\ndevices: {d: {type: LED, pin: "io2:8"}}',
     "a PCF8574 has pins 0 to 7"),
    ("expanders: {io2: {type: PCF8575, address: 0x38}}\ndevices: {}",
     "a PCF8575 answers at 0x20-0x27, not 0x38"),
    ("expanders: {io2: {type: MCP23017, address: 0x3a}}\ndevices: {}",
     "an MCP23017 answers at 0x20-0x27"),
    ("expanders: {io2: {type: PCF8574, address: 0x30}}\ndevices: {}",
     "0x38-0x3F for a PCF8574A"),
    ("expanders: {io2: {type: PCF8576}}\ndevices: {}", "MCP23017"),
])
def test_config_problems(text: str, message: str) -> None:
    from pi_mqtt_gpio.server.config_loader import ConfigError, parse_config

    with pytest.raises(ConfigError, match=message):
        parse_config(text)


def test_a_pcf8575_and_a_pcf8574a_are_accepted() -> None:
    from pi_mqtt_gpio.server.config_loader import parse_config

    config = parse_config("expanders:\n  a: {type: PCF8575, address: 0x21}\n"
                          "  b: {type: PCF8574, address: 0x3f}\n"
                          'devices: {x: {type: LED, pin: "a:15"}, y: {type: Button, pin: "b:7"}}')
    assert set(config.expanders) == {"a", "b"}


class FakeBus:
    """smbus2's calls as the chips see them: plain byte transfers (PCF8574) and raw I²C
    messages (PCF8575: two bytes, low port first), with nothing in between."""

    def __init__(self, port: bytes) -> None:
        self.port = port
        self.wire: list[tuple[str, int, bytes]] = []

    def write_byte(self, address: int, value: int) -> None:
        self.wire.append(("w", address, bytes([value])))

    def read_byte(self, address: int) -> int:
        self.wire.append(("r", address, self.port[:1]))
        return self.port[0]

    def i2c_rdwr(self, *msgs: Any) -> None:
        import ctypes

        for msg in msgs:
            if msg.flags & 1:  # I2C_M_RD
                ctypes.memmove(msg.buf, self.port, msg.len)
                self.wire.append(("r", msg.addr, self.port[:msg.len]))
            else:
                self.wire.append(("w", msg.addr, bytes(msg)))


def test_smbus_port_puts_the_bytes_on_the_wire_as_the_datasheets_say() -> None:
    from pi_mqtt_gpio.server.pins.pcf857x import SMBusPort

    bus8 = FakeBus(b"\xf7")
    port8 = SMBusPort(bus8, 1)
    port8.write_port(0x20, 0x1EF)  # only the low byte exists
    assert port8.read_port(0x20) == 0xF7
    assert bus8.wire == [("w", 0x20, b"\xef"), ("r", 0x20, b"\xf7")]
    bus16 = FakeBus(b"\x34\x12")
    port16 = SMBusPort(bus16, 2)
    port16.write_port(0x21, 0xABCD)
    assert port16.read_port(0x21) == 0x1234
    assert bus16.wire == [("w", 0x21, b"\xcd\xab"), ("r", 0x21, b"\x34\x12")]
