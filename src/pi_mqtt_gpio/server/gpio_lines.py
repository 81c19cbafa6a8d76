"""The GPIO lines of a chip: who holds each (ours, foreign, free), the records of the lines
this process holds, and ``hardware.reclaim_on_busy``: freeing lines a stale earlier instance
still holds."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pi_mqtt_gpio.errors import HardwareError

__all__ = [
    "LineOwner",
    "forget_lines",
    "line_consumer",
    "line_owners",
    "reclaim_stale",
    "record_lines",
]

log = logging.getLogger("pi_mqtt_gpio.hardware")


@dataclass(frozen=True, slots=True)
class LineOwner:
    line: int
    name: str
    used: bool
    consumer: str
    ours: bool

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "name": self.name, "used": self.used,
                "consumer": self.consumer, "owner": "ours" if self.ours else
                ("foreign" if self.used else None)}


def line_owners(chip: int, tag: str) -> list[LineOwner]:
    """Every line of ``/dev/gpiochip<chip>``: used or free, consumer, ours or foreign."""
    import lgpio

    handle = lgpio.gpiochip_open(chip)
    try:
        count = int(lgpio.gpio_get_chip_info(handle)[1])
        owners = []
        for line in range(count):
            _, _, flags, name, user = lgpio.gpio_get_line_info(handle, line)
            consumer = str(user or "")
            used = bool(consumer) or bool(int(flags) & 1)  # LG_KERNEL_USED
            owners.append(LineOwner(line, str(name or ""), used, consumer,
                                    consumer.startswith(f"{tag}:")))
        return owners
    finally:
        lgpio.gpiochip_close(handle)


def _records_dir() -> Path:
    """Where each instance notes which lines it holds (its PID per line): systemd's
    RuntimeDirectory when set, else /run/pi-mqtt-gatekeeper, else the temp directory."""
    for base in (os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0],
                 "/run/pi-mqtt-gatekeeper",
                 os.path.join(tempfile.gettempdir(), f"pi-mqtt-gatekeeper-{os.getuid()}")):
        if not base:
            continue
        path = Path(base) / "lines"
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            return path
        except OSError:
            continue
    raise HardwareError("no writable directory for the line records")


def record_lines(chip: int, lines: list[int]) -> None:
    """Note this process as the holder of ``lines`` (read by a later instance's reclaim)."""
    directory = _records_dir()
    for line in lines:
        (directory / f"gpiochip{chip}-{line}").write_text(f"{os.getpid()}\n")


def forget_lines(chip: int, lines: list[int]) -> None:
    directory = _records_dir()
    for line in lines:
        record = directory / f"gpiochip{chip}-{line}"
        with contextlib.suppress(OSError, ValueError):
            if int(record.read_text().strip()) == os.getpid():
                record.unlink()


def _recorded_holder(chip: int, line: int) -> int | None:
    try:
        pid = int((_records_dir() / f"gpiochip{chip}-{line}").read_text().strip())
    except (OSError, ValueError, HardwareError):
        return None
    if pid == os.getpid() or not Path(f"/proc/{pid}").exists():
        return None
    try:  # it must still have the chip open
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == f"/dev/gpiochip{chip}":
                    return pid
    except OSError:
        return None
    return None


def reclaim_stale(chip: int, lines: list[int], tag: str, wait: float = 5.0) -> list[str]:
    """``hardware.reclaim_on_busy``: lines held under our consumer tag by a stale earlier
    instance are freed by stopping that process only (SIGTERM, then SIGKILL) — the one its
    own line records name. A foreign consumer is never touched: the error names it."""
    done: list[str] = []
    for pid, held in _stale_holders(chip, lines, tag).items():
        for sig in (signal.SIGTERM, signal.SIGKILL):
            log.warning("GPIO%s held by a stale gatekeeper (pid %d): sending %s",
                        ",".join(map(str, held)), pid, sig.name)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if _released(chip, held, tag, time.monotonic() + wait):
                done.append(f"stopped pid {pid} ({sig.name}) holding GPIO"
                            f"{','.join(map(str, held))}")
                break
        else:
            raise HardwareError(f"GPIO{held[0]} is still held after SIGKILL to pid {pid}")
    return done


def _stale_holders(chip: int, lines: list[int], tag: str) -> dict[int, list[int]]:
    """The earlier instances (pid) holding some of ``lines`` (by their own records);
    ``HardwareError`` when a line is held by anyone else."""
    owners = {o.line: o for o in line_owners(chip, tag)}
    stale: dict[int, list[int]] = {}
    for line in lines:
        owner = owners.get(line)
        if owner is None or not owner.used:
            continue
        if not owner.ours:
            raise HardwareError(f"GPIO{line} is held by a foreign consumer {owner.consumer!r}; "
                                f"not touching it")
        pid = _recorded_holder(chip, line)
        if pid is None:
            raise HardwareError(f"GPIO{line} is held as {owner.consumer!r} but no earlier "
                                f"gatekeeper recorded it; not touching it")
        stale.setdefault(pid, []).append(line)
    return stale


def _released(chip: int, held: list[int], tag: str, end: float) -> bool:
    """Wait until none of ``held`` is used any more (True), or ``end`` (False)."""
    while time.monotonic() < end:
        now = {o.line: o for o in line_owners(chip, tag)}
        if not any(now[line].used for line in held if line in now):
            return True
        time.sleep(0.05)
    return False


def line_consumer(factory: Any, line: int) -> str | None:
    """Who holds ``line`` on the factory's chip (lgpio only), e.g. ``"gatekeeper:lamp:17"``."""
    handle = getattr(factory, "_handle", None)
    if handle is None:
        return None
    try:
        import lgpio

        info = lgpio.gpio_get_line_info(handle, line)
        return str(info[4]) or None
    except Exception:
        return None
