"""Control leases: who may drive which device (sans-io: time is passed in).

``scope: global`` - every lease is the global lease (a device list is accepted and ignored).
``scope: device`` - leases name devices; a lease without devices is global. A write to a
device covered by someone else's lease is refused (``LEASE_HELD``); a write to a
``lease_required`` device without one's own covering lease too (``LEASE_REQUIRED``). The
holder is the authenticated user name and client id, never a field of the payload.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from pi_mqtt_gpio.errors import BadArgument, Busy, LeaseHeld, LeaseRequired
from pi_mqtt_gpio.payloads import LeaseEntry, LeaseTable
from pi_mqtt_gpio.server.twin import utc_ts

__all__ = ["ControlLeaseManager", "Holder", "Lease"]

Holder = tuple[str | None, str]  # (authenticated user name, client id) as the broker saw them


@dataclass(slots=True)
class Lease:
    lease_id: str
    holder: Holder
    devices: frozenset[str] | None  # None: the global lease (every device)
    ttl: float
    expires: float  # the manager's clock (monotonic)
    expires_wall: float  # wall clock, for people
    written: set[str] = field(default_factory=set)  # devices the holder wrote under it

    def covers(self, device: str) -> bool:
        return self.devices is None or device in self.devices

    def describe(self) -> LeaseEntry:
        return {"holder": self.holder[0] or self.holder[1], "username": self.holder[0],
                "client_id": self.holder[1],
                "devices": None if self.devices is None else sorted(self.devices),
                "expires": utc_ts(self.expires_wall), "ttl": self.ttl}


class ControlLeaseManager:
    """Who may drive which device. Sans-io: time is passed in.

    ``scope: global`` — every lease is the global lease (a device list is accepted and
    ignored). ``scope: device`` — leases name devices; a lease without devices is global.
    A write to a device covered by someone else's lease is refused (``LEASE_HELD``); a write
    to a ``lease_required`` device without one's own covering lease too (``LEASE_REQUIRED``).
    The holder is the authenticated user name and client id, never a field of the payload.
    """

    def __init__(self, scope: str, default_ttl: float, *, max_ttl: float = 3600.0,
                 max_leases: int = 256) -> None:
        self.scope = scope
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.max_leases = max_leases
        self.leases: dict[str, Lease] = {}

    # --- queries --------------------------------------------------------------------------------
    def _conflicts(self, holder: Holder, devices: frozenset[str] | None) -> Lease | None:
        for lease in self.leases.values():
            if lease.holder == holder:
                continue
            if lease.devices is None or devices is None or lease.devices & devices:
                return lease
        return None

    def covering(self, device: str) -> list[Lease]:
        return [lease for lease in self.leases.values() if lease.covers(device)]

    def check_write(self, holder: Holder, device: str, lease_required: bool) -> None:
        """Raise ``LeaseHeld`` / ``LeaseRequired`` unless ``holder`` may write ``device``."""
        mine = None
        for lease in self.covering(device):
            if lease.holder != holder:
                who = lease.holder[0] or lease.holder[1]
                raise LeaseHeld(f"{device} is leased by {who} until "
                                f"{lease.describe()['expires']}")
            mine = lease
        if mine is None and lease_required:
            raise LeaseRequired(f"{device} needs a control lease: acquire one on the lease "
                                f"topic first")
        if mine is not None:
            mine.written.add(device)

    def next_deadline(self) -> float | None:
        return min((lease.expires for lease in self.leases.values()), default=None)

    def snapshot(self) -> LeaseTable:
        return {"scope": self.scope,
                "leases": [lease.describe() for lease in
                           sorted(self.leases.values(), key=lambda item: item.expires)]}

    # --- changes --------------------------------------------------------------------------------
    def _ttl(self, ttl: float | None) -> float:
        value = self.default_ttl if ttl is None else ttl
        if not 1 <= value <= self.max_ttl:
            raise BadArgument(f"ttl must be from 1 to {self.max_ttl:g} seconds")
        return float(value)

    def _devices(self, devices: list[str] | None) -> frozenset[str] | None:
        if self.scope == "global" or devices is None:
            return None
        return frozenset(devices)

    def _own(self, holder: Holder, lease_id: str | None, devices: frozenset[str] | None
             ) -> Lease:
        if lease_id is not None:
            lease = self.leases.get(lease_id)
            if lease is None:
                raise LeaseRequired("no such lease (expired or released)")
            if lease.holder != holder:
                raise LeaseHeld("that lease belongs to another client")
            return lease
        for lease in self.leases.values():
            if lease.holder == holder and lease.devices == devices:
                return lease
        raise LeaseRequired("you hold no such lease")

    def acquire(self, holder: Holder, devices: list[str] | None, ttl: float | None,
                now: float, wall: float) -> Lease:
        wanted = self._devices(devices)
        seconds = self._ttl(ttl)
        other = self._conflicts(holder, wanted)
        if other is not None:
            who = other.holder[0] or other.holder[1]
            raise LeaseHeld(f"held by {who} until {other.describe()['expires']}")
        for lease in self.leases.values():
            if lease.holder == holder and lease.devices == wanted:
                return self._extend(lease, seconds, now, wall)  # acquiring again renews
        if len(self.leases) >= self.max_leases:
            raise Busy("too many leases")
        lease = Lease(secrets.token_hex(8), holder, wanted, seconds, now + seconds, wall + seconds)
        self.leases[lease.lease_id] = lease
        return lease

    @staticmethod
    def _extend(lease: Lease, ttl: float, now: float, wall: float) -> Lease:
        lease.ttl = ttl
        lease.expires = now + ttl
        lease.expires_wall = wall + ttl
        return lease

    def renew(self, holder: Holder, lease_id: str | None, devices: list[str] | None,
              ttl: float | None, now: float, wall: float) -> Lease:
        lease = self._own(holder, lease_id, self._devices(devices))
        return self._extend(lease, self._ttl(ttl if ttl is not None else lease.ttl), now, wall)

    def release(self, holder: Holder, lease_id: str | None, devices: list[str] | None,
                *, force: bool = False) -> list[Lease]:
        """Release the holder's lease, or with ``force`` (admins) every lease matching."""
        if force:
            wanted = self._devices(devices)
            gone = [lease for lease in self.leases.values()
                    if (lease_id is None or lease.lease_id == lease_id)
                    and (wanted is None or lease.devices is None or lease.devices & wanted)]
        else:
            gone = [self._own(holder, lease_id, self._devices(devices))]
        for lease in gone:
            self.leases.pop(lease.lease_id, None)
        return gone

    def expire(self, now: float) -> list[Lease]:
        gone = [lease for lease in self.leases.values() if lease.expires <= now]
        for lease in gone:
            del self.leases[lease.lease_id]
        return gone

    def holder_gone(self, holder: Holder) -> list[Lease]:
        """The holder's connection ended (disconnect, keepalive timeout, takeover)."""
        gone = [lease for lease in self.leases.values() if lease.holder == holder]
        for lease in gone:
            del self.leases[lease.lease_id]
        return gone
