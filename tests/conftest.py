"""Shared fixtures: the real daemon in a subprocess on ephemeral ports, and paho helpers."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from argon2 import PasswordHasher
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

if TYPE_CHECKING:
    from pi_mqtt_gpio.server.daemon import Daemon

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"pi-mqtt-gatekeeper ready: (\S+) on (.*)$")


@dataclass
class Gatekeeper:
    proc: subprocess.Popen[str]
    root: str
    ports: dict[str, int]
    config_path: Path
    log: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"

    @property
    def port(self) -> int:
        return self.ports["tcp"]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_log(self, text: str, timeout: float, after: int = 0) -> str:
        """The first line (from line ``after`` on) holding ``text``, polled until a deadline."""
        end = time.monotonic() + timeout
        while True:
            for line in self.log[after:]:
                if text in line:
                    return line
            if time.monotonic() > end:
                raise AssertionError(f"no log line with {text!r} within {timeout} s:\n"
                                     + "\n".join(self.log[-30:]))
            time.sleep(0.05)

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


def start_gatekeeper(tmp: Path, config: dict[str, Any], *, extra_args: list[str] | None = None,
                     timeout: float = 20.0, ready: bool = True) -> Gatekeeper:
    """The daemon in a subprocess, once it printed its ready line (``ready=False``: at once,
    its root and ports unknown; its ``log`` fills as it runs)."""
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [sys.executable, "-m", "pi_mqtt_gpio.server.main", "--config", str(path),
           "--simulate", *(extra_args or [])]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp, env=env)
    lines: list[str] = []
    found: queue.Queue[tuple[str, dict[str, int]] | None] = queue.Queue()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            m = READY.search(line)
            if m:
                ports: dict[str, int] = {}
                for part in m.group(2).split(", "):
                    kind, addr = part.split(" ")
                    ports.setdefault(kind, int(addr.rsplit(":", 1)[1]))
                found.put((m.group(1), ports))
        found.put(None)

    threading.Thread(target=reader, daemon=True).start()
    if not ready:
        return Gatekeeper(proc, "", {}, path, lines)
    try:
        result = found.get(timeout=timeout)
    except queue.Empty:
        proc.kill()
        raise RuntimeError("gatekeeper did not start:\n" + "\n".join(lines)) from None
    if result is None:
        raise RuntimeError("gatekeeper exited:\n" + "\n".join(lines))
    return Gatekeeper(proc, result[0], result[1], path, lines)


# Test users' password hashes: argon2id at its smallest costs (a check takes well under a
# millisecond instead of about 230 ms), for the tests that are not about hashing; the daemon
# checks a hash with the parameters written in it (tests/server/test_passwd.py, test_security.py
# and the attacks in tests/security keep the real costs).
_CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def cheap_hash(password: str) -> str:
    return _CHEAP_HASHER.hash(password)


# Device-behaviour tests switch relays as fast as they like; the guards that would slow or
# refuse that are tested on their own (tests/server/test_safety.py, test_guards_e2e.py).
NO_GUARDS = {"min_relay_interval_s": 0, "min_command_interval_s": 0, "flap_lockout_s": 0}


def broker_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "node_id": "test",
        "broker": {"listeners": [{"type": "tcp", "host": "127.0.0.1", "port": 0},
                                 {"type": "websocket", "host": "127.0.0.1", "port": 0}]},
        "auth": {"allow_anonymous": True, "anonymous_role": "everyone",
                 "roles": {"everyone": {"subscribe": ["#"], "publish": ["#"]}}},
        "devices": {},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gatekeeper]:
    """One plain broker shared by the tests that do not need their own config."""
    gk = start_gatekeeper(tmp_path_factory.mktemp("broker"), broker_config())
    yield gk
    assert gk.alive(), "the shared broker died during the tests:\n" + "\n".join(gk.log[-50:])
    assert gk.stop() == 0


@pytest.fixture(params=[mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def version(request: pytest.FixtureRequest) -> int:
    return int(request.param)


class Client:
    """A paho client with queues for what arrives, for tests."""

    _n = 0

    def __init__(self, port: int, version: int, *, client_id: str | None = None,
                 transport: str = "tcp", clean: bool = True, **connect: Any) -> None:
        Client._n += 1
        self.client_id = client_id if client_id is not None else f"t{Client._n}-{os.getpid()}"
        self.version = version
        kwargs: dict[str, Any] = {}
        if version != mqtt.MQTTv5:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=version, transport=transport, **kwargs)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.disconnects: queue.Queue[Any] = queue.Queue()
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_connect = lambda c, u, f, rc, p: self.connack.put((rc, p))
        self.c.on_disconnect = lambda c, u, f, rc, p: self.disconnects.put(rc)
        self.port = port
        self.connect_kwargs = connect
        self.clean = clean

    def connect(self, *, wait: bool = True, **kw: Any) -> Any:
        args: dict[str, Any] = dict(self.connect_kwargs)
        args.update(kw)
        keepalive = args.pop("keepalive", 30)
        if self.version == mqtt.MQTTv5:
            args.setdefault("clean_start", self.clean)
        self.c.connect("127.0.0.1", self.port, keepalive, **args)
        self.c.loop_start()
        if wait:
            rc, props = self.connack.get(timeout=10)
            return rc, props
        return None

    def subscribe(self, topic: str, qos: int = 0, **kw: Any) -> Any:
        done: queue.Queue[Any] = queue.Queue()
        self.c.on_subscribe = lambda c, u, mid, rcs, p: done.put(rcs)
        self.c.subscribe(topic, qos, **kw)
        return done.get(timeout=10)

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                properties: Properties | None = None) -> mqtt.MQTTMessageInfo:
        info = self.c.publish(topic, payload, qos, retain, properties=properties)
        if qos:
            info.wait_for_publish(10)
        return info

    def get(self, timeout: float = 5.0) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def until(self, sentinel: str | Callable[[mqtt.MQTTMessage], bool],
              timeout: float = 10.0) -> list[mqtt.MQTTMessage]:
        """Every message received before the sentinel (the first message on that topic, or the
        first for which the predicate holds), which is read and dropped. "Nothing arrives" is
        ``until(...) == []`` with a sentinel ordered after anything that could have arrived: a
        publish by the same session after it, or a state the daemon's one hardware worker
        publishes for a later command."""
        done = (lambda m: m.topic == sentinel) if isinstance(sentinel, str) else sentinel
        got: list[mqtt.MQTTMessage] = []
        end = time.monotonic() + timeout
        while True:
            try:
                m = self.messages.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no sentinel within {timeout} s; got "
                                     f"{[(x.topic, x.payload) for x in got]}") from None
            if done(m):
                return got
            got.append(m)

    def nothing_until(self, sentinel: str | Callable[[mqtt.MQTTMessage], bool],
                      timeout: float = 10.0) -> None:
        """No message before the sentinel (see ``until``)."""
        got = self.until(sentinel, timeout)
        assert not got, f"unexpected before the sentinel: {[(m.topic, m.payload) for m in got]}"

    def close(self) -> None:
        try:
            self.c.disconnect()
        finally:
            self.c.loop_stop()


def v5_props(**values: Any) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    for key, value in values.items():
        setattr(props, key, value)
    return props


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        try:
            c.close()
        except Exception:
            pass


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class PinRecorder:
    """Every change of some MockFactory pins, in the order they happened, in one log of
    (time.monotonic(), pin number, level): the order of changes on two pins cannot be
    rebuilt from each pin's own ``states`` history."""

    def __init__(self, pins: list[Any], clock: Any = None) -> None:
        import time as _time

        self.log: list[tuple[float, int, bool]] = []  # (time, BCM line, level)
        self._lock = threading.Lock()
        self._clock = clock or _time.monotonic
        for pin in pins:
            self._wrap(pin)

    def _wrap(self, pin: Any) -> None:
        original = pin._change_state
        line = int(pin.info.name.removeprefix("GPIO"))  # BCM number (info.number: header)

        def change(value: Any) -> Any:
            with self._lock:
                changed = original(value)
                if changed:
                    self.log.append((self._clock(), line, bool(value)))
                return changed

        pin._change_state = change

    def levels(self) -> list[tuple[float, dict[int, bool]]]:
        """The level of every recorded pin after each change."""
        now: dict[int, bool] = {}
        out = []
        for t, number, level in list(self.log):
            now[number] = level
            out.append((t, dict(now)))
        return out

    def never_together(self, a: int, b: int) -> bool:
        return not any(lv.get(a) and lv.get(b) for _t, lv in self.levels())

    def on_times(self, number: int) -> list[float]:
        """How long the pin stayed high, each time it went high and low again."""
        out, since = [], None
        for t, pin, level in list(self.log):
            if pin != number:
                continue
            if level and since is None:
                since = t
            elif not level and since is not None:
                out.append(t - since)
                since = None
        return out


