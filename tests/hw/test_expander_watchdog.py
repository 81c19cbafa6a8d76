"""The MCP23017 expander against a real kernel I²C driver, and the loopback watchdog against
real GPIO lines, inside the VM (scripts/hw-stage).

- ``i2c-stub`` is a kernel SMBus register file at a chosen address (through ``i2c-dev``, the
  same character device ``smbus2`` opens on a Pi): the test writes the chip's GPIO/INTF
  registers and sees the Button's events on MQTT, and reads back what an LED wrote to OLAT.
  (i2c-stub is memory, not an MCP23017: GPIO does not follow OLAT, no INT line; the daemon
  polls it.)
- The watchdog runs on two gpio-sim lines; a loop in the test copies the output line's value
  to the input line's pull: a wire. Stopping the loop cuts it.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hw.test_gpio_sim import Daemon, Mqtt

pytestmark = pytest.mark.skipif("GPIOSIM_SYSFS" not in os.environ,
                                reason="runs inside the gpiosim VM (scripts/hw-stage)")

if "GPIOSIM_SYSFS" in os.environ:
    import gpiosim_vm as sim

ADDRESS = 0x20
GPIOA, GPIOB, INTFA, OLATA, OLATB = 0x12, 0x13, 0x0E, 0x14, 0x15


def stub_bus(*others: int) -> int:
    """Load i2c-stub with a chip at 0x20 and i2c-dev; the stub's bus number. With ``others``
    the stub is loaded afresh with chips at those addresses too."""
    if others:
        subprocess.run(["modprobe", "-r", "i2c-stub"], check=False)
    chips = ",".join(f"{a:#x}" for a in (ADDRESS, *others))
    subprocess.run(["modprobe", "i2c-stub", f"chip_addr={chips}"], check=True)
    subprocess.run(["modprobe", "i2c-dev"], check=True)
    for adapter in glob.glob("/sys/class/i2c-adapter/i2c-*"):
        if Path(adapter, "name").read_text().startswith("SMBus stub"):
            return int(adapter.rsplit("-", 1)[1])
    raise RuntimeError("no i2c-stub adapter")


@pytest.fixture(scope="module")
def expander(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Mqtt, Any]]:
    from smbus2 import SMBus

    bus_number = stub_bus()
    smbus = SMBus(bus_number)
    smbus.write_byte_data(ADDRESS, GPIOA, 0xFF)  # released buttons read high (pulled up)
    smbus.write_byte_data(ADDRESS, GPIOB, 0xFF)
    devices = {"hall": {"type": "Button", "pin": "io1:3"},
               "lamp": {"type": "LED", "pin": "io1:8"}}
    extra = {"expanders": {"io1": {"type": "MCP23017", "bus": bus_number,
                                   "address": ADDRESS, "poll_interval_s": 0.02}}}
    daemon = Daemon(tmp_path_factory.mktemp("expander"), 1885, devices=devices,
                    top=extra)
    client = Mqtt(1885, "expander-test")
    try:
        yield daemon, client, smbus
    finally:
        client.close()
        daemon.stop()
        smbus.close()


def events(client: Mqtt, topic_end: str, timeout: float) -> tuple[dict[str, Any], float]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            topic, payload, at = client.messages.get(timeout=max(0.01, end - time.monotonic()))
        except Exception:
            break
        if topic.endswith(topic_end):
            return json.loads(payload), at
    raise AssertionError(f"nothing on *{topic_end} within {timeout} s")


def test_register_writes_become_button_events_on_mqtt(expander: tuple[Daemon, Mqtt, Any]
                                                      ) -> None:
    _daemon, client, smbus = expander
    client.subscribe("gatekeeper/vm/device/hall/event")
    latencies = []
    for _ in range(10):
        written = time.time()
        smbus.write_byte_data(ADDRESS, INTFA, 0x08)  # what the chip latches on a change
        smbus.write_byte_data(ADDRESS, GPIOA, 0xF7)  # GPA3 low: pressed
        event, at = events(client, "/hall/event", 60)
        assert event["event"] == "pressed"
        latencies.append(at - written)
        smbus.write_byte_data(ADDRESS, GPIOA, 0xFF)
        event, _ = events(client, "/hall/event", 60)
        assert event["event"] == "released"
    latencies.sort()
    print(f"i2c-stub register write -> MQTT event (polled at 20 ms): "
          f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"max {latencies[-1] * 1000:.1f} ms")
    assert latencies[-1] < 1.0


def test_an_led_on_the_expander_writes_the_latch(expander: tuple[Daemon, Mqtt, Any]) -> None:
    _daemon, client, smbus = expander
    assert client.call("lamp", "on")["ok"]
    assert smbus.read_byte_data(ADDRESS, OLATB) & 0x01 == 0x01  # io1:8 is GPB0
    assert client.call("lamp", "off")["ok"]
    assert smbus.read_byte_data(ADDRESS, OLATB) & 0x01 == 0


def test_watchdog_on_real_lines_detects_a_cut_wire(tmp_path: Path) -> None:
    out_line, in_line = 5, 6
    stop = threading.Event()
    wire = threading.Event()
    wire.set()

    def copy() -> None:  # the wire: the output line's value onto the input line's pull
        last = None
        while not stop.is_set():
            if wire.is_set():
                value = sim.get_value(out_line)
                if value != last:
                    sim.set_pull(in_line, bool(value))
                    last = value
            time.sleep(0.005)

    copier = threading.Thread(target=copy, daemon=True)
    copier.start()
    daemon = Daemon(tmp_path, 1886, devices={}, top={
        "watchdog": {"out": out_line, "in": in_line, "period_s": 0.2, "stale_s": 1.0}})
    client = Mqtt(1886, "watchdog-test")
    try:
        client.subscribe("gatekeeper/vm/system/health")
        deadline = time.monotonic() + 120
        while True:
            doc, _ = events(client, "/system/health", 60)
            if doc.get("watchdog") and doc["status"] == "ok":
                break
            assert time.monotonic() < deadline
        time.sleep(1.0)
        cut = time.time()
        wire.clear()
        while True:
            doc, at = events(client, "/system/health", 60)
            if doc["status"] == "degraded":
                break
        detected = at - cut
        assert f"no edge on GPIO{in_line} (looped from GPIO{out_line})" in doc["problems"][0]
        mended = time.time()
        wire.set()
        while True:
            doc, at = events(client, "/system/health", 60)
            if doc["status"] == "ok":
                break
        print(f"watchdog (period 0.2 s, stale 1.0 s): degraded {detected:.2f} s after the "
              f"cut, ok {at - mended:.2f} s after mending")
        # not before stale_s (less one period); how much later, and how soon ok comes back,
        # is the emulated machine's load: the figures are printed
        assert detected >= 0.7
    finally:
        stop.set()
        client.close()
        daemon.stop()


def test_alsa_mixer_on_snd_dummy_syncs_both_ways(tmp_path: Path) -> None:
    """``snd-dummy`` is a real ALSA card with mixer controls: a ``set`` over MQTT shows in
    ``amixer``, an ``amixer`` change shows on MQTT (an ALSA event, not a poll)."""
    subprocess.run(["modprobe", "snd-dummy"], check=True)
    controls = subprocess.run(["amixer", "-c", "0", "scontrols"], capture_output=True,
                              text=True, check=True).stdout
    assert "'Master'" in controls, controls
    daemon = Daemon(tmp_path, 1887, devices={
        "volume": {"type": "AlsaMixer", "card": 0, "control": "Master", "min": 0, "max": 100}})
    client = Mqtt(1887, "mixer-test")
    try:
        client.subscribe("gatekeeper/vm/device/volume/state")
        assert client.call("volume", "value", 40)["ok"]
        shown = subprocess.run(["amixer", "-c", "0", "get", "Master"], capture_output=True,
                               text=True, check=True).stdout
        assert "[40%]" in shown, shown
        changed = time.time()
        subprocess.run(["amixer", "-q", "-c", "0", "set", "Master", "70%"], check=True)
        while True:
            state, at = events(client, "/volume/state", 60)
            if state["value"] == 70:
                break
        print(f"amixer change -> MQTT state: {(at - changed) * 1000:.0f} ms")
        assert at - changed < 1.0
    finally:
        client.close()
        daemon.stop()


class SmbusTrace:
    """The kernel's own record of every SMBus transfer on one bus (the ``smbus`` trace events
    of ftrace), in order: ``("r" | "w", register)``. Who read what, without a clock."""

    root = Path("/sys/kernel/tracing")

    def __init__(self, bus_number: int) -> None:
        if not (self.root / "events").is_dir():
            subprocess.run(["mount", "-t", "tracefs", "nodev", str(self.root)], check=True)
        for event in ("smbus_read", "smbus_write"):
            (self.root / "events" / "smbus" / event / "filter").write_text(
                f"adapter_nr == {bus_number} && addr == {ADDRESS}")
            (self.root / "events" / "smbus" / event / "enable").write_text("1")
        self.clear()

    def clear(self) -> None:
        (self.root / "trace").write_text("")

    def transfers(self) -> list[tuple[str, int]]:
        found = re.findall(r"smbus_(read|write): i2c-\d+ a=\w+ f=\w+ c=([0-9a-f]+)",
                           (self.root / "trace").read_text())
        return [(op[0], int(register, 16)) for op, register in found]

    def close(self) -> None:
        for event in ("smbus_read", "smbus_write"):
            (self.root / "events" / "smbus" / event / "enable").write_text("0")


def _brought_by_interrupt(transfers: list[tuple[str, int]]) -> bool:
    """After the test wrote GPIOA, the daemon's first read is INTF (the INT line's handler:
    INTF, INTCAP, GPIO), not GPIOA (the once-a-second check, which reads GPIO alone)."""
    written = transfers.index(("w", GPIOA))
    first = next(reg for op, reg in transfers[written:] if op == "r" and reg in (INTFA, GPIOA))
    return first == INTFA


def test_the_interrupt_line_brings_edges_without_polling(tmp_path: Path) -> None:
    """With ``interrupt`` the chip is not polled for inputs (only checked once a second):
    an edge comes when its INT line (a gpio-sim line here) falls, read from INTF/INTCAP.
    Which path brought an edge is read from the kernel's trace of the SMBus transfers, not
    from the time it took: a check that happened to run between the test's register write
    and the INT line's fall brings that edge legitimately (it is not counted); five edges
    must have come through the INT line."""
    from smbus2 import SMBus

    bus_number = stub_bus()
    int_line = 4
    smbus = SMBus(bus_number)
    smbus.write_byte_data(ADDRESS, GPIOA, 0xFF)
    sim.set_pull(int_line, True)  # INT idles high (open drain, pulled up)
    daemon = Daemon(tmp_path, 1888, devices={"hall": {"type": "Button", "pin": "io1:3"}},
                    top={"expanders": {"io1": {"type": "MCP23017", "bus": bus_number,
                                               "address": ADDRESS, "interrupt": int_line}}})
    client = Mqtt(1888, "interrupt-test")
    trace = SmbusTrace(bus_number)
    try:
        client.subscribe("gatekeeper/vm/device/hall/event")
        latencies, by_interrupt, by_check = [], 0, 0
        for gpioa, expected in [(0xF7, "pressed"), (0xFF, "released")] * 20:
            trace.clear()
            smbus.write_byte_data(ADDRESS, GPIOA, gpioa)  # GPA3 low: pressed
            smbus.write_byte_data(ADDRESS, INTFA, 0x08)
            smbus.write_byte_data(ADDRESS, 0x10, gpioa)  # INTCAPA
            fell = time.time()
            sim.set_pull(int_line, False)  # the chip pulls INT low
            event, at = events(client, "/hall/event", 30)
            assert event["event"] == expected
            sim.set_pull(int_line, True)
            if _brought_by_interrupt(trace.transfers()):
                by_interrupt += 1
                latencies.append(at - fell)
            else:
                by_check += 1
            if by_interrupt >= 5:
                break
        print(f"edges through the INT line: {by_interrupt}, through the 1 s check: {by_check}")
        assert by_interrupt >= 5, (by_interrupt, by_check)
        latencies.sort()
        print(f"INT line fall -> MQTT event through the expander: p50 "
              f"{latencies[len(latencies) // 2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    finally:
        trace.close()
        client.close()
        daemon.stop()
        smbus.close()
