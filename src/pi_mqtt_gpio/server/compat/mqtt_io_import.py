"""``pi-mqtt-gatekeeper import-mqtt-io OLD.yml``: an mqtt-io config (its documented schema:
``mqtt``, ``gpio_modules``, ``digital_inputs``, ``digital_outputs``, ``sensor_modules``,
``sensor_inputs``, ``stream_modules``, ``logging``, ``ha_discovery`` blocks) as a commented
gatekeeper config that keeps mqtt-io's topics and payloads (``compat.mqtt_io``).

Everything that has no equivalent is listed with its line as "not converted: <why>".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from pi_mqtt_gpio.server.config import MAX_CONFIG_NODES, expanded_size
from pi_mqtt_gpio.server.devices.analog import CHIPS
from pi_mqtt_gpio.server.pins.header import BOARD_TO_BCM

__all__ = ["Conversion", "convert", "render"]

LOCAL_HOSTS = ("", "localhost", "127.0.0.1", "::1", "ip6-localhost")
ONBOARD = ("raspberrypi", "gpiozero", "gpiod")
EXPANDERS = {"mcp23017": "MCP23017", "pcf8574": "PCF8574", "pcf8575": "PCF8575"}
PASSWORD_FILE = "/etc/pi-mqtt-gatekeeper/mqtt-password"
PROBE_USER = "gk-probe"
PROBE_PASSWORD_FILE = "/etc/pi-mqtt-gatekeeper/acl-probe-password"
GPIOZERO_OUTPUTS = ("LED", "OutputDevice", "DigitalOutputDevice", "Buzzer", "PWMLED",
                    "PWMOutputDevice")
GPIOZERO_INPUTS = ("Button", "DigitalInputDevice", "MotionSensor", "LineSensor",
                   "LightSensor")
HA_KEYS = ("name", "device_class", "icon")
# mqtt-io sensor module -> the gatekeeper's device type (bmp280 and htu21d: forks' modules
# with the same keys as bme280)
CHIP_MODULES = {"ds18b": "DS18B20", "dht22": "DHT22", "bme280": "BME280", "bmp280": "BMP280",
                "sht4x": "SHT4x", "htu21d": "HTU21D", "bh1750": "BH1750", "ads1x15": "ADS1115",
                "ina219": "INA219", "lm75": "LM75"}
# the values a sensor input's ``type`` may name, the first its default
CHIP_VALUES = {"ds18b": ("temperature",), "dht22": ("temperature", "humidity"),
               "bme280": ("temperature", "humidity", "pressure"),
               "bmp280": ("temperature", "pressure"), "sht4x": ("temperature", "humidity"),
               "htu21d": ("temperature", "humidity"), "bh1750": ("illuminance",),
               "ina219": ("power", "current", "bus_voltage", "shunt_voltage"),
               "lm75": ("temperature",)}
CHIP_DEFAULT_VALUE = {k: v[0] for k, v in CHIP_VALUES.items()} | {"ads1x15": "value"}
ADS_GAINS = {2 / 3: 6.144, 1.0: 4.096, 2.0: 2.048, 4.0: 1.024, 8.0: 0.512, 16.0: 0.256}
# Home Assistant's device classes by entity kind (2024): others are refused by HA.
HA_CLASSES = {
    "switch": ("outlet", "switch"),
    "light": (),
    "binary_sensor": (
        "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
        "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving",
        "occupancy", "opening", "plug", "power", "presence", "problem", "running", "safety",
        "smoke", "sound", "tamper", "update", "vibration", "window"),
}


class _LineLoader(yaml.SafeLoader):
    """YAML with each mapping's line number under ``__line__``."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclass
class Conversion:
    config: dict[str, Any] = field(default_factory=dict)
    converted: list[str] = field(default_factory=list)  # "line N: what -> what"
    not_converted: list[str] = field(default_factory=list)  # "line N: what: why"
    notes: list[str] = field(default_factory=list)  # comments for the reader
    warnings: list[str] = field(default_factory=list)  # said on stderr too

    def skip(self, line: int | None, what: str, why: str) -> None:
        self.not_converted.append(f"line {line or '?'}: {what}: {why}")

    def done(self, line: int | None, what: str, to: str) -> None:
        self.converted.append(f"line {line or '?'}: {what} -> {to}")


