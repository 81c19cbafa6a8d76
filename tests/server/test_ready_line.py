"""The ready line reaches stdout in one write.

A supervisor (systemd, the test helper, a shell script) reads stdout and the log merged
(``2>&1``); ``print`` writes text and newline separately, so a log line from the uplink's
thread could land inside the ready line and the reader would never see it whole.
"""
from __future__ import annotations

import io
import sys

import pytest

from pi_mqtt_gpio.server import daemon


class Recording(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, s: str) -> int:
        self.writes.append(s)
        return super().write(s)


def test_a_line_is_one_write_with_its_newline(monkeypatch: pytest.MonkeyPatch) -> None:
    out = Recording()
    monkeypatch.setattr(sys, "stdout", out)
    daemon._say("pi-mqtt-gatekeeper ready: gatekeeper/n1 on tcp 127.0.0.1:1883")
    assert out.writes == ["pi-mqtt-gatekeeper ready: gatekeeper/n1 on tcp 127.0.0.1:1883\n"]
