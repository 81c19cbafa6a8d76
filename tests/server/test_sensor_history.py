"""The kept history of a sensor's readings on the real daemon under ``--simulate``: retained
on ``{root}/device/<name>/history`` for anyone who may read the node (a viewer subscribing
late gets it), fresh from the ``history`` method for a caller, nulls once the sensor stops
answering, and the method's argument checked."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from tests.conftest import Client, broker_config, cheap_hash, start_gatekeeper, v5_props

KEYS = ["temperature", "humidity", "pressure"]


def _call(c: Client, root: str, device: str, method: str, **kwargs: Any) -> dict[str, Any]:
    """A call and its reply (other messages on the client's queue are skipped)."""
    reply = f"{root}/reply/{c.client_id}/{method}-{time.monotonic_ns()}"
    c.publish(f"{root}/device/{device}/call", json.dumps({"method": method, "kwargs": kwargs}),
              1, properties=v5_props(ResponseTopic=reply, CorrelationData=b"h"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        m = c.get(10)
        if m.topic == reply:
            doc: dict[str, Any] = json.loads(m.payload)
            return doc
    raise AssertionError(f"no reply to {method} within 10 s")


def test_history_retained_for_a_viewer_and_fresh_from_the_method(tmp_path: Path) -> None:
    cfg = broker_config(devices={
        "climate": {"type": "BME280", "interval": 0.3},
        "porch_light": {"type": "LED", "pin": 17},
        "daylight": {"type": "LightSensor", "pin": 18},
    }, auth={"allow_anonymous": True, "anonymous_role": "viewer",
             "users": {"ada": {"password_hash": cheap_hash("ada-pw"), "role": "admin"}}})
    gk = start_gatekeeper(tmp_path, cfg)
    viewer = Client(gk.port, mqtt.MQTTv5)
    admin = Client(gk.port, mqtt.MQTTv5)
    admin.c.username_pw_set("ada", "ada-pw")
    try:
        viewer.connect()
        admin.connect()
        # a viewer that comes later reads the retained history (made at the first reading)
        viewer.subscribe(f"{gk.root}/device/+/history", 1)
        kept = viewer.get(10)
        assert kept.topic == f"{gk.root}/device/climate/history" and kept.retain
        doc = json.loads(kept.payload)
        assert doc["units"] == {"temperature": "°C", "humidity": "%", "pressure": "hPa"}
        assert doc["step"] == 10 and doc["window"] == 3600
        assert len(doc["t"]) >= 1 and sorted(doc["values"]) == sorted(KEYS)
        assert all(len(doc["values"][k]) == len(doc["t"]) for k in KEYS)
        assert 10 < doc["values"]["temperature"][-1] < 35
        assert abs(doc["t0"] - time.time()) < 60
        viewer.subscribe(f"{gk.root}/devices", 1)
        catalogue = json.loads(viewer.get(10).payload)
        topics = {d["name"]: d["topics"] for d in catalogue["devices"]}
        assert topics["climate"]["history"] == f"{gk.root}/device/climate/history"
        assert "history" not in topics["porch_light"]  # polled sensors only
        assert "history" not in topics["daylight"]

        admin.subscribe(f"{gk.root}/reply/{admin.client_id}/#", 1)
        admin.subscribe(f"{gk.root}/device/climate/state", 1)
        fresh = _call(admin, gk.root, "climate", "history", since_s=600)
        assert fresh["ok"], fresh
        result = fresh["result"]
        assert result["units"] == doc["units"] and len(result["t"]) >= 1
        assert all(10 < v < 35 for v in result["values"]["temperature"])
        assert all(900 < v < 1100 for v in result["values"]["pressure"])

        # it stops answering: the latest row is the gap
        assert _call(admin, gk.root, "climate", "sim_fail", failed=True)["ok"]
        deadline = time.monotonic() + 10
        while True:
            m = admin.get(10)
            if m.topic.endswith("/climate/state") and not json.loads(m.payload)["available"]:
                break
            assert time.monotonic() < deadline, "the sensor did not go unavailable"
        gap = _call(admin, gk.root, "climate", "history")["result"]
        assert [gap["values"][k][-1] for k in KEYS] == [None, None, None]

        bad = _call(admin, gk.root, "climate", "history", since_s=7200)
        assert not bad["ok"] and bad["error"]["code"] == "BAD_ARGUMENT"
    finally:
        viewer.close()
        admin.close()
        assert gk.stop() == 0
