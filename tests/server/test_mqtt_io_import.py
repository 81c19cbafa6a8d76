"""``import-mqtt-io``: mqtt-io's own published example configs (tests/data/mqtt_io, sources in
its README) convert, and what comes out passes ``check-config``; each mapping rule on its own."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pi_mqtt_gpio.server.compat.mqtt_io_import import convert
from pi_mqtt_gpio.server.config_loader import load_config
from pi_mqtt_gpio.server.main import main
from pi_mqtt_gpio.server.security import verify_password
from tests.conftest import ROOT

DATA = ROOT / "tests" / "data" / "mqtt_io"

# file -> (exit status, devices by name -> type, phrases in "not converted")
EXAMPLES: dict[str, tuple[int, dict[str, str], list[str]]] = {
    "readme.yml": (0, {"doorbell": "DigitalInputDevice", "porch_light": "OutputDevice",
                       "lm75_sensor": "LM75", "ina219_sensor": "INA219"},
                   ["'alarm_system' (serial)"]),
    "ha_discovery.yml": (0, {"door_sensor": "DigitalInputDevice",
                             "hall_fan": "OutputDevice"}, ["device_class fan"]),
    "ha_availability.yml": (0, {}, []),
    "interrupts.yml": (0, {"mcp3": "DigitalInputDevice"}, []),
    "ref_mqtt.yml": (0, {}, ["mqtt.tls.certfile", "mqtt.tls.keyfile"]),
    "ref_gpio_modules.yml": (0, {}, []),
    "ref_digital_inputs.yml": (0, {"gpio0": "DigitalInputDevice",
                                   "gpio1": "DigitalInputDevice"}, []),
    "ref_digital_inputs_ha.yml": (1, {}, ["no gpio module named 'rpi'"]),
    "ref_digital_outputs.yml": (0, {"gpio0": "OutputDevice", "gpio1": "OutputDevice"}, []),
    "ref_digital_outputs_ha.yml": (1, {}, ["no gpio module named 'rpi'"]),
    "ref_sensor_modules.yml": (1, {}, ["'dht' (dht22): no sensor input reads it",
                                       "'ds' (ds18b): no sensor input reads it"]),
    "ref_sensor_inputs.yml": (0, {"dht": "AM2302"}, []),
    "ref_stream_modules.yml": (1, {}, ["'network_switch' (serial)", "'ups' (serial)"]),
    "config.example.yml": (0, {"button": "DigitalInputDevice",
                               "door_sensor": "DigitalInputDevice",
                               "light_switch": "DigitalInputDevice"},
                           ["'dev' (stdio)", "analog_inputs", "outputs"]),
}


def test_every_published_example_is_in_the_table() -> None:
    assert sorted(p.name for p in DATA.glob("*.yml")) == sorted(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_published_examples_convert_and_pass_check_config(
        name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, devices, skipped = EXAMPLES[name]
    out = tmp_path / "new.yaml"
    assert main(["import-mqtt-io", str(DATA / name), "-o", str(out)]) == status
    err = capsys.readouterr().err
    for phrase in skipped:
        assert phrase in err, err
    text = out.read_text() if out.exists() else ""
    if status:
        assert "nothing" not in err and "could be converted" in err
        return
    for phrase in skipped:
        assert phrase in text  # listed in the output's comments too
    config = load_config(str(out))
    assert {n: d.type for n, d in config.devices.items()} == devices
    assert config.compat.mqtt_io is not None
    assert main(["check-config", "--config", str(out)]) == 0


def conv(text: str) -> dict[str, Any]:
    return convert(text, hash_password=lambda p: f"hash:{p}").config


PI = "gpio_modules: [{name: rpi, module: raspberrypi}]\n"


def test_outputs_payloads_inverted_initial_timed_and_retain() -> None:
    cfg = conv(PI + """
mqtt: {host: localhost, topic_prefix: home/kitchen/}
digital_outputs:
  - {name: porch, module: rpi, pin: 17, on_payload: "lamp on", off_payload: "lamp off",
     inverted: yes, initial: high, retain: yes, timed_set_ms: 1500, publish_initial: yes}
  - {name: fan, module: rpi, pin: 18, ha_discovery: {component: light, name: Fan}}
