"""Admission at execution time: every command that reaches the hardware is judged against
the state at the moment it runs, whatever path it took (a plain ``set``, an RPC, mqtt-io's
timed sets, a command held back by relay spacing). The real daemon runs in this process (so
that the simulated pins' histories can be read) on a real TCP port; commands come from paho
clients, and what happened is watched from a separate client or on the pins themselves."""

from __future__ import annotations

import json
import queue
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from argon2 import PasswordHasher

from tests.conftest import Client, GatekeeperThread, PinRecorder, v5_props, wait_for

VERSIONS = pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5],
                                   ids=["mqttv311", "mqttv5"])
PASSWORD = "pw-admission"
# Test users with cheap hashing parameters: a login costs microseconds, not a quarter second.
CHEAP = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1).hash(PASSWORD)
ROOT = "gatekeeper/g"


def _users(path: Path, users: dict[str, str]) -> None:
    path.write_text("".join(f"{user}:{CHEAP}:{role}\n" for user, role in users.items()))


class Caller:
    """A paho client that makes RPC calls and waits for their replies, on 3.1.1 (reply
    fields in the payload) or 5.0 (Response Topic and Correlation Data)."""

    def __init__(self, port: int, version: int, user: str | None = None) -> None:
        self.client = Client(port, version, client_id=f"{user or 'anon'}-{uuid.uuid4().hex[:6]}")
        if user is not None:
            self.client.c.username_pw_set(user, PASSWORD)
        rc, _props = self.client.connect()
        assert rc == 0, rc
        self.reply = f"{ROOT}/reply/{self.client.client_id}"
        self.client.subscribe(f"{self.reply}/#", 1)
        self.version = version

    def call(self, device: str, method: str, timeout: float = 5.0, **kwargs: Any
             ) -> dict[str, Any]:
        cid = uuid.uuid4().hex
        body: dict[str, Any] = {"method": method, "kwargs": kwargs}
        props = None
        if self.version == mqtt.MQTTv5:
            props = v5_props(ResponseTopic=self.reply, CorrelationData=cid.encode())
        else:
            body.update(reply_to=self.reply, correlation_id=cid)
        topic = f"{ROOT}/lease/call" if device == "lease" else f"{ROOT}/device/{device}/call"
        self.client.publish(topic, json.dumps(body), 1, properties=props)
        end = time.monotonic() + timeout
        while True:
            msg = self.client.get(max(0.01, end - time.monotonic()))
            doc = json.loads(msg.payload)
            got = (msg.properties.CorrelationData.decode()
                   if self.version == mqtt.MQTTv5 else doc.get("correlation_id"))
            if got == cid:
                return doc  # type: ignore[no-any-return]

    def set(self, device: str, payload: str) -> None:
        self.client.publish(f"{ROOT}/device/{device}/set", payload, 1)

    def close(self) -> None:
        self.client.close()


