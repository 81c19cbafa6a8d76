"""HTTP on the WebSocket listener: a WebSocket upgrade (any path, ``/mqtt`` by convention) is
MQTT; a plain GET is a file of the dashboard's static directory, which ships inside the
package (nothing is downloaded or built at run time). Only the files that are there can be
named; everything else is 404. Every answer carries a strict Content-Security-Policy.

A browser names the page that opens a WebSocket in ``Origin``: an upgrade whose Origin is
neither this listener's own (the ``Host`` it was asked for, with http/https for ws/wss) nor
listed in the listener's ``allowed_origins`` is refused with 403, so a page of another site
cannot use a visitor's browser (and its place in the network) to reach the broker. Since a
page can make its own name point at this machine (DNS rebinding), a request that carries an
Origin must also name in ``Host`` a name this machine answers to: an IP address, localhost,
its host name, ``<host name>.local`` and its FQDN, or one of the listener's
``allowed_hosts``. Clients that are not browsers send no Origin and are not concerned. Two
Origin (or Host, or Upgrade) headers are refused with 400.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Response

from pi_mqtt_gpio.mqtt.logguard import LOG_TOTAL, LogLimiter, clip
from pi_mqtt_gpio.topics import Topics

__all__ = ["STATIC", "handler", "host_allowed", "host_name", "local_names", "normalize_origin",
           "origin_allowed", "process_request", "quiet_http_log"]

log = logging.getLogger("pi_mqtt_gpio.web")

STATIC = Path(__file__).resolve().parent / "static"
TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
    ".json": "application/json", ".md": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8", ".ico": "image/x-icon",
    ".sha256": "text/plain; charset=utf-8",
}
SECURITY = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self' ws: wss:; "
                               "worker-src 'self' blob:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@lru_cache(maxsize=1)
def _files() -> dict[str, Path]:
    """URL path -> file, for every file of the static directory (read once)."""
    if not STATIC.is_dir():
        return {}
    return {"/" + p.relative_to(STATIC).as_posix(): p for p in STATIC.rglob("*")
            if p.is_file() and p.suffix in TYPES}


@lru_cache(maxsize=64)
def _body(path: Path) -> bytes:
    return path.read_bytes()


def _response(status: int, reason: str, body: bytes, content_type: str) -> Response:
    headers = Headers({"Content-Type": content_type, "Content-Length": str(len(body)),
                       **SECURITY})
    return Response(status, reason, headers, body)


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalize_origin(text: str) -> str | None:
    """``scheme://host:port`` (lower case, the port always given) of an http(s) origin, or
    None when ``text`` is not one (a path, a query, user info or another scheme)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("http", "https") or not host or parts.username is not None \
            or parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port or _DEFAULT_PORTS[scheme]}"


def origin_allowed(origin: str | None, host: str | None, tls: bool,
                   allowed: Iterable[str] = ()) -> bool:
    """Whether a WebSocket upgrade with this ``Origin`` may go on: none given (not a
    browser), the listener's own origin (``Host`` over http, or https with TLS), or one of
    ``allowed`` (already normalized)."""
    if origin is None:
        return True
    given = normalize_origin(origin)
    if given is None:
        return False  # "null" (a sandboxed frame, a file), or garbage
    if given in allowed:
        return True
    own = normalize_origin(f"{'https' if tls else 'http'}://{host}") if host else None
    return given == own


def host_name(text: str) -> str | None:
    """The lower-case name or address of a ``Host`` header or an ``allowed_hosts`` entry,
    without its port (brackets of IPv6 kept off), or None when it is not one."""
    try:
        parts = urlsplit("//" + text.strip())
        parts.port  # noqa: B018  # raises on a bad port
    except ValueError:
        return None
    host = parts.hostname
    if not host or parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    return host.rstrip(".")


@lru_cache(maxsize=1)
def local_names() -> frozenset[str]:
    """The names this machine answers to: localhost, its host name, ``<host name>.local``
    (mDNS) and its FQDN (read once)."""
    names = {"localhost"}
    for name in (socket.gethostname(), socket.getfqdn()):
        name = name.lower().rstrip(".")
        if name:
            names.add(name)
            names.add(name.split(".", 1)[0] + ".local")
    return frozenset(names)