""")
    # initial: high on an inverted output is the device off: its default start state.
    assert cfg["devices"]["porch"] == {"type": "OutputDevice", "pin": 17, "active_high": False}
    assert cfg["devices"]["fan"]["type"] == "LED"
    assert cfg["devices"]["fan"]["homeassistant"] == {"name": "Fan", "component": "light"}
    compat = cfg["compat"]["mqtt_io"]
    assert compat["topic_prefix"] == "home/kitchen"
    assert compat["outputs"]["porch"] == {"on_payload": "lamp on", "off_payload": "lamp off",
                                          "retain": True, "timed_set_ms": 1500}


def test_initial_high_starts_the_output_on_through_its_safe_state() -> None:
    """mqtt-io's ``initial: high`` must really start the output on: the gatekeeper builds
    outputs at their safe state, so the importer says ``safe_state: on`` (and warns what
    else that means); ``initial: low`` is the default start and writes nothing."""
    result = convert(PI + """
mqtt: {host: localhost, topic_prefix: home}
digital_outputs:
  - {name: pump, module: rpi, pin: 17, initial: high}
  - {name: lamp, module: rpi, pin: 18, initial: low}
  - {name: dim, module: rpi, pin: 19, class: PWMLED, initial: high}
""", hash_password=lambda p: p)
    cfg = result.config
    assert cfg["devices"]["pump"] == {"type": "OutputDevice", "pin": 17, "safe_state": "on"}
    assert cfg["devices"]["lamp"] == {"type": "OutputDevice", "pin": 18}
    assert cfg["devices"]["dim"]["safe_state"] == "on"
    assert any("pump" in w and "safe_state: on" in w for w in result.warnings)
    assert not any("initial_value" in str(d) for d in cfg["devices"].values())


def test_a_name_that_is_not_one_topic_level_is_not_converted() -> None:
    result = convert(PI + """
mqtt: {host: localhost, topic_prefix: home}
digital_outputs: [{name: "a/b", module: rpi, pin: 17}, {name: lamp, module: rpi, pin: 18}]
digital_inputs: [{name: "door/#", module: rpi, pin: 27}]
""", hash_password=lambda p: f"hash:{p}")
    assert set(result.config["devices"]) == {"lamp"}
    skipped = "\n".join(str(x) for x in result.not_converted)
    assert "'a/b'" in skipped and "'door/#'" in skipped
    assert skipped.count("not one topic level") == 2


def test_inputs_pulls_bouncetime_inverted_and_interrupt_payload() -> None:
    cfg = conv(PI + """
mqtt: {host: localhost, topic_prefix: home}
digital_inputs:
  - {name: bell, module: rpi, pin: 5, pullup: yes, inverted: yes, interrupt: falling,
     bouncetime: 50, interrupt_payload: INT}
  - {name: pir, module: rpi, pin: 6, pulldown: yes, retain: yes}
  - {name: raw, module: rpi, pin: 7}
  - {name: btn, module: rpi, pin: 8, pullup: yes, ha_discovery: {name: Gate}}
""")
    devices = cfg["devices"]
    assert devices["bell"] == {"type": "DigitalInputDevice", "pin": 5, "pull_up": True,
                               "bounce_time": 0.05}
    # mqtt-io's ON is the pin high: a pull-up input that is not inverted is ON while the
    # device is inactive, and Home Assistant keeps showing it that way
    assert devices["btn"]["homeassistant"] == {"name": "Gate", "inverted": True}
    assert all("homeassistant" not in devices[n] for n in ("bell", "pir", "raw"))
    assert devices["pir"]["pull_up"] is False
    assert devices["raw"]["pull_up"] is None and devices["raw"]["active_state"] is True
    inputs = cfg["compat"]["mqtt_io"]["inputs"]
    assert inputs["bell"] == {"inverted": True, "interrupt": "falling",
                              "interrupt_payload": "INT"}
    assert inputs["pir"] == {"retain": True}


def test_board_numbering_becomes_bcm() -> None:
    cfg = conv("""
gpio_modules: [{name: rpi, module: raspberrypi, mode: board}]
digital_outputs: [{name: a, module: rpi, pin: 11}, {name: b, module: rpi, pin: 2}]
""")
    assert cfg["devices"] == {"a": {"type": "OutputDevice", "pin": 17}}


def test_expanders_and_their_interrupt_line() -> None:
    text = """
gpio_modules:
  - {name: rpi, module: raspberrypi}
  - {name: mcp, module: mcp23017, i2c_bus_num: 1, chip_addr: 0x21}
  - {name: pcf, module: pcf8574, i2c_bus_num: 0, chip_addr: 0x38}
  - {name: wide, module: pcf8575, i2c_bus_num: 1, chip_addr: 0x22}
