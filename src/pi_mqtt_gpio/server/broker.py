"""asyncio transports around the sans-io broker core: TCP, TLS and MQTT over WebSocket.

The transports feed bytes and the loop's monotonic time to ``BrokerCore`` and, after every
call, write what it queued (``_pump``). One timer is kept armed at the core's next deadline.
A client that does not read its socket is first spared QoS 0 messages (``congested``) and then,
past a hard limit on buffered bytes, disconnected: nothing a client does grows memory without
bound.

Every socket is a connection of the core from the moment it is accepted, on every listener:
the TLS handshake (done here with ``loop.start_tls``, not by the listening socket) and the
WebSocket upgrade happen inside the core's pre-login pool, its per-address share and its
login timeout, like the wait for CONNECT. Past twice an address's share a new socket from
that address is closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from pi_mqtt_gpio.mqtt.broker import PENDING_HARD_FACTOR, BrokerCore, InternalClient
from pi_mqtt_gpio.mqtt.connection import Connection, ConnState
from pi_mqtt_gpio.mqtt.hooks import AuthRequest, AuthResult, Decision
from pi_mqtt_gpio.mqtt.logguard import LOG_TOTAL, LogLimiter
from pi_mqtt_gpio.mqtt.message import Message
from pi_mqtt_gpio.server.config import ListenerConfig, tls_context
from pi_mqtt_gpio.server.web import handler, quiet_http_log

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
    __slots__ = ("early", "eof_sent", "handshake", "identity", "kind", "lost", "server", "tls",
                 "transport")

    def __init__(self, server: BrokerServer, kind: str, identity: bool = False,
                 tls: ssl.SSLContext | None = None) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.kind = kind
        self.identity = identity  # use_identity_as_username: the certificate CN logs in
        self.eof_sent = False
        self.lost = False
        self.tls = tls
        self.early: list[bytes] | None = None  # while the TLS handshake runs
        self.handshake: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)  # type: ignore[union-attr]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server = self.server
        self.conn = conn = server.accept(self.kind,
                                         _peer_text(transport.get_extra_info("peername")))
        server.links[conn.id] = self
        if self.tls is not None and not conn.closing:
            self.early = []
            self.handshake = asyncio.ensure_future(self._start_tls(self.tls))
        server.pump()

    async def _start_tls(self, ctx: ssl.SSLContext) -> None:
        """The TLS handshake, inside the connection's login time (the core closes the raw
        socket when that runs out, which ends the handshake here too)."""
        raw = self.transport
        server = self.server
        try:
            tls = await _start_tls(raw, self, ctx, server.core.limits.connect_timeout,
                                   self._take_early)
        except Exception as exc:  # a failed handshake, or the socket closed meanwhile
            log.debug("TLS handshake of %r failed: %s", self.conn, exc)
            if raw is not None:
                raw.abort()
            self.connection_lost(None)
            return
        if tls is None or self.lost:
            return
        self.transport = tls
        tls.set_write_buffer_limits(high=_HIGH_WATER)
        conn = self.conn
        if self.identity:
            conn.cert_cn = _cert_cn(tls.get_extra_info("peercert"))
        conn.last_rx = server.now()  # it spoke: not an idle socket to evict
        early, self.early = self.early or [], None
        for data in early:
            self.data_received(data)

    def _take_early(self) -> bytes:
        data, self.early = b"".join(self.early or ()), []
        return data

    def data_received(self, data: bytes) -> None:
        if self.early is not None:  # the ClientHello, or data decrypted before we resumed
            self.early.append(data)
            return
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
        server.pump_scheduled()
        server.core.process_backlog(self.conn, server.now())
        server.pump()  # lists this connection again (``later``) while packets are left
        transport = self.transport
        if not self.conn.backlog and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def eof_received(self) -> bool | None:
        return False  # the peer is done sending: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost or getattr(self, "conn", None) is None:
            return
        self.lost = True
        self.server.link_lost(self)

    def pause_writing(self) -> None:
        self.conn.congested = True

    def resume_writing(self) -> None:
        self.conn.congested = False

    def write(self, chunks: list[bytes]) -> None:
        if self.early is not None:
            return  # nothing is owed before the handshake (the core answers CONNECT only)
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
        if self.early is not None:  # still in the TLS handshake: nothing to say goodbye to
            transport.abort()
        elif transport.can_write_eof():
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
    __slots__ = ("_closing", "_pending", "_size", "_wake", "server", "upgraded", "ws")

    def __init__(self, ws: _WsConnection, conn: Connection, server: BrokerServer) -> None:
        self.ws = ws
        self.conn = conn
        self.server = server
        self._pending: list[bytes] = []
        self._size = 0
        self._wake = asyncio.Event()
        self._closing = False
        self.upgraded = False  # the MQTT handler runs (the HTTP upgrade is done)

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
        server.pump_scheduled()
        server.core.process_backlog(self.conn, server.now())
        server.pump()

    def close(self) -> None:
        if not self.upgraded:  # TLS handshake, HTTP request or upgrade: just drop the socket
            self.ws.abort_socket()
            return
        self._closing = True
        self._wake.set()

    def abort(self) -> None:
        if not self.upgraded:
            self.ws.abort_socket()
        else:
            self.close()

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
                    if self.conn.client is None:
                        # It never logged in: its goodbye (a refusal's CONNACK, the close
                        # frame) gets the TCP link's 2 s, not websockets' 10 s.
                        self.ws.close_timeout = min(self.ws.close_timeout or 2.0, 2.0)
                    await self.ws.close()
                    return
        except ConnectionClosed:
            return


class _WsConnection(ServerConnection):
    """websockets' connection, a connection of the core from accept: the TLS handshake (when
    the listener has one) and the HTTP request or upgrade run inside the login time and the
    pre-login limits. ``broker``, ``kind`` and ``tls`` are set per listener (``_ws_class``)."""

    broker: BrokerServer
    kind: str
    tls: ssl.SSLContext | None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.socket_transport: Any = transport  # the raw socket's, then TLS's
        self.opened = False  # websockets has the transport
        self.early: list[bytes] | None = []
        self.gone = False
        self.handshake_task: asyncio.Task[None] | None = None
        server = self.broker
        peer = _peer_text(transport.get_extra_info("peername"))
        conn = server.accept(self.kind, peer)
        self.link = _WsLink(self, conn, server)
        server.links[conn.id] = self.link
        if not conn.closing:
            if self.tls is not None:
                self.handshake_task = asyncio.ensure_future(self._start_tls(transport, self.tls))
            else:
                self._opened(transport)
        server.pump()

    async def _start_tls(self, raw: Any, ctx: ssl.SSLContext) -> None:
        server = self.broker
        try:
            tls = await _start_tls(raw, self, ctx, server.core.limits.connect_timeout,
                                   self._take_early)
        except Exception as exc:
            log.debug("TLS handshake of %r failed: %s", self.link.conn, exc)
            raw.abort()
            self.connection_lost(None)
            return
        if tls is None or self.gone:
            return
        self.link.conn.last_rx = server.now()
        self._opened(tls)

    def _take_early(self) -> bytes:
        data, self.early = b"".join(self.early or ()), []
        return data

    def _opened(self, transport: asyncio.BaseTransport) -> None:
        self.socket_transport = transport
        self.opened = True
        super().connection_made(transport)
        early, self.early = self.early or [], None
        for data in early:
            super().data_received(data)

    def data_received(self, data: bytes) -> None:
        if self.early is not None:
            self.early.append(data)
            return
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.opened:
            super().connection_lost(exc)
        if not self.gone:
            self.gone = True
            self.broker.link_lost(self.link)

    def abort_socket(self) -> None:
        self.socket_transport.abort()


async def _start_tls(raw: Any, app: asyncio.BaseProtocol, ctx: ssl.SSLContext, timeout: float,
                     take_early: Callable[[], bytes]) -> Any:
    """Server-side TLS on an accepted socket (``loop.start_tls``). The loop may already have
    read the ClientHello and given it to ``app`` (at accept, before ``start_tls`` ran): once
    the SSL protocol has the socket, ``take_early`` hands those bytes over to it, before
    anything read later. Returns the TLS transport (its protocol is ``app``)."""
    task = asyncio.ensure_future(asyncio.get_running_loop().start_tls(
        raw, app, ctx, server_side=True, ssl_handshake_timeout=timeout))
    # start_tls swaps the protocol in its first step and connects the SSL protocol in the
    # next turn of the loop (reading paused until then): after two turns it takes bytes.
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    data = take_early()
    if data and not task.done():
        proto = raw.get_protocol()
        if isinstance(proto, asyncio.BufferedProtocol) or hasattr(proto, "get_buffer"):
            view = memoryview(data)
            while view:
                buf = proto.get_buffer(len(view))
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                proto.buffer_updated(n)
                view = view[n:]
        else:
            proto.data_received(data)
    return await task


class _Resume(Coroutine[Any, Any, None]):
    """Go on with ``coro`` (a coroutine started outside a task, which yielded ``first``,
    the future it waits for) inside a task: the task's first step gets ``first``; what it
    sends or throws in later (a result, a cancellation, also one before that first step)
    goes to ``coro``, as ``await`` would."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, None], first: Any) -> None:
        self.coro = coro
        self.first = first

    def send(self, value: Any) -> Any:
        first, self.first = self.first, None
        return first if first is not None else self.coro.send(value)

    def throw(self, *args: Any) -> Any:
        self.first = None
        return self.coro.throw(*args)

    def close(self) -> None:
        self.coro.close()

    def __await__(self) -> Generator[Any, None, None]:
        return (yield from self.coro.__await__())