def _name(text: str) -> str:
    """A device or expander name the gatekeeper accepts (mqtt-io allows anything)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text) or "device"


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text, 0)
        except ValueError:
            return None
    return None


class _Importer:
    def __init__(self, doc: dict[str, Any], hash_password: Any) -> None:
        self.doc = doc
        self.out = Conversion()
        self.hash_password = hash_password
        self.modules: dict[str, dict[str, Any]] = {}  # gpio module name -> its config
        self.expander_of: dict[str, str] = {}  # gpio module name -> expander name
        self.devices: dict[str, dict[str, Any]] = {}
        self.compat_out: dict[str, dict[str, Any]] = {}
        self.compat_in: dict[str, dict[str, Any]] = {}
        self.compat_sensors: dict[str, dict[str, Any]] = {}
        self.expanders: dict[str, dict[str, Any]] = {}
        self.interrupt_for: dict[str, tuple[str, int]] = {}  # pin name -> (module, line)

    # --- mqtt -----------------------------------------------------------------------------------
    def mqtt(self) -> None:
        mqtt = self.doc.get("mqtt")
        if not isinstance(mqtt, dict):
            mqtt = {}
            self.out.notes.append("The old config has no mqtt section: the embedded broker "
                                  "on port 1883, and mqtt-io's default (empty) topic prefix.")
        line = mqtt.get("__line__")
        host = str(mqtt.get("host") or "").strip()
        port = _int(mqtt.get("port")) or 1883
        user = str(mqtt.get("user") or "")
        password = str(mqtt.get("password") or "")
        # mqtt-io strips a trailing '/'; an empty prefix gives topics that start with '/'
        prefix = str(mqtt.get("topic_prefix") or "").rstrip("/")
        if "<ip>" in prefix:
            self.out.skip(line, "mqtt.topic_prefix '<ip>'", "the address placeholder is not "
                          "expanded; write the address into compat.mqtt_io.topic_prefix")
        if host.lower() in LOCAL_HOSTS:
            self._embedded(mqtt, line, host, port, user, password)
        else:
            self._external(mqtt, line, host, port, user, password)
        self._compat_and_ha(mqtt, prefix)

    def _embedded(self, mqtt: dict[str, Any], line: Any, host: str, port: int, user: str,
                  password: str) -> None:
        """mqtt-io's broker ran here: the embedded broker takes its place."""
        cfg = self.out.config
        tls: dict[str, Any] = mqtt["tls"] if isinstance(mqtt.get("tls"), dict) else {}
        listeners: list[dict[str, Any]] = [{"type": "tcp", "host": "0.0.0.0", "port": port}]
        cfg["broker"] = {"mode": "embedded", "listeners": listeners}
        self.out.notes.append(
            f"mqtt-io used a broker on this machine ({host or 'localhost'}:{port}): the "
            f"gatekeeper's embedded broker takes its place on port {port} (stop the old "
            f"broker first, or change the port). Clients log in to the gatekeeper now.")
        if tls.get("enabled"):
            self.out.skip(tls.get("__line__"), "mqtt.tls", "these were client settings for "
                          "the old broker; add a tls listener with the server's "
                          "certificate and key (docs/security.md)")
        if user:
            cfg["auth"] = {"allow_anonymous": False, "users": {
                _name(user): {"password_hash": self.hash_password(password), "role":
                              "operator"}}}
            self.out.notes.append(f"User {user!r} keeps its password (stored as an "
                                  f"argon2id hash) with the operator role.")
        else:
            cfg["auth"] = {"allow_anonymous": True, "anonymous_role": "operator"}
            self.out.warnings.append(
                "mqtt-io logged in without a user: anonymous clients get the operator "
                "role so that they keep working, as they did on the old broker. Add users "
                "and turn allow_anonymous off (docs/security.md).")
        if "mqtt" in self.doc:
            self.out.done(line, f"mqtt (host {host or 'localhost'})",
                          f"embedded broker on port {port}")

    def _external(self, mqtt: dict[str, Any], line: Any, host: str, port: int, user: str,
                  password: str) -> None:
        """mqtt-io's broker ran elsewhere: external broker mode, with the ACL probe."""
        cfg = self.out.config
        tls: dict[str, Any] = mqtt["tls"] if isinstance(mqtt.get("tls"), dict) else {}
        ext: dict[str, Any] = {"host": host, "port": port}
        if user:
            ext["username"] = user
            if password:
                ext["password_file"] = PASSWORD_FILE
                self.out.notes.append(f"Write the old mqtt.password into {PASSWORD_FILE} "
                                      f"(one line, chmod 600): passwords are never kept "
                                      f"in the config.")
        if tls.get("enabled"):
            ext["tls"] = True
            if tls.get("ca_certs"):
                ext["ca_file"] = str(tls["ca_certs"])
            for key in ("certfile", "keyfile", "ciphers", "tls_version"):
                if tls.get(key):
                    self.out.skip(tls.get("__line__"), f"mqtt.tls.{key}",
                                  "not supported for the external broker")
            if tls.get("insecure") or tls.get("cert_reqs") in ("CERT_NONE",
                                                               "CERT_OPTIONAL"):
                self.out.skip(tls.get("__line__"), "mqtt.tls.insecure/cert_reqs",
                              "the gatekeeper always verifies the broker's certificate")
        if mqtt.get("client_id"):
            ext["client_id"] = str(mqtt["client_id"])
        # Fail closed: until the broker user below exists and the broker's ACL holds,
        # every command is refused and the health says why (never silently open).
        ext["acl_probe"] = {"username": PROBE_USER, "password_file": PROBE_PASSWORD_FILE}
        self.out.notes.append(
            f"broker.external.acl_probe: create the broker user {PROBE_USER!r} with a "
            f"password of its own, write that password into {PROBE_PASSWORD_FILE} "
            f"(chmod 600), and give the broker the fleet ACL (docs/fleet.md): the "
            f"gatekeeper checks with that user that nobody can command under another "
            f"user's name, and refuses every command until the check passes. "
            f"acl_probe: false skips the check (not recommended).")
        cfg["broker"] = {"mode": "external", "external": ext}
        cfg["auth"] = {"users": {"mqtt-io": {"role": "operator"}}}
        self.out.notes.append(
            f"mqtt-io used the broker {host}:{port}: the gatekeeper connects to it as a "
            f"client (external broker mode). Commands on mqtt-io's topics carry no user "
            f"name there; they run as the user 'mqtt-io' (operator); the broker's ACL "
            f"decides who may publish them.")
        self.out.done(line, f"mqtt (host {host})", "external broker mode")

    def _compat_and_ha(self, mqtt: dict[str, Any], prefix: str) -> None:
        """The compat section (prefix, status topic and payloads) and Home Assistant's."""
        cfg = self.out.config
        compat: dict[str, Any] = {"topic_prefix": prefix}
        for key in ("status_topic", "status_payload_running", "status_payload_stopped",
                    "status_payload_dead"):
            if mqtt.get(key):
                compat[key] = str(mqtt[key])
        cfg["compat"] = {"mqtt_io": compat}
        disco = mqtt.get("ha_discovery")
        ha: dict[str, Any] = {"discovery": bool(isinstance(disco, dict) and disco.get("enabled"))}
        if isinstance(disco, dict) and disco.get("prefix"):
            ha["prefix"] = str(disco["prefix"]).rstrip("/")
        cfg["homeassistant"] = ha
        for key in ("protocol", "keepalive", "clean_session", "reconnect_delay",
                    "reconnect_count", "client_module"):
            if key in mqtt:
                self.out.notes.append(f"mqtt.{key} is not needed: the gatekeeper speaks MQTT 5 "
                                      f"and 3.1.1 and reconnects with backoff by itself.")

    # --- gpio modules ---------------------------------------------------------------------------
    def gpio_modules(self) -> None:
        for mod in _items(self.doc.get("gpio_modules")):
            name, kind, line = str(mod.get("name", "")), str(mod.get("module", "")), \
                mod.get("__line__")
            self.modules[name] = mod
            if kind in ONBOARD:
                if kind == "gpiod" and mod.get("chip") not in (None, "/dev/gpiochip0"):
                    self.out.notes.append(f"gpio module {name!r} used chip {mod['chip']}: set "
                                          f"hardware.chip if that is not the Pi's header.")
                self.out.done(line, f"gpio module {name!r} ({kind})", "the Pi's own pins")
            elif kind in EXPANDERS:
                exp = _name(name)
                bus = _int(mod.get("i2c_bus_num"))
                entry: dict[str, Any] = {"type": EXPANDERS[kind],
                                         "bus": 1 if bus is None else bus,
                                         "address": _int(mod.get("chip_addr")) or 0x20}
                self.expanders[exp] = entry
                self.expander_of[name] = exp
                self.out.done(line, f"gpio module {name!r} ({kind})", f"expanders.{exp}")
            else:
                self.out.skip(line, f"gpio module {name!r} ({kind})",
                              "no such pin factory in the gatekeeper (Raspberry Pi pins, "
                              "MCP23017, PCF8574 and PCF8575 are)")

    def module(self, entry: dict[str, Any]) -> str | None:
        """The gpio module an input or output names: by name, or (as in mqtt-io's own
        interrupt example) by the type of the only module of that type."""
        module = str(entry.get("module", ""))
        if module in self.modules:
            return module
        same = [n for n, m in self.modules.items() if str(m.get("module")) == module]
        return same[0] if len(same) == 1 else None

    def named_pin(self, entry: dict[str, Any], name: str, what: str) -> int | str | None:
        """The pin of an input or output whose mqtt-io name is one topic level (its compat
        topics are built from it), or None (said why)."""
        if not _one_level(name):
            self.out.skip(entry.get("__line__"), what,
                          "a name with '/', '+' or '#' is not one topic level")
            return None
        return self.pin(entry, what)

    def pin(self, entry: dict[str, Any], what: str, key: str = "pin") -> int | str | None:
        """The gatekeeper's pin for an mqtt-io input or output, or None (said why)."""
        line = entry.get("__line__")
        found = self.module(entry)
        if found is None:
            self.out.skip(line, what, f"no gpio module named {entry.get('module')!r}")
            return None
        module = found
        mod = self.modules[module]
        kind = str(mod.get("module"))
        raw = entry.get(key)
        if kind in EXPANDERS:
            number = _int(raw)
            top = 7 if kind == "pcf8574" else 15
            if number is None or not 0 <= number <= top:
                self.out.skip(line, what, f"pin {raw!r} is not 0-{top} of a {kind}")
                return None
            return f"{self.expander_of[module]}:{number}"
        if kind not in ONBOARD:
            self.out.skip(line, what, f"its gpio module {module!r} ({kind}) is not converted")
            return None
        board = str(mod.get("mode", "")).lower() == "board"
        text = str(raw).strip().upper() if isinstance(raw, str) else None
        if text is not None and text.startswith("BOARD"):
            board, raw = True, text[5:]
        elif text is not None and text.startswith("GPIO"):
            raw = text[4:]
        number = _int(raw)
        if number is None:
            self.out.skip(line, what, f"pin {entry.get(key)!r} is not a pin number")
            return None
        if board:
            bcm = BOARD_TO_BCM.get(number)
            if bcm is None:
                self.out.skip(line, what, f"header pin {number} is not a GPIO pin")
                return None
            return bcm
        if not 0 <= number <= 53:
            self.out.skip(line, what, f"GPIO {number} does not exist")
            return None
        return number

    def ha(self, entry: dict[str, Any], components: tuple[str, ...], what: str
           ) -> dict[str, Any] | None:
        disco = entry.get("ha_discovery")
        if not isinstance(disco, dict):
            return None
        out: dict[str, Any] = {k: str(disco[k]) for k in HA_KEYS if disco.get(k)}
        component = disco.get("component")
        if component in components:
            out["component"] = component
        elif component is not None:
            self.out.skip(disco.get("__line__"), f"{what} ha_discovery.component {component}",
                          f"shown as {components[0]}")
        kind = out.get("component", components[0])
        allowed = HA_CLASSES.get(kind)
        if "device_class" in out and allowed is not None and out["device_class"] not in allowed:
            self.out.skip(disco.get("__line__"), f"{what} ha_discovery.device_class "
                          f"{out.pop('device_class')}", f"not a device class of a Home "
                          f"Assistant {kind} (it would refuse the entity)")
        rest = sorted(k for k in disco if k not in (*HA_KEYS, "component", "__line__"))
        if rest:
            self.out.skip(disco.get("__line__"), f"{what} ha_discovery {', '.join(rest)}",
                          "Home Assistant gets these from the gatekeeper's own discovery")
        return out or None

    # --- outputs --------------------------------------------------------------------------------
    def outputs(self) -> None:
        for entry in _items(self.doc.get("digital_outputs")):
            mio = str(entry.get("name", ""))
            what = f"digital output {mio!r}"
            line = entry.get("__line__")
            pin = self.named_pin(entry, mio, what)
            if pin is None:
                continue
            ha = self.ha(entry, ("switch", "light"), what)
            cls = str(entry.get("class", "")) if self._kind(entry) == "gpiozero" else ""
            kind = cls if cls in GPIOZERO_OUTPUTS else \
                "LED" if ha is not None and ha.get("component") == "light" else "OutputDevice"
            if cls and cls not in GPIOZERO_OUTPUTS:
                self.out.skip(line, f"{what} class {cls}", "made an OutputDevice")
            inverted = bool(entry.get("inverted"))
            dev: dict[str, Any] = {"type": kind, "pin": pin}
            if inverted:
                dev["active_high"] = False
            initial = entry.get("initial")
            if initial in ("high", "low") and (initial == "high") != inverted:
                # Outputs start in their safe state, built at that level (nothing pulses):
                # the one setting that makes this output start on is its safe state.
                dev["safe_state"] = "on"
                self.out.warnings.append(
                    f"line {line}: {what}: initial: {initial} starts it on, which here is "
                    f"safe_state: on: it also goes back on at shutdown, when a lease on it "
                    f"ends and after max_on_s; remove safe_state if off is the safe side")
            if ha is not None:
                dev["homeassistant"] = ha
            device = self._add(dev, mio)
            compat = _compat_entry(entry, mio, device, payloads=True)
            if _int(entry.get("timed_set_ms")):
                compat["timed_set_ms"] = _int(entry["timed_set_ms"])
            self.compat_out[mio] = compat
            self.out.done(line, what, f"devices.{device} ({kind})")

    def _kind(self, entry: dict[str, Any]) -> str:
        module = self.module(entry)
        return str(self.modules[module].get("module")) if module is not None else ""

    def _add(self, dev: dict[str, Any], mio: str) -> str:
        name = base = _name(mio)
        n = 2
        while name in self.devices:
            name, n = f"{base}_{n}", n + 1
        self.devices[name] = dev
        return name

    # --- inputs ---------------------------------------------------------------------------------
    def inputs(self) -> None:
        entries = list(_items(self.doc.get("digital_inputs")))
        self._interrupt_lines(entries)
        for entry in entries:
            mio = str(entry.get("name", ""))
            what = f"digital input {mio!r}"
            if mio in self.interrupt_for:
                self._interrupt_input(entry, mio, what)
            else:
                self._input(entry, mio, what)

    def _interrupt_lines(self, entries: list[dict[str, Any]]) -> None:
        """A Pi input that is the INT line of an expander's pins: the expander's interrupt."""
        for entry in entries:
            targets = entry.get("interrupt_for")
            if not isinstance(targets, list):
                continue
            pin = self.pin(entry, f"digital input {entry.get('name')!r}")
            if not isinstance(pin, int):
                continue
            for target in targets:
                other = next((e for e in entries if e.get("name") == target), None)
                module = (self.module(other) or "") if other is not None else ""
                if module in self.expander_of:
                    self.expanders[self.expander_of[module]]["interrupt"] = pin
            self.interrupt_for[str(entry.get("name"))] = (str(entry.get("module")), pin)

    def _interrupt_input(self, entry: dict[str, Any], mio: str, what: str) -> None:
        exps = sorted({e for e, x in self.expanders.items()
                       if x.get("interrupt") == self.interrupt_for[mio][1]})
        if exps:
            self.out.done(entry.get("__line__"), what, f"the interrupt line of expanders "
                          f"{', '.join(exps)}")
        else:
            self.out.skip(entry.get("__line__"), f"{what} interrupt_for", "only an expander's "
                          "INT line can be an interrupt for other pins")

    def _input(self, entry: dict[str, Any], mio: str, what: str) -> None:
        line = entry.get("__line__")
        pin = self.named_pin(entry, mio, what)
        if pin is None:
            return
        kind_of_module = self._kind(entry)
        cls = str(entry.get("class", "")) if kind_of_module == "gpiozero" else ""
        kind = cls if cls in GPIOZERO_INPUTS else "DigitalInputDevice"
        dev: dict[str, Any] = {"type": kind, "pin": pin,
                               **self._input_pull(entry, kind_of_module, what)}
        interrupt = entry.get("interrupt")
        if interrupt in ("rising", "falling", "both") or entry.get("bouncetime"):
            ms = _int(entry.get("bouncetime")) or 100
            dev["bounce_time"] = min(10.0, max(0.001, ms / 1000.0))
        ha = self.ha(entry, ("binary_sensor",), what)
        if (dev["pull_up"] is True) != bool(entry.get("inverted")):
            # mqtt-io's "ON" is the pin high (unless inverted); this device is active
            # while its pin is low (a pull-up) or high: Home Assistant shows it as before.
            ha = {**(ha or {}), "inverted": True}
        if ha is not None:
            dev["homeassistant"] = ha
        device = self._add(dev, mio)
        compat = _compat_entry(entry, mio, device, payloads=True)
        if entry.get("inverted"):
            compat["inverted"] = True  # mqtt-io's meaning: by the pin's level
        if entry.get("interrupt_payload") is not None and interrupt in ("rising",
                                                                       "falling", "both"):
            compat["interrupt"] = interrupt
            compat["interrupt_payload"] = str(entry["interrupt_payload"])
        self.compat_in[mio] = compat
        self.out.done(line, what, f"devices.{device} ({kind})")

    def _input_pull(self, entry: dict[str, Any], kind_of_module: str, what: str
                    ) -> dict[str, Any]:
        """An input's pull_up (and active_state when floating) on its chip."""
        line = entry.get("__line__")
        pullup, pulldown = bool(entry.get("pullup")), bool(entry.get("pulldown"))
        if kind_of_module in ("pcf8574", "pcf8575"):
            pullup = True
            if pulldown:
                self.out.warnings.append(
                    f"line {line}: {what}: a PCF857x has no pull-down (mqtt-io wrote 0, "
                    f"which drives the pin low); converted as its weak pull-up")
                pulldown = False
        elif kind_of_module == "mcp23017" and pulldown:
            self.out.warnings.append(f"line {line}: {what}: an MCP23017 has no pull-down; "
                                     f"converted as a floating input (add a resistor)")
            pulldown = False
        if pullup:
            return {"pull_up": True}
        if pulldown:
            return {"pull_up": False}
        return {"pull_up": None, "active_state": True}

    # --- sensors, streams, the rest -------------------------------------------------------------
    def sensors(self) -> None:
        modules = {str(m.get("name")): m for m in _items(self.doc.get("sensor_modules"))}
        chips: dict[str, str] = {}  # sensor module name -> its device (made at first use)
        for mod in modules.values():
            if str(mod.get("module")) not in ("mcp3008", "mcp3xxx", "hcsr04", *CHIP_MODULES):
                self.out.skip(mod.get("__line__"), f"sensor module {mod.get('name')!r} "
                              f"({mod.get('module')})", "no such sensor in the gatekeeper "
                              f"(converted: mcp3008, mcp3xxx, hcsr04, "
                              f"{', '.join(CHIP_MODULES)})")
        for entry in _items(self.doc.get("sensor_inputs")):
            mio = str(entry.get("name", ""))
            what = f"sensor input {mio!r}"
            found = modules.get(str(entry.get("module", "")))
            if found is None:
                self.out.skip(entry.get("__line__"), what,
                              f"no sensor module named {entry.get('module')!r}")
                continue
            made = self._sensor_device(found, entry, what, chips)
            if made is not None:
                self._sensor(found, entry, mio, what, *made)
        for name, mod in modules.items():
            if str(mod.get("module")) in CHIP_MODULES and name not in chips:
                self.out.skip(mod.get("__line__"), f"sensor module {name!r} "
                              f"({mod.get('module')})", "no sensor input reads it")

    def _sensor_device(self, mod: dict[str, Any], entry: dict[str, Any], what: str,
                       chips: dict[str, str]
                       ) -> tuple[dict[str, Any], dict[str, Any], str] | None:
        """(device config, compat settings, device name or "" for a new one) of a sensor
        input, or None (skipped)."""
        line = entry.get("__line__")
        kind = str(mod.get("module"))
        interval = float(entry.get("interval") or 60)
        if kind in CHIP_MODULES:
            chip = self.chip_sensor(mod, entry, what, chips, interval)
            if chip is None:
                return None
            device, compat = chip
            return self.devices[device], compat, device
        if kind in ("mcp3008", "mcp3xxx"):
            chip_type = "MCP3008" if kind == "mcp3008" else str(mod.get("type", "")).upper()
            if chip_type not in CHIPS:
                self.out.skip(line, what, f"{chip_type or 'this chip'} is not one of "
                              f"{', '.join(CHIPS)}")
                return None
            dev = {"type": chip_type, "channel": _int(entry.get("channel")) or 0,
                   "port": _int(mod.get("spi_port")) or 0,
                   "device": _int(mod.get("spi_device")) or 0,
                   "publish_interval": min(3600.0, max(0.05, interval))}
            # mqtt-io's mcp3008 module published read_adc()'s raw count; mcp3xxx 0..1
            return dev, ({"field": "raw_value"} if kind == "mcp3008" else {}), ""
        if kind == "hcsr04":
            echo = _int(entry.get("pin_echo", mod.get("pin_echo")))
            trigger = _int(entry.get("pin_trigger", mod.get("pin_trigger")))
            if echo is None or trigger is None:
                self.out.skip(line, what, "needs pin_echo and pin_trigger")
                return None
            # mqtt-io measured in centimetres, without a ceiling; the HC-SR04 reaches
            # about 4 m
            dev = {"type": "DistanceSensor", "echo": echo, "trigger": trigger,
                   "max_distance": 4.0, "publish_interval": min(3600.0, max(0.05, interval))}
            return dev, {"field": "distance", "scale": 100}, ""
        self.out.skip(line, what, f"its module {mod.get('name')!r} ({kind}) is not converted")
        return None

    def _sensor(self, mod: dict[str, Any], entry: dict[str, Any], mio: str, what: str,
                dev: dict[str, Any], compat: dict[str, Any], device: str) -> None:
        """A converted sensor input: its Home Assistant settings and compat entry."""
        line = entry.get("__line__")
        sensor_ha = self.ha(entry, ("sensor",), what)
        if sensor_ha is not None:
            sensor_ha.pop("component", None)
            if sensor_ha and str(mod.get("module")) not in CHIP_MODULES:
                dev["homeassistant"] = sensor_ha
            elif sensor_ha:
                self.out.skip(line, f"{what} ha_discovery", "a sensor with several "
                              "values gets one entity per value, named after the device")
        if not device:
            device = self._add(dev, mio)
        compat.update(_compat_entry(entry, mio, device, payloads=False))
        digits = _int(entry.get("digits"))
        if digits is not None and digits != 2:
            compat["digits"] = min(10, max(0, digits))
        if not _one_level(mio):
            self.out.skip(line, f"{what} topic", "a name with '/', '+' or '#' is not one "
                          "topic level: on the gatekeeper's own topics only")
        else:
            self.compat_sensors[mio] = compat
        self.out.done(line, what, f"devices.{device} ({dev['type']})")

    def chip_sensor(self, mod: dict[str, Any], entry: dict[str, Any], what: str,
                    chips: dict[str, str], interval: float
                    ) -> tuple[str, dict[str, Any]] | None:
        """A sensor input of a chip module (ds18b, dht22, bme280, ...): one device per module,
        each input one value of it. Returns (device, compat settings) or None (skipped)."""
        kind, line = str(mod.get("module")), entry.get("__line__")
        wanted = str(entry.get("type") or CHIP_DEFAULT_VALUE.get(kind, "temperature")).lower()
        compat: dict[str, Any] = {}
        if kind == "ads1x15":
            pin = _int(entry.get("pin"))
            pins = [p for p in (mod.get("pins") or []) if isinstance(p, int)]
            if pin is None or pin not in range(4) or (pins and pin not in pins):
                self.out.skip(line, what, f"pin {entry.get('pin')!r} is not one of the "
                              f"module's pins {pins}")
                return None
            if wanted not in ("value", "voltage"):
                self.out.skip(line, what, f"type {wanted} is not value or voltage")
                return None
            compat["field"] = f"a{pin}"
            if wanted == "value":  # mqtt-io: the count scaled to 16 bits
                full_scale = ADS_GAINS.get(float(mod.get("gain", 1)), 4.096)
                compat["scale"] = round(32768 / full_scale, 6)
        else:
            values = CHIP_VALUES[kind]
            if wanted not in values:
                self.out.skip(line, what, f"type {wanted} is not one of {', '.join(values)}")
                return None
            compat["field"] = wanted
        name = str(mod.get("name"))
        device = chips.get(name)
        if device is None:
            dev = self.chip_device(mod)
            if dev is None:
                return None
            device = chips[name] = self._add(dev, name)
        dev = self.devices[device]
        dev["interval"] = min(dev.get("interval", 86400.0), max(
            2.0 if dev["type"] in ("DHT11", "DHT22", "AM2302") else 1.0, interval))
        digits = _int(entry.get("digits"))
        if digits is not None and digits > 2:
            dev["digits"] = min(6, max(digits, dev.get("digits", 0)))
        return device, compat

    def chip_device(self, mod: dict[str, Any]) -> dict[str, Any] | None:
        kind = str(mod.get("module"))
        what = f"sensor module {mod.get('name')!r} ({kind})"
        dev: dict[str, Any] = {"type": CHIP_MODULES[kind]}
        settings = {"ds18b": self._ds18b, "dht22": self._dht, "ads1x15": self._ads1x15,
                    "ina219": self._ina219}.get(kind)
        if settings is not None and not settings(mod, dev, what):
            return None
        if kind not in ("ds18b", "dht22"):  # the I²C chips
            bus = _int(mod.get("i2c_bus_num"))
            address = _int(mod.get("chip_addr"))
            if bus is not None and bus != 1:
                dev["bus"] = bus
            if address is not None:
                dev["address"] = address
        return dev

    # Each chip module's own settings into ``dev``; False: skipped (said why).
    def _ds18b(self, mod: dict[str, Any], dev: dict[str, Any], what: str) -> bool:
        if mod.get("address"):
            dev["address"] = str(mod["address"]).lower()
        return True

    def _dht(self, mod: dict[str, Any], dev: dict[str, Any], what: str) -> bool:
        chip = str(mod.get("type", "dht22")).upper()
        dev["type"] = chip if chip in ("DHT11", "DHT22", "AM2302") else "DHT22"
        pin = _int(mod.get("pin"))
        self.out.notes.append(f"line {mod.get('__line__')}: {what}: the kernel reads the DHT: "
                              f"add dtoverlay=dht11,gpiopin={pin if pin is not None else 'N'} "
                              f"to /boot/firmware/config.txt and reboot")
        return True

    def _ads1x15(self, mod: dict[str, Any], dev: dict[str, Any], what: str) -> bool:
        dev["type"] = "ADS1015" if str(mod.get("type")).upper() == "ADS1015" else "ADS1115"
        pins = sorted({p for p in (mod.get("pins") or []) if isinstance(p, int)
                       and 0 <= p <= 3})
        if pins:
            dev["channels"] = pins
        gain = mod.get("gain", 1)
        full_scale = ADS_GAINS.get(float(gain)) if isinstance(gain, int | float) else None
        if full_scale is None:
            self.out.skip(mod.get("__line__"), f"{what} gain {gain}",
                          "not one of 2/3, 1, 2, 4, 8, 16")
            return False
        dev["full_scale"] = full_scale
        return True

    def _ina219(self, mod: dict[str, Any], dev: dict[str, Any], what: str) -> bool:
        line = mod.get("__line__")
        shunt = float(mod.get("shunt_ohms") or 0.1)
        dev["shunt_ohms"] = shunt
        amps = mod.get("max_amps")
        dev["max_current"] = float(amps) if isinstance(amps, int | float) and amps > 0 \
            else round(min(3.2, 0.32 / shunt), 6)
        if mod.get("voltage_range") in (16, 32):
            dev["bus_range"] = mod["voltage_range"]
        if str(mod.get("gain", "AUTO")).upper() != "AUTO":
            self.out.skip(line, f"{what} gain {mod.get('gain')}", "the gain follows from "
                          "max_current and shunt_ohms")
        if mod.get("low_power"):
            self.out.skip(line, f"{what} low_power", "the INA219 converts continuously")
        return True

    def rest(self) -> None:
        for entry in _items(self.doc.get("stream_modules")):
            self.out.skip(entry.get("__line__"), f"stream module {entry.get('name')!r} "
                          f"({entry.get('module')})", "serial and NFC streams are not GPIO "
                          "devices; keep mqtt-io for them, or another bridge")
        if isinstance(self.doc.get("logging"), dict):
            self.out.skip(self.doc["logging"].get("__line__"), "logging",
                          "the gatekeeper logs to the journal (--log-level)")
        for key in ("reporting", "options"):
            if isinstance(self.doc.get(key), dict):
                self.out.skip(self.doc[key].get("__line__"), key, "not needed")
        known = {"mqtt", "gpio_modules", "digital_inputs", "digital_outputs", "sensor_modules",
                 "sensor_inputs", "stream_modules", "logging", "reporting", "options",
                 "__line__"}
        for key, value in self.doc.items():
            if key not in known:
                where = value.get("__line__") if isinstance(value, dict) else None
                self.out.skip(where and where - 1, str(key), "not a section of mqtt-io's "
                              "config")

    def run(self) -> Conversion:
        self.mqtt()
        self.gpio_modules()
        self.outputs()
        self.inputs()
        self.sensors()
        self.rest()
        cfg = self.out.config
        if self.expanders:
            cfg["expanders"] = self.expanders
        cfg["devices"] = self.devices
        compat = cfg["compat"]["mqtt_io"]
        if self.compat_out:
            compat["outputs"] = self.compat_out
        if self.compat_in:
            compat["inputs"] = self.compat_in
        if self.compat_sensors:
            compat["sensors"] = self.compat_sensors
        compat["only_listed"] = True
        return self.out