digital_inputs:
  - {name: int, module: rpi, pin: 25, interrupt: falling, interrupt_for: [m3]}
  - {name: m3, module: mcp, pin: 3, pullup: yes, interrupt: both}
  - {name: p1, module: pcf, pin: 1, pulldown: yes}
digital_outputs:
  - {name: w15, module: wide, pin: 15}
  - {name: p9, module: pcf, pin: 9}
"""
    result = convert(text, hash_password=str)
    cfg = result.config
    assert cfg["expanders"] == {
        "mcp": {"type": "MCP23017", "bus": 1, "address": 0x21, "interrupt": 25},
        "pcf": {"type": "PCF8574", "bus": 0, "address": 0x38},
        "wide": {"type": "PCF8575", "bus": 1, "address": 0x22}}
    assert cfg["devices"]["m3"]["pin"] == "mcp:3" and "int" not in cfg["devices"]
    assert cfg["devices"]["p1"]["pull_up"] is True  # a PCF8574 has only its weak pull-up
    assert any("no pull-down" in w for w in result.warnings)
    assert cfg["devices"]["w15"]["pin"] == "wide:15" and "p9" not in cfg["devices"]
    assert any("'p9'" in n and "0-7" in n for n in result.not_converted)


def test_sensors_we_have() -> None:
    cfg = conv("""
sensor_modules:
  - {name: adc, module: mcp3008, spi_port: 0, spi_device: 1}
  - {name: sonar, module: hcsr04}
sensor_inputs:
  - {name: light, module: adc, channel: 3, interval: 5}
  - {name: tank, module: sonar, pin_echo: 23, pin_trigger: 24, burst: 10, interval: 2,
     ha_discovery: {name: Tank level}}
""")
    assert cfg["devices"]["light"] == {"type": "MCP3008", "channel": 3, "port": 0, "device": 1,
                                       "publish_interval": 5.0}
    assert cfg["devices"]["tank"] == {"type": "DistanceSensor", "echo": 23, "trigger": 24,
                                      "max_distance": 4.0, "publish_interval": 2.0,
                                      "homeassistant": {"name": "Tank level"}}
    # on <prefix>/sensor/<name> as mqtt-io printed them: the raw count, centimetres
    assert cfg["compat"]["mqtt_io"]["sensors"] == {
        "light": {"field": "raw_value"}, "tank": {"field": "distance", "scale": 100}}


CHIPS = """
sensor_modules:
  - {name: probe, module: ds18b, type: DS18B20, address: 000803702E49}
  - {name: shed, module: dht22, type: dht22, pin: 4}
  - {name: climate, module: bme280, i2c_bus_num: 1, chip_addr: 0x77}
  - {name: baro, module: bmp280, i2c_bus_num: 3, chip_addr: 0x76}
  - {name: bath, module: sht4x}
  - {name: attic, module: htu21d}
  - {name: lux, module: bh1750, i2c_bus_num: 1, chip_addr: 0x23}
  - {name: adc, module: ads1x15, type: ADS1015, pins: [0, 2], gain: 2}
  - {name: solar, module: ina219, chip_addr: 0x41, shunt_ohms: 0.01, max_amps: 10,
     voltage_range: 16, gain: 8_320MV, low_power: true}
  - {name: case, module: lm75, i2c_bus_num: 1, chip_addr: 0x48}
  - {name: co2, module: mhz19}
sensor_inputs:
  - {name: water, module: probe, digits: 3, interval: 30}
  - {name: shed_t, module: shed, type: temperature, interval: 30}
  - {name: shed_h, module: shed, type: humidity, interval: 60}
  - {name: room_p, module: climate, type: pressure, digits: 1}
  - {name: room_h, module: climate, type: humidity}
  - {name: baro_p, module: baro, type: pressure}
  - {name: bath_h, module: bath, type: humidity}
  - {name: attic_t, module: attic}
  - {name: light, module: lux, interval: 5}
  - {name: pot, module: adc, pin: 2, type: voltage}
  - {name: pot_raw, module: adc, pin: 0}
  - {name: watts, module: solar}
  - {name: amps, module: solar, type: current}
  - {name: case_t, module: case}
  - {name: bad_type, module: climate, type: dewpoint}
  - {name: bad_pin, module: adc, pin: 1}
  - {name: gas, module: co2}
