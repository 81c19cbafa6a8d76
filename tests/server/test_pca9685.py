"""The PCA9685 PWM controller: the bytes on the wire (prescale, MODE1 sleep/wake/restart,
LEDn counts with full-on and full-off bits) from gpiozero's PWMLED, LED, Servo and Motor on
its channels, the simulated chip's behaviour, a chip that stops answering and comes back,
the config's refusals, and the real daemon under --simulate."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from gpiozero import LED, PWMLED, AngularServo, Button, Motor, Servo

from pi_mqtt_gpio.server.daemon import Daemon
from pi_mqtt_gpio.server.pins.mcp23017 import ExpanderConfig, ExpanderFactory
from pi_mqtt_gpio.server.pins.pca9685 import (
    AI,
    MODE1,
    MODE2,
    PCA9685,
    PRE_SCALE,
    RESTART,
    SLEEP,
    SimulatedPCA9685,
    prescale_for,
)
from pi_mqtt_gpio.server.pins.simulated import simulated_factory
from pi_mqtt_gpio.server.schema import build
from tests.conftest import Client, broker_config, start_gatekeeper
from tests.server.test_cover_e2e import call, until
from tests.server.test_expanders import watcher_and_caller
from tests.server.test_guards_e2e import run


class RecordingBus(SimulatedPCA9685):
    """The simulated chip, recording every transfer as (operation, register, data)."""

    def __init__(self) -> None:
        super().__init__()
        self.wire: list[tuple[str, int, Any]] = []

    def read_byte_data(self, address: int, register: int) -> int:
        assert address == 0x40
        value = super().read_byte_data(address, register)
        self.wire.append(("read", register, value))
        return value

    def write_byte_data(self, address: int, register: int, value: int) -> None:
        assert address == 0x40
        super().write_byte_data(address, register, value)
        self.wire.append(("write", register, value))

    def write_i2c_block_data(self, address: int, register: int, data: Sequence[int]) -> None:
        assert address == 0x40
        super().write_i2c_block_data(address, register, data)
        self.wire.append(("block", register, list(data)))


def chip(frequency: float = 50, bus: RecordingBus | None = None,
         on_failure: Any = None) -> tuple[PCA9685, RecordingBus, ExpanderFactory]:
    problems: list[Any] = []
    cfg = build(ExpanderConfig, {"type": "PCA9685", "address": 0x40, "frequency": frequency},
                (), problems)
    assert not problems
    bus = bus or RecordingBus()
    c = PCA9685("pwm1", cfg, bus, on_failure=on_failure)
    f = ExpanderFactory(simulated_factory(), {"pwm1": c})
    c.start()
    return c, bus, f


def led_block(n: int, on: int, off: int) -> tuple[str, int, list[int]]:
    return ("block", 0x06 + 4 * n, [on & 0xFF, on >> 8, off & 0xFF, off >> 8])


FULL_OFF = (0, 0x1000)
FULL_ON = (0x1000, 0)


def test_the_prescale_is_the_datasheets() -> None:
    assert prescale_for(50) == 121 == 0x79
    assert prescale_for(200) == 30  # the power-on value, 200 Hz
    assert prescale_for(1526) == 3 and prescale_for(24) == 253


@pytest.mark.parametrize(("frequency", "prescale"), [(50, 0x79), (200, 30)])
def test_start_sleeps_sets_the_prescaler_then_wakes(frequency: float, prescale: int) -> None:
    _c, bus, f = chip(frequency)
    try:
        wire = bus.wire
        assert wire[0] == ("read", MODE1, 0x11)  # power-on: SLEEP | ALLCALL
        assert wire[1] == ("write", MODE1, 0x31)  # still asleep, auto-increment on
        assert wire[2] == ("write", PRE_SCALE, prescale)
        assert wire[3] == ("write", MODE2, 0x04)  # totem pole, not inverted
        assert wire[4:20] == [led_block(n, *FULL_OFF) for n in range(16)]
        assert wire[20] == ("write", MODE1, AI | 0x01)  # awake
        assert wire[21][:2] == ("read", MODE1)
        assert bus.regs[PRE_SCALE] == prescale  # taken: it was written while asleep
        assert abs(bus.frequency - frequency) < frequency * 0.02  # the prescaler's steps
    finally:
        f.close()


def test_the_simulated_chip_ignores_a_prescale_written_awake() -> None:
    bus = SimulatedPCA9685()
    bus.write_byte_data(0x40, MODE1, AI)
    bus.write_byte_data(0x40, PRE_SCALE, 0x79)
    assert bus.regs[PRE_SCALE] == 0x1E
    bus.write_byte_data(0x40, MODE1, 0)  # without AI a block lands on one register
    bus.write_i2c_block_data(0x40, 0x06, [1, 2, 3, 4])
    assert bus.regs[0x06:0x0A] == [4, 0, 0, 0x10]


def test_pwmled_led_duty_and_full_bits() -> None:
    _c, bus, f = chip()
    try:
        dim = PWMLED("pwm1:3", frequency=50, pin_factory=f)
        lamp = LED("pwm1:4", pin_factory=f)
        bus.wire.clear()
        dim.value = 0.5
        assert bus.wire == [led_block(3, 0, 2048)]  # OFF count 2048 (0x800)
        assert bus.duty(3) == 0.5 and dim.value == 0.5
        dim.value = 0.25
        assert bus.wire[-1] == led_block(3, 0, 1024)
        dim.on()
        assert bus.wire[-1] == led_block(3, *FULL_ON)  # bit 4 of LED3_ON_H
        dim.off()
        assert bus.wire[-1] == led_block(3, *FULL_OFF)  # bit 4 of LED3_OFF_H
        lamp.on()
        assert bus.wire[-1] == led_block(4, *FULL_ON) and lamp.is_lit
        lamp.off()
        assert bus.wire[-1] == led_block(4, *FULL_OFF) and not lamp.is_lit
        dim.value = 0.7
        bus.wire.clear()
        dim.close()  # close() turns the channel off
        assert bus.wire == [led_block(3, *FULL_OFF)]
    finally:
        f.close()


def test_servo_mid_at_50_hz_is_a_1_5_ms_pulse() -> None:
    _c, bus, f = chip(50)
    try:
        servo = Servo("pwm1:0", initial_value=None, pin_factory=f)
        bus.wire.clear()
        servo.mid()
        assert bus.wire == [led_block(0, 0, 307)]  # 1.5 ms of 20 ms: 0.075 * 4096 = 307
        servo.max()
        assert bus.wire[-1] == led_block(0, 0, 410)  # 2 ms
        servo.detach()
        assert bus.wire[-1] == led_block(0, *FULL_OFF)  # no pulses
        arm = AngularServo("pwm1:15", min_angle=-90, max_angle=90, pin_factory=f)
        arm.angle = 0
        assert bus.wire[-1] == led_block(15, 0, 307)
    finally:
        f.close()


def test_a_motor_on_two_channels() -> None:
    _c, bus, f = chip(1000)
    try:
        motor = Motor("pwm1:8", "pwm1:9", pwm=True, pin_factory=f)
        bus.wire.clear()
        motor.forward(0.25)
        assert led_block(9, *FULL_OFF) in bus.wire and bus.wire[-1] == led_block(8, 0, 1024)
        motor.backward(1)
        assert bus.duty(8) == 0 and bus.duty(9) == 1
        motor.stop()
        assert bus.duty(8) == bus.duty(9) == 0
    finally:
        f.close()


def test_channels_are_outputs_only() -> None:
    _c, _bus, f = chip()
    try:
        with pytest.raises(Exception, match="PCA9685 PWM channel: output only"):
            Button("pwm1:5", pin_factory=f)
    finally:
        f.close()


def test_restart_after_sleep_with_channels_running() -> None:
    """Asleep with a channel running (a daemon stopped mid-way and the chip put to sleep):
    RESTART is set; the driver wakes the chip and writes RESTART, which clears it."""
    bus = RecordingBus()
    bus.write_byte_data(0x40, MODE1, AI)
    bus.write_i2c_block_data(0x40, 0x06, [0, 0, 0, 8])
    bus.write_byte_data(0x40, MODE1, AI | SLEEP)
    assert bus.regs[MODE1] & RESTART
    bus.wire.clear()
    _c, bus, f = chip(bus=bus)
    try:
        assert bus.wire[-1] == ("write", MODE1, AI | 0x01 | RESTART)
        assert not bus.regs[MODE1] & (RESTART | SLEEP)
    finally:
        f.close()


def test_a_chip_that_stops_answering_is_failed_then_set_up_again() -> None:
    events: list[str | None] = []
    changed = threading.Event()

    def on_failure(name: str, problem: str | None) -> None:
        events.append(problem)
        changed.set()

    c, bus, f = chip(on_failure=on_failure)
    try:
        dim = PWMLED("pwm1:2", frequency=50, pin_factory=f)
        dim.value = 0.5
        bus.answering = False
        with pytest.raises(OSError):
            dim.value = 0.75
        assert c.failed and events  # the failed write itself marks the chip failed
        assert events == ["expander pwm1 (I2C bus 1, address 0x40) does not answer: "
                          "[Errno 121] Remote I/O error"]
        assert dim.value == 0.5  # the failed write did not take
        for n in range(16):  # the chip lost power meanwhile: power-on registers
            bus.regs[0x06 + 4 * n: 0x0A + 4 * n] = [0, 0, 0, 0x10]
        bus.regs[MODE1], bus.regs[PRE_SCALE] = 0x11, 0x1E
        changed.clear()
        bus.answering = True
        assert changed.wait(3)  # the once-a-second check
        assert events[-1] is None and c.failed is None
        assert bus.duty(2) == 0.5 and bus.regs[PRE_SCALE] == 0x79  # set up again
        assert not bus.regs[MODE1] & SLEEP
    finally:
        f.close()


def test_a_chip_found_asleep_is_set_up_again() -> None:
    """The chip lost power (or was reset) while answering: MODE1 has SLEEP again and the
    channels are off; the once-a-second check sets it up with the channels' values."""
    c, bus, f = chip()
    try:
        dim = PWMLED("pwm1:6", frequency=50, pin_factory=f)
        dim.value = 0.5
        with bus.lock:
            bus.regs[MODE1], bus.regs[PRE_SCALE] = 0x11, 0x1E
            bus.regs[0x06 + 24: 0x0A + 24] = [0, 0, 0, 0x10]
        deadline = time.monotonic() + 3
        while bus.regs[MODE1] & SLEEP and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not bus.regs[MODE1] & SLEEP
        assert bus.duty(6) == 0.5 and bus.regs[PRE_SCALE] == 0x79 and c.failed is None
    finally:
        f.close()


