"""``hardware.reclaim_on_busy`` without a chip: the line owners, the line records and the
signals are stand-ins (the real chip is tests/hw/test_gpio_sim.py's)."""

from __future__ import annotations

import signal

import pytest

from pi_mqtt_gpio.errors import HardwareError
from pi_mqtt_gpio.server import gpio_lines
from pi_mqtt_gpio.server.gpio_lines import LineOwner, reclaim_stale

TAG = "gatekeeper"


class _Chip:
    """Lines 17 and 18 held by a stale instance (pid 4242) until it gets ``dies_on``."""

    def __init__(self, dies_on: signal.Signals | None, foreign: bool = False) -> None:
        self.held = {17, 18}
        self.dies_on = dies_on
        self.foreign = foreign
        self.signals: list[tuple[int, signal.Signals]] = []

    def owners(self, chip: int, tag: str) -> list[LineOwner]:
        consumer = "other:thing" if self.foreign else f"{tag}:lamp"
        return [LineOwner(line, f"GPIO{line}", line in self.held,
                          consumer if line in self.held else "",
                          line in self.held and not self.foreign) for line in range(20, 15, -1)]

    def kill(self, pid: int, sig: signal.Signals) -> None:
        self.signals.append((pid, sig))
        if sig == self.dies_on:
            self.held.clear()


def _patch(monkeypatch: pytest.MonkeyPatch, chip: _Chip, holder: int | None = 4242) -> None:
    monkeypatch.setattr(gpio_lines, "line_owners", chip.owners)
    monkeypatch.setattr(gpio_lines, "_recorded_holder", lambda chip_, line: holder)
    monkeypatch.setattr(gpio_lines.os, "kill", chip.kill)


@pytest.mark.parametrize("dies_on", [signal.SIGTERM, signal.SIGKILL])
def test_a_stale_instance_is_stopped_term_first(monkeypatch: pytest.MonkeyPatch,
                                                dies_on: signal.Signals) -> None:
    chip = _Chip(dies_on)
    _patch(monkeypatch, chip)
    done = reclaim_stale(0, [17, 18, 19], TAG, wait=0.2)
    assert done == [f"stopped pid 4242 ({dies_on.name}) holding GPIO17,18"]
    expected = [signal.SIGTERM] if dies_on == signal.SIGTERM else [signal.SIGTERM,
                                                                   signal.SIGKILL]
    assert chip.signals == [(4242, s) for s in expected]


def test_a_line_still_held_after_sigkill_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    chip = _Chip(None)
    _patch(monkeypatch, chip)
    with pytest.raises(HardwareError, match="still held after SIGKILL to pid 4242"):
        reclaim_stale(0, [17], TAG, wait=0.05)


def test_free_lines_need_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    chip = _Chip(None)
    _patch(monkeypatch, chip)
    assert reclaim_stale(0, [19, 30], TAG) == [] and chip.signals == []


@pytest.mark.parametrize(("foreign", "holder", "message"), [
    (True, 4242, "foreign consumer 'other:thing'"),
    (False, None, "no earlier gatekeeper recorded it"),
])
def test_a_line_that_is_not_a_stale_instances_is_never_touched(
        monkeypatch: pytest.MonkeyPatch, foreign: bool, holder: int | None,
        message: str) -> None:
    chip = _Chip(signal.SIGTERM, foreign=foreign)
    _patch(monkeypatch, chip, holder)
    with pytest.raises(HardwareError, match=message):
        reclaim_stale(0, [17], TAG)
    assert chip.signals == []
