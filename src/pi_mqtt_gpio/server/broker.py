"""asyncio transports around the sans-io broker core: TCP, TLS and MQTT over WebSocket.

The transports feed bytes and the loop's monotonic time to ``BrokerCore`` and, after every
call, write what it queued (``_pump``). One timer is kept armed at the core's next deadline.
A client that does not read its socket is first spared QoS 0 messages (``congested``) and then,
past a hard limit on buffered bytes, disconnected: nothing a client does grows memory without
bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from pi_mqtt_gpio.mqtt.broker import BrokerCore, InternalClient
from pi_mqtt_gpio.mqtt.connection import Connection
from pi_mqtt_gpio.mqtt.hooks import AuthRequest, AuthResult, Decision
from pi_mqtt_gpio.mqtt.message import Message
from pi_mqtt_gpio.server.config import ListenerConfig
from pi_mqtt_gpio.server.preflight import tls_context
from pi_mqtt_gpio.server.web import handler

__all__ = ["BrokerServer"]

log = logging.getLogger("pi_mqtt_gpio.broker")

Authenticate = Callable[[AuthRequest], Awaitable[AuthResult]]

_HIGH_WATER = 256 * 1024  # above this a client is congested: QoS 0 deliveries are dropped


class _Link:
    """The transport side of one connection."""

    __slots__ = ("conn",)

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def write(self, chunks: list[bytes]) -> None:
        raise NotImplementedError

    def later(self) -> None:
        """Handle the connection's remaining packets at a later turn of the loop."""
        raise NotImplementedError

    def buffered(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        self.close()


class _TcpLink(_Link, asyncio.Protocol):
    __slots__ = ("eof_sent", "identity", "kind", "server", "transport")

    def __init__(self, server: BrokerServer, kind: str, identity: bool = False) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.kind = kind
        self.identity = identity  # use_identity_as_username: the certificate CN logs in
        self.eof_sent = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)  # type: ignore[union-attr]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        cert_cn = _cert_cn(transport.get_extra_info("peercert")) if self.identity else None
        server = self.server
        self.conn = server.core.open_connection(self.kind, peer_text, server.now(), cert_cn)
        server.links[self.conn.id] = self
        server.pump()

    def data_received(self, data: bytes) -> None:
        server = self.server
        server.core.data_received(self.conn, data, server.now())
        server.pump()

    def later(self) -> None:
        """More packets than one turn's worth: stop reading, let the other connections (and
        timers) have the loop, go on at the next turn."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()
        asyncio.get_running_loop().call_soon(self._backlog)

    def _backlog(self) -> None:
        server = self.server
        server.core.process_backlog(self.conn, server.now())
        server.pump()  # lists this connection again (``later``) while packets are left
        transport = self.transport
        if not self.conn.backlog and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def eof_received(self) -> bool | None:
        return False  # the peer is done sending: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        server = self.server
        conn = getattr(self, "conn", None)
        if conn is None:
            return
        server.links.pop(conn.id, None)
        server.cancel_auth(conn)
        server.core.connection_lost(conn, server.now())
        server.pump()

    def pause_writing(self) -> None:
        self.conn.congested = True

    def resume_writing(self) -> None:
        self.conn.congested = False

    def write(self, chunks: list[bytes]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if len(chunks) == 1:
                self.transport.write(chunks[0])
            else:
                self.transport.write(b"".join(chunks))

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport else 0

    def close(self) -> None:
        """Close gracefully: send FIN after what is buffered and let the peer close. Closing
        with unread input (a PUBACK in flight) would send RST, and the peer's kernel could
        throw away our last packets (the DISCONNECT with its reason code) unread."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.eof_sent:
            return
        if transport.can_write_eof():
            self.eof_sent = True
            transport.write_eof()
            loop = asyncio.get_running_loop()
            loop.call_later(2.0, transport.abort)  # the peer never closed: stop waiting
        else:
            transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _WsLink(_Link):
    __slots__ = ("_closing", "_pending", "_size", "_wake", "server", "ws")

    def __init__(self, ws: ServerConnection, conn: Connection, server: BrokerServer) -> None:
        self.ws = ws
        self.conn = conn
        self.server = server
        self._pending: list[bytes] = []
        self._size = 0
        self._wake = asyncio.Event()
        self._closing = False

    def write(self, chunks: list[bytes]) -> None:
        self._pending.extend(chunks)
        self._size += sum(len(c) for c in chunks)
        self.conn.congested = self._size > _HIGH_WATER
        self._wake.set()

    def buffered(self) -> int:
        return self._size

    def later(self) -> None:
        # The handler reads no further message while ``conn.backlog`` is set.
        asyncio.get_running_loop().call_soon(self._backlog)

    def _backlog(self) -> None:
        server = self.server
        server.core.process_backlog(self.conn, server.now())
        server.pump()

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    async def writer(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._pending:
                    data = b"".join(self._pending)
                    self._pending = []
                    self._size = 0
                    self.conn.congested = False
                    await self.ws.send(data)
                if self._closing:
                    await self.ws.close()
                    return
        except ConnectionClosed:
            return


def _cert_cn(cert: Any) -> str | None:
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class BrokerServer:
    """Runs the listeners and pumps bytes, timers, authentication and in-process deliveries
    between them and the core. Everything here runs on the event loop thread."""

    def __init__(
        self,
        core: BrokerCore,
        authenticate: Authenticate,
        listeners: list[ListenerConfig],
        *,
        hard_limit: int | None = None,
        web: dict[str, Any] | None = None,
    ) -> None:
        self.core = core
        self.process_request = handler(web)
        self.authenticate = authenticate
        self.listener_configs = listeners
        self.links: dict[int, _Link] = {}
        self.hard_limit = hard_limit or max(8 * 1024 * 1024, 4 * core.limits.max_packet_size)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.base_events.Server | WsServer] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pumping = False
        self._pump_scheduled = False
        self._auth_tasks: dict[int, asyncio.Task[None]] = {}  # connection id -> its login
        self.bound: list[tuple[str, str, int]] = []  # (type, host, port) actually listening

    def now(self) -> float:
        """The broker core's clock: the event loop's monotonic time."""
        loop = self._loop or asyncio.get_running_loop()
        return loop.time()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for listener in self.listener_configs:
            ctx = tls_context(listener)
            if listener.type in ("tcp", "tls"):
                kind = "tls" if ctx else "tcp"

                def factory(kind: str = kind,
                            identity: bool = listener.use_identity_as_username) -> _TcpLink:
                    return _TcpLink(self, kind, identity)

                server = await self._loop.create_server(
                    factory, listener.host, listener.port, ssl=ctx, reuse_address=True,
                    backlog=1024,
                )
                self._servers.append(server)
                sock = server.sockets[0].getsockname()
            else:
                kind = "websocket+tls" if ctx else "websocket"
                identity = listener.use_identity_as_username
                ws_server = await serve(
                    lambda ws, kind=kind, identity=identity:  # type: ignore[misc]
                    self._ws_handler(ws, kind, identity),
                    listener.host, listener.port, ssl=ctx, subprotocols=["mqtt"],  # type: ignore[list-item]
                    max_size=max(2 * self.core.limits.max_packet_size, 65536),
                    compression=None, process_request=self.process_request,
                )
                self._servers.append(ws_server)
                sock = next(iter(ws_server.sockets)).getsockname()
            self.bound.append((kind, sock[0], sock[1]))
            log.info("listening: %s on %s:%d", kind, sock[0], sock[1])

    def port(self, kind: str = "tcp") -> int:
        for k, _, port in self.bound:
            if k == kind:
                return port
        raise LookupError(kind)

    async def stop(self) -> None:
        """Stop listening, disconnect every client (0x8B on 5.0), flush, close."""
        for server in self._servers:
            server.close()
        if self._loop is not None:
            self.core.shutdown(self.now())
            self.pump()
        # Let the goodbyes (status offline, DISCONNECT 0x8B) reach the clients before the
        # sockets go; connection_lost removes each link once its buffer is written.
        deadline = asyncio.get_running_loop().time() + 0.5
        while self.links and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 0.5)
            except (TimeoutError, Exception):
                pass
        for link in list(self.links.values()):
            link.abort()
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._auth_tasks.values()):
            task.cancel()

    # ------------------------------------------------------------------ websocket
    async def _ws_handler(self, ws: ServerConnection, kind: str, identity: bool = False
                          ) -> None:
        peer = ws.remote_address
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        cert_cn = _cert_cn(ws.transport.get_extra_info("peercert")) if identity else None
        conn = self.core.open_connection(kind, peer_text, self.now(), cert_cn)
        link = _WsLink(ws, conn, self)
        self.links[conn.id] = link
        writer = asyncio.create_task(link.writer())
        self.pump()
        try:
            async for message in ws:
                if isinstance(message, str):
                    log.info("closing %r: text frame over MQTT WebSocket", conn)  # MQTT-6.0.0-1
                    break
                self.core.data_received(conn, message, self.now())
                self.pump()
                while conn.backlog and not conn.closing:  # the others' turn, then the rest
                    await asyncio.sleep(0)
                if conn.closing:
                    break
        except ConnectionClosed:
            pass
        finally:
            self.links.pop(conn.id, None)
            self.cancel_auth(conn)
            self.core.connection_lost(conn, self.now())
            self.pump()
            link.close()
            try:
                await asyncio.wait_for(writer, 2.0)
            except (TimeoutError, Exception):
                writer.cancel()

    # ------------------------------------------------------------------ the pump
    def schedule_pump(self) -> None:
        """Pump once at the next loop iteration (coalesces publishes made outside I/O)."""
        if not self._pump_scheduled:
            self._pump_scheduled = True
            loop = self._loop or asyncio.get_running_loop()
            loop.call_soon(self._scheduled_pump)

    def _scheduled_pump(self) -> None:
        self._pump_scheduled = False
        self.pump()

    def pump(self) -> None:
        """Write what the core queued, start authentications, deliver to in-process clients,
        and re-arm the timer. Re-entrant calls (a handler publishing) fold into the running one."""
        if self._pumping:
            return
        self._pumping = True
        try:
            core = self.core
            for _ in range(1000):
                internal = core.take_internal()
                for client, msg, sub_ids in internal:
                    self._deliver_internal(client, msg, sub_ids)
                for conn, req in core.take_auth_requests():
                    self._start_auth(conn, req)
                dirty = core.take_dirty()
                for conn in dirty:
                    self._flush(conn)
                for conn in core.take_backlogged():
                    link = self.links.get(conn.id)
                    if link is not None:
                        link.later()
                    else:
                        conn.backlog = False  # gone: nothing left to handle
                if not internal and not dirty:
                    break
            self._arm_timer()
        finally:
            self._pumping = False

    def _flush(self, conn: Connection) -> None:
        link = self.links.get(conn.id)
        data = conn.data_to_send()
        if link is None:
            return
        if data:
            link.write(data)
            if link.buffered() > self.hard_limit:
                log.warning("disconnecting %r: %d bytes unread (slow consumer)",
                            conn, link.buffered())
                self.core.abort(conn, self.now(), "slow consumer")
                link.abort()
                return
        if conn.closing:
            self.cancel_auth(conn)
            if conn.hard_close:
                link.abort()  # it never spoke MQTT: no goodbye owed, no socket kept waiting
            else:
                link.close()

    def _deliver_internal(self, client: InternalClient, msg: Message, sub_ids: list[int]) -> None:
        try:
            client.on_message(msg, sub_ids)
        except Exception:
            log.exception("in-process client %r failed on %r", client.client_id, msg.topic)

    def _start_auth(self, conn: Connection, req: AuthRequest) -> None:
        task = asyncio.ensure_future(self._authenticate(conn, req))
        self._auth_tasks[conn.id] = task
        conn_id = conn.id

        def forget(_task: asyncio.Task[None]) -> None:
            if self._auth_tasks.get(conn_id) is _task:
                del self._auth_tasks[conn_id]

        task.add_done_callback(forget)

    def cancel_auth(self, conn: Connection) -> None:
        """``conn`` is gone (closed, timed out, evicted): nobody waits for its login, so a
        password check not yet started never runs."""
        task = self._auth_tasks.pop(conn.id, None)
        if task is not None and not task.done():
            task.cancel()

    def auth_in_progress(self) -> int:
        return len(self._auth_tasks)

    async def _authenticate(self, conn: Connection, req: AuthRequest) -> None:
        try:
            result = await self.authenticate(req)
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("authentication hook failed")
            result = AuthResult(Decision.DENY, reason_code=0x87)
        self.core.auth_complete(conn, result, self.now())
        self.pump()

    def _arm_timer(self) -> None:
        deadline = self.core.next_deadline()
        if deadline is None or self._loop is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.core.on_timer(self.now())
        self.pump()