# --- config ------------------------------------------------------------------------------------
PWM1 = "expanders: {pwm1: {type: PCA9685, address: 0x40, frequency: 50}}\n"


@pytest.mark.parametrize(("text", "message"), [
    ("expanders: {pwm1: {type: PCA9685, address: 0x70}}", "0x70 is the all-call address"),
    ("expanders: {pwm1: {type: PCA9685}}", "a PCA9685 answers at 0x40-0x7f, not 0x20"),
    ("expanders: {pwm1: {type: PCA9685, address: 0x40, frequency: 20}}", "frequency"),
    ("expanders: {pwm1: {type: PCA9685, address: 0x40, frequency: 2000}}", "frequency"),
    ("expanders: {pwm1: {type: PCA9685, address: 0x40, interrupt: 4}}", "no interrupt line"),
    ("expanders: {io1: {type: MCP23017, frequency: 50}}", "frequency is a PCA9685 setting"),
    (PWM1 + 'devices: {b: {type: Button, pin: "pwm1:3"}}',
     "a Button is an input: pwm1 is a PCA9685, whose channels are PWM outputs only"),
    (PWM1 + 'devices: {b: {type: TonalBuzzer, pin: "pwm1:3"}}',
     "a TonalBuzzer cannot use a PCA9685 channel"),
    (PWM1 + 'devices: {s: {type: Servo, pin: "pwm1:3", frame_width: 0.01}}',
     "pwm1 runs all its channels at 50 Hz .* frame_width is 10 ms"),
    ("expanders: {pwm1: {type: PCA9685, address: 0x40, frequency: 100}}\n"
     'devices: {s: {type: AngularServo, pin: "pwm1:3"}}', "frame_width is 20 ms"),
    (PWM1 + 'devices: {a: {type: PWMLED, pin: "pwm1:3", frequency: 50}, '
     'b: {type: Servo, pin: "pwm1:3"}}', "expander pin pwm1:3 is already used by a.pin"),
    (PWM1 + 'devices: {a: {type: PWMLED, pin: "pwm1:16"}}', "expander pin like 'io1:3'"),
    ("expanders: {io1: {type: MCP23017}}\ndevices: {a: {type: PWMLED, pin: \"io1:3\"}}",
     "a PWMLED cannot use an expander pin .* or a PCA9685 channel for PWM"),
])
def test_config_refusals(text: str, message: str) -> None:
    from pi_mqtt_gpio.server.config_loader import ConfigError, parse_config

    with pytest.raises(ConfigError, match=message):
        parse_config(text)


