"""The state file: atomic saves, corrupt files moved aside, newer versions refused, no
write when nothing changed; and end to end: restore after a restart, lockouts that stay,
an unwritable directory refused, and kill -9 at random moments never leaving a bad file."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml

from pi_mqtt_gpio.server.persistence import (
    SCHEMA_VERSION,
    Persister,
    StateFile,
    StateFileError,
    writable_problem,
)
from tests.conftest import READY, Client, start_gatekeeper, wait_for


def test_save_is_atomic_and_loads_back(tmp_path: Path) -> None:
    f = StateFile(tmp_path / "state.json")
    assert f.load() == {}
    f.save({"version": SCHEMA_VERSION, "outputs": {"led": 1}})
    assert f.load() == {"version": SCHEMA_VERSION, "outputs": {"led": 1}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temp left


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", "\xff"])
def test_corrupt_file_is_moved_aside(tmp_path: Path, text: str) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(text.encode("latin-1"))
    assert StateFile(path).load() == {}
    assert not path.exists()
    assert [p.name.startswith("state.json.corrupt-") for p in tmp_path.iterdir()] == [True]


DEEP = "[" * 200_000 + "]" * 200_000


@pytest.mark.parametrize("text", [
    '{"version": 1, "lockouts": {"pump": 1e308}}',  # a number, but no time
    '{"version": 1, "lockouts": {"pump": 1e400}}',  # overflows to inf
    '{"version": 1, "lockouts": {"pump": Infinity}}',
    '{"version": 1, "lockouts": {"pump": NaN}}',
    '{"version": 1, "outputs": {"lamp": -Infinity}}',
    DEEP,
    '{"version": 1, "outputs": {"lamp": ' + "[" * 20 + "]" * 20 + "}}",
    '{"version": 1, "lockouts": [1, 2]}',
    '{"version": 1, "lockouts": {"pump": "soon"}}',
    '{"version": 1, "outputs": {"lamp": {"value": 1}}}',
    '{"version": 1, "covers": {"blind": {"position": 500}}}',
    '{"version": 1, "covers": {"blind": {"position": 5, "travel_time_up_s": 1e300}}}',
    '{"version": 1, "homeassistant": "homeassistant/switch/x/config"}',
    '{"version": "1"}',
    '{"version": true}',
    '{"version": 1, "later": ' + "[" * 10 + "]" * 10 + "}",  # a key of a later version
    '{"version": 1, "later": NaN}',  # not a number JSON has, wherever it is
    '{"version": 1, "later": [1e999]}',
])
def test_a_file_of_the_wrong_shape_is_moved_aside(tmp_path: Path, text: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(text)
    assert StateFile(path).load() == {}
    assert not path.exists()
    assert [p.name.startswith("state.json.corrupt-") for p in tmp_path.iterdir()] == [True]


def test_an_oversized_file_is_moved_aside_and_two_corrupt_files_both_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": 1, "homeassistant": ["x" * 1000] * 5000}))
    assert StateFile(path).load() == {}
    assert "larger than 4,194,304 bytes" in caplog.text
    path.write_text("{")
    assert StateFile(path).load() == {}
    assert len([p for p in tmp_path.iterdir() if ".corrupt-" in p.name]) == 2


def test_a_far_lockout_is_a_good_file(tmp_path: Path) -> None:
    """The year 3000 is a time: the file loads (the lockout is shortened when applied)."""
    path = tmp_path / "state.json"
    doc = {"version": 1, "saved_at": time.time(), "lockouts": {"pump": 32503680000.0},
           "outputs": {"lamp": 1, "rgb": [1, 0.5, 0], "servo": None},
           "covers": {"blind": {"position": 40.5, "calibrated": True,
                                "travel_time_up_s": 20.0, "travel_time_down_s": 18.5}},
           "homeassistant": ["homeassistant/switch/p/lamp/config"]}
    path.write_text(json.dumps(doc))
    assert StateFile(path).load() == doc
    later = {"version": 1, "later": [[[[[1]]]]]}  # kept: a later version's key, not too deep
    path.write_text(json.dumps(later))
    assert StateFile(path).load() == later


def test_newer_version_is_refused_older_migrated(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": SCHEMA_VERSION + 1}))
    with pytest.raises(StateFileError, match="newer version"):
        StateFile(path).load()
    path.write_text(json.dumps({"outputs": {"led": 1}}))  # before versions
    assert StateFile(path).load() == {"version": 1, "outputs": {"led": 1}}


def test_unwritable_directory_is_named(tmp_path: Path) -> None:
    assert writable_problem(tmp_path / "nope" / "state.json") == \
        f"persistence.path: the directory {tmp_path / 'nope'} does not exist"
    assert writable_problem(tmp_path / "state.json") is None


def test_no_write_when_nothing_changed(tmp_path: Path) -> None:
    async def main() -> int:
        doc = {"version": 1, "outputs": {"led": 0}}
        p = Persister(StateFile(tmp_path / "s.json"), 0.05, lambda: dict(doc))
        for _ in range(10):
            p.changed()
            await asyncio.sleep(0.06)
        doc["outputs"] = {"led": 1}
        p.changed()
        await asyncio.sleep(0.1)
        await p.close()
        return p.writes

    assert asyncio.run(main()) == 2  # the first state, then the one change


# --- end to end -------------------------------------------------------------------------------
def _config(tmp: Path, autosave: float = 0.2) -> dict[str, Any]:
    return {
        "node_id": "p",
        "broker": {"listeners": [{"type": "tcp", "host": "127.0.0.1", "port": 0}]},
        "auth": {"allow_anonymous": True, "anonymous_role": "admin"},
        "persistence": {"path": str(tmp / "state.json"), "autosave_s": autosave},
        "safety": {"min_relay_interval_s": 0, "min_command_interval_s": 0,
                   "flap_max_edges": 2, "flap_lockout_s": 60},
        "devices": {"lamp": {"type": "LED", "pin": 17, "restore": True},
                    "dim": {"type": "PWMLED", "pin": 12, "restore": True},
                    "porch": {"type": "LED", "pin": 18},
                    "pump": {"type": "OutputDevice", "pin": 22}},
    }


def _state(port: int, device: str) -> dict[str, Any]:
    c = Client(port, mqtt.MQTTv5)
    c.connect()
    try:
        c.subscribe(f"gatekeeper/p/device/{device}/state", 0)
        return dict(json.loads(c.get(5).payload))
    finally:
        c.close()


def test_restore_and_lockouts_survive_a_restart(tmp_path: Path) -> None:
    gk = start_gatekeeper(tmp_path, _config(tmp_path))
    try:
        c = Client(gk.port, mqtt.MQTTv5)
        c.connect()
        for dev in ("lamp", "porch"):
            c.publish(f"gatekeeper/p/device/{dev}/set", "ON", 1)
        for payload in ("ON", "OFF", "ON"):  # the third change trips the lockout
            c.publish("gatekeeper/p/device/pump/set", payload, 1)
        c.close()
        assert wait_for(lambda: "lockout_until" in _state(gk.port, "pump"), 3)
    finally:
        assert gk.stop() == 0
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["outputs"] == {"lamp": 1, "dim": 0.0} and "pump" in saved["lockouts"]
    again = start_gatekeeper(tmp_path, _config(tmp_path))
    try:
        assert wait_for(lambda: _state(again.port, "lamp")["value"] == 1, 3)  # restored
        assert _state(again.port, "porch")["value"] == 0  # not restore: its safe state
        assert "lockout_until" in _state(again.port, "pump")  # still locked out
    finally:
        assert again.stop() == 0


def _lockout_left(port: int) -> float | None:
    """Seconds from now to the pump's ``lockout_until``, as a separate client reads it."""
    until = _state(port, "pump").get("lockout_until")
    if until is None:
        return None
    return datetime.fromisoformat(until).timestamp() - time.time()


