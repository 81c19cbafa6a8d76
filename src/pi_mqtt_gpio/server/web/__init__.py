"""HTTP on the WebSocket listener: a WebSocket upgrade (any path, ``/mqtt`` by convention) is
MQTT; a plain GET is a file of the dashboard's static directory, which ships inside the
package (nothing is downloaded or built at run time). Only the files that are there can be
named; everything else is 404. Every answer carries a strict Content-Security-Policy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Response

__all__ = ["STATIC", "handler", "process_request"]

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


def handler(node: dict[str, Any] | None = None) -> Callable[[Any, Any], Response | None]:
    """websockets' ``process_request`` hook. ``node`` is what the page may know before it
    logs in (served as ``/node.json``): the node id, its topic root, whether anonymous
    clients are let in. Nothing secret: the same names are in every topic."""
    node_body = json.dumps(node, separators=(",", ":")).encode() if node else None

    def process_request(connection: Any, request: Any) -> Response | None:
        """None lets a WebSocket handshake go on; else the HTTP answer."""
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        path = unquote(urlsplit(request.path).path) or "/"
        if path == "/node.json" and node_body is not None:
            return _response(200, "OK", node_body, TYPES[".json"])
        if path.endswith("/"):
            path += "index.html"
        file = _files().get(path)
        if file is None:
            return _response(404, "Not Found", b"not found\n", "text/plain; charset=utf-8")
        return _response(200, "OK", _body(file), TYPES[file.suffix])

    return process_request


process_request = handler()