class Watcher:
    """A separate admin client that records the audit topic and retained states."""

    def __init__(self, port: int, version: int, user: str | None = "admin") -> None:
        self.client = Client(port, version, client_id=f"watch-{uuid.uuid4().hex[:6]}")
        if user is not None:
            self.client.c.username_pw_set(user, PASSWORD)
        rc, _props = self.client.connect()
        assert rc == 0, rc
        self.audit: queue.Queue[dict[str, Any]] = queue.Queue()
        self.client.c.on_message = self._on
        self.client.subscribe(f"{ROOT}/audit", 0)

    def _on(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/audit"):
            self.audit.put(json.loads(msg.payload))

    def refusal(self, device: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next audited refusal for ``device``."""
        end = time.monotonic() + timeout
        while True:
            entry = self.audit.get(timeout=max(0.01, end - time.monotonic()))
            if entry["device"] == device and not entry["ok"]:
                return entry

    def close(self) -> None:
        self.client.close()


def retained_state(port: int, version: int, device: str) -> dict[str, Any]:
    """The device's retained state as a client connecting now reads it."""
    reader = Client(port, version, client_id=f"reader-{uuid.uuid4().hex[:6]}")
    reader.c.username_pw_set("admin", PASSWORD)
    reader.connect()
    try:
        reader.subscribe(f"{ROOT}/device/{device}/state", 1)
        return json.loads(reader.get(5).payload)  # type: ignore[no-any-return]
    finally:
        reader.close()


@pytest.fixture
def gatekeeper(tmp_path: Path) -> Iterator[Any]:
    made: list[GatekeeperThread] = []

    def start(devices: str, extra: str = "", users: dict[str, str] | None = None
              ) -> tuple[GatekeeperThread, int]:
        users_file = tmp_path / "users"
        _users(users_file, {"admin": "admin", "alice": "operator", "bob": "operator",
                            **(users or {})})
        text = f"""
node_id: g
broker: {{listeners: [{{type: tcp, host: 127.0.0.1, port: 0}}]}}
auth: {{users_file: {users_file}}}
homeassistant: {{discovery: false}}
{extra}
devices:
{devices}
"""
        gk = GatekeeperThread(text)
        made.append(gk)
        return gk, gk.start()

    yield start
    for gk in made:
        gk.close()


def _line(gk: GatekeeperThread, device: str) -> int:
    return int(gk.pin(device).pin.info.name.removeprefix("GPIO"))


# --- interlocks and relay spacing -----------------------------------------------------------
PUMPS = """
  pump_fill:  {type: OutputDevice, pin: 23}
  pump_drain: {type: OutputDevice, pin: 24}
"""
SPACED = """
safety: {min_relay_interval_s: 0.5, min_command_interval_s: 0, flap_lockout_s: 0}
interlocks: [[pump_fill, pump_drain]]
"""


@VERSIONS
def test_an_off_held_back_by_spacing_still_counts_for_the_interlock(gatekeeper: Any,
                                                                    version: int) -> None:
    """fill on; fill off (held back 0.5 s by relay spacing); 10 ms later another operator
    switches drain on: refused INTERLOCKED (audited, seen by a separate watcher), and the
    pins were never high together. Once fill's off has run, drain may go on."""
    gk, port = gatekeeper(PUMPS, SPACED)
    pins = PinRecorder([gk.pin("pump_fill").pin, gk.pin("pump_drain").pin])
    fill, drain = _line(gk, "pump_fill"), _line(gk, "pump_drain")
    watcher = Watcher(port, version)
    alice, bob = Caller(port, version, "alice"), Caller(port, version, "bob")
    try:
        assert alice.call("pump_fill", "on")["ok"]
        alice.set("pump_fill", "OFF")  # held back by relay spacing
        time.sleep(0.01)
        reply = bob.call("pump_drain", "on")
        assert not reply["ok"] and reply["error"]["code"] == "INTERLOCKED", reply
        assert 0 < reply["error"]["retry_after"] <= 0.5
        audited = watcher.refusal("pump_drain")
        assert audited["error"]["code"] == "INTERLOCKED" and audited["username"] == "bob"
        assert wait_for(lambda: not gk.pin("pump_fill").is_active, 2)
        assert bob.call("pump_drain", "on")["ok"]  # the off has run: now it may
        assert pins.never_together(fill, drain), pins.log
        assert [level for _t, line, level in pins.log if line == fill] == [True, False]
    finally:
        for c in (alice, bob, watcher):
            c.close()


def test_random_interleavings_of_three_users_never_overlap_on_the_pins(gatekeeper: Any
                                                                        ) -> None:
    """A property over random interleavings: three users send ON, OFF and TOGGLE to three
    interlocked relays (with relay spacing holding some back, and rate limits off) at
    random moments from three threads; at no instant are two of the pins high together,
    as their recorded histories show. Seeds are fixed so that a failure can be replayed."""
    devices = """
  a: {type: OutputDevice, pin: 5}
  b: {type: OutputDevice, pin: 6}
  c: {type: OutputDevice, pin: 13}
"""
    extra = """
safety: {min_relay_interval_s: 0.05, min_command_interval_s: 0, flap_lockout_s: 0}
interlocks: [[a, b, c]]
"""
    gk, port = gatekeeper(devices, extra, {"carol": "operator"})
    lines = {name: _line(gk, name) for name in "abc"}
    pins = PinRecorder([gk.pin(name).pin for name in "abc"])
    users = [Caller(port, mqtt.MQTTv5, user) for user in ("alice", "bob", "carol")]
    try:
        for seed in (1, 2, 3):
            rng = random.Random(seed)
            plans = [[(rng.choice("abc"), rng.choice(["ON", "OFF", "TOGGLE"]),
                       rng.uniform(0, 0.03)) for _ in range(40)] for _user in users]

            def play(caller: Caller, plan: list[tuple[str, str, float]]) -> None:
                for device, payload, gap in plan:
                    caller.set(device, payload)
                    time.sleep(gap)

            threads = [threading.Thread(target=play, args=(u, p))
                       for u, p in zip(users, plans, strict=True)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for name in "abc":
                users[0].set(name, "OFF")
            assert wait_for(lambda: not any(gk.pin(n).is_active for n in "abc"), 5)
        highs = sum(level for _t, _line, level in pins.log)
        assert highs > 10, "the plans should switch the relays on many times"
        for x, y in (("a", "b"), ("a", "c"), ("b", "c")):
            assert pins.never_together(lines[x], lines[y]), (x, y)
    finally:
        for u in users:
            u.close()


# --- the deferred half of mqtt-io's timed sets -----------------------------------------------
COMPAT = """
safety: {min_relay_interval_s: 0, min_command_interval_s: 0, flap_lockout_s: 0}
compat: {mqtt_io: {topic_prefix: home, outputs: {relay: {}, locked: {}}}}
"""
RELAYS = """
  relay:  {type: OutputDevice, pin: 17}
  locked: {type: OutputDevice, pin: 27, lease_required: true}
"""


@VERSIONS
def test_a_timed_on_is_cancelled_when_its_sender_was_removed(gatekeeper: Any, tmp_path: Path,
                                                             version: int) -> None:
    """``set_off_ms``: off now, on later. alice is removed from the users file (SIGHUP's
    reload) and disconnects: the promised on is cancelled and audited, the relay stays
    off (its pin and its retained state, read by a separate client)."""
    gk, port = gatekeeper(RELAYS, COMPAT)
    watcher = Watcher(port, version)
    alice = Caller(port, version, "alice")
    try:
        alice.client.publish("home/output/relay/set_off_ms", "600", 1)
        assert watcher.audit.get(5)["ok"]  # the off ran
        _users(tmp_path / "users", {"admin": "admin", "bob": "operator"})
        gk.run(gk.daemon.reload)  # what SIGHUP does
        alice.close()
        refused = watcher.refusal("relay", 5)
        assert refused["error"]["code"] == "NOT_AUTHORIZED" and refused["username"] == "alice"
        assert not gk.pin("relay").is_active
        assert retained_state(port, version, "relay")["value"] == 0
    finally:
        watcher.close()


@VERSIONS
def test_a_timed_off_runs_whoever_holds_a_lease_then(gatekeeper: Any, version: int) -> None:
    """``set_on_ms``: on now, off later. bob takes a lease on the relay meanwhile: the
    promised off still runs (a turn towards safe is never refused), seen on the pin and in
    the retained state."""
    gk, port = gatekeeper(RELAYS, COMPAT)
    watcher = Watcher(port, version)
    alice, bob = Caller(port, version, "alice"), Caller(port, version, "bob")
    try:
        alice.client.publish("home/output/relay/set_on_ms", "600", 1)
        assert wait_for(lambda: gk.pin("relay").is_active, 3)
        assert bob.call("lease", "acquire", devices=["relay"], ttl=30)["ok"]
        assert wait_for(lambda: not gk.pin("relay").is_active, 3)
        assert wait_for(lambda: retained_state(port, version, "relay")["value"] == 0, 3)
        assert watcher.audit.empty() or all(e["ok"] for e in list(watcher.audit.queue)
                                            if e["device"] == "relay")
    finally:
        for c in (alice, bob, watcher):
            c.close()


@VERSIONS
def test_a_timed_off_runs_after_the_lease_it_needed_was_released(gatekeeper: Any,
                                                                 version: int) -> None:
    """A ``lease_required`` relay: alice leases it, ``set_on_ms``, releases the lease: the
    promised off still runs."""
    gk, port = gatekeeper(RELAYS, COMPAT)
    alice = Caller(port, version, "alice")
    try:
        lease = alice.call("lease", "acquire", devices=["locked"], ttl=30)
        assert lease["ok"], lease
        alice.client.publish("home/output/locked/set_on_ms", "500", 1)
        assert wait_for(lambda: gk.pin("locked").is_active, 3)
        assert alice.call("lease", "release", lease_id=lease["result"]["lease_id"])["ok"]
        assert wait_for(lambda: not gk.pin("locked").is_active, 3)
        assert retained_state(port, version, "locked")["value"] == 0
    finally:
        alice.close()


@VERSIONS
def test_a_held_back_on_is_cancelled_when_another_user_took_the_lease(gatekeeper: Any,
                                                                      version: int) -> None:
    """Relay spacing holds alice's on back; meanwhile bob leases the relay: when the on is
    due it is admitted again, refused LEASE_HELD, and the relay stays off."""
    extra = "safety: {min_relay_interval_s: 0.5, min_command_interval_s: 0, flap_lockout_s: 0}"
    gk, port = gatekeeper("  relay: {type: OutputDevice, pin: 17}", extra)
    alice, bob = Caller(port, version, "alice"), Caller(port, version, "bob")
    watcher = Watcher(port, version)
    try:
        assert alice.call("relay", "on")["ok"]
        assert alice.call("relay", "off")["ok"]  # waits out the spacing
        alice.set("relay", "ON")  # held back 0.5 s
        assert bob.call("lease", "acquire", devices=["relay"], ttl=30)["ok"]
        refused = watcher.refusal("relay", 3)
        assert refused["error"]["code"] == "LEASE_HELD" and refused["username"] == "alice"
        assert not gk.pin("relay").is_active
        assert retained_state(port, version, "relay")["value"] == 0
    finally:
        for c in (alice, bob, watcher):
            c.close()


# --- the twin follows every change ------------------------------------------------------------
@VERSIONS
def test_max_on_turning_an_output_off_updates_its_retained_state(gatekeeper: Any,
                                                                version: int) -> None:
    gk, port = gatekeeper("  siren: {type: OutputDevice, pin: 12, safety: {max_on_s: 0.3}}",
                          "safety: {min_relay_interval_s: 0, min_command_interval_s: 0}")
    alice = Caller(port, version, "alice")
    try:
        assert alice.call("siren", "on")["ok"]
        assert wait_for(lambda: not gk.pin("siren").is_active, 3)
        assert wait_for(lambda: retained_state(port, version, "siren")["value"] == 0, 3)
    finally:
        alice.close()


# --- outputs start in their start state -----------------------------------------------------
def test_outputs_start_in_their_safe_state_without_a_pulse(gatekeeper: Any) -> None:
    """Every output is built at its start level: the pin histories show one level from the
    start (no 1 then 0 at start, whatever ``initial_value`` says)."""
    devices = """
  valve: {type: OutputDevice, pin: 24, initial_value: true}
  lamp:  {type: LED, pin: 25, initial_value: true}
  fan:   {type: OutputDevice, pin: 26, safe_state: "on"}
  inv:   {type: OutputDevice, pin: 16, active_high: false}
  dim:   {type: PWMLED, pin: 19, initial_value: 0.5}
"""
    gk, _port = gatekeeper(devices)
    for name, level in (("valve", 0), ("lamp", 0), ("fan", 1), ("inv", 1), ("dim", 0)):
        states = [int(s.state) if not isinstance(s.state, float) else s.state
                  for s in gk.pin(name).pin.states]
        # The mock pin's own first entry is its level before it was claimed.
        assert all(s == level for s in states[1:]), (name, states)


# --- found by an attack on the above ----------------------------------------------------------
SPACED_RELAY = """
safety: {min_relay_interval_s: 0.5, min_command_interval_s: 0, flap_lockout_s: 0}
leases: {scope: device}
"""


@VERSIONS
def test_a_held_back_toggle_is_admitted_again_too(gatekeeper: Any, tmp_path: Path,
                                                  version: int) -> None:
    """on; then off, on, TOGGLE all held back by spacing. alice is removed: the held-back
    on is cancelled, and the toggle behind it (which would now switch the relay on) too;
    the off still runs. Watched on the pin and in the audit."""
    gk, port = gatekeeper("  relay: {type: OutputDevice, pin: 17}", SPACED_RELAY)
    pins = PinRecorder([gk.pin("relay").pin])
    watcher = Watcher(port, version)
    alice = Caller(port, version, "alice")
    try:
        assert alice.call("relay", "on")["ok"]
        for payload in ("OFF", "ON", "TOGGLE"):
            alice.set("relay", payload)
        _users(tmp_path / "users", {"admin": "admin"})
        gk.run(gk.daemon.reload)
        refused = [watcher.refusal("relay", 5) for _ in range(2)]
        assert [r["method"] for r in refused] == ["on", "toggle"], refused
        assert all(r["error"]["code"] == "NOT_AUTHORIZED" for r in refused)
        assert [level for _t, _line, level in pins.log] == [True, False]
        assert retained_state(port, version, "relay")["value"] == 0
    finally:
        alice.close()
        watcher.close()


@VERSIONS
def test_a_cover_reversal_waiting_for_its_pause_is_admitted_again(gatekeeper: Any,
                                                                  version: int) -> None:
    """alice closes a cover, then opens it: the reversal waits direction_change_pause_s.
    Meanwhile bob leases the cover: the up relay never switches on for alice."""
    cover = ("  blind: {type: Cover, up: 5, down: 6, travel_time_up_s: 20, "
             "travel_time_down_s: 20, direction_change_pause_s: 1.0}")
    gk, port = gatekeeper(cover, SPACED_RELAY)
    adapter = gk.daemon.hw.adapters["blind"]
    up = int(adapter.up.pin.info.name.removeprefix("GPIO"))
    pins = PinRecorder([adapter.up.pin, adapter.down.pin])
    watcher = Watcher(port, version)
    alice, bob = Caller(port, version, "alice"), Caller(port, version, "bob")
    try:
        alice.set("blind", "CLOSE")
        assert wait_for(lambda: adapter.down.is_active, 3)
        alice.set("blind", "OPEN")
        assert wait_for(lambda: not adapter.down.is_active, 3)
        assert bob.call("lease", "acquire", devices=["blind"], ttl=30)["ok"]
        refused = watcher.refusal("blind", 5)
        assert refused["error"]["code"] == "LEASE_HELD" and refused["username"] == "alice"
        assert not any(line == up and level for _t, line, level in pins.log), pins.log
    finally:
        for c in (alice, bob, watcher):
            c.close()


@VERSIONS
def test_a_safe_state_that_is_on_waits_for_no_interlock(gatekeeper: Any,
                                                        version: int) -> None:
    """fan (safe_state: on) and heater are interlocked. bob leases fan and switches it
    off; alice switches heater on; bob disconnects: fan's safe state (on) is refused by
    the interlock instead of running beside the heater."""
    devices = """
  fan:    {type: OutputDevice, pin: 20, safe_state: "on"}
  heater: {type: OutputDevice, pin: 21}
"""
    extra = """
safety: {min_relay_interval_s: 0, min_command_interval_s: 0, flap_lockout_s: 0}
leases: {scope: device}
interlocks: [[fan, heater]]
"""
    gk, port = gatekeeper(devices, extra)
    pins = PinRecorder([gk.pin("fan").pin, gk.pin("heater").pin])
    alice, bob = Caller(port, version, "alice"), Caller(port, version, "bob")
    try:
        assert bob.call("lease", "acquire", devices=["fan"], ttl=30)["ok"]
        assert bob.call("fan", "off")["ok"]
        assert alice.call("heater", "on")["ok"]
        bob.close()
        assert wait_for(lambda: not gk.daemon.leases.leases, 5)
        # The safe state was refused or queued when the lease ended; a read goes through the
        # same worker queue behind it: once it is answered, whatever was queued has run.
        assert alice.call("fan", "state")["ok"]
        assert not gk.pin("fan").is_active
        assert pins.never_together(20, 21), pins.log
    finally:
        alice.close()


def test_two_members_with_an_active_safe_state_are_refused_by_the_config() -> None:
    from pi_mqtt_gpio.server.config_loader import ConfigError, parse_config

    with pytest.raises(ConfigError) as info:
        parse_config("""
interlocks: [[a, b]]
devices:
  a: {type: OutputDevice, pin: 5, safe_state: "on"}
  b: {type: OutputDevice, pin: 6, safe_state: "on"}
""")
    assert "a and b both have safe_state: on" in str(info.value)


@VERSIONS
def test_a_call_that_timed_out_but_ran_later_still_updates_the_twin_and_guards(
        gatekeeper: Any, version: int) -> None:
    """The worker is busy past the call's timeout: the caller gets TIMEOUT, the command
    runs afterwards, and then the retained state says so and max_on_s still turns it off."""
    gk, port = gatekeeper("  heater: {type: OutputDevice, pin: 12, safety: {max_on_s: 1.5}}",
                          "safety: {min_relay_interval_s: 0, min_command_interval_s: 0}")
    gk.daemon.rpc.timeout = 0.3
    release = threading.Event()
    gk.run(lambda: gk.daemon.hw.submit(release.wait, 10))  # a busy worker
    alice = Caller(port, version, "alice")
    try:
        reply = alice.call("heater", "on")
        assert reply["error"]["code"] == "TIMEOUT", reply
        release.set()
        assert wait_for(lambda: gk.pin("heater").is_active, 3)
        assert wait_for(lambda: retained_state(port, version, "heater")["value"] == 1, 3)
        assert wait_for(lambda: not gk.pin("heater").is_active, 3)  # max_on_s armed
        assert wait_for(lambda: retained_state(port, version, "heater")["value"] == 0, 3)
    finally:
        release.set()
        alice.close()


@VERSIONS
def test_a_refused_set_does_not_cancel_a_promised_off(gatekeeper: Any, version: int) -> None:
    """alice leases the relay and sends set_on_ms; bob's ON on mqtt-io's topic is refused
    LEASE_HELD, and must not cancel alice's promised off."""
    gk, port = gatekeeper(RELAYS, COMPAT + "leases: {scope: device}\n")
    alice, bob = Caller(port, version, "alice"), Caller(port, version, "bob")
    watcher = Watcher(port, version)
    try:
        assert alice.call("lease", "acquire", devices=["relay"], ttl=30)["ok"]
        alice.client.publish("home/output/relay/set_on_ms", "600", 1)
        assert wait_for(lambda: gk.pin("relay").is_active, 3)
        bob.client.publish("home/output/relay/set", "ON", 1)
        assert watcher.refusal("relay", 3)["error"]["code"] == "LEASE_HELD"
        assert wait_for(lambda: not gk.pin("relay").is_active, 3)
    finally:
        for c in (alice, bob, watcher):
            c.close()


@VERSIONS
def test_a_full_hardware_queue_does_not_stop_max_on(gatekeeper: Any, version: int) -> None:
    """The hardware queue is full (a flood of reads; here: a small queue and a blocked
    worker): max_on_s still drives the output off as soon as the worker gets to it."""
    gk, port = gatekeeper("  heater: {type: OutputDevice, pin: 12, safety: {max_on_s: 0.4}}",
                          "safety: {min_relay_interval_s: 0, min_command_interval_s: 0}")
    alice = Caller(port, version, "alice")
    release = threading.Event()
    try:
        assert alice.call("heater", "on")["ok"]
        hw = gk.daemon.hw

        def fill() -> None:
            hw._queue_max = 3
            hw.submit(release.wait, 10)
            while hw.pending < hw.queue_max:
                hw.submit(time.sleep, 0)

        gk.run(fill)
        # max_on_s fires while the queue is full (its timer is gone once it has fired)
        assert wait_for(lambda: "heater" not in gk.daemon.guards._max_on, 3)
        release.set()
        assert wait_for(lambda: not gk.pin("heater").is_active, 3)
        assert wait_for(lambda: retained_state(port, version, "heater")["value"] == 0, 3)
    finally:
        release.set()
        alice.close()


@VERSIONS
def test_a_held_back_on_does_not_outlive_the_lease_it_was_sent_under(gatekeeper: Any,
                                                                    version: int) -> None:
    """alice leases the relay, switches it on, off and on again (the last held back by
    spacing) and disconnects: the lease ends, the relay goes safe, and the held-back on
    (sent under that lease) is cancelled."""
    gk, port = gatekeeper("  relay: {type: OutputDevice, pin: 17}", SPACED_RELAY)
    pins = PinRecorder([gk.pin("relay").pin])
    alice = Caller(port, version, "alice")
    watcher = Watcher(port, version)
    assert alice.call("lease", "acquire", devices=["relay"], ttl=30)["ok"]
    assert alice.call("relay", "on")["ok"]
    alice.set("relay", "OFF")
    alice.set("relay", "ON")
    alice.close()
    try:
        refused = watcher.refusal("relay", 5)
        assert refused["method"] == "on" and refused["error"]["code"] == "LEASE_REQUIRED"
        assert [level for _t, _line, level in pins.log] == [True, False], pins.log
    finally:
        watcher.close()


def test_a_finished_blink_frees_its_interlock_partner(gatekeeper: Any) -> None:
    devices = """
  a: {type: LED, pin: 5}
  b: {type: LED, pin: 6}
"""
    gk, port = gatekeeper(devices, "interlocks: [[a, b]]")
    alice = Caller(port, mqtt.MQTTv5, "alice")
    try:
        assert alice.call("a", "blink", on_time=0.05, off_time=0.05, n=2)["ok"]
        assert wait_for(lambda: retained_state(port, mqtt.MQTTv5, "a").get("blinking") is False
                        and not gk.pin("a").is_active, 3)
        reply = alice.call("b", "on")
        assert reply["ok"], reply
    finally:
        alice.close()