@pytest.mark.parametrize("text", [
    '{"version": 1, "lockouts": {"pump": 1e308}}',
    '{"version": 1, "lockouts": {"pump": Infinity}}',
    '{"version": 1, "lockouts": {"pump": NaN}}',
    DEEP,
], ids=["1e308", "Infinity", "NaN", "deep"])
def test_daemon_starts_on_a_crafted_file_and_moves_it_aside(tmp_path: Path,
                                                            text: str) -> None:
    (tmp_path / "state.json").write_text(text)
    gk = start_gatekeeper(tmp_path, _config(tmp_path))  # the ready line, or it raises
    try:
        aside = [p.name for p in tmp_path.iterdir() if p.name.startswith("state.json.corrupt-")]
        assert len(aside) == 1
        assert any("is corrupt" in line and aside[0] in line for line in gk.log)
        assert _lockout_left(gk.port) is None  # defaults: no lockout
    finally:
        assert gk.stop() == 0
    assert json.loads((tmp_path / "state.json").read_text())["version"] == SCHEMA_VERSION


def test_a_lockout_until_the_year_3000_lasts_flap_lockout_s(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(json.dumps(
        {"version": 1, "lockouts": {"pump": 32503680000.0}}))
    gk = start_gatekeeper(tmp_path, _config(tmp_path))  # flap_lockout_s: 60
    try:
        left = _lockout_left(gk.port)
        assert left is not None and 0 < left <= 60 + 1, left
        assert not [p for p in tmp_path.iterdir() if "corrupt" in p.name]
    finally:
        assert gk.stop() == 0
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["lockouts"]["pump"] <= time.time() + 60


def test_unwritable_directory_refuses_start(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config["persistence"]["path"] = str(tmp_path / "missing" / "state.json")
    with pytest.raises(RuntimeError, match=r"the directory .* does not exist"):
        start_gatekeeper(tmp_path, config)


def _applied(c: Client, set_at: dict[float, float]) -> None:
    """The values the daemon has set (its state messages), stamped when it said so."""
    while not c.messages.empty():
        doc = json.loads(c.messages.get().payload)
        set_at.setdefault(round(doc["value"], 4), time.time())


def _kill_loop(tmp_path: Path, seed: int, kills: int, autosave: float) -> float:
    """``kills`` times: start, set a dimmer to a new value every 10 ms, kill -9 at a random
    moment over the write cycle; the file must parse every time. Returns the worst
    staleness seen: how long before the kill the saved value had stopped being current."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, autosave)))
    rng = random.Random(seed)
    n = 0
    worst = 0.0
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-m", "pi_mqtt_gpio.server.main", "--config",
                                 str(path), "--simulate"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        assert proc.stdout is not None
        port = 0
        for line in proc.stdout:
            m = READY.search(line)
            if m:
                port = int(m.group(2).rsplit(":", 1)[1])
                break
        assert port, "the daemon did not start"
        c = Client(port, mqtt.MQTTv5)
        c.connect()
        c.subscribe("gatekeeper/p/device/dim/state", 0)
        # value -> when this daemon said it set it (its state): what a run before it set and
        # did not save was current only until that run was killed
        set_at: dict[float, float] = {}

        # (stamped by the daemon's state, not when sent: a loaded machine queues the sets,
        # and a value the daemon has not set yet is not one its file could hold)
        end = time.monotonic() + rng.uniform(autosave, 4 * autosave)
        while time.monotonic() < end:
            n += 1
            c.publish("gatekeeper/p/device/dim/set", str(round(n / 10_000, 4)), 1)
            time.sleep(0.01)
            _applied(c, set_at)
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        c.close()
        saved = json.loads((tmp_path / "state.json").read_text())  # parses, every time
        assert saved["version"] == SCHEMA_VERSION
        value = round(saved["outputs"]["dim"], 4)
        later = [t for v, t in set_at.items() if v > value]  # values set after the saved one
        worst = max(worst, killed_at - min(later) if later else 0.0)
    assert not [p for p in tmp_path.iterdir() if "corrupt" in p.name]
    return worst


def test_kill_9_at_random_moments_leaves_a_good_recent_file(tmp_path: Path) -> None:
    """50 kill -9s in all, from two daemons killed side by side (25 each, their own state
    files): the file always parses, and the value it holds was still current no longer
    than autosave_s + 0.7 s before the kill (current: set by that daemon, as its state says)."""
    autosave = 0.3
    with ThreadPoolExecutor(2) as pool:
        worst = max(pool.map(lambda i: _kill_loop(tmp_path / f"d{i}", 7 + i, 25, autosave),
                             range(2)))
    print(f"50 kills: worst staleness {worst:.2f} s (autosave {autosave} s)")
    # (a daemon that never saved shows a run's length: up to 4 autosaves, over 1 s in about
    # one run of five)
    assert worst <= autosave + 0.7