def _ws_class(server: BrokerServer, kind: str, tls: ssl.SSLContext | None
              ) -> type[_WsConnection]:
    return type("WsConnection", (_WsConnection,), {"broker": server, "kind": kind, "tls": tls})


def _peer_text(peer: Any) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


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
        self.web = web
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
        self._prelogin: dict[str, list[Connection]] = {}  # address -> its sockets not logged in
        self._log = LogLimiter(log, total=LOG_TOTAL)

    def now(self) -> float:
        """The broker core's clock: the event loop's monotonic time."""
        loop = self._loop or asyncio.get_running_loop()
        return loop.time()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        quiet_http_log()
        for listener in self.listener_configs:
            ctx = tls_context(listener)
            if listener.type in ("tcp", "tls"):
                kind = "tls" if ctx else "tcp"

                def factory(kind: str = kind,
                            identity: bool = listener.use_identity_as_username,
                            ctx: ssl.SSLContext | None = ctx) -> _TcpLink:
                    return _TcpLink(self, kind, identity, ctx)

                # TLS is started per connection (``_TcpLink._start_tls``), so that the
                # socket counts from accept.
                server = await self._loop.create_server(
                    factory, listener.host, listener.port, reuse_address=True, backlog=1024,
                )
                self._servers.append(server)
                sock = server.sockets[0].getsockname()
            else:
                kind = "websocket+tls" if ctx else "websocket"
                identity = listener.use_identity_as_username
                ws_server = await serve(
                    lambda ws, identity=identity:  # type: ignore[misc]
                    self._ws_handler(ws, identity),
                    listener.host, listener.port, subprotocols=["mqtt"],  # type: ignore[list-item]
                    max_size=max(2 * self.core.limits.max_packet_size, 65536),
                    compression=None,
                    process_request=self._http(listener, ctx is not None),
                    create_connection=_ws_class(self, kind, ctx),
                    open_timeout=self.core.limits.connect_timeout,
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

    # ------------------------------------------------------------------ accept
    def accept(self, kind: str, peer: str) -> Connection:
        """A new socket: a connection of the core at once (the pre-login pool, the
        per-address share, the login timeout). Past twice its address's share of the pool
        (sockets that have not logged in, on any listener) it is closed."""
        core = self.core
        now = self.now()
        conn = core.open_connection(kind, peer, now)
        if conn.closing:
            return conn
        held = self._prelogin.get(conn.address)
        if held is not None:
            # A socket that never logged in counts until it is really closed (``link_lost``
            # with ``closed``), also while its goodbye is under way: one that logged in does
            # not count any more.
            held[:] = [c for c in held if c.client is None]
        else:
            held = self._prelogin[conn.address] = []
        if len(held) >= PENDING_HARD_FACTOR * core.limits.max_pending_per_address:
            self._log.log(logging.WARNING, conn.address, now,
                          "closing %r: too many sockets from %s that have not logged in",
                          conn, conn.address)
            conn.hard_close = True
            core.abort(conn, now, "too many sockets from this address")
            if not held:
                del self._prelogin[conn.address]
        else:
            held.append(conn)
        return conn

    def link_lost(self, link: _Link, closed: bool = True) -> None:
        """``link``'s socket is closed (in whatever phase); ``closed`` False: the MQTT
        connection over it is over but its socket may still be closing (a WebSocket's close
        handshake), and it goes on counting against its address's pre-login share."""
        conn = link.conn
        self.links.pop(conn.id, None)
        held = self._prelogin.get(conn.address) if closed else None
        if held is not None:
            with contextlib.suppress(ValueError):
                held.remove(conn)
            if not held:
                del self._prelogin[conn.address]
        self.cancel_auth(conn)
        self.core.connection_lost(conn, self.now())
        self.pump()

    def _http(self, listener: ListenerConfig, tls: bool
              ) -> Callable[[ServerConnection, Any], Any]:
        """websockets' ``process_request`` for one listener: the request counts as the
        socket's first sign of life; an upgrade from a foreign page (``Origin``) is 403."""
        serve_http = handler(self.web, tls=tls, allowed_origins=listener.allowed_origins,
                             brokers=listener.dashboard_brokers,
                             allowed_hosts=listener.allowed_hosts)

        def process_request(connection: ServerConnection, request: Any) -> Any:
            link = getattr(connection, "link", None)
            if isinstance(link, _WsLink):
                link.conn.last_rx = self.now()
            return serve_http(connection, request)

        return process_request

    # ------------------------------------------------------------------ websocket
    async def _ws_handler(self, ws: ServerConnection, identity: bool = False) -> None:
        assert isinstance(ws, _WsConnection)
        link = ws.link
        conn = link.conn
        if conn.state is ConnState.CLOSED or conn.closing:
            return
        link.upgraded = True
        if identity:
            conn.cert_cn = _cert_cn(ws.transport.get_extra_info("peercert"))
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
            self.link_lost(link, closed=False)  # counted until connection_lost
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
        if self._pump_scheduled:
            self._pump_scheduled = False
            self.pump()

    def pump_scheduled(self) -> None:
        """Pump now if a pump is scheduled: a busy connection's turn lets what the
        gatekeeper published meanwhile (an RPC's reply) go first, rather than after every
        other busy connection's turn of this round."""
        if self._pump_scheduled:
            self._scheduled_pump()

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
                        core.drop_backlog(conn)  # gone: nothing left to handle
                if not internal and not dirty:
                    break
            self._arm_timer()
        finally:
            self._pumping = False

    def _flush(self, conn: Connection) -> None:
        link = self.links.get(conn.id)
        size = conn.pending_bytes
        data = conn.data_to_send()
        if link is None:
            return
        if data:
            stats = self.core.stats  # $SYS bytes/sent, messages/sent: per write, not per packet
            stats.bytes_out += size
            stats.packets_out += len(data)
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
        """Run the authentication hook's first step now: a decision that needs no waiting
        (anonymous, a certificate) is made in this turn of the loop, not the next; one that
        waits (a password check in a thread) goes on as a task."""
        coro = self._authenticate(conn, req)
        try:
            first = coro.send(None)
        except StopIteration:
            return  # decided (``auth_complete`` ran)
        task = asyncio.ensure_future(_Resume(coro, first))
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