GOOD = PWM1 + """devices:
  dim: {type: PWMLED, pin: "pwm1:3"}
  steady: {type: PWMLED, pin: "pwm1:4", frequency: 50}
  lamp: {type: LED, pin: "pwm1:5"}
  arm: {type: Servo, pin: "pwm1:0"}
  near: {type: Servo, pin: "pwm1:1", frame_width: 0.0201}
  drive: {type: Motor, forward: "pwm1:8", backward: "pwm1:9"}
"""


def test_a_good_config_and_the_frequency_warning() -> None:
    from pi_mqtt_gpio.server.config_loader import parse_config
    from pi_mqtt_gpio.server.preflight import preflight

    config = parse_config("node_id: g\n" + GOOD)
    warnings = [w for w in preflight(config, simulate=True).warnings if "PCA9685" in w]
    assert warnings == ["devices.dim.pin: pwm1:3 is a PCA9685 channel: it runs at the chip's "
                        "50 Hz, not this PWMLED's frequency: 100 (set frequency: 50 to say so)"]


# --- the daemon --------------------------------------------------------------------------------
def test_a_failing_chip_fails_the_command_degrades_health_and_recovers() -> None:
    config = PWM1 + 'devices: {dim: {type: PWMLED, pin: "pwm1:3", frequency: 50}}\n'

    def body(daemon: Daemon, port: int) -> dict[str, Any]:
        w, c = watcher_and_caller(port)
        bus: SimulatedPCA9685 = daemon.hw.factory.chips["pwm1"].bus
        try:
            first = call(c, "dim", {"method": "value", "args": [0.5]})
            duty = bus.duty(3)
            bus.answering = False
            failed = call(c, "dim", {"method": "value", "args": [0.75]})
            down = until(w, lambda t, p: t.endswith("/system/health")
                         and p["status"] == "degraded", timeout=5)
            bus.answering = True
            up = until(w, lambda t, p: t.endswith("/system/health") and p["status"] == "ok",
                       timeout=5)
            again = call(c, "dim", {"method": "value", "args": [0.25]})
            return {"first": first, "duty": duty, "failed": failed, "down": down, "up": up,
                    "again": again, "after": bus.duty(3)}
        finally:
            c.close()
            w.close()

    got = run(config, body)
    assert got["first"]["ok"], got["first"]
    assert got["duty"] == 0.5
    assert not got["failed"]["ok"] and "HARDWARE_ERROR" in json.dumps(got["failed"])
    health = [p for t, p in got["down"] if t.endswith("/system/health")][-1]
    assert "expander pwm1 (I2C bus 1, address 0x40) does not answer" in health["problems"][0]
    assert got["again"]["ok"] and got["after"] == 0.25


def test_the_simulated_daemon_dims_a_pwmled(tmp_path: Path) -> None:
    config = broker_config(
        expanders={"pwm1": {"type": "PCA9685", "address": 0x40, "frequency": 50}},
        devices={"dim": {"type": "PWMLED", "pin": "pwm1:3", "frequency": 50}})
    gk = start_gatekeeper(tmp_path, config)
    try:
        setter = Client(gk.port, mqtt.MQTTv5, client_id="setter")
        setter.connect()
        setter.subscribe(f"{gk.root}/device/dim/state", 1)
        setter.publish(f"{gk.root}/device/dim/set", "0.5", 1)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            state = json.loads(setter.get(end - time.monotonic()).payload)
            if state.get("value") == 0.5:
                break
        setter.close()
        reader = Client(gk.port, mqtt.MQTTv5, client_id="reader")
        reader.connect()
        reader.subscribe(f"{gk.root}/device/dim/state", 1)
        m = reader.get(5)
        assert m.retain and json.loads(m.payload)["value"] == 0.5
        reader.close()
    finally:
        assert gk.stop() == 0