"""


def test_sensor_chips_become_one_device_per_module_and_keep_their_topics() -> None:
    result = convert(CHIPS, hash_password=lambda p: f"hash:{p}")
    devices = result.config["devices"]
    assert devices["probe"] == {"type": "DS18B20", "address": "000803702e49", "interval": 30.0,
                                "digits": 3}
    assert devices["shed"] == {"type": "DHT22", "interval": 30.0}
    assert devices["climate"] == {"type": "BME280", "address": 0x77, "interval": 60.0}
    assert devices["baro"] == {"type": "BMP280", "bus": 3, "address": 0x76, "interval": 60.0}
    assert devices["bath"] == {"type": "SHT4x", "interval": 60.0}
    assert devices["attic"] == {"type": "HTU21D", "interval": 60.0}
    assert devices["lux"] == {"type": "BH1750", "address": 0x23, "interval": 5.0}
    assert devices["adc"] == {"type": "ADS1015", "channels": [0, 2], "full_scale": 2.048,
                              "interval": 60.0}
    assert devices["solar"] == {"type": "INA219", "shunt_ohms": 0.01, "max_current": 10.0,
                                "bus_range": 16, "address": 0x41, "interval": 60.0}
    assert devices["case"] == {"type": "LM75", "address": 0x48, "interval": 60.0}
    sensors = result.config["compat"]["mqtt_io"]["sensors"]
    assert sensors == {
        "water": {"field": "temperature", "device": "probe", "digits": 3},
        "shed_t": {"field": "temperature", "device": "shed"},
        "shed_h": {"field": "humidity", "device": "shed"},
        "room_p": {"field": "pressure", "device": "climate", "digits": 1},
        "room_h": {"field": "humidity", "device": "climate"},
        "baro_p": {"field": "pressure", "device": "baro"},
        "bath_h": {"field": "humidity", "device": "bath"},
        "attic_t": {"field": "temperature", "device": "attic"},
        "light": {"field": "illuminance", "device": "lux"},
        "pot": {"field": "a2", "device": "adc"},
        "pot_raw": {"field": "a0", "device": "adc", "scale": 16000.0},  # counts: 32768/2.048 V
        "watts": {"field": "power", "device": "solar"},
        "amps": {"field": "current", "device": "solar"},
        "case_t": {"field": "temperature", "device": "case"},
    }
    skipped = "\n".join(result.not_converted)
    lines = {n: i + 1 for i, n in enumerate(CHIPS.splitlines())}

    def line_of(text: str) -> int:
        return next(v for k, v in lines.items() if text in k)

    for what, why in ((f"line {line_of('name: bad_type')}: sensor input 'bad_type'",
                       "type dewpoint is not one of temperature, humidity, pressure"),
                      (f"line {line_of('name: bad_pin')}: sensor input 'bad_pin'",
                       "pin 1 is not one of the module's pins [0, 2]"),
                      (f"line {line_of('name: gas')}: sensor input 'gas'",
                       "its module 'co2' (mhz19) is not converted"),
                      (f"line {line_of('name: co2')}: sensor module 'co2' (mhz19)",
                       "no such sensor"),
                      ("sensor module 'solar' (ina219) gain 8_320MV", "the gain follows"),
                      ("sensor module 'solar' (ina219) low_power", "the INA219 converts")):
        assert any(f"{what}: {why}" in n for n in result.not_converted), skipped
    assert any("dtoverlay=dht11,gpiopin=4" in note for note in result.notes)


def test_converted_sensor_chips_pass_check_config(tmp_path: Path) -> None:
    source = tmp_path / "old.yml"
    source.write_text(CHIPS)
    out = tmp_path / "new.yaml"
    assert main(["import-mqtt-io", str(source), "-o", str(out)]) == 0
    config = load_config(str(out))
    assert config.compat.mqtt_io is not None
    assert config.compat.mqtt_io.sensors["room_p"].field == "pressure"
    assert main(["check-config", "--config", str(out)]) == 0


def test_localhost_with_a_user_keeps_its_password_as_a_hash() -> None:
    cfg = convert("mqtt: {host: 127.0.0.1, port: 1884, user: bob, password: pw1}\n").config
    assert cfg["broker"] == {"mode": "embedded", "listeners": [
        {"type": "tcp", "host": "0.0.0.0", "port": 1884}]}
    assert cfg["auth"]["allow_anonymous"] is False
    assert verify_password(cfg["auth"]["users"]["bob"]["password_hash"], "pw1")


def test_a_remote_broker_is_external_mode_and_the_password_stays_out() -> None:
    result = convert("""
