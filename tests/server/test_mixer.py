"""The AlsaMixer device on its simulated control: volume scaled to min..max, mute, refusals,
over a real socket; the real ALSA driver (snd-dummy) is in the VM stage."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
import pytest

from pi_mqtt_gpio.server.config_loader import ConfigError, parse_config
from pi_mqtt_gpio.server.daemon import Daemon
from pi_mqtt_gpio.server.devices.mixer import AlsaMixerConfig, control_problem
from tests.conftest import Client
from tests.server.test_cover_e2e import call
from tests.server.test_guards_e2e import run

MIXER = """
devices:
  volume: {type: AlsaMixer, card: 0, control: Master, min: -20, max: 20, step: 0.5, unit: dB}
"""


def test_set_and_state_scale_to_min_max_and_mute() -> None:
    def body(daemon: Daemon, port: int) -> dict[str, Any]:
        c = Client(port, mqtt.MQTTv5, client_id="caller")
        c.connect()
        try:
            out = {"set": call(c, "volume", {"method": "value", "args": [10]}),
                   "mute": call(c, "volume", {"method": "mute"}),
                   "too_loud": call(c, "volume", {"method": "value", "args": [25]}),
                   "state": call(c, "volume", {"method": "state"})}
            c.publish("gatekeeper/g/device/volume/set", "-20", 1)
            out["after_set"] = call(c, "volume", {"method": "state"})
            return out
        finally:
            c.close()

    got = run(MIXER, body)
    assert got["set"]["state"]["value"] == 10 and got["set"]["state"]["percent"] == 75
    assert got["mute"]["state"]["muted"] is True
    assert got["too_loud"]["error"]["code"] == "BAD_ARGUMENT"
    assert "from -20 to 20" in got["too_loud"]["error"]["message"]
    assert got["state"]["state"]["value"] == 10  # the refused call changed nothing
    assert got["after_set"]["state"]["value"] == -20


def test_config_problems() -> None:
    with pytest.raises(ConfigError, match="max must be greater than min"):
        parse_config("devices: {v: {type: AlsaMixer, control: Master, min: 5, max: 5}}")


def test_a_missing_card_or_control_is_named() -> None:
    cfg = parse_config(MIXER).devices["volume"]
    assert isinstance(cfg, AlsaMixerConfig)
    problem = control_problem(cfg)  # this machine has no sound card (or no pyalsaaudio)
    assert problem is not None
    assert "sound card 0" in problem or "pyalsaaudio is not installed" in problem \
        or "no mixer control" in problem
