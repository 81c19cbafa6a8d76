"""Sockets that never finish their TLS handshake or WebSocket upgrade count against the same
pre-login limits as plain TCP; browser pages of other sites cannot use the WebSocket
listener; plain HTTP does not flood the log."""

from __future__ import annotations

import base64
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from pi_mqtt_gpio.mqtt.codec import encode
from pi_mqtt_gpio.mqtt.logguard import LOG_TOTAL
from pi_mqtt_gpio.mqtt.packets import PROTOCOL_50, Connect, Publish
from tests.conftest import Client, Gatekeeper, cheap_hash, start_gatekeeper, wait_for
from tests.security.conftest import PW, Watch, secure_config

PER_ADDRESS = 20  # max_pending_per_address in these tests: twice that is held at most
TIMEOUT_S = 3.0  # connect_timeout_s: TLS handshake, upgrade and CONNECT together
PROBE = "probe"  # an admin whose password check is cheap (see _start)
LOG_WINDOW_S = 10.0  # the web log limiter's window (LogLimiter's default)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)
    return d


def _start(tmp: Path, certs: Path, **limits: Any) -> Gatekeeper:
    config = secure_config(tmp, **limits)
    # The upgrades of the Origin tests log in as PROBE (a cheap hash: these tests are not
    # about hashing, and on a loaded machine a real hash's check can outlast the login time
    # of TIMEOUT_S, which closes the socket before its PUBLISH is read).
    config["auth"]["users"][PROBE] = {"password_hash": cheap_hash(PW), "role": "admin"}
    config["broker"]["listeners"] = [
        {"type": "tcp", "host": "127.0.0.1", "port": 0},
        {"type": "tls", "host": "127.0.0.1", "port": 0, "certfile": str(certs / "cert.pem"),
         "keyfile": str(certs / "key.pem")},
        {"type": "websocket", "host": "127.0.0.1", "port": 0,
         "allowed_origins": ["https://panel.example:8443"],
         "allowed_hosts": ["gatekeeper.example"]},
    ]
    return start_gatekeeper(tmp, config)


