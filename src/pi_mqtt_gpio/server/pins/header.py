"""The Raspberry Pi's 40-pin header, and gpiozero's names for its pins in a config:
``GPIO22`` and ``BCM22`` (BCM numbers), ``BOARD15`` and ``J8:15`` (physical header pins)."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["BOARD_TO_BCM", "HEADER_GPIOS", "pin_number"]

# The 40-pin header: physical (BOARD) pin -> BCM GPIO number.
BOARD_TO_BCM = {3: 2, 5: 3, 7: 4, 8: 14, 10: 15, 11: 17, 12: 18, 13: 27, 15: 22, 16: 23,
                18: 24, 19: 10, 21: 9, 22: 25, 23: 11, 24: 8, 26: 7, 27: 0, 28: 1, 29: 5,
                31: 6, 32: 12, 33: 13, 35: 19, 36: 16, 37: 26, 38: 20, 40: 21}
HEADER_GPIOS = range(28)  # GPIO 0-27 are on the header; 28-53 only on a Compute Module
_POWER = {1: "3V3", 17: "3V3", 2: "5V", 4: "5V"}  # the other pins that are no GPIO: ground
_NAME = re.compile(r"(?i)(GPIO|BCM|BOARD|J8:)\s*(\d+)")


def pin_number(value: Any) -> Any:
    """A pin as gpiozero names it (``"GPIO22"``, ``"BCM22"``, ``"BOARD15"``, ``"J8:15"``) as
    its BCM number; anything else as it is (a number, an expander pin ``"io1:3"``).
    Raises ValueError for a header pin that is not a GPIO."""
    if not isinstance(value, str):
        return value
    m = _NAME.fullmatch(value.strip())
    if m is None:
        return value
    kind, number = m.group(1).upper(), int(m.group(2))
    if kind in ("GPIO", "BCM"):
        return number
    if number in BOARD_TO_BCM:
        return BOARD_TO_BCM[number]
    if not 1 <= number <= 40:
        raise ValueError(f"the header has pins 1 to 40 (got {value!r})")
    raise ValueError(f"header pin {number} is a {_POWER.get(number, 'ground')} pin, not a "
                     f"GPIO (got {value!r})")
