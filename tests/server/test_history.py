"""The gatekeeper's kept history of sensor readings (server/history.py): one ring per sensor,
bounded in rows and in time, decimated to one row per step, read whole or since a time, and
the retained document published at the first reading and then at most once a minute."""

from __future__ import annotations

import json
from typing import Any

from pi_mqtt_gpio.server.history import PUBLISH_EVERY_S, Ring, SensorHistory
from pi_mqtt_gpio.topics import Topics

T0 = 1_800_000_000.0  # a round epoch second (divisible by 10)
UNITS = {"temperature": "°C", "humidity": "%"}


def reading(temperature: float | None, humidity: float | None = 40.0) -> dict[str, Any]:
    return {"temperature": temperature, "humidity": humidity, "value": temperature,
            "units": UNITS, "available": temperature is not None}


def test_one_row_per_step_and_the_last_row_is_the_latest_reading() -> None:
    ring = Ring(["temperature", "humidity"], UNITS, step=10)
    for i in range(25):  # a reading a second for 25 s: steps 0-9, 10-19, 20-24
        ring.add(T0 + i, reading(20 + i / 10))
    doc = ring.doc(T0 + 24)
    assert doc["t0"] == T0 + 9
    assert doc["t"] == [0, 10, 15]  # the last reading of each step, the last one so far
    assert doc["values"]["temperature"] == [20.9, 21.9, 22.4]
    assert doc["values"]["humidity"] == [40.0, 40.0, 40.0]
    assert doc["units"] == UNITS and doc["step"] == 10


def test_bounded_to_an_hour_and_to_its_row_count() -> None:
    ring = Ring(["temperature"], UNITS, step=10)
    assert ring.rows.maxlen == 361
    for i in range(2 * 3600):  # two hours of a reading a second
        ring.add(T0 + i, reading(21.0 + (i % 7) / 10))
    now = T0 + 2 * 3600 - 1
    assert len(ring.rows) <= 361
    assert all(t >= now - 3600 for t, _ in ring.rows)
    doc = ring.doc(now)
    assert len(doc["t"]) == len(doc["values"]["temperature"]) == len(ring.rows)
    # a sensor read every 10 minutes keeps what an hour holds, not more
    slow = Ring(["temperature"], UNITS, step=600)
    for i in range(30):
        slow.add(T0 + i * 600, reading(21.0))
    assert len(slow.rows) == 7 and slow.rows.maxlen == 7
    # a fast sensor whose readings are seldom published (a threshold) forgets old ones too
    sparse = Ring(["temperature"], UNITS, step=10)
    for i in range(30):
        sparse.add(T0 + i * 600, reading(21.0 + i))
    assert [t - T0 for t, _ in sparse.rows] == [i * 600 for i in range(23, 30)]


def test_the_documents_bytes_are_bounded_for_a_four_value_sensor() -> None:
    keys = ["bus_voltage", "shunt_voltage", "current", "power"]
    ring = Ring(keys, dict.fromkeys(keys, "V"), step=10)
    for i in range(3600):
        ring.add(T0 + i + 0.123, {k: 12345.678 + i for k in keys})
    size = len(json.dumps(ring.doc(T0 + 3600), separators=(",", ":")))
    assert 10_000 < size < 20_000, size  # docs/dashboard.md: under 20 KB


def test_since_s_keeps_only_the_recent_rows() -> None:
    ring = Ring(["temperature"], UNITS, step=10)
    for i in range(0, 600, 10):
        ring.add(T0 + i, reading(20 + i / 100))
    now = T0 + 590
    recent = ring.doc(now, since_s=60)
    assert len(recent["t"]) == 7  # 530, 540, ..., 590
    assert recent["t0"] == T0 + 530 and recent["values"]["temperature"][-1] == 25.9
    assert ring.doc(now, since_s=0)["t"] == [0]  # the reading of this very moment
    assert len(ring.doc(now)["t"]) == 60
    assert len(ring.doc(now + 3601)["t"]) == 0  # older than an hour


def test_an_unavailable_reading_is_a_row_of_nulls_and_a_clock_set_back_starts_over() -> None:
    ring = Ring(["temperature", "humidity"], UNITS, step=10)
    ring.add(T0, reading(21.0))
    ring.add(T0 + 10, {"available": False, "error": "no answer", "units": UNITS,
                       "temperature": None, "humidity": None})
    ring.add(T0 + 20, reading(21.5, float("nan")))
    doc = ring.doc(T0 + 20)
    assert doc["values"] == {"temperature": [21.0, None, 21.5], "humidity": [40.0, None, None]}
    ring.add(T0 - 100, reading(19.0))
    assert ring.doc(T0 - 100)["values"]["temperature"] == [19.0]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def test_the_retained_document_goes_out_at_the_first_reading_then_once_a_minute() -> None:
    sent: list[tuple[str, bytes, int, bool]] = []
    clock = Clock()
    history = SensorHistory(Topics("gatekeeper", "pi"),
                            lambda t, p, q, r: sent.append((t, p, q, r)), clock=clock)
    history.add_sensor("climate", ["temperature", "humidity"], UNITS, interval=2)
    history.record("porch_light", {"value": 1, "is_active": True})  # not a sensor
    assert not sent and "porch_light" not in history.rings
    for i in range(0, 150, 2):  # 150 s of a reading every 2 s
        clock.now = T0 + i
        history.record("climate", reading(21 + i / 100))
    assert [s[0] for s in sent] == ["gatekeeper/pi/device/climate/history"] * 3  # 0, 60, 120 s
    assert all(q == 1 and retain for _t, _p, q, retain in sent)
    first, last = json.loads(sent[0][1]), json.loads(sent[-1][1])
    assert first["t"] == [0] and first["values"]["temperature"] == [21.0]
    assert last["t0"] == T0 + 8 and len(last["t"]) == 13  # step max(2, 10) = 10 s
    assert PUBLISH_EVERY_S == 60
    # the method's read is fresh (the readings since the last retained document too)
    fresh = history.doc("climate")
    assert fresh["values"]["temperature"][-1] == 22.48 and len(fresh["t"]) == 15
    assert history.doc("climate", since_s=30)["t0"] == T0 + 118