def _one_level(name: str) -> bool:
    """A name that is one topic level (mqtt-io allows any string)."""
    return bool(name) and not any(c in name for c in "/+#")


def _compat_entry(entry: dict[str, Any], mio: str, device: str, *, payloads: bool
                  ) -> dict[str, Any]:
    """The ``compat.mqtt_io`` settings every kind shares: the device when it was renamed,
    the payloads when not mqtt-io's defaults, retain."""
    compat: dict[str, Any] = {}
    if device != mio:
        compat["device"] = device
    if payloads:
        for key, default in (("on_payload", "ON"), ("off_payload", "OFF")):
            if entry.get(key) is not None and str(entry[key]) != default:
                compat[key] = str(entry[key])
    if entry.get("retain"):
        compat["retain"] = True
    return compat


def _items(value: Any) -> list[dict[str, Any]]:
    """mqtt-io's lists of dicts; the old dict-of-dicts form (name as key) too."""
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    if isinstance(value, dict):
        return [{"name": k, **v} for k, v in value.items()
                if isinstance(v, dict) and k != "__line__"]
    return []


def convert(text: str, *, hash_password: Any = None) -> Conversion:
    """The gatekeeper config for an mqtt-io config's text. Raises ValueError when the text
    is not a YAML mapping."""
    try:
        # The config's own guard: the size with every alias expanded is measured on the
        # composed nodes, before anything is built (a "billion laughs" is refused at once).
        node = yaml.compose(text, Loader=_LineLoader)
        if node is not None and expanded_size(node, MAX_CONFIG_NODES) is None:
            raise ValueError(f"line {node.start_mark.line + 1}: the YAML expands to more than "
                             f"{MAX_CONFIG_NODES:,} values through aliases (*name), or an "
                             f"alias refers to itself: refused")
        doc = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {exc}") from None
    except RecursionError:
        raise ValueError("the YAML is nested too deeply") from None
    if not isinstance(doc, dict):
        raise ValueError("an mqtt-io config is a YAML mapping (mqtt:, gpio_modules:, ...)")
    if hash_password is None:
        from pi_mqtt_gpio.server.security import hash_password as default_hash

        hash_password = default_hash
    return _Importer(doc, hash_password).run()


