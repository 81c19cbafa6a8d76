"""What polling an MCP23017 costs: the gatekeeper's expander driver polling a chip (two
register reads per poll) for a while, with the process CPU time it took.

    .venv/bin/python benchmarks/expander_poll.py [--bus N --address 0x20] [--seconds 10]

Without --bus it polls the simulated register file (the Python side of the cost); with a
bus (a real chip, or i2c-stub: ``modprobe i2c-stub chip_addr=0x20``) through smbus2 and the
kernel's i2c-dev.
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any

from gpiozero import Button

from pi_mqtt_gpio.server.pins.mcp23017 import (
    MCP23017,
    ExpanderConfig,
    ExpanderFactory,
    SimulatedMCP23017,
)
from pi_mqtt_gpio.server.pins.simulated import simulated_factory
from pi_mqtt_gpio.server.schema import build


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bus", type=int)
    parser.add_argument("--address", type=lambda s: int(s, 0), default=0x20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.02)
    args = parser.parse_args()
    problems: list[Any] = []
    cfg = build(ExpanderConfig, {"type": "MCP23017", "bus": args.bus or 1,
                                 "address": args.address, "poll_interval_s": args.interval},
                (), problems)
    if args.bus is None:
        bus: Any = SimulatedMCP23017()
    else:
        from smbus2 import SMBus

        bus = SMBus(args.bus)
    chip = MCP23017("io1", cfg, bus)
    factory = ExpanderFactory(simulated_factory(), {"io1": chip})
    chip.start()
    button = Button("io1:3", pin_factory=factory)  # an input: polling runs
    reads0, cpu0, t0 = chip.reads, cpu(), time.monotonic()
    time.sleep(args.seconds)
    reads, used, wall = chip.reads - reads0, cpu() - cpu0, time.monotonic() - t0
    button.close()
    factory.close()
    print(f"{'simulated chip' if args.bus is None else f'bus {args.bus}'}: "
          f"{reads / wall:.1f} polls/s (interval {args.interval * 1000:.0f} ms), "
          f"CPU {used / wall * 100:.2f} % of one core, {used / max(reads, 1) * 1e6:.0f} us "
          f"per poll")


if __name__ == "__main__":
    main()
