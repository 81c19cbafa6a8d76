"""The config file read with what this build knows: the device adapters' registry, the Home
Assistant components of each device type, and the checks of the ``compat:`` section.

``server/config.py`` is the config layer: it imports nothing above it, and is told these
(``Known``) by this module, which the commands and the tests read configs through.
"""

from __future__ import annotations

from pathlib import Path

from pi_mqtt_gpio.server import config
from pi_mqtt_gpio.server.compat.config import config_problems
from pi_mqtt_gpio.server.config import Config, ConfigError, Known
from pi_mqtt_gpio.server.devices import registry
from pi_mqtt_gpio.server.homeassistant import allowed_components

__all__ = ["KNOWN", "ConfigError", "load_config", "parse_config"]

KNOWN = Known(devices=registry, components=allowed_components, checks=(config_problems,))


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse YAML text; raises ``ConfigError`` listing every problem."""
    return config.parse_config(text, source, known=KNOWN)


def load_config(path: str | Path) -> Config:
    """Read and parse a config file; raises ``ConfigError`` listing every problem."""
    return config.load_config(path, known=KNOWN)
