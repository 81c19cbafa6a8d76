"""What must survive a restart, in one JSON file written atomically.

The file is replaced, never rewritten in place: a temporary file in the same directory is
written and fsync'ed, renamed over the old one, and the directory is fsync'ed, so a power cut
or ``kill -9`` at any moment leaves either the old file or the new one, both complete. Saves
run off the event loop, at most once per ``autosave_s`` after a change, and only when what
would be written differs from what was (flash wear). A file that does not parse is moved
aside as ``<name>.corrupt-<timestamp>`` with a warning, and the defaults are used; a file
written by a newer version is refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA_VERSION", "Persister", "StateFile", "StateFileError", "writable_problem"]

log = logging.getLogger("pi_mqtt_gpio.persistence")

SCHEMA_VERSION = 1


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


class StateFile:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any]:
        """The saved document (``{}`` when there is none, or it was corrupt and moved aside)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(data.decode("utf-8"))
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            stamp = time.strftime("%Y%m%dT%H%M%S")
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
            os.replace(self.path, aside)
            log.warning("state file %s is corrupt (%s): moved aside as %s, starting from the "
                        "defaults", self.path, exc, aside.name)
            return {}
        return self._migrate(doc)

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
