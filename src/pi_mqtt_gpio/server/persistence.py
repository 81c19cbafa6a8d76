"""What must survive a restart, in one JSON file written atomically.

The file is replaced, never rewritten in place: a temporary file in the same directory is
written and fsync'ed, renamed over the old one, and the directory is fsync'ed, so a power cut
or ``kill -9`` at any moment leaves either the old file or the new one, both complete. Saves
run off the event loop, at most once per ``autosave_s`` after a change, and only when what
would be written differs from what was (flash wear). A file that does not parse, or does not
have the shape this module writes (finite numbers only, bounded size and nesting, each section
as expected: see ``check_document``), is moved aside as ``<name>.corrupt-<timestamp>`` with a
warning, and the defaults are used; a file written by a newer version is refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeGuard

__all__ = ["MAX_STATE_BYTES", "SCHEMA_VERSION", "Persister", "StateFile", "StateFileError",
           "check_document", "clamp_lockouts", "writable_problem"]

log = logging.getLogger("pi_mqtt_gpio.persistence")

SCHEMA_VERSION = 1
MAX_STATE_BYTES = 4 * 1024 * 1024  # a real file is a few kB (HA topics: ~100 bytes a device)
MAX_DEPTH = 8  # the deepest the writer goes is 3 (covers.<name>.<key>)
MAX_NAME = 1024  # device names, topics
MAX_TIMESTAMP = 1e11  # seconds since 1970: the year 5138; anything past it is not a time


class StateFileError(Exception):
    """The state file cannot be used (a newer version wrote it, or it cannot be written)."""


def writable_problem(path: str | Path) -> str | None:
    """Why the gatekeeper could not write ``path`` (its directory must exist and be
    writable), or None."""
    directory = Path(path).parent
    if not directory.is_dir():
        return f"persistence.path: the directory {directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"persistence.path: the directory {directory} is not writable"
    return None


class _Invalid(ValueError):
    pass


def _constant(name: str) -> Any:
    raise _Invalid(f"{name} is not a number the gatekeeper writes")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Invalid(f"{text} is out of range")
    return value


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


def _depth(doc: Any) -> int:
    """How deeply ``doc`` nests (a scalar: 0); iterative."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                return depth
            stack.extend((v, depth) for v in (node.values() if isinstance(node, dict)
                                              else node))
    return deepest


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool) or _number(value) \
        or (isinstance(value, str) and len(value) <= MAX_NAME)


def _names(doc: dict[str, Any], key: str) -> dict[str, Any]:
    section = doc.get(key, {})
    if not isinstance(section, dict):
        raise _Invalid(f"{key}: not an object")
    for name in section:
        if not name or len(name) > MAX_NAME:
            raise _Invalid(f"{key}: a name that is empty or longer than {MAX_NAME}")
    return section


def check_document(doc: Any) -> None:
    """Raise ValueError unless ``doc`` has the shape ``Daemon._snapshot`` writes: ``version``
    an integer, ``saved_at`` a time, ``outputs`` names to scalars (or short lists of them),
    ``lockouts`` names to times, ``covers`` names to positions and travel times,
    ``homeassistant`` a list of topics. Other keys are kept as they are (a later version of
    the same schema may add some); numbers are finite, nesting at most ``MAX_DEPTH``."""
    if not isinstance(doc, dict):
        raise _Invalid("not a JSON object")
    if _depth(doc) > MAX_DEPTH:
        raise _Invalid(f"nested more than {MAX_DEPTH} levels deep")
    version = doc.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise _Invalid("version: not an integer")
    if "saved_at" in doc and not _time(doc["saved_at"]):
        raise _Invalid("saved_at: not a time")
    for name, value in _names(doc, "outputs").items():
        if not _output_value(value):
            raise _Invalid(f"outputs.{name}: not a value")
    for name, end in _names(doc, "lockouts").items():
        if not _time(end):
            raise _Invalid(f"lockouts.{name}: not a time")
    for name, cover in _names(doc, "covers").items():
        _check_cover(name, cover)
    topics = doc.get("homeassistant", [])
    if not isinstance(topics, list) or not all(isinstance(t, str) and len(t) <= MAX_NAME
                                                for t in topics):
        raise _Invalid("homeassistant: not a list of topics")