# The longest files, started first so that none of them is left running alone at the end
# when scripts/test spreads the files over its workers (pytest-xdist, --dist loadfile).
LONGEST_FIRST = ("tests/deploy/test_install.py", "tests/security/test_soak.py",
                 "tests/server/test_persistence.py", "tests/deploy/test_wheel.py",
                 "tests/web/test_dashboard_browser.py", "tests/deploy/test_deb.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest files first; the real Home Assistant stage (tests/ha) last: its Home
    Assistant is set up in the background (scripts/ha-setup) while everything else runs."""
    def rank(item: pytest.Item) -> int:
        path = item.path.relative_to(ROOT).as_posix()
        if path.startswith("tests/ha/"):
            return len(LONGEST_FIRST) + 1
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items[:] = sorted(items, key=rank)  # stable: the order inside each file is kept


class GatekeeperThread:
    """The daemon on its own event loop in a thread of this process (so that a test can read
    its MockFactory pins), on a Compute Module's 54 simulated lines."""

    def __init__(self, text: str, port: int = 0) -> None:
        self.text = text.replace("port: 0", f"port: {port}") if port else text
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.daemon: Daemon | None = None

    def run(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(30)

    def start(self) -> int:
        from gpiozero.pins.mock import MockFactory

        from pi_mqtt_gpio.server.config_loader import parse_config
        from pi_mqtt_gpio.server.daemon import Daemon
        from pi_mqtt_gpio.server.pins import simulated

        def factory() -> Any:  # a Compute Module's 54 simulated lines
            return MockFactory(revision="a02100", pin_class=simulated.SimulatedPin)

        async def start() -> Daemon:
            daemon = Daemon(parse_config(self.text), simulate=True)
            original = simulated.simulated_factory
            simulated.simulated_factory = factory
            try:
                await daemon.start()
            finally:
                simulated.simulated_factory = original
            return daemon

        self.daemon = asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        bound = [port for kind, _h, port in self.daemon.server.bound if kind == "tcp"]
        return bound[0] if bound else 0  # 0: external mode, no listener of its own

    def stop(self) -> None:
        if self.daemon is not None:
            asyncio.run_coroutine_threadsafe(self.daemon.stop(), self.loop).result(30)
            self.daemon = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def pin(self, device: str, attr: str | None = None) -> Any:
        assert self.daemon is not None
        dev = self.daemon.hw.adapters[device].device
        return getattr(dev, attr) if attr else dev
