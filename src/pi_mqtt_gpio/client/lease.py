"""The client side of control leases: acquire, renew in the background, release.

Requests go to ``{root}/lease/call`` like any RPC; the reply's ``result`` carries the lease id,
holder and expiry.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol, cast

from pi_mqtt_gpio.errors import GatekeeperError, LeaseHeld, LeaseRequired, NotAuthorized
from pi_mqtt_gpio.payloads import LeaseGranted, OkReply, ReplyBody
from pi_mqtt_gpio.topics import Topics

__all__ = ["Lease"]

log = logging.getLogger("pi_mqtt_gpio.client")

# A renewal refused with one of these will never succeed: the lease is gone (released by an
# admin, expired) or not ours. Anything else (a timeout, a lost connection, BUSY) is retried
# until the lease would have expired.
FINAL = (LeaseRequired, LeaseHeld, NotAuthorized)


class Gatekeeper(Protocol):
    """What a lease needs of its connection (``client.connection.Gatekeeper``)."""

    topics: Topics
    timeout: float

    def submit(self, device: str, method: str, args: Sequence[Any] = (),
               kwargs: dict[str, Any] | None = None, *, topic: str | None = None
               ) -> concurrent.futures.Future[ReplyBody]: ...

    def result(self, future: concurrent.futures.Future[ReplyBody], timeout: float | None,
               device: str, method: str) -> OkReply: ...


class Lease:
    """A control lease held by one ``Gatekeeper`` connection. Use ``Gatekeeper.lease()``."""

    def __init__(self, gatekeeper: Gatekeeper, devices: Sequence[str] | None, ttl: float
                 ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.gatekeeper = gatekeeper
        self.devices = list(devices) if devices is not None else None
        self.ttl = ttl
        self.lease_id: str | None = None
        self.holder: str | None = None
        self.expires: str | None = None
        self.lost: GatekeeperError | None = None  # set when a background renewal failed
        self.broken = threading.Event()  # set when the lease is gone: renewing stopped
        self._deadline = 0.0  # monotonic: when the lease ends unless renewed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"ttl": self.ttl}
        if self.devices is not None:
            kwargs["devices"] = self.devices
        if self.lease_id is not None:
            kwargs["lease_id"] = self.lease_id
        return kwargs

    def _call(self, method: str, kwargs: dict[str, Any]) -> LeaseGranted:
        """The reply's ``result`` (acquire's and renew's; release's is not read). The
        server's JSON: its fields are checked as they are read."""
        gk = self.gatekeeper
        future = gk.submit("", method, (), kwargs, topic=gk.topics.lease_call)
        reply = gk.result(future, None, "lease", method)
        result = reply.get("result")
        return cast(LeaseGranted, result if isinstance(result, dict) else {})

    def _update(self, result: LeaseGranted) -> None:
        self.lease_id = result.get("lease_id", self.lease_id)
        self.holder = result.get("holder", self.holder)
        self.expires = result.get("expires", self.expires)
        granted = result.get("ttl")
        if isinstance(granted, int | float) and not isinstance(granted, bool) and granted > 0:
            self.ttl = float(granted)  # what the gatekeeper granted, not what was asked for
        self._deadline = time.monotonic() + self.ttl

    def acquire(self) -> None:
        self._update(self._call("acquire", self._kwargs()))
        self._thread = threading.Thread(target=self._renew_loop, name="lease-renew", daemon=True)
        self._thread.start()

    def renew(self) -> None:
        self._update(self._call("renew", self._kwargs()))

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except GatekeeperError as exc:
                self.lost = exc
                if isinstance(exc, FINAL) or time.monotonic() >= self._deadline:
                    # Told to the holder by ``broken`` and ``lost``: the caller says it.
                    log.info("lease %s lost: %s", self.lease_id, exc)
                    self.broken.set()
                    return
                log.warning("renewing lease %s failed (retrying): %s", self.lease_id, exc)

    def wait_broken(self, timeout: float | None = None) -> bool:
        """Wait until the lease is lost (True) or ``timeout`` seconds passed (False)."""
        return self.broken.wait(timeout)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.gatekeeper.timeout)
        if self.broken.is_set():
            return  # nothing left to release
        kwargs = {k: v for k, v in self._kwargs().items() if k != "ttl"}
        try:
            self._call("release", kwargs)
        except GatekeeperError as exc:
            log.warning("releasing lease %s failed: %s", self.lease_id, exc)

    def __repr__(self) -> str:
        return f"<Lease {self.lease_id} {self.devices or 'global'} until {self.expires}>"
