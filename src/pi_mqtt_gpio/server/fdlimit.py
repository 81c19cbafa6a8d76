"""Open files for the broker's sockets: raised at start to what the limits need.

Every socket is a file. The broker holds at most ``max_connections`` logged-in clients, at
most ``PENDING_HARD_FACTOR * max_pending_connections`` sockets that have not logged in (on
all listeners together), some that are being closed, and the daemon's own files (pins,
listeners, the state file, the uplink). A process starts with a soft limit of 1,024 open
files, fewer than that: when it runs out, accept fails on every listener and every login
fails. So the soft limit is raised (up to the hard limit) to what the limits need; when the
hard limit is lower, the pre-login pool is made smaller so that it cannot take the files
the logged-in clients and the daemon need.
"""

from __future__ import annotations

import dataclasses
import logging
import resource

from pi_mqtt_gpio.mqtt.broker import PENDING_HARD_FACTOR, BrokerLimits

__all__ = ["RESERVE", "files_needed", "fit_open_files"]

log = logging.getLogger("pi_mqtt_gpio.daemon")

RESERVE = 256  # the daemon's own files, and sockets being closed


def files_needed(limits: BrokerLimits) -> int:
    """Open files the broker may use under these limits (sockets closing included)."""
    pool = PENDING_HARD_FACTOR * limits.max_pending_connections
    return limits.max_connections + pool + limits.max_pending_connections + RESERVE


def _raise_soft_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``needed`` (never above the hard limit, never
    lower than it is); returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return needed if soft == resource.RLIM_INFINITY else soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open files limit from %d to %d: %s", soft,
                        target, exc)
    return soft


def fit_open_files(limits: BrokerLimits) -> BrokerLimits:
    """Raise the open files limit for ``limits``; if it cannot be raised far enough, the
    limits with a pre-login pool that leaves room for the logged-in clients."""
    needed = files_needed(limits)
    available = _raise_soft_limit(needed)
    if available >= needed:
        log.info("open files limit %d (the broker needs at most %d)", available, needed)
        return limits
    room = available - RESERVE - limits.max_connections
    pool = max(1, room // (PENDING_HARD_FACTOR + 1))
    fitted = dataclasses.replace(
        limits, max_pending_connections=min(pool, limits.max_pending_connections),
        max_pending_per_address=min(pool, limits.max_pending_per_address))
    log.warning("open files limit %d is below the %d the broker limits need (raise "
                "LimitNOFILE): sockets that have not logged in are limited to %d (%d per "
                "address)", available, needed, fitted.max_pending_connections,
                fitted.max_pending_per_address)
    return fitted
