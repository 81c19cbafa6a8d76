"""``$SYS/broker/...``: the statistics Mosquitto publishes, under Mosquitto's names.

Pure: the values are read from the core's counters (incremented on the hot path, one integer
per read, packet or write) and its tables when asked, with the time passed in. Whoever runs
the broker publishes them retained every ``interval`` (only those that changed). A
subscription to ``#`` or ``+/...`` never receives them (MQTT-4.7.2-1): a reader subscribes
to ``$SYS/#`` explicitly, and no client may publish under ``$SYS/`` (the core refuses it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pi_mqtt_gpio.mqtt.broker import BrokerCore

__all__ = ["SYS_ROOT", "SysTopics"]

SYS_ROOT = "$SYS/broker"


class SysTopics:
    """The values of ``$SYS/broker/...`` and which of them changed since the last call."""

    def __init__(self, core: BrokerCore, version: str, started: float) -> None:
        self.core = core
        self.version = version
        self.started = started  # on the core's clock
        self._last: dict[str, bytes] = {}

    def values(self, now: float) -> dict[str, bytes]:
        core = self.core
        stats = core.stats
        connected = core.established
        sessions = [s for s in core.sessions.values() if s.internal_handler is None]
        stored = sum(len(s.queue) + len(s.inflight) for s in sessions)
        subscriptions = sum(len(s.subscriptions) for s in core.sessions.values())
        numbers: dict[str, int] = {
            "clients/connected": connected,
            # Mosquitto: total = connected + offline sessions kept (persistent clients)
            "clients/total": max(len(sessions), connected),
            "clients/disconnected": max(len(sessions) - connected, 0),
            "clients/maximum": core.established_max,
            "messages/received": stats.packets_in,
            "messages/sent": stats.packets_out,
            "publish/messages/received": stats.messages_in,
            "publish/messages/sent": stats.messages_out,
            "publish/messages/dropped": stats.dropped_queue_full + stats.dropped_congested
            + stats.dropped_expired + stats.dropped_too_large,
            "bytes/received": stats.bytes_in,
            "bytes/sent": stats.bytes_out,
            "retained messages/count": len(core.retained),
            "subscriptions/count": subscriptions,
            "store/messages/count": stored,
            "store/messages/bytes": core.queued_bytes,
        }
        out = {f"{SYS_ROOT}/{name}": str(value).encode() for name, value in numbers.items()}
        out[f"{SYS_ROOT}/version"] = f"pi-mqtt-gatekeeper version {self.version}".encode()
        out[f"{SYS_ROOT}/uptime"] = f"{max(int(now - self.started), 0)} seconds".encode()
        return out

    def changed(self, now: float) -> dict[str, bytes]:
        """The values that differ from those returned last time (all of them the first
        time): Mosquitto, too, publishes a ``$SYS`` topic only when its value changed."""
        values = self.values(now)
        out = {topic: value for topic, value in values.items()
               if self._last.get(topic) != value}
        self._last = values
        return out