mqtt: {host: broker.lan, port: 8883, user: pi, password: topsecret, client_id: kitchen-io,
       topic_prefix: home/kitchen, status_payload_dead: gone,
       tls: {enabled: yes, ca_certs: /etc/ca.crt}, ha_discovery: {enabled: yes, prefix: ha}}
""")
    cfg = result.config
    assert cfg["broker"] == {"mode": "external", "external": {
        "host": "broker.lan", "port": 8883, "username": "pi",
        "password_file": "/etc/pi-mqtt-gatekeeper/mqtt-password", "tls": True,
        "ca_file": "/etc/ca.crt", "client_id": "kitchen-io",
        "acl_probe": {"username": "gk-probe",
                      "password_file": "/etc/pi-mqtt-gatekeeper/acl-probe-password"}}}
    assert any("create the broker user 'gk-probe'" in note for note in result.notes)
    assert cfg["homeassistant"] == {"discovery": True, "prefix": "ha"}
    assert cfg["compat"]["mqtt_io"]["status_payload_dead"] == "gone"
    assert "topsecret" not in yaml.safe_dump(cfg)


def test_unreadable_input_is_a_clear_refusal(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("mqtt: [unclosed\n")
    assert main(["import-mqtt-io", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    bad.write_text("- just\n- a list\n")
    assert main(["import-mqtt-io", str(bad)]) == 2
    assert main(["import-mqtt-io", str(tmp_path / "missing.yml")]) == 2
    odd = convert("digital_outputs: [{name: a/b, module: x, pin: 1}, 7, {module: y}]\n")
    assert odd.config["devices"] == {}


BASE = """
node_id: pi
devices:
  lamp: {type: LED, pin: 17}
  bell: {type: Button, pin: 22}
  adc: {type: MCP3008, channel: 0}
  gap: {type: DistanceSensor, echo: 23, trigger: 24}
compat:
  mqtt_io:
"""


@pytest.mark.parametrize(("text", "message"), [
    ("    topic_prefix: home/#", "must be a topic without '+', '#'"),
    ("    topic_prefix: home/", "without a trailing '/'"),
    ("    topic_prefix: gatekeeper/pi/x", "overlaps the gatekeeper's own topics"),
    ("    topic_prefix: gatekeeper", "overlaps the gatekeeper's own topics"),
    ("    topic_prefix: homeassistant", "overlaps Home Assistant's discovery prefix"),
    ("    topic_prefix: home\n    status_topic: st/#", "must not contain '+' or '#'"),
    ("    topic_prefix: home\n    outputs: {a/b: {device: lamp}}", "one topic level"),
    ("    topic_prefix: home\n    outputs: {x: {device: nope}}", "no device named 'nope'"),
    ("    topic_prefix: home\n    outputs: {bell: {}}", "'bell' is a Button"),
    ("    topic_prefix: home\n    inputs: {lamp: {}}", "'lamp' is a LED"),
    ("    topic_prefix: home\n    sensors: {bell: {}}", "'bell' is a Button"),
    ("    topic_prefix: home\n    sensors: {adc: {field: distance}}", "no 'distance'"),
    ("    topic_prefix: home\n    sensors: {gap: {field: raw_value}}", "no 'raw_value'"),
    ("    topic_prefix: home\n    inputs: {bell: {interrupt_payload: INT}}",
     "needs interrupt"),
])
def test_compat_config_refusals(text: str, message: str) -> None:
    from pi_mqtt_gpio.server.config_loader import ConfigError, parse_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(BASE + text + "\n")
    parse_config(BASE + "    topic_prefix: home\n")  # the base is fine


# --- what it reads and where it writes ---------------------------------------------------------
LAUGHS = "a: &a [" + ", ".join(["lol"] * 9) + "]\n" + "".join(
    f"{c}: &{c} [" + ", ".join([f"*{p}"] * 9) + "]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)) + "digital_outputs: *i\n"
README = DATA / "readme.yml"


def test_an_alias_bomb_is_refused_like_check_config_refuses_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A billion laughs (9**9 values through aliases): refused before anything is built, with
    the message check-config gives, exit 2, nothing written."""
    bomb = tmp_path / "bomb.yml"
    bomb.write_text(LAUGHS)
    out = tmp_path / "new.yaml"
    assert main(["import-mqtt-io", str(bomb), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "expands to more than 100,000 values through aliases" in err and "refused" in err
    assert not out.exists()
    assert main(["check-config", "--config", str(bomb)]) == 2  # the same guard
    assert "expands to more than" in capsys.readouterr().err
    loop = tmp_path / "loop.yml"  # an alias inside its own anchor
    loop.write_text("digital_outputs: &x [*x]\n")
    assert main(["import-mqtt-io", str(loop)]) == 2


def test_an_existing_output_is_kept_unless_force(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new.yaml"
    out.write_text("precious: true\n")
    assert main(["import-mqtt-io", str(README), "-o", str(out)]) == 2
    assert "exists: refused (--force replaces it)" in capsys.readouterr().err
    assert out.read_text() == "precious: true\n"
    assert main(["import-mqtt-io", str(README), "-o", str(out), "--force"]) == 0
    assert "porch_light" in out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.yaml"]  # no temp file left


def test_a_symlink_at_the_output_is_never_followed(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    link = tmp_path / "new.yaml"
    link.symlink_to(victim)
    dangling = tmp_path / "dangling.yaml"
    dangling.symlink_to(tmp_path / "would-be-created")
    for args in ([], ["--force"]):
        for path in (link, dangling):
            assert main(["import-mqtt-io", str(README), "-o", str(path), *args]) == 2
            assert "symbolic link: refused" in capsys.readouterr().err
            assert path.is_symlink()
    assert victim.read_text() == "untouched\n"
    assert not (tmp_path / "would-be-created").exists()


def test_the_output_is_0600_a_replaced_one_never_world_readable(tmp_path: Path) -> None:
    """It may hold password hashes (a local broker's user). A config replaced with --force
    keeps its owner and group (the installer's 0640 root:gatekeeper: the service reads it)
    but loses any access for others."""
    import os
    import stat

    out = tmp_path / "new.yaml"
    assert main(["import-mqtt-io", str(README), "-o", str(out)]) == 0
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    out.chmod(0o644)
    if os.geteuid() == 0:
        os.chown(out, 0, 65534)
    before = os.stat(out)
    assert main(["import-mqtt-io", str(README), "-o", str(out), "--force"]) == 0
    after = os.stat(out)
    assert stat.S_IMODE(after.st_mode) == 0o640
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)


def test_deeply_nested_yaml_is_a_clear_refusal(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    deep = tmp_path / "deep.yml"
    deep.write_text("mqtt: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert main(["import-mqtt-io", str(deep)]) == 2
    assert "nested too deeply" in capsys.readouterr().err


def test_a_sensor_value_is_printed_on_its_mqtt_io_topic_with_its_digits() -> None:
    from pi_mqtt_gpio.server.compat.mqtt_io import MqttIoTopics
    from pi_mqtt_gpio.server.config_loader import parse_config
    from pi_mqtt_gpio.topics import Topics

    cfg = parse_config("""
node_id: pi
devices:
  climate: {type: BME280}
compat:
  mqtt_io:
    topic_prefix: home
    only_listed: true
    sensors:
      room_p: {device: climate, field: pressure, digits: 1}
      room_t: {device: climate, field: temperature}
""")
    assert cfg.compat.mqtt_io is not None
    names = MqttIoTopics(cfg.compat.mqtt_io, dict(cfg.devices), Topics("gatekeeper", "pi"))
    state = {"temperature": 21.437, "humidity": 40.1, "pressure": 1006.53, "available": True}
    assert sorted(names.state_messages("climate", None, state)) == [
        ("home/sensor/room_p", b"1006.5", False), ("home/sensor/room_t", b"21.44", False)]
    down = {"temperature": None, "humidity": None, "pressure": None, "available": False}
    assert names.state_messages("climate", state, down) == []  # nothing while it is down


def test_a_sensor_field_the_device_does_not_have_is_refused() -> None:
    from pi_mqtt_gpio.server.config_loader import ConfigError, parse_config

    with pytest.raises(ConfigError, match="a BMP280 has no 'humidity' in its state"):
        parse_config("""
node_id: pi
devices:
  baro: {type: BMP280}
compat: {mqtt_io: {topic_prefix: home, sensors: {h: {device: baro, field: humidity}}}}
""")
