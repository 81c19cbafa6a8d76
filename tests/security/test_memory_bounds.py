"""Nothing a client sends grows the daemon's memory without bound: deep topics, retained
messages, subscriptions, and subscribers that stop acknowledging."""

from __future__ import annotations

import time

import pytest

from pi_mqtt_gpio.mqtt.packets import PROTOCOL_50, PROTOCOL_311, Prop
from tests.conftest import Gatekeeper, wait_for
from tests.security.conftest import PW, start_secure
from tests.security.raw import RawClient

VERSIONS = [pytest.param(PROTOCOL_311, id="v311"), pytest.param(PROTOCOL_50, id="v5")]
FILTER_REFUSED = {PROTOCOL_311: 0x80, PROTOCOL_50: 0x8F}
MIB = 1024


@pytest.mark.parametrize("version", VERSIONS)
def test_deep_filters_are_refused_and_cost_nothing(target: Gatekeeper, version: int) -> None:
    """A viewer sends 10 SUBSCRIBEs of 4 filters with 32,000 levels inside {root}/#."""
    raw = RawClient(target.port, version=version)
    assert raw.connect(f"deep-{version}", username="guest", password=PW).reason_code == 0
    before = target.rss_kib()
    for i in range(10):
        filters = [f"{target.root}/" + "/".join(["a"] * 32_000) + f"/{i}{j}" for j in range(4)]
        assert raw.subscribe(*filters) == [FILTER_REFUSED[version]] * 4
    grown = target.rss_kib() - before
    print(f"RSS growth after 40 deep filters: {grown} KiB")
    assert grown < 10 * MIB
    assert raw.subscribe(f"{target.root}/device/+/state") == [0]  # still served
    raw.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_deep_retained_topic_is_refused(target: Gatekeeper, version: int) -> None:
    raw = RawClient(target.port, version=version)
    assert raw.connect(f"deepret-{version}", username="root", password=PW).reason_code == 0
    deep = "junk/" + "/".join(["a"] * 32_000)
    code = raw.publish(deep, b"x", qos=1, retain=True)
    assert code == (0x90 if version == PROTOCOL_50 else 0)  # 3.1.1: acknowledged, dropped
    reader = RawClient(target.port, version=version)
    reader.connect(f"deepret-r-{version}", username="root", password=PW)
    assert reader.subscribe("junk/#") == [0]
    with pytest.raises(TimeoutError):
        reader.recv(0.5)  # nothing was retained
    raw.close()
    reader.close()


def test_subscription_budget_is_bytes_and_nodes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    gk = start_secure(tmp_path, max_subscription_bytes_per_client=4096,
                      max_subscription_levels_per_client=200, max_topic_levels=32)
    try:
        raw = RawClient(gk.port)
        assert raw.connect("subs", username="guest", password=PW).reason_code == 0
        codes = []
        for i in range(40):  # each filter: 31 levels of "x" under the root
            codes += raw.subscribe(f"{gk.root}/" + "/".join(["x"] * 29) + f"/{i}")
        assert codes[:6] == [0] * 6 and set(codes[6:]) == {0x97}  # 6 * 32 levels <= 200
        raw.close()
        # the budget comes back when the session ends
        again = RawClient(gk.port)
        again.connect("subs", username="guest", password=PW)
        assert again.subscribe(f"{gk.root}/" + "/".join(["x"] * 29) + "/z") == [0]
        again.close()
    finally:
        gk.stop()


@pytest.mark.parametrize("version", VERSIONS)
def test_stuck_subscribers_are_cut_off_and_memory_comes_back(tmp_path, version: int  # type: ignore[no-untyped-def]
                                                             ) -> None:
    """Two subscribers with Receive Maximum 1 that never acknowledge; a publisher sends
    400 x 255 KiB QoS 1 messages. Each session holds at most its byte budget, the stuck
    clients are disconnected after ack_timeout_s, and RSS comes back after they close."""
    gk = start_secure(tmp_path, ack_timeout_s=2.0, max_queued_bytes_per_client=8 * 1024 * 1024)
    try:
        stuck = []
        for i in range(2):
            raw = RawClient(gk.port, version=version)
            props = {Prop.RECEIVE_MAXIMUM: 1} if version == PROTOCOL_50 else {}
            assert raw.connect(f"stuck-{i}", username="root", password=PW,
                               properties=props).reason_code == 0
            assert raw.subscribe("bulk/#", qos=1) == [1]
            stuck.append(raw)
        pub = RawClient(gk.port)
        pub.connect("bulk-pub", username="root", password=PW)
        time.sleep(0.5)
        base = gk.rss_kib()
        payload = b"p" * (255 * 1024)
        peak = base
        for i in range(400):
            pub.publish(f"bulk/{i}", payload, qos=1)
            if i % 50 == 0:
                peak = max(peak, gk.rss_kib())
        peak = max(peak, gk.rss_kib())
        print(f"RSS base {base} KiB, peak {peak} KiB (+{(peak - base) // 1024} MiB)")
        assert peak - base < 64 * MIB
        # never acknowledging: disconnected within ack_timeout_s (+ slack)
        for raw in stuck:
            deadline = time.monotonic() + 6
            closed = False
            while time.monotonic() < deadline:
                try:
                    if raw.recv(deadline - time.monotonic()) is None:
                        closed = True
                        break
                except TimeoutError:
                    break
            assert closed, "a stuck subscriber was never cut off"
            raw.close()
        pub.close()
        assert wait_for(lambda: gk.rss_kib() - base < 24 * MIB, 10), \
            f"memory did not come back: {gk.rss_kib() - base} KiB above base"
        print(f"RSS after the stuck clients left: {gk.rss_kib()} KiB")
    finally:
        gk.stop()