def host_allowed(host: str | None, allowed: Iterable[str] = ()) -> bool:
    """Whether ``Host`` names this machine: an IP address, one of ``local_names`` or of
    ``allowed`` (lower case, no port)."""
    name = host_name(host) if host else None
    if name is None:
        return False
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return name in local_names() or name in allowed


class _HttpLogFilter(logging.Filter):
    """The websockets server's lines (every plain HTTP request, every failed handshake)
    through the same budget as the broker's: 5 lines of a kind per 10 s."""

    def __init__(self) -> None:
        super().__init__()
        self.limiter = LogLimiter(log, total=LOG_TOTAL)  # says what it held back under our own name

    def filter(self, record: logging.LogRecord) -> bool:
        return self.limiter.allow(str(record.msg), time.monotonic())


def quiet_http_log() -> None:
    """Put the websockets server's log lines under the rate limit (once)."""
    logger = logging.getLogger("websockets.server")
    if not any(isinstance(f, _HttpLogFilter) for f in logger.filters):
        logger.addFilter(_HttpLogFilter())


# The topic grammar the page builds and parses its topics with: the same methods as the
# server's (``Topics.grammar``), so the two cannot drift apart.
TOPICS_BODY = json.dumps(Topics.grammar(), separators=(",", ":")).encode()


def handler(node: dict[str, Any] | None = None, *, tls: bool = False,
            allowed_origins: Iterable[str] = (), brokers: Iterable[str] = (),
            allowed_hosts: Iterable[str] = (),
            ) -> Callable[[Any, Any], Response | None]:
    """websockets' ``process_request`` hook. ``node`` is what the page may know before it
    logs in (served as ``/node.json``): the node id, its topic root, whether anonymous
    clients are let in. Nothing secret: the same names are in every topic. ``brokers`` are
    the other WebSocket addresses the dashboard may connect to (``/brokers.json``)."""
    node_body = json.dumps(node, separators=(",", ":")).encode() if node else None
    brokers_body = json.dumps(list(brokers)).encode()
    origins = frozenset(o for o in map(normalize_origin, allowed_origins) if o is not None)
    hosts = frozenset(h for h in map(host_name, allowed_hosts) if h is not None)
    local_names()  # looked up now, not at the first request
    refusals = LogLimiter(log, total=LOG_TOTAL)

    def refuse(connection: Any, request: Any, why: str, text: object, status: int = 403
               ) -> Response:
        peer = getattr(connection, "remote_address", None)
        address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        upgrade = any(v.lower() == "websocket" for v in request.headers.get_all("Upgrade"))
        refusals.log(logging.WARNING, address, time.monotonic(), "refused %s from %s: %s %s",
                     "a WebSocket upgrade" if upgrade else "an HTTP request", address, why,
                     clip(text))
        if status == 400:
            return _response(400, "Bad Request", b"bad request\n", "text/plain; charset=utf-8")
        return _response(403, "Forbidden", f"{why}\n".encode(), "text/plain; charset=utf-8")

    def process_request(connection: Any, request: Any) -> Response | None:
        """None lets a WebSocket handshake go on; else the HTTP answer."""
        headers = request.headers
        values = {name: headers.get_all(name) for name in ("Origin", "Host", "Upgrade")}
        for name, got in values.items():
            if len(got) > 1:
                return refuse(connection, request, f"{len(got)} {name} headers", "", 400)
        origin = values["Origin"][0] if values["Origin"] else None
        host = values["Host"][0] if values["Host"] else None
        if origin is not None and not host_allowed(host, hosts):
            return refuse(connection, request, "a browser's page for the host", host)
        if values["Upgrade"] and values["Upgrade"][0].lower() == "websocket":
            if origin_allowed(origin, host, tls, origins):
                return None
            return refuse(connection, request, "page origin not allowed:", origin)
        path = unquote(urlsplit(request.path).path) or "/"
        if path == "/node.json" and node_body is not None:
            return _response(200, "OK", node_body, TYPES[".json"])
        if path == "/brokers.json":
            return _response(200, "OK", brokers_body, TYPES[".json"])
        if path == "/topics.json":
            return _response(200, "OK", TOPICS_BODY, TYPES[".json"])
        if path.endswith("/"):
            path += "index.html"
        file = _files().get(path)
        if file is None:
            return _response(404, "Not Found", b"not found\n", "text/plain; charset=utf-8")
        return _response(200, "OK", _body(file), TYPES[file.suffix])

    return process_request


process_request = handler()