def _output_value(value: Any) -> bool:
    """A scalar, or a short list of them (an RGB LED's colour)."""
    return _scalar(value) or (isinstance(value, list) and len(value) <= 16
                              and all(_scalar(v) for v in value))


def _time(value: Any) -> bool:
    return _number(value) and 0 <= value < MAX_TIMESTAMP


def _check_cover(name: str, cover: Any) -> None:
    if not isinstance(cover, dict):
        raise _Invalid(f"covers.{name}: not an object")
    position = cover.get("position")
    if not (_number(position) and 0 <= position <= 100):
        raise _Invalid(f"covers.{name}.position: not 0 to 100")
    if not isinstance(cover.get("calibrated", False), bool):
        raise _Invalid(f"covers.{name}.calibrated: not true or false")
    for key in ("travel_time_up_s", "travel_time_down_s"):
        travel = cover.get(key)
        if travel is not None and not (_number(travel) and 0 < travel <= 86400):
            raise _Invalid(f"covers.{name}.{key}: not a travel time")


def clamp_lockouts(lockouts: dict[str, Any], longest: dict[str, float],
                   wall: float) -> dict[str, float]:
    """The saved lockouts (name -> wall-clock end) that still apply at ``wall``, each ending
    at most ``longest[name]`` (the device's ``flap_lockout_s``) from then: a clock that was
    wrong, or a file edited, never locks a device out for longer than one lockout."""
    out: dict[str, float] = {}
    for name, end in lockouts.items():
        if name in longest and _number(end) and end > wall and longest[name] > 0:
            out[name] = min(float(end), wall + longest[name])
    return out


class StateFile:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any]:
        """The saved document (``{}`` when there is none, or it was corrupt and moved aside)."""
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return {}
        try:
            if len(data) > MAX_STATE_BYTES:
                raise _Invalid(f"larger than {MAX_STATE_BYTES:,} bytes")
            doc = json.loads(data.decode("utf-8"), parse_constant=_constant,
                             parse_float=_finite)
            check_document(doc)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            aside = self._aside()
            os.replace(self.path, aside)
            log.warning("state file %s is corrupt (%s): moved aside as %s, starting from the "
                        "defaults", self.path, why[:200], aside.name)
            return {}
        return self._migrate(doc)

    def _aside(self) -> Path:
        """``<name>.corrupt-<timestamp>``, not yet taken."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        return aside

    def _migrate(self, doc: dict[str, Any]) -> dict[str, Any]:
        version = doc.get("version", 0)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise StateFileError(f"{self.path} was written by a newer version (schema "
                                 f"{version}, this one reads up to {SCHEMA_VERSION}): "
                                 f"upgrade, or move the file away to start from the defaults")
        if version < 1:  # before versions: the same keys, unnamed
            doc = {**doc, "version": 1}
        return doc

    def save(self, doc: dict[str, Any]) -> None:
        """Replace the file atomically (blocking: run it off the event loop)."""
        data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class Persister:
    """Saves ``snapshot()`` within ``autosave_s`` of a ``changed()``, off the loop, and only
    when it differs from what was written last."""

    def __init__(self, file: StateFile, autosave_s: float,
                 snapshot: Callable[[], dict[str, Any]]) -> None:
        self.file = file
        self.autosave_s = autosave_s
        self.snapshot = snapshot
        self.writes = 0
        self._last: dict[str, Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._saving: asyncio.Task[None] | None = None

    def loaded(self, doc: dict[str, Any]) -> None:
        """What the file holds now (no need to write it again)."""
        self._last = {k: v for k, v in doc.items() if k != "saved_at"}

    def changed(self) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.autosave_s, self._due)

    def _due(self) -> None:
        self._timer = None
        if self._saving is None or self._saving.done():
            self._saving = asyncio.ensure_future(self.flush())
        else:
            self.changed()  # a save is running: look again after the next period

    async def flush(self) -> None:
        """Save now if anything changed (on every autosave, and at SIGTERM)."""
        doc = self.snapshot()
        if doc == self._last:
            return
        self._last = doc
        try:
            await asyncio.to_thread(self.file.save, {**doc, "saved_at": time.time()})
            self.writes += 1
        except OSError as exc:
            log.error("cannot save the state to %s: %s", self.file.path, exc)
            self._last = None

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._saving is not None:
            await asyncio.gather(self._saving, return_exceptions=True)
        await self.flush()