def render(conv: Conversion, source: str) -> str:
    """The config as commented YAML."""
    lines = [f"# pi-mqtt-gatekeeper config converted from the mqtt-io config {source}",
             "# by `pi-mqtt-gatekeeper import-mqtt-io`. Check it with",
             "#   pi-mqtt-gatekeeper check-config --config THIS_FILE",
             "# mqtt-io's topics and payloads keep working (compat.mqtt_io below); the",
             "# gatekeeper's own topics are under gatekeeper/<node_id>/ beside them.",
             "# node_id is this machine's host name unless you set it here.", "#"]
    for note in [*conv.notes, *conv.warnings]:
        lines.extend(_wrap(note))
    lines.append("")
    cfg = conv.config
    order = ("broker", "auth", "homeassistant", "expanders", "devices", "compat")
    for key in order:
        if key not in cfg:
            continue
        if key == "devices":
            lines.append("# Converted:")
            lines.extend(f"#   {c}" for c in conv.converted)
        if key == "compat":
            lines.append("# mqtt-io's topics: <topic_prefix>/output/<name>[/set|/set_on_ms|"
                         "/set_off_ms],")
            lines.append("# <topic_prefix>/input/<name>, <topic_prefix>/sensor/<name>, "
                         "<topic_prefix>/status "
                         "(docs/migrate-from-mqtt-io.md).")
        lines.append(yaml.safe_dump({key: cfg[key]}, sort_keys=False,
                                    default_flow_style=False).rstrip())
        lines.append("")
    if conv.not_converted:
        lines.append("# Not converted:")
        lines.extend(f"#   {n}" for n in conv.not_converted)
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int = 92) -> list[str]:
    out, line = [], "#"
    for word in text.split():
        if len(line) + 1 + len(word) > width:
            out.append(line)
            line = "#"
        line += " " + word
    out.append(line)
    return out
