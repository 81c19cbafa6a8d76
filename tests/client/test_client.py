"""The client stub against the real daemon over real sockets: every device type, callbacks,
waits, errors, concurrency, timeouts, dropped connections, leases, asyncio, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from pi_mqtt_gpio.client import (
    ConnectionLost,
    Gatekeeper,
    RemoteAngularServo,
    RemoteButton,
    RemoteBuzzer,
    RemoteDigitalInputDevice,
    RemoteDigitalOutputDevice,
    RemoteDistanceSensor,
    RemoteLED,
    RemoteLightSensor,
    RemoteLineSensor,
    RemoteMCP3008,
    RemoteMCP3202,
    RemoteMotionSensor,
    RemoteMotor,
    RemoteOutputDevice,
    RemotePhaseEnableMotor,
    RemotePWMLED,
    RemotePWMOutputDevice,
    RemoteRGBLED,
    RemoteServo,
    RemoteTonalBuzzer,
    aio,
)
from pi_mqtt_gpio.errors import BadArgument, RequestTimeout, UnknownDevice, UnknownMethod
from tests.conftest import (
    NO_GUARDS,
    Client,
    broker_config,
    start_gatekeeper,
    v5_props,
    wait_for,
)
from tests.conftest import Gatekeeper as Daemon
from tests.e2e.test_gatekeeper import DEVICES

ADMIN = {"allow_anonymous": True, "anonymous_role": "admin", "roles": {}}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_gatekeeper(tmp_path_factory.mktemp("client"),
                         broker_config(devices=DEVICES, auth=ADMIN, safety=NO_GUARDS))
    yield d
    assert d.stop() == 0


@pytest.fixture(params=[5, 4], ids=["v5", "v311"])
def gk(daemon: Daemon, request: pytest.FixtureRequest) -> Iterator[Gatekeeper]:
    g = Gatekeeper("127.0.0.1", daemon.port, node_id="test", protocol=request.param)
    yield g
    g.close()


def test_outputs(gk: Gatekeeper) -> None:
    led = RemoteLED("lamp", gatekeeper=gk)
    led.on()
    assert led.is_lit and led.value == 1
    led.off()
    assert not led.is_lit
    led.blink(on_time=0.02, off_time=0.02, n=2, background=False)
    assert led.state["blinking"] is False
    pwm = RemotePWMLED("dimmer", gatekeeper=gk)
    pwm.value = 0.4
    assert pwm.value == pytest.approx(0.4) and pwm.is_lit
    pwm.pulse(fade_in_time=0.05, fade_out_time=0.05, n=1)
    rgb = RemoteRGBLED("mood", gatekeeper=gk)
    rgb.color = (1, 0, 0.5)
    assert rgb.color == pytest.approx((1, 0, 0.5), abs=0.01)
    rgb.blink(on_time=0.01, off_time=0.01, on_color=(0, 1, 0), n=1)
    RemoteBuzzer("buzzer", gatekeeper=gk).beep(on_time=0.01, off_time=0.01, n=1)
    tone = RemoteTonalBuzzer("tone", gatekeeper=gk)
    tone.play("A4")
    assert tone.tone == "A4" and tone.is_active
    tone.stop()
    relay = RemoteOutputDevice("relay", gatekeeper=gk)
    relay.on()
    assert relay.is_active
    relay.value = 0
    RemoteDigitalOutputDevice("digital_out", gatekeeper=gk).toggle()
    RemotePWMOutputDevice("pwm_out", gatekeeper=gk).value = 0.1
    motor = RemoteMotor("screen", gatekeeper=gk)
    motor.forward(0.5)
    assert motor.value == pytest.approx(0.5) and motor.is_active
    motor.reverse()
    assert motor.value == pytest.approx(-0.5)
    motor.stop()
    pem = RemotePhaseEnableMotor("pan", gatekeeper=gk)
    pem.backward(0.2)
    assert pem.value == pytest.approx(-0.2)
    servo = RemoteServo("servo", gatekeeper=gk)
    servo.min()
    assert servo.value == -1
    servo.detach()
    assert servo.value is None
    cam = RemoteAngularServo("camera", gatekeeper=gk)
    cam.angle = 30
    assert cam.angle == pytest.approx(30, abs=0.5)


def test_refusals_raise_typed_errors(gk: Gatekeeper) -> None:
    cam = RemoteAngularServo("camera", gatekeeper=gk)
    with pytest.raises(BadArgument, match="between -45 and 45"):
        cam.angle = 90
    with pytest.raises(BadArgument):
        RemotePWMLED("dimmer", gatekeeper=gk).value = 7
    with pytest.raises(UnknownDevice):
        RemoteLED("nope", gatekeeper=gk).on()
    with pytest.raises(UnknownMethod):
        gk.call("lamp", "explode")


def test_inputs_callbacks_and_waits(gk: Gatekeeper) -> None:
    bell = RemoteButton("doorbell", gatekeeper=gk)
    threads: list[str] = []
    pressed = threading.Event()

    def on_press() -> None:
        threads.append(threading.current_thread().name)
        pressed.set()

    bell.when_pressed = on_press
    bell.sim_press()
    assert bell.wait_for_press(timeout=30) and bell.is_pressed
    assert pressed.wait(30)
    assert threads == ["gatekeeper-callbacks"]  # never the network thread
    bell.sim_release()
    assert bell.wait_for_release(timeout=30)
    bell.when_pressed = None
    contact = RemoteDigitalInputDevice("contact", gatekeeper=gk)
    contact.sim_press()
    assert contact.wait_for_active(30)
    contact.sim_release()
    assert contact.wait_for_inactive(30)
    pir = RemoteMotionSensor("pir", gatekeeper=gk)
    pir.sim_press()
    assert pir.wait_for_motion(30) and pir.motion_detected
    pir.sim_release()
    assert pir.wait_for_no_motion(30)
    line = RemoteLineSensor("line", gatekeeper=gk)
    line.sim_press()
    assert line.wait_for_no_line(30), line.state
    line.sim_release()
    assert line.wait_for_line(30) and line.line_detected, line.state
    light = RemoteLightSensor("light", gatekeeper=gk)
    light.sim_set(0.9)
    assert light.wait_for_light(30)
    light.sim_set(0.0)
    assert light.wait_for_dark(30)
    gap = RemoteDistanceSensor("gap", gatekeeper=gk)
    gap.sim_set(None, distance=0.1)
    assert gap.wait_for_in_range(30)
    assert gap.distance == pytest.approx(0.1, abs=0.01)
    gap.sim_set(1.0)
    assert gap.wait_for_out_of_range(30)
    adc = RemoteMCP3008("adc", gatekeeper=gk)
    adc.sim_set(0.25)
    assert gk.wait_for(lambda: abs(gk.states["adc"]["value"] - 0.25) < 0.01, 3)
    assert adc.voltage == pytest.approx(0.825, abs=0.01) and adc.raw_value > 0
    adc12 = RemoteMCP3202("adc12", gatekeeper=gk)
    assert adc12.value is not None
    assert not bell.wait_for_press(timeout=0.1)  # a timeout returns False, like gpiozero


def test_a_state_message_after_a_reply_wins_over_its_stamp(gk: Gatekeeper) -> None:
    """A reply's state is read when the call ran but stamped when it is answered: a smoothed
    input's edge, sampled a few ms after ``sim_release``, can carry an earlier stamp than
    that stale reading (on a loaded machine the answer waits longer than the sample). The
    state message, published after the reply, must still replace it; an older state message
    after a newer one is still ignored."""
    name = "probe-order"
    with gk._changed:
        gk._waiters += 1  # parsed at once (nobody waiting keeps the bytes raw)
    try:
        gk._set_state(name, {"line_detected": False, "ts": "2026-01-01T00:00:00.030Z"},
                      reply=True)
        gk._on_device(name, "state", b'{"line_detected":true,"ts":"2026-01-01T00:00:00.010Z"}')
        assert gk.states[name]["line_detected"] is True
        gk._on_device(name, "state", b'{"line_detected":false,"ts":"2026-01-01T00:00:00.005Z"}')
        assert gk.states[name]["line_detected"] is True
    finally:
        with gk._changed:
            gk._waiters -= 1


def test_device_factory_and_catalogue(gk: Gatekeeper) -> None:
    devices = gk.devices()
    assert set(devices) == set(DEVICES)
    for name, spec in DEVICES.items():
        remote = gk.device(name)
        assert type(remote).__name__ == f"Remote{spec['type']}"
        assert remote.state["ts"].endswith("Z")
    with pytest.raises(UnknownDevice):
        gk.device("missing")


def test_ten_threads_lose_no_reply(daemon: Daemon) -> None:
    with Gatekeeper("127.0.0.1", daemon.port, node_id="test") as g:
        errors: list[BaseException] = []
        counts = [0] * 10

        def worker(i: int) -> None:
            led = RemoteLED("lamp", gatekeeper=g)
            try:
                for j in range(30):
                    (led.on if j % 2 else led.off)()
                    counts[i] += 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and counts == [30] * 10


def _fake_gatekeeper(daemon: Daemon, behaviour: str) -> Client:
    """A paho client answering calls for node 'fake' wrongly: bad correlation, garbage
    JSON, or not at all."""
    c = Client(daemon.port, mqtt.MQTTv5, client_id=f"fake-{behaviour}")

    def on_message(client: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        if behaviour == "silent":
            return
        props = v5_props(CorrelationData=b"not-yours" if behaviour == "wrong" else
                         m.properties.CorrelationData)
        payload = b'{"ok": true, "result": 1}' if behaviour == "wrong" else b"\xff{garbage"
        c.c.publish(m.properties.ResponseTopic, payload, 1, properties=props)

    c.c.on_message = on_message
    c.connect()
    c.subscribe("gatekeeper/fake/device/+/call", 1)
    _announce(c, "fake", [{"name": "lamp", "type": "LED"}])
    return c


def _announce(c: Client, node: str, devices: list[dict[str, Any]]) -> None:
    """What a node leaves on the broker: its retained status and catalogue."""
    c.publish(f"gatekeeper/{node}/status", b"online", 1, retain=True)
    c.publish(f"gatekeeper/{node}/devices", json.dumps({"devices": devices}), 1, retain=True)


def _withdraw(c: Client, node: str) -> None:
    c.publish(f"gatekeeper/{node}/status", b"", 1, retain=True)
    c.publish(f"gatekeeper/{node}/devices", b"", 1, retain=True)


@pytest.mark.parametrize("behaviour", ["wrong", "garbage", "silent"])
def test_bad_or_missing_replies_time_out(daemon: Daemon, behaviour: str) -> None:
    fake = _fake_gatekeeper(daemon, behaviour)
    try:
        with Gatekeeper("127.0.0.1", daemon.port, node_id="fake", timeout=0.5) as g:
            start = time.monotonic()
            with pytest.raises(RequestTimeout):
                RemoteLED("lamp", gatekeeper=g).on()
            assert time.monotonic() - start >= 0.45  # it waited for the reply, then gave up
    finally:
        _withdraw(fake, "fake")
        fake.close()


def test_dropped_connection_raises_and_next_call_reconnects(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = broker_config(broker={"listeners": [{"type": "tcp", "host": "127.0.0.1",
                                               "port": port}]},
                        devices={"lamp": {"type": "LED", "pin": 17}}, auth=ADMIN)
    first = start_gatekeeper(tmp_path, cfg)
    g = Gatekeeper("127.0.0.1", port, node_id="test", timeout=8)
    try:
        led = RemoteLED("lamp", gatekeeper=g)
        led.on()
        # A call to a node nobody serves waits; the broker going away ends it at once.
        future = g.submit("lamp", "on", topic="gatekeeper/nobody/device/lamp/call")
        first.stop(signal.SIGKILL)
        with pytest.raises(ConnectionLost):  # not RequestTimeout: it did not wait the 8 s out
            g.result(future, 8, "lamp", "on")
        second = start_gatekeeper(tmp_path, cfg)
        try:
            led.on()  # reconnects (paho's backoff) and works
            assert led.is_lit
        finally:
            assert second.stop() == 0
    finally:
        g.close()
        g.close()  # idempotent


def test_lease_context_acquires_renews_releases(daemon: Daemon) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    server = Client(daemon.port, mqtt.MQTTv5, client_id="fake-lease-server")

    def on_message(c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        req = json.loads(m.payload)
        seen.append((req["method"], req["kwargs"]))
        result = {"lease_id": "L1", "holder": "tester", "expires": "2026-01-01T00:00:00.000Z"}
        server.c.publish(m.properties.ResponseTopic, json.dumps({"ok": True, "result": result}),
                         1, properties=v5_props(CorrelationData=m.properties.CorrelationData))

    server.c.on_message = on_message
    server.connect()
    server.subscribe("gatekeeper/leasing/lease/call", 1)
    _announce(server, "leasing", [])
    try:
        with Gatekeeper("127.0.0.1", daemon.port, node_id="leasing") as g, \
                g.lease(["screen"], ttl=0.6) as lease:
            assert lease.lease_id == "L1" and lease.holder == "tester"
            assert wait_for(lambda: any(m == "renew" for m, _ in seen), 10)  # renewed in time
        methods = [m for m, _ in seen]
        assert methods[0] == "acquire" and methods[-1] == "release"
        assert "renew" in methods
        assert seen[0][1] == {"ttl": 0.6, "devices": ["screen"]}
        assert seen[-1][1] == {"devices": ["screen"], "lease_id": "L1"}
    finally:
        _withdraw(server, "leasing")
        server.close()


def test_asyncio_flavour(daemon: Daemon) -> None:
    async def main() -> list[str]:
        got: list[str] = []
        async with aio.Gatekeeper("127.0.0.1", daemon.port, node_id="test") as g:
            led = aio.RemoteLED("lamp", gatekeeper=g)
            await led.on()
            assert led.is_lit
            await led.set_value(0)
            assert led.value == 0
            with pytest.raises(TypeError, match="set_value"):
                led.value = 1
            bell = aio.RemoteButton("doorbell", gatekeeper=g)
            loop = asyncio.get_running_loop()

            async def ding() -> None:
                assert asyncio.get_running_loop() is loop
                got.append("ding")

            bell.when_pressed = ding
            await bell.sim_release()
            await bell.sim_press()
            assert await bell.wait_for_press(2)
            for _ in range(50):
                if got:
                    break
                await asyncio.sleep(0.02)
            await bell.sim_release()
            with pytest.raises(BadArgument):
                await aio.RemoteAngularServo("camera", gatekeeper=g).set_angle(400)
            motor = await g.device("screen")
            await motor.forward(0.3)
            assert motor.value == pytest.approx(0.3)
            await motor.stop()
        return got

    assert asyncio.run(main()) == ["ding"]


def _cli(daemon: Daemon, *args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PI_MQTT_HOST="127.0.0.1", PI_MQTT_PORT=str(daemon.port),
               PI_MQTT_NODE="test")
    return subprocess.run([sys.executable, "-m", "pi_mqtt_gpio.client.cli", *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


def test_cli(daemon: Daemon) -> None:
    listing = _cli(daemon, "devices")
    assert listing.returncode == 0
    assert any(line.split()[:2] == ["lamp", "LED"] for line in listing.stdout.splitlines())
    res = _cli(daemon, "call", "dimmer", "value", "0.5")
    assert res.returncode == 0 and json.loads(res.stdout)["state"]["value"] == 0.5
    res = _cli(daemon, "call", "lamp", "blink", "on_time=0.05", "n=1")
    assert res.returncode == 0
    bad = _cli(daemon, "call", "camera", "angle", "400")
    assert bad.returncode == 1 and bad.stderr.startswith("BAD_ARGUMENT:")
    env = dict(os.environ, PI_MQTT_HOST="127.0.0.1", PI_MQTT_PORT=str(daemon.port),
               PI_MQTT_NODE="test")
    watch = subprocess.Popen([sys.executable, "-m", "pi_mqtt_gpio.client.cli", "watch", "lamp"],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert watch.stdout is not None
        first = watch.stdout.readline()  # the retained state: watch has subscribed
        assert first.startswith("lamp state"), first
        assert _cli(daemon, "call", "lamp", "toggle").returncode == 0
        deadline = time.monotonic() + 5
        lines: list[str] = []
        while time.monotonic() < deadline:
            line = watch.stdout.readline()
            lines.append(line)
            if line.startswith("lamp state"):
                break
        assert any(line.startswith("lamp state") for line in lines)
    finally:
        watch.kill()
        watch.wait()
    unreachable = subprocess.run(
        [sys.executable, "-m", "pi_mqtt_gpio.client.cli", "--host", "127.0.0.1", "--port", "1",
         "--timeout", "1", "devices"], capture_output=True, text=True, timeout=15)
    assert unreachable.returncode == 2 and "pi-mqtt-gpio:" in unreachable.stderr
