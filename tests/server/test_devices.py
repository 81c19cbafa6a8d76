"""Device adapters on gpiozero's MockFactory (a fresh one per test, as gpiozero's own tests do):
methods move the mock pins, inputs driven through their pins emit events, bad arguments are
refused before anything moves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPWMPin

from pi_mqtt_gpio.errors import BadArgument
from pi_mqtt_gpio.server.devices import registry
from pi_mqtt_gpio.server.devices.base import DeviceAdapter
from pi_mqtt_gpio.server.schema import Problem, Tagged, build
from tests.conftest import wait_for


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory(pin_class=MockPWMPin)
    Device.pin_factory = f
    yield f
    f.reset()
    f.close()
    Device.pin_factory = None


class Harness:
    def __init__(self, factory: MockFactory) -> None:
        self.factory = factory
        self.events: list[tuple[str, str | None, dict[str, Any]]] = []
        self.adapters: list[DeviceAdapter] = []

    def make(self, name: str = "dev", **cfg: Any) -> DeviceAdapter:
        problems: list[Problem] = []
        tag = Tagged("type", lambda t: registry[t].Config if t in registry else None,
                     lambda: sorted(registry))
        from typing import Annotated

        config = build(Annotated[Any, tag], cfg, ("devices", name), problems)
        assert not problems, problems
        adapter = registry[cfg["type"]](name, config, simulate=True,
                                        emit=lambda d, e, s: self.events.append((d, e, s)))
        adapter.open(self.factory)
        self.adapters.append(adapter)
        return adapter

    def call(self, adapter: DeviceAdapter, method: str, *args: Any, **kwargs: Any) -> Any:
        m = adapter.method(method)
        assert m is not None, method
        bound = m.bind(list(args), kwargs)
        adapter.validate(method, bound)
        return adapter.invoke(method, bound)

    def names(self) -> list[str | None]:
        return [e[1] for e in self.events]


@pytest.fixture
def hw(factory: MockFactory) -> Iterator[Harness]:
    h = Harness(factory)
    yield h
    for a in h.adapters:
        a.close()


def test_led(hw: Harness) -> None:
    led = hw.make(type="LED", pin=17)
    pin = hw.factory.pin(17)
    hw.call(led, "on")
    assert pin.state and led.state() == {"value": 1, "is_active": True, "blinking": False,
                                          "is_lit": True}
    hw.call(led, "toggle")
    assert not pin.state
    hw.call(led, "value", 1)
    assert pin.state
    led.safe()
    assert not pin.state
    pin.clear_states()
    hw.call(led, "blink", on_time=0.02, off_time=0.02, n=2)
    assert led.refresh_after("blink", {"on_time": 0.02, "off_time": 0.02, "n": 2}) == \
        pytest.approx(0.08)
    assert wait_for(lambda: not led.device._blink_thread.is_alive(), 10)  # the blink is over
    # every state, no more (MockPin.assert_states compares only as many as both have)
    assert [s.state for s in pin.states] == [False, True, False, True, False]
    assert led.parse_set("ON") == ("on", {})
    assert led.parse_set(" off ") == ("off", {})
    assert led.parse_set("toggle") == ("toggle", {})
    with pytest.raises(BadArgument):
        led.parse_set("BRIGHT")


def test_relay_active_low_and_safe_state_on(hw: Harness) -> None:
    relay = hw.make(type="OutputDevice", pin=23, active_high=False, safe_state="on")
    pin = hw.factory.pin(23)
    hw.call(relay, "on")
    assert not pin.state  # active low
    hw.call(relay, "off")
    assert pin.state
    relay.safe()
    assert relay.state()["is_active"] is True
    assert relay.method("blink") is None  # OutputDevice has no blink in gpiozero


def test_pwm_led_values_and_bad_input(hw: Harness) -> None:
    led = hw.make(type="PWMLED", pin=18)
    pin = hw.factory.pin(18)
    hw.call(led, "value", 0.25)
    assert pin.state == pytest.approx(0.25)
    assert led.parse_set("0.5") == ("value", {"value": 0.5})
    for bad in ("7", "-0.1", "nan", "inf"):
        with pytest.raises(BadArgument):
            led.parse_set(bad)
    with pytest.raises(BadArgument, match="value must be <= 1"):
        hw.call(led, "value", 7)
    assert pin.state == pytest.approx(0.25)  # nothing moved
    hw.call(led, "pulse", fade_in_time=0.05, fade_out_time=0.05, n=1)
    assert led.state()["blinking"] is True


def test_rgb_led(hw: Harness) -> None:
    rgb = hw.make(type="RGBLED", red=5, green=6, blue=13)
    hw.call(rgb, "color", "#ff8000")
    assert hw.factory.pin(5).state == 1 and hw.factory.pin(6).state == pytest.approx(128 / 255)
    assert rgb.state()["color"] == "#ff8000"
    assert rgb.parse_set("0,0,255") == ("color", {"color": (0.0, 0.0, 1.0)})
    assert rgb.parse_set("#00ff00")[0] == "color"
    for bad in ("1,2", "300,0,0", "#12345", "purple"):
        with pytest.raises(BadArgument):
            rgb.parse_set(bad)
    with pytest.raises(BadArgument):
        hw.call(rgb, "color", [2, 0, 0])
    digital = hw.make("d", type="RGBLED", red=7, green=8, blue=9, pwm=False)
    with pytest.raises(BadArgument, match="pwm: false"):
        hw.call(digital, "color", [0.5, 0, 0])


def test_buzzer_and_tonal_buzzer(hw: Harness) -> None:
    buzzer = hw.make(type="Buzzer", pin=26)
    hw.call(buzzer, "beep", on_time=0.01, off_time=0.01, n=1)
    assert wait_for(lambda: not buzzer.device._blink_thread.is_alive(), 10)  # the beep is over
    assert [s.state for s in hw.factory.pin(26).states] == [False, True, False]
    tonal = hw.make("t", type="TonalBuzzer", pin=19)
    hw.call(tonal, "play", "A4")
    assert hw.factory.pin(19).frequency == pytest.approx(440)
    assert tonal.state()["tone"] == "A4"
    hw.call(tonal, "play", 660.0)
    with pytest.raises(BadArgument):
        hw.call(tonal, "play", "C9")  # beyond one octave of A4
    tonal.safe()
    assert tonal.state()["is_active"] is False
    assert tonal.parse_set("STOP") == ("stop", {})


def test_motor(hw: Harness) -> None:
    motor = hw.make(type="Motor", forward=20, backward=21)
    fwd, back = hw.factory.pin(20), hw.factory.pin(21)
    hw.call(motor, "forward", 0.5)
    assert fwd.state == pytest.approx(0.5) and back.state == 0
    assert motor.state()["direction"] == "forward"
    hw.call(motor, "backward")
    assert back.state == 1 and fwd.state == 0
    hw.call(motor, "value", -0.3)
    assert motor.state() == {"value": -0.3, "is_active": True, "direction": "backward"}
    motor.safe()
    assert motor.state()["direction"] == "stopped"
    assert motor.parse_set("OPEN") == ("forward", {"speed": 1.0})
    assert motor.parse_set("close") == ("backward", {"speed": 1.0})
    assert motor.parse_set("STOP") == ("stop", {})
    assert motor.parse_set("-0.5") == ("value", {"value": -0.5})
    with pytest.raises(BadArgument):
        motor.parse_set("2")
    with pytest.raises(BadArgument):
        hw.call(motor, "forward", 1.5)
    onoff = hw.make("m2", type="Motor", forward=16, backward=12, pwm=False)
    with pytest.raises(BadArgument, match="pwm: false"):
        hw.call(onoff, "forward", 0.5)
    phase = hw.make("p", type="PhaseEnableMotor", phase=2, enable=3)
    hw.call(phase, "backward", 0.4)
    assert hw.factory.pin(2).state == 1 and hw.factory.pin(3).state == pytest.approx(0.4)


def test_servos(hw: Harness) -> None:
    servo = hw.make(type="Servo", pin=12)
    hw.call(servo, "max")
    assert servo.state()["value"] == 1
    hw.call(servo, "value", None)
    assert servo.state()["value"] is None
    servo.safe()  # detach
    assert hw.factory.pin(12).state == 0
    angular = hw.make("a", type="AngularServo", pin=13, min_angle=-45, max_angle=45)
    hw.call(angular, "angle", 30)
    assert angular.state()["angle"] == pytest.approx(30, abs=0.5)
    with pytest.raises(BadArgument, match="between -45 and 45"):
        hw.call(angular, "angle", 90)
    assert angular.state()["angle"] == pytest.approx(30, abs=0.5)
    assert angular.parse_set("-10") == ("angle", {"angle": -10.0})
    with pytest.raises(BadArgument):
        angular.parse_set("100")


def test_button_events_through_the_pin(hw: Harness) -> None:
    button = hw.make("bell", type="Button", pin=27, hold_time=0.05)
    pin = hw.factory.pin(27)
    pin.drive_low()  # pulled up: low is pressed
    assert wait_for(lambda: "held" in hw.names(), 1)
    pin.drive_high()
    assert hw.names() == ["pressed", "held", "released"]
    assert hw.events[0][2] == {"value": 1, "is_active": True, "is_pressed": True,
                               "is_held": False}
    assert hw.events[1][2]["is_held"] is True
    assert hw.events[2][2]["is_pressed"] is False
    hw.events.clear()
    hw.call(button, "sim_press")
    hw.call(button, "sim_release")
    hw.call(button, "sim_set", 1)
    assert hw.names()[:2] == ["pressed", "released"]


def test_digital_input_active_low_floating(hw: Harness) -> None:
    dev = hw.make(type="DigitalInputDevice", pin=5, pull_up=None, active_state=False)
    hw.factory.pin(5).drive_high()
    hw.factory.pin(5).drive_low()
    assert hw.names() == ["deactivated", "activated"]
    assert dev.state()["is_active"] is True


def settled(adapter: DeviceAdapter) -> None:
    """Smoothed inputs fire no event for their first sample (gpiozero: indeterminate)."""
    assert wait_for(lambda: adapter.device._last_active is not None, 2)


def test_motion_and_line_sensors(hw: Harness) -> None:
    pir = hw.make("pir", type="MotionSensor", pin=4, sample_rate=100)
    settled(pir)
    hw.call(pir, "sim_press")
    assert wait_for(lambda: "motion" in hw.names(), 2)
    hw.call(pir, "sim_release")
    assert wait_for(lambda: "no_motion" in hw.names(), 2)
    line = hw.make("line", type="LineSensor", pin=6, queue_len=1)
    settled(line)
    hw.call(line, "sim_set", 1)  # active: reflective surface, no line
    assert wait_for(lambda: "no_line" in hw.names(), 2)
    hw.call(line, "sim_set", 0)
    assert wait_for(lambda: "line" in hw.names(), 2)
    assert line.state()["line_detected"] is True


def test_light_and_distance_sensors(hw: Harness) -> None:
    light = hw.make("light", type="LightSensor", pin=14, queue_len=1)
    settled(light)
    hw.call(light, "sim_set", 0.8)
    assert wait_for(lambda: "light" in hw.names(), 2)
    assert light.state()["light_detected"] is True
    dist = hw.make("gap", type="DistanceSensor", echo=24, trigger=25, max_distance=2,
                   queue_len=1)
    settled(dist)
    hw.call(dist, "sim_set", distance=0.2)
    assert wait_for(lambda: "in_range" in hw.names(), 2)
    assert dist.state()["distance"] == pytest.approx(0.2)
    with pytest.raises(BadArgument):
        hw.call(dist, "sim_set", distance=5)
    with pytest.raises(BadArgument):
        hw.call(dist, "sim_set")


@pytest.mark.parametrize(("chip", "bits"), [("MCP3008", 10), ("MCP3208", 12), ("MCP3002", 10)])
def test_adcs(hw: Harness, chip: str, bits: int) -> None:
    adc = hw.make(type=chip, channel=1, max_voltage=5.0)
    hw.call(adc, "sim_set", 0.5)
    state = adc.state()
    assert state["value"] == pytest.approx(0.5, abs=2 ** -bits * 2)
    assert state["voltage"] == pytest.approx(2.5, abs=0.01)
    assert state["raw_value"] == pytest.approx(2 ** bits / 2, abs=2)
    with pytest.raises(BadArgument):
        hw.call(adc, "sim_set", -0.5)


def test_simulation_methods_hidden_on_real_hardware() -> None:
    from pi_mqtt_gpio.server.devices.inputs import ButtonAdapter, ButtonConfig

    real = ButtonAdapter("b", ButtonConfig(type="Button", pin=3), simulate=False,
                         emit=lambda *a: None)
    assert real.method("sim_press") is None
    assert "sim_press" not in real.catalogue()["methods"]
    assert "sim_press" not in [m["name"] for m in real.catalogue()["method_params"]]


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    ("x", {}, "args must be a list"),
    ([], [], "kwargs must be an object"),
    ([1, 2, 3, 4], {}, "blink() takes at most 3 arguments, got 4"),
    ([], {"bogus": 1}, "blink() has no argument 'bogus'"),
    ([1], {"on_time": 1}, "blink() got 'on_time' twice"),
    (["fast"], {}, "on_time must be a number, got 'fast'"),
    ([True], {}, "on_time must be a number, got True"),
    ([-1], {}, "on_time must be >= 0, got -1"),
    ([], {"n": 1.5}, "n must be a whole number, got 1.5"),
    ([], {"n": 0}, "n must be >= 1, got 0"),
])
def test_argument_validation(hw: Harness, args: Any, kwargs: Any, message: str) -> None:
    led = hw.make(type="LED", pin=17)
    method = led.method("blink")
    assert method is not None
    with pytest.raises(BadArgument) as info:
        method.bind(args, kwargs)
    assert info.value.message == message


def test_every_registered_type_has_a_schema_and_methods() -> None:
    assert len(registry) == 46
    for name, adapter in registry.items():
        assert adapter.type_name == name
        assert adapter.kind in ("input", "output")
        assert "state" in adapter.methods


def test_device_reference_doc_is_current() -> None:
    from pathlib import Path

    from pi_mqtt_gpio.server.devices.reference import render

    doc = Path(__file__).resolve().parents[2] / "docs" / "devices.md"
    assert doc.read_text() == render(), (
        "docs/devices.md is stale: python -m pi_mqtt_gpio.server.devices.reference > "
        "docs/devices.md")