@pytest.fixture(scope="module")
def gk(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Any:
    # started as systemd and most shells start a process: 1,024 open files (soft limit)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, soft), hard))
    try:
        g = _start(tmp_path_factory.mktemp("prelogin"), certs, connect_timeout_s=TIMEOUT_S,
                   max_pending_per_address=PER_ADDRESS)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    yield g
    assert g.alive(), "\n".join(g.log[-40:])
    assert g.stop() == 0


# ---------------------------------------------------------------- held sockets
_HOLDER = """
import resource, select, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
plan = [p.split(":") for p in sys.argv[1].split(",")]   # port:count:source
socks = []
for port, count, src in plan:
    for _ in range(int(count)):
        try:
            socks.append(socket.create_connection(("127.0.0.1", int(port)), timeout=5,
                                                  source_address=(src, 0)))
        except OSError:
            pass
print(len(socks), flush=True)
open_ = set(socks)
for line in sys.stdin:
    # which sockets the server closed (readable: EOF or reset; they never get data)
    while open_:
        ready = select.poll()
        for s in open_:
            ready.register(s, select.POLLIN)
        done = [fd for fd, _ in ready.poll(0)]
        if not done:
            break
        for s in [s for s in open_ if s.fileno() in done]:
            open_.discard(s)
            s.close()
    print(len(open_), flush=True)
"""


class Held:
    """Sockets opened by another process (``port:count:source`` each) that send nothing."""

    def __init__(self, *plan: tuple[int, int, str]) -> None:
        spec = ",".join(f"{p}:{n}:{s}" for p, n, s in plan)
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, spec],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.opened = int(self.proc.stdout.readline() or 0)

    def still_open(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _login(gk: Gatekeeper, kind: str, certs: Path) -> int:
    transport = "websockets" if kind == "websocket" else "tcp"
    c = Client(gk.ports[kind], mqtt.MQTTv5, transport=transport)
    if kind == "tls":
        c.c.tls_set(ca_certs=str(certs / "cert.pem"))
    c.c.username_pw_set(PROBE, PW)
    try:
        rc, _ = c.connect()
        return int(getattr(rc, "value", rc))
    finally:
        c.close()


def test_tls_and_websocket_sockets_that_never_start_are_limited(gk: Gatekeeper,
                                                                certs: Path) -> None:
    """150 sockets to the TLS listener that never send a ClientHello and 150 to the WebSocket
    listener that never send the upgrade, all from one address: past twice the address's
    share the server closes them at once, logins on every listener still work while the
    rest are held, and those are closed after the login timeout."""
    base = gk.rss_kib()
    held = Held((gk.ports["tls"], 150, "127.0.8.1"), (gk.ports["websocket"], 150, "127.0.8.1"))
    try:
        counts: list[int] = []
        assert wait_for(lambda: counts.append(held.still_open())
                        or counts[-1] <= 2 * PER_ADDRESS, timeout=TIMEOUT_S * 10), counts
        print(f"{held.opened} opened, {counts[-1]} still held by the server")
        assert counts[-1] > 0, "closed by the timeout, not by the per-address limit"
        results = {kind: _login(gk, kind, certs) for kind in ("tcp", "tls", "websocket")}
        print("logins while held:", results)
        assert results == {"tcp": 0, "tls": 0, "websocket": 0}
        peak = gk.rss_kib()
        assert wait_for(lambda: held.still_open() == 0, timeout=TIMEOUT_S * 10)
        print(f"RSS {base // 1024} MiB before, {peak // 1024} MiB while held")
        assert peak - base < 32 * 1024
    finally:
        held.close()


def test_a_thousand_pending_sockets_leave_the_logins_working(gk: Gatekeeper,
                                                             certs: Path) -> None:
    """1,100 TLS sockets that never start TLS, from 55 addresses (within each address's
    share): more than a process's default 1,024 open files; logins on every listener work
    (the gatekeeper raised its open files limit), and all are closed after the timeout."""
    plan = [(gk.ports["tls"], 20, f"127.0.9.{i}") for i in range(1, 56)]
    held = Held(*plan)
    try:
        print(f"{held.opened} TLS sockets opened; {held.still_open()} held")
        results = {kind: _login(gk, kind, certs) for kind in ("tcp", "tls", "websocket")}
        print("logins:", results)
        assert results == {"tcp": 0, "tls": 0, "websocket": 0}
        assert wait_for(lambda: held.still_open() == 0, timeout=TIMEOUT_S * 10)
    finally:
        held.close()
    assert any("open files limit" in line for line in gk.log)


def _server_sockets(port: int, source: str) -> int:
    """Sockets of the daemon's ``port`` from ``source`` that the daemon has not closed yet
    (ESTABLISHED on its side), from /proc/net/tcp: what it holds, seen from outside. The
    kernel lists the table in chunks, each resumed by position, so while other processes
    open and close sockets a socket can be listed twice (or skipped): each is counted once,
    by its peer's port, from as few reads as possible."""
    peer = "".join(f"{int(b):02X}" for b in reversed(source.split(".")))
    fd = os.open("/proc/net/tcp", os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 22):
            chunks.append(chunk)
    finally:
        os.close(fd)
    peers = set()
    for line in b"".join(chunks).decode().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        if state == "01" and int(local.split(":")[1], 16) == port \
                and remote.split(":")[0] == peer:
            peers.add(remote)
    return len(peers)


def _upgrade_request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: mqtt\r\n\r\n").encode()


def test_upgraded_websockets_that_never_log_in_count_until_closed(gk: Gatekeeper) -> None:
    """Batches of WebSocket sockets that upgrade and never send CONNECT, from one address,
    for over twice the login timeout (320 sockets): the sockets the daemon holds open for
    that address never exceed twice its share, also while the timed-out ones close (they
    count until their socket is closed, and get 2 s for it, not websockets' 10 s)."""
    port = gk.ports["websocket"]
    source = "127.0.8.2"
    socks: list[socket.socket] = []
    peak = 0
    before = len(gk.log)
    start = time.monotonic()
    samples: list[tuple[float, int]] = []  # (s since the first batch, sockets held)
    unanswered = 0

    def held() -> int:
        n = _server_sockets(port, source)
        samples.append((round(time.monotonic() - start, 2), n))
        return n

    try:
        for _ in range(16):
            # (a generous timeout: a socket whose answer a loaded machine delays must not be
            # given up on and left in the listen backlog, where it counts as held)
            batch = [socket.create_connection(("127.0.0.1", port), timeout=30,
                                              source_address=(source, 0)) for _ in range(20)]
            for s in batch:
                s.sendall(_upgrade_request(port))
            for s in batch:  # each is answered (101) or closed before the next batch
                try:
                    s.recv(4096)
                except TimeoutError:
                    unanswered += 1  # maybe still in the listen backlog: counted as held
                except OSError:
                    pass
            socks += batch
            peak = max(peak, held())
            time.sleep(0.5)  # pacing: the batches span 2.7 login timeouts
            peak = max(peak, held())
        print(f"{len(socks)} upgraded sockets opened; at most {peak} held by the daemon")
        assert 0 < peak <= 2 * PER_ADDRESS, (
            f"held per sample (s, sockets): {samples}; {unanswered} sockets got no answer in "
            f"30 s; the daemon's lines about {source}: "
            f"{[line for line in gk.log[before:] if source in line][-20:]}")
        assert wait_for(lambda: _server_sockets(port, source) == 0, timeout=TIMEOUT_S + 5), \
            f"{_server_sockets(port, source)} still open {TIMEOUT_S + 5:g} s after the last batch"
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------- Origin
def _frame(payload: bytes) -> bytes:
    """A masked binary WebSocket frame (what a browser sends)."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x82, 0x80 | n]) if n < 126 else bytes([0x82, 0x80 | 126]) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _upgrade_and_publish(port: int, origin: str | None, topic: str, host: str = "127.0.0.1",
                         extra: tuple[str, ...] = (), source: str = "127.0.0.1") -> bytes:
    """An upgrade with ``origin`` (and ``Host: host:port``, ``extra`` headers) and, in the
    same write, MQTT CONNECT (admin) and a PUBLISH of ``topic``: returns the server's first
    answer."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = ["GET /mqtt HTTP/1.1", f"Host: {host}:{port}", *extra, "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
             "Sec-WebSocket-Version: 13", "Sec-WebSocket-Protocol: mqtt"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    connect = encode(Connect(f"o{os.getpid()}{time.monotonic_ns()}", PROTOCOL_50,
                             username=PROBE, password=PW.encode()), PROTOCOL_50)
    publish = encode(Publish(topic, b"x", 0, False, False, None, {}), PROTOCOL_50)
    # (waits that return on the answer: a loaded machine's password check, which the
    # CONNACK waits for, can take longer than 5 s, and a socket closed before it never
    # has its PUBLISH read)
    with socket.create_connection(("127.0.0.1", port), timeout=60,
                                  source_address=(source, 0)) as s:
        s.sendall(request + _frame(connect) + _frame(publish))
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
        if answer.startswith(b"HTTP/1.1 101"):
            try:
                s.recv(4096)  # the CONNACK: the PUBLISH has been read
            except OSError:
                pass
    return answer


def _published_before_sentinel(port: int, watch: Watch) -> list[str]:
    """The topics the admin's watch saw up to a sentinel published over an upgrade now
    (everything published before it has been read by then)."""
    _upgrade_and_publish(port, None, "probe/sentinel")
    seen: list[str] = []

    def sentinel() -> bool:
        seen.extend(m.topic for m in watch.drain())
        return "probe/sentinel" in seen

    assert wait_for(sentinel, timeout=60), seen
    return seen


def _log_sentinel(gk: Gatekeeper, source: str, before: int) -> None:
    """A line of our own (a failed login from ``source``) after what was sent before: all
    that it logged is in the log once this appears."""
    raw = socket.create_connection(("127.0.0.1", gk.port), source_address=(source, 0))
    raw.sendall(encode(Connect("sentinel", PROTOCOL_50, username=PROBE, password=b"no"),
                       PROTOCOL_50))
    try:
        assert wait_for(lambda: any(source in line for line in gk.log[before:]), timeout=60)
    finally:
        raw.close()


def test_websocket_upgrade_from_a_foreign_page_is_refused(gk: Gatekeeper) -> None:
    """Origin of another site: 403, and nothing sent after the request reaches the broker
    (an admin on # sees the accepted ones' messages, and a sentinel after, but not it).
    The listener's own origin, a listed one and no Origin at all are accepted."""
    port = gk.ports["websocket"]
    watch = Watch(gk)
    try:
        cases = {"foreign": "http://evil.example", "null": "null",
                 "other-port": f"http://127.0.0.1:{port + 1}",
                 "same": f"http://127.0.0.1:{port}", "listed": "https://panel.example:8443",
                 "none": None}
        answers = {name: _upgrade_and_publish(port, origin, f"probe/{name}")
                   for name, origin in cases.items()}
        seen = _published_before_sentinel(port, watch)
        status = {name: a.split(b"\r\n", 1)[0].decode() for name, a in answers.items()}
        print(status, seen)
        for name in ("foreign", "null", "other-port"):
            assert status[name].startswith("HTTP/1.1 403"), status
            assert f"probe/{name}" not in seen
        for name in ("same", "listed", "none"):
            assert status[name].startswith("HTTP/1.1 101"), status
            assert f"probe/{name}" in seen
    finally:
        watch.close()
    assert any("refused a WebSocket upgrade" in line for line in gk.log)


def test_dns_rebinding_and_doubled_headers_are_refused(gk: Gatekeeper) -> None:
    """A page whose own name was made to point here (DNS rebinding: its Host and Origin are
    its name) is refused with 403 before any MQTT is read; a name in ``allowed_hosts`` and an
    IP address are accepted. Two Origin headers are a 400 without a traceback."""
    port = gk.ports["websocket"]
    watch = Watch(gk)
    before = len(gk.log)
    try:
        rebind = "rebind.attacker.example"
        cases = {
            "rebound": (f"http://{rebind}:{port}", rebind, ()),
            "rebound-listed": ("https://panel.example:8443", rebind, ()),
            "allowed-host": (f"http://gatekeeper.example:{port}", "gatekeeper.example", ()),
            "ip": (f"http://127.0.0.1:{port}", "127.0.0.1", ()),
            "localhost": (f"http://localhost:{port}", "localhost", ()),
            "no-origin": (None, rebind, ()),
            "two-origins": (f"http://127.0.0.1:{port}", "127.0.0.1",
                            ("Origin: http://evil.example",)),
        }
        answers = {name: _upgrade_and_publish(port, origin, f"probe/{name}", host, extra)
                   for name, (origin, host, extra) in cases.items()}
        seen = _published_before_sentinel(port, watch)
        status = {name: a.split(b"\r\n", 1)[0].decode() for name, a in answers.items()}
        print(status)
        for name in ("rebound", "rebound-listed"):
            assert status[name].startswith("HTTP/1.1 403"), status
            assert f"probe/{name}" not in seen
        for name in ("allowed-host", "ip", "localhost", "no-origin"):
            assert status[name].startswith("HTTP/1.1 101"), status
            assert f"probe/{name}" in seen
        assert status["two-origins"].startswith("HTTP/1.1 400"), status
        assert "probe/two-origins" not in seen
    finally:
        watch.close()
    assert not [line for line in gk.log[before:] if "Traceback" in line or "Error" in line]


def test_refusals_from_many_addresses_log_a_bounded_number_of_lines(gk: Gatekeeper) -> None:
    """Upgrades from a foreign page, 5 from each of 49 addresses (127.0.11.x): at most 20
    lines about them in each 10 s window of the log limiter, and one line saying what a
    window held back (the per-address budget alone let 245 through). The windows are the
    ones the traffic spans as measured: a loaded machine takes over 10 s for the 245, and
    a refusal of an earlier test may have opened the first."""
    port = gk.ports["websocket"]
    before = len(gk.log)
    earlier = any("refused" in line for line in gk.log[:before])
    start = time.monotonic()
    for i in range(245):
        _upgrade_and_publish(port, "http://evil.example", "probe/flood",
                             source=f"127.0.11.{1 + i % 49}")
    _log_sentinel(gk, "127.0.11.200", before)
    span = time.monotonic() - start
    lines = [line for line in gk.log[before:]
             if ("127.0.11." in line and "127.0.11.200" not in line) or "suppressed" in line]
    windows = int(span // LOG_WINDOW_S) + 1 + earlier
    print(f"{len(lines)} log lines for 245 refusals from 49 addresses in {span:.1f} s "
          f"({windows} windows of {LOG_WINDOW_S:g} s at most)")
    assert len(lines) <= windows * (LOG_TOTAL + 1), (span, windows, lines)


# ---------------------------------------------------------------- HTTP log
def test_plain_http_does_not_flood_the_log(gk: Gatekeeper) -> None:
    """500 plain HTTP requests (pages, missing files, refused upgrades): a bounded number of
    log lines (the same budget as the broker's: 5 lines of a kind per 10 s)."""
    port = gk.ports["websocket"]
    before = len(gk.log)
    for i in range(500):
        path = ("/", "/missing", "/app.js")[i % 3]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            while s.recv(65536):
                pass
    for _ in range(100):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GARBAGE\r\n\r\n")
            try:
                while s.recv(65536):
                    pass
            except OSError:
                pass
    _log_sentinel(gk, "127.0.10.1", before)
    lines = gk.log[before:]
    http = [line for line in lines if "websockets" in line or "pi_mqtt_gpio.web" in line]
    print(f"{len(lines)} log lines for 600 requests, {len(http)} of them about HTTP")
    assert len(lines) < 60, lines[:20]
