"""The embedded broker's retained messages and persistent sessions, kept in a file.

``broker.json`` beside the state file (``persistence.path``'s directory), written like it
(``StateFile.save``: a temporary file, fsync, rename, fsync of the directory: ``kill -9`` at
any moment leaves the old file or the new one, both whole), off the event loop, within
``autosave_s`` of a change and once more after the last client is gone at shutdown. What is
kept, and how it is checked and restored, is ``mqtt/store.py``. A file that does not parse,
does not have that shape, or is larger than the broker's limits allow (and never larger than
``MAX_FILE_BYTES``, 32 MiB) is moved aside as ``broker.json.corrupt-<timestamp>`` with a
warning, and the broker starts empty. Lists longer than the limits can hold (a session's
queue past ``max_queued_messages``, ...) are cut while the file is read: what is past them is
never held in memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from pi_mqtt_gpio.mqtt import store
from pi_mqtt_gpio.mqtt.broker import BrokerCore, BrokerLimits
from pi_mqtt_gpio.mqtt.message import Message
from pi_mqtt_gpio.server.persistence import StateFile

__all__ = ["BROKER_FILE", "MAX_FILE_BYTES", "BrokerStore", "caps", "max_file_bytes"]

log = logging.getLogger("pi_mqtt_gpio.persistence")

BROKER_FILE = "broker.json"


MAX_FILE_BYTES = 32 * 1024 * 1024  # whatever the limits: what a Pi reads at start


def max_file_bytes(limits: BrokerLimits) -> int:
    """The largest file read at start: what the broker's limits let it write (its retained
    and queued bytes, base64 and JSON: less than twice; the sessions' subscriptions and
    tables), and never more than ``MAX_FILE_BYTES``. A larger one is moved aside unread."""
    written = (2 * (limits.max_retained_bytes + limits.max_queued_bytes)
               + limits.max_sessions * (4096 + 2 * limits.max_subscription_bytes_per_client))
    return min(written, MAX_FILE_BYTES)


def caps(limits: BrokerLimits) -> store.Caps:
    """The most entries of each list of the file the broker could restore: a retained
    message costs at least a level of the tree (300 bytes)."""
    return store.Caps(retained=limits.max_retained_bytes // 300 + 1,
                      sessions=limits.max_sessions,
                      subs=limits.max_subscriptions_per_client,
                      queue=limits.max_queued_messages,
                      inflight=limits.max_inflight_out)


def _constant(name: str) -> float:
    raise ValueError(f"{name} is not a number this file holds")


class _BrokerFile(StateFile):
    def read(self, limit: int, now: float, cut: store.Caps) -> store.Parsed | None:
        """The parsed file (None: there is none, or it was moved aside), each list cut to
        ``cut`` while it is read. Blocking."""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                data = f.read(limit + 1) if size <= limit else b""
        except FileNotFoundError:
            return None
        try:
            if size > limit or len(data) > limit:
                raise ValueError(f"larger than the broker's limits allow ({limit:,} bytes)")
            text = data.decode("utf-8")
            del data
            loaded = store.loads(text, cut, _constant)
            del text
            doc = loaded.doc
            saved_at = doc.get("saved_at") if isinstance(doc, dict) else None
            if isinstance(saved_at, bool) or not isinstance(saved_at, int | float):
                raise ValueError("saved_at: not a time")
            parsed = store.parse(doc, now, time.time() - saved_at)
            parsed.cut = loaded.cut
            return parsed
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            aside = self._aside()
            self.path.replace(aside)
            log.warning("broker store %s is corrupt (%s): moved aside as %s, the broker "
                        "starts without retained messages and sessions", self.path,
                        why[:200], aside.name)
            return None


class BrokerStore:
    """Restores ``core`` from the file at start, saves it within ``autosave_s`` of a change
    (looking every ``autosave_s``; an idle broker is not even captured) and at ``close``."""

    def __init__(self, directory: str | Path, core: BrokerCore, autosave_s: float,
                 keep: Callable[[Message], bool], clock: Callable[[], float]) -> None:
        self.file = _BrokerFile(Path(directory) / BROKER_FILE)
        self.core = core
        self.autosave_s = autosave_s
        self.keep = keep  # which retained messages are kept (not the node's own)
        self.clock = clock  # the core's clock
        self.writes = 0
        self._signature: tuple[int, ...] | None = None
        self._last: store.Capture | None = None
        self._task: asyncio.Task[None] | None = None
        self._writing: asyncio.Future[None] | None = None
        self._warned = False  # about a file too large to be read again (once)

    async def load(self) -> store.Restored | None:
        """Read the file (off the loop) and restore it into the core (before it serves)."""
        now = self.clock()
        limits = self.core.limits
        parsed = await asyncio.to_thread(self.file.read, max_file_bytes(limits), now,
                                         caps(limits))
        restored = None
        if parsed is not None:
            now = self.clock()
            restored = store.apply(self.core, parsed, now)
            log.info("broker store %s: %d retained messages, %d sessions with %d messages "
                     "restored (%d expired while down, %d no longer authorised, %d past the "
                     "limits)", self.file.path, restored.retained, restored.sessions,
                     restored.messages, parsed.expired, restored.revoked,
                     restored.dropped + parsed.cut)
        if parsed is not None and restored is not None and (
                parsed.expired or parsed.cut or restored.revoked or restored.dropped):
            # What was left behind (expired, no longer authorised, past the limits) must not
            # come back at a later start: the file is written again at the first autosave.
            self._signature = self._last = None
        else:
            self._signature = store.signature(self.core)
            self._last = store.capture(self.core, now, self.keep)
        return restored

    def start(self) -> None:
        self._task = asyncio.create_task(self._autosave())

    async def _autosave(self) -> None:
        while True:
            await asyncio.sleep(self.autosave_s)
            await self.save()

    async def save(self) -> None:
        """Write the store if it changed since the last write."""
        signature = store.signature(self.core)
        if signature == self._signature:
            return
        self._signature = signature
        cap = store.capture(self.core, self.clock(), self.keep)
        if cap.same(self._last):
            return
        self._last = cap
        self._writing = asyncio.ensure_future(asyncio.to_thread(self._write, cap))
        try:
            await asyncio.shield(self._writing)
            self.writes += 1
        except OSError as exc:
            log.error("cannot save the broker store to %s: %s", self.file.path, exc)
            self._last = self._signature = None

    def _write(self, cap: store.Capture) -> None:
        self.file.save({**store.encode(cap), "saved_at": time.time()})
        size = self.file.path.stat().st_size
        limit = max_file_bytes(self.core.limits)
        if size > limit and not self._warned:
            self._warned = True
            log.warning("broker store %s is %d bytes, more than the %d read at start: it "
                        "would be moved aside unread", self.file.path, size, limit)

    async def close(self) -> None:
        """The last save (the clients are gone: their sessions are offline now)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)
        await self.save()
