"""The room server: y-websocket rooms over WebSocket, in one nursery for every room's work.

.. code-block:: python

    async with RoomServer() as server:
        port = await nursery.start(server.serve, "127.0.0.1", 1234)

Every transport (the built-in wsproto server here, trio-websocket and ASGI in
:mod:`trio_ysync.adapters`) hands its connections to :meth:`RoomServer.serve_connection`, the one
path that opens the room, runs the peer and maps every error to the close code that says whose
fault it was. One connection's errors close only that connection. Rooms are loaded on the first
connection to their path and unloaded after the last peer has left and a grace period has passed.
A loaded room has no task of its own (see :class:`~trio_ysync.room.Room`): its commits,
compactions and unloading run in the server's nursery while they have work.
"""

from __future__ import annotations

import hmac
import logging
import signal
import socket
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from types import TracebackType

import trio

from .accept import accept_forever, plain_socket
from .api import DocumentAPI
from .auth import Authorize, Grant, Unauthorized, allow_everyone
from .bus import LocalBus, RoomBus
from .connection import (
    Connection,
    HTTPRequest,
    HTTPResponse,
    PendingConnection,
    must_propagate,
)
from .demo import demo_response
from .doc import Backend
from .errors import CloseCode, RoomClosedError, UnsupportedOperationError, YSyncError
from .hooks import (
    ConnectionClosed,
    ConnectionOpened,
    ConnectionRefused,
    DocumentChanged,
    HookRunner,
    Instruments,
    RoomLoaded,
    RoomUnloaded,
    ServerHooks,
)
from .limits import Admission, Limits, ServerFull, TrafficMeter
from .metrics import Metrics
from .protocol import (
    DEFAULT_MESSAGE_LIMITS,
    MessageLimits,
    decode,
    message_kind,
)
from .room import DEFAULT_PRESENCE_INTERVAL, Peer, Room, RoomState
from .store import MemoryStore, Store
from .timers import Timers
from .transport import DEFAULT_MAX_FRAGMENTS, ServerWebSocket, WsprotoPendingConnection

__all__ = ["Room", "RoomServer", "RoomState", "shutdown_on_signals"]

logger = logging.getLogger("trio_ysync.server")


class RoomServer:
    """Serves Yjs rooms to y-websocket clients.

    Args:
        store: where documents are kept (default: the bus's store, else a
            :class:`~trio_ysync.store.MemoryStore`).
        bus: how rooms reach the other servers that hold them (default: a
            :class:`~trio_ysync.bus.LocalBus`, for a server alone); see
            :func:`~trio_ysync.bus.open_bus`.
        backend: the document library for rooms (default: pycrdt when installed).
        max_message_size: incoming messages larger than this close the connection (1009).
        max_buffered_bytes: outgoing bytes one connection may leave unread before it is closed
            as a slow consumer (1013).
        room_grace_period: seconds a room stays loaded after its last peer left.
        handshake_timeout: seconds a new connection has to complete its HTTP upgrade.
        ping_interval: seconds between WebSocket pings.
        close_timeout: seconds allowed for a closing handshake.
        health_path: a path answered with ``200 ok`` to plain HTTP requests.
        broadcast_before_commit: see :class:`~trio_ysync.room.Room`.
        compact_after_updates: compact a room's stored log once it holds this many entries.
        compact_after_bytes: compact a room's stored log once it holds this many bytes.
        message_limits: bounds on each incoming frame (messages per frame, awareness states).
        max_fragments: how many WebSocket frames one message may be split into.
        authorize: decides, for each connection before its room is loaded, whether and how it
            may use the room (see :mod:`trio_ysync.auth`; default: everyone may read and write).
        limits: connections, rooms and rates allowed (see :class:`~trio_ysync.limits.Limits`).
        read_only_awareness: whether read-only connections may publish awareness (presence).
        demo: also answer plain HTTP requests under ``/demo/`` with the demo editor
            (:mod:`trio_ysync.demo`).
        hooks: told about connections, rooms and document changes (see
            :mod:`trio_ysync.hooks`).
        metrics: count what the server does, served at ``GET /metrics`` (see
            :mod:`trio_ysync.metrics`).
        metrics_token: when given, ``/metrics`` answers only requests with this bearer token.
        http_api: answer the HTTP API for documents under ``/api/rooms`` (see
            :mod:`trio_ysync.api`).
        presence_interval: seconds over which a room gathers awareness changes into one
            message per peer after sending one (see :class:`~trio_ysync.room.Room`; 0 sends
            each change at once; default 0.02).
        echo_updates: send each update back to its sender too (y-websocket 4's
            ``sync-status``; see :class:`~trio_ysync.room.Room`).
    """

    def __init__(
        self,
        store: Store | None = None,
        *,
        bus: RoomBus | None = None,
        backend: Backend | None = None,
        max_message_size: int = 64 * 1024 * 1024,
        max_buffered_bytes: int = 64 * 1024 * 1024,
        room_grace_period: float = 10.0,
        handshake_timeout: float = 10.0,
        ping_interval: float = 30.0,
        close_timeout: float = 5.0,
        health_path: str = "/health",
        broadcast_before_commit: bool = False,
        compact_after_updates: int = 500,
        compact_after_bytes: int = 4 * 1024 * 1024,
        message_limits: MessageLimits = DEFAULT_MESSAGE_LIMITS,
        max_fragments: int = DEFAULT_MAX_FRAGMENTS,
        authorize: Authorize = allow_everyone,
        limits: Limits | None = None,
        read_only_awareness: bool = True,
        demo: bool = False,
        hooks: Sequence[ServerHooks] = (),
        metrics: Metrics | None = None,
        metrics_token: str | None = None,
        http_api: bool = True,
        presence_interval: float = DEFAULT_PRESENCE_INTERVAL,
        echo_updates: bool = False,
    ) -> None:
        if bus is not None and store is not None and bus.store is not store:
            raise ValueError("the bus must use the server's store")
        if store is None:
            store = MemoryStore() if bus is None else bus.store
        self.store: Store = store
        self.bus: RoomBus = LocalBus(self.store) if bus is None else bus
        self.backend = backend
        self.max_message_size = max_message_size
        self.max_buffered_bytes = max_buffered_bytes
        self.room_grace_period = room_grace_period
        self.handshake_timeout = handshake_timeout
        self.ping_interval = ping_interval
        self.close_timeout = close_timeout
        self.health_path = health_path
        self.broadcast_before_commit = broadcast_before_commit
        self.compact_after_updates = compact_after_updates
        self.compact_after_bytes = compact_after_bytes
        self.message_limits = message_limits
        self.max_fragments = max_fragments
        self.authorize = authorize
        self.limits = Limits() if limits is None else limits
        self.read_only_awareness = read_only_awareness
        self.admission = Admission(self.limits)
        #: Every deadline of the server (token expiries, ...) runs from this one task.
        self.timers = Timers()
        self.demo = demo
        self.metrics = metrics
        self.metrics_token = metrics_token
        #: Counting at the busy places (the metrics, or nothing).
        self.instruments: Instruments = Instruments() if metrics is None else metrics
        self.hooks = HookRunner(hooks)
        self.api = DocumentAPI(self) if http_api else None
        self.presence_interval = presence_interval
        self.echo_updates = echo_updates
        self._connections = 0
        self._deleting: set[str] = set()
        self._room_events = _RoomEvents(self)
        self._rooms: dict[str, Room] = {}
        self._rooms_nursery: trio.Nursery | None = None
        self._shutdown = trio.Event()

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def rooms(self) -> dict[str, Room]:
        """The loaded rooms by name (a copy)."""
        return dict(self._rooms)

    @property
    def running(self) -> bool:
        """Whether the server has a nursery for its rooms (inside ``async with`` or
        :meth:`serve`)."""
        return self._rooms_nursery is not None

    async def __aenter__(self) -> RoomServer:
        if self.running:
            raise RuntimeError("this RoomServer is already running")
        self._context = self._run_rooms()
        await self._context.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        self.shutdown()
        return await self._context.__aexit__(exc_type, exc, traceback)

    @asynccontextmanager
    async def _run_rooms(self) -> AsyncIterator[None]:
        if self._rooms_nursery is not None:
            yield
            return
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.timers.run)
                await nursery.start(self.hooks.run)
                self._rooms_nursery = nursery
                try:
                    yield
                finally:
                    self.shutdown()
                    with trio.CancelScope(shield=True):
                        await self._stop_rooms()
                        await self.hooks.aclose()
                    nursery.cancel_scope.cancel()  # the timers and the hooks
        finally:
            self._rooms_nursery = None

    def shutdown(self) -> None:
        """Stop accepting connections, close every peer with 1001 and unload every room."""
        if self._shutdown.is_set():
            return
        logger.info("shutting down: closing %d rooms", len(self._rooms))
        self._shutdown.set()
        for room in list(self._rooms.values()):
            for peer in tuple(room.peers):
                peer.close(CloseCode.GOING_AWAY, "server shutting down")

    async def _stop_rooms(self) -> None:
        rooms = list(self._rooms.values())
        for room in rooms:
            room.stop()
        for room in rooms:
            await room.closed.wait()

    async def serve(
        self,
        host: str | None = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host``:``port`` until :meth:`shutdown`; started with the bound port."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        await self.serve_listeners(listeners, ssl_context=ssl_context, task_status=task_status)

    async def serve_listeners(
        self,
        listeners: Sequence[trio.SocketListener],
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve connections from ``listeners`` (listening already: bound with options of
        your own, say) until :meth:`shutdown`, then close them; started with the port of the
        first."""
        host, bound_port = listeners[0].socket.getsockname()[:2]
        async with self._run_rooms(), trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                if ssl_context is None:
                    serve_accepted = partial(self._serve_socket, nursery=connections)
                    for listener in listeners:
                        accepting.start_soon(
                            accept_forever, plain_socket(listener), serve_accepted, connections
                        )
                else:
                    secure = [trio.SSLListener(one, ssl_context) for one in listeners]
                    await accepting.start(
                        partial(
                            trio.serve_listeners,
                            self.serve_stream,
                            secure,
                            handler_nursery=connections,
                        )
                    )
                logger.info("serving on %s:%d", host, bound_port)
                task_status.started(bound_port)
                await self._shutdown.wait()
                accepting.cancel_scope.cancel()
            # Peers were told to close; bound the wait for those that do not answer.
            connections.cancel_scope.deadline = (
                trio.current_time() + self.close_timeout + self.handshake_timeout
            )

    # -- connections ---------------------------------------------------------------------

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection (a TCP or TLS stream) until it closes. Never raises."""
        await self._serve_socket(None, stream)

    async def _serve_socket(
        self,
        sock: socket.socket | None,
        stream: trio.abc.Stream,
        *,
        nursery: trio.Nursery | None = None,
    ) -> None:
        websocket = ServerWebSocket(
            stream,
            sock=sock,
            nursery=nursery,
            max_message_size=self.max_message_size,
            max_buffered_bytes=self.max_buffered_bytes,
            close_timeout=self.close_timeout,
            ping_interval=self.ping_interval,
            max_fragments=self.max_fragments,
            timers=self.timers,
        )
        request = None
        try:
            with self.timers.scope_after(self.handshake_timeout):
                request = await websocket.handshake(self.answer_http)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            logger.exception("%s: reading the HTTP request failed", websocket.name)
        if request is None:
            await trio.aclose_forcefully(stream)
            return
        await self.serve_connection(WsprotoPendingConnection(websocket, request))

    async def answer_http(self, request: HTTPRequest) -> HTTPResponse:
        """The answer to a plain HTTP request (one that is not a WebSocket upgrade): the health
        path, ``/metrics``, the HTTP API, the demo editor."""
        if request.path == self.health_path and request.method in ("GET", "HEAD"):
            return HTTPResponse.text(200, "ok")
        if request.path == "/metrics" and self.metrics is not None:
            return self._answer_metrics(request, self.metrics)
        if self.api is not None and (response := await self.api.answer(request)) is not None:
            return response
        if self.demo and (response := demo_response(request)) is not None:
            return response
        return HTTPResponse.text(426, "this is a y-websocket server: connect with a WebSocket")

    def _answer_metrics(self, request: HTTPRequest, metrics: Metrics) -> HTTPResponse:
        if self.metrics_token is not None:
            sent = dict(request.headers).get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {self.metrics_token}".encode()):
                return HTTPResponse.text(401, "a bearer token is required")
        return HTTPResponse(200, metrics.exposition(), metrics.content_type)

    async def serve_connection(self, pending: PendingConnection) -> None:
        """Serve one WebSocket upgrade request from any transport until the connection closes.

        Admits the request (limits), authorizes it, opens (loads) the requested room, accepts
        the upgrade, runs the peer, and makes sure the peer has left the room and the
        connection is closed on every way out. Refusals answer with an HTTP status, before any
        room is loaded. Never raises, except to let cancellation through.
        """
        request = pending.request
        try:
            ticket = self.admission.admit(request)
        except YSyncError as exc:
            await self._refuse(pending, exc, self.admission.client_address(request))
            return
        who = ticket.address
        try:
            grant = await self._authorize(pending, who)
            if grant is None:
                return
            room = await self._reserve_room(request.room)
            try:
                connection: Connection | None = None
                with self.timers.scope_after(self.handshake_timeout):
                    connection = await pending.accept()
                if connection is not None:
                    await self._run_peer(room, connection, grant, who)
            finally:
                room.unreserve()
        except RoomClosedError as exc:
            logger.info("%s: refusing a connection to room %r: %s", who, request.room, exc)
            await self._refuse(pending, exc, who)
        except ServerFull as exc:
            self.admission.log_refusal(who, exc)
            await self._refuse(pending, exc, who)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            logger.exception("%s: the connection to room %r failed", who, request.room)
        finally:
            ticket.release()

    async def _authorize(self, pending: PendingConnection, who: str) -> Grant | None:
        """The request's grant, or ``None`` once it has been refused."""
        try:
            with self.timers.scope_after(self.handshake_timeout):
                return await self.authorize(pending.request)
            logger.error("%s: the authorize hook did not answer in time", who)
            await self._refuse(pending, ServerFull("authorization timed out"), who)
        except YSyncError as exc:
            self.admission.log_refusal(who, exc)
            await self._refuse(pending, exc, who)
        except Exception:
            logger.exception("%s: the authorize hook failed", who)
            await self._refuse(pending, YSyncError("authorization failed"), who)
        return None

    async def _refuse(self, pending: PendingConnection, exc: YSyncError, who: str) -> None:
        self.instruments.connection_refused(exc.http_status)
        if self.hooks:
            room = pending.request.room
            self.hooks.emit(ConnectionRefused(room, who, exc.http_status, str(exc)))
        with trio.move_on_after(self.close_timeout):
            try:
                await pending.refuse(exc.http_status, str(exc))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def _run_peer(self, room: Room, connection: Connection, grant: Grant, who: str) -> None:
        peer: Peer | None = None
        expiry = None
        try:
            peer = room.join(
                connection,
                read_only=grant.read_only,
                presence=self.read_only_awareness or not grant.read_only,
                identity=grant.identity,
            )
        except RoomClosedError as exc:
            connection.close(exc.close_code, str(exc))
        if grant.expires_at is not None:
            expiry = self.timers.call_later(
                max(0.0, grant.expires_at - time.time()),
                lambda: connection.close(Unauthorized.close_code, "the token has expired"),
            )
        try:
            if peer is None:
                await connection.run(_discard)
            else:
                self._connections += 1
                opened = self._opened(room, peer, grant, who, self._connections)
                meter = TrafficMeter(self.limits, self.max_message_size, trio.current_time())
                try:
                    await connection.run(partial(self._receive, room, peer, meter, who))
                finally:
                    self._closed(room, peer, who, opened)
        finally:
            if expiry is not None:
                expiry.cancel()
            if peer is not None:
                room.leave(peer)

    def _opened(
        self, room: Room, peer: Peer, grant: Grant, who: str, number: int
    ) -> ConnectionOpened:
        event = ConnectionOpened(
            room.name, who, grant.identity, grant.read_only, number, grant.context
        )
        self.instruments.connection_opened()
        self.hooks.emit(event)
        logger.info(
            "%s: connection %d opened: room %r, %s%s",
            who,
            number,
            room.name,
            f"identity {grant.identity!r}" if grant.identity else "anonymous",
            ", read-only" if grant.read_only else "",
            extra={"room": room.name, "client": who, "identity": grant.identity,
                   "connection": number, "event": "connection_opened"},
        )  # fmt: skip
        peer.opened_at = trio.current_time()
        return event

    def _closed(self, room: Room, peer: Peer, who: str, opened: ConnectionOpened) -> None:
        connection = peer.connection
        code = connection.close_code or CloseCode.ABNORMAL
        reason = connection.close_reason
        duration = trio.current_time() - peer.opened_at
        self.instruments.connection_closed(code, reason)
        self.hooks.emit(
            ConnectionClosed(
                room.name, who, opened.identity, opened.connection_id, code, reason, duration
            )
        )
        logger.info(
            "%s: connection %d closed: room %r, code %d%s, after %.1f s",
            who,
            opened.connection_id,
            room.name,
            code,
            f" ({reason})" if reason else "",
            duration,
            extra={"room": room.name, "client": who, "identity": opened.identity,
                   "connection": opened.connection_id, "code": code, "reason": reason,
                   "duration": round(duration, 3), "event": "connection_closed"},
        )  # fmt: skip

    async def _receive(
        self, room: Room, peer: Peer, meter: TrafficMeter, who: str, payload: bytes
    ) -> None:
        # The whole frame is decoded and validated before any of it is acted on, and the work
        # of a frame with several messages yields to other connections between them.
        try:
            meter.count(len(payload), trio.current_time())
            messages = decode(payload, self.message_limits)
            # Bytes are counted for the frame's first message (frames rarely hold more).
            size = len(payload)
            for message in messages:
                self.instruments.message_received(message_kind(message), size)
                size = 0
            for index, message in enumerate(messages):
                if peer.closing:
                    return
                if index:
                    await trio.lowlevel.checkpoint()
                room.handle(peer, message)
        except YSyncError as exc:
            if exc.peer_fault:
                logger.warning(
                    "%s: room %r: closing with %d: %s", who, room.name, exc.close_code, exc
                )
            else:
                logger.error(
                    "%s: room %r: closing with %d", who, room.name, exc.close_code, exc_info=exc
                )
            peer.close(exc.close_code, str(exc))
        except BaseException as exc:
            if must_propagate(exc):
                raise
            logger.error("%s: room %r: error handling a message", who, room.name, exc_info=exc)
            peer.close(CloseCode.INTERNAL_ERROR, "internal error")

    # -- rooms ---------------------------------------------------------------------------

    @asynccontextmanager
    async def open_room(self, name: str) -> AsyncIterator[Room]:
        """The loaded room ``name`` (created and loaded if needed), kept loaded while the
        ``async with`` block runs.

        Raises:
            RoomClosedError: the server is shutting down or the room could not be loaded.
            ServerFull: loading another room would pass :attr:`Limits.max_rooms`.
        """
        room = await self._reserve_room(name)
        try:
            yield room
        finally:
            room.unreserve()

    async def _reserve_room(self, name: str) -> Room:
        """The loaded room ``name``, reserved (see :meth:`Room.reserve`): the caller must
        ``unreserve()`` it."""
        while True:
            if self._shutdown.is_set() or self._rooms_nursery is None:
                raise RoomClosedError("the server is shutting down")
            room = self._rooms.get(name)
            created = room is None
            if room is None:
                if self.limits.max_rooms is not None and len(self._rooms) >= self.limits.max_rooms:
                    raise ServerFull("the server is at its room limit")
                if name in self._deleting:
                    raise RoomClosedError(f"room {name!r} is being deleted")
                room = Room(
                    name,
                    self.store,
                    bus=self.bus,
                    backend=self.backend,
                    broadcast_before_commit=self.broadcast_before_commit,
                    compact_after_updates=self.compact_after_updates,
                    compact_after_bytes=self.compact_after_bytes,
                    events=self._room_events,
                    timers=self.timers,
                    presence_interval=self.presence_interval,
                    echo_updates=self.echo_updates,
                )
                self._rooms[name] = room
                self._rooms_nursery.start_soon(self._open_room, room, self._rooms_nursery)
            if room.state in (RoomState.LOADING, RoomState.OPEN):
                # Reserved before it is ready, so it cannot unload between its load and us.
                room.reserve()
                try:
                    await room.ready.wait()
                except BaseException:
                    room.unreserve()
                    raise
                if room.accepting:
                    return room
                room.unreserve()
            if created and room.failure is not None:
                raise RoomClosedError(f"room {name!r} could not be loaded")
            # The room is unloading or failed: wait until it is gone, then load it afresh.
            await room.closed.wait()

    async def _open_room(self, room: Room, nursery: trio.Nursery) -> None:
        # The room's task while it loads; once open it has none (see Room), and tells
        # _RoomEvents.closed when it is gone.
        logger.info("room %r: loading", room.name)
        try:
            await room.open(nursery, self.room_grace_period)
        except BaseException as exc:
            if must_propagate(exc):
                raise
            # The room has logged it and closed; its joiners are told by _reserve_room.

    def _room_closed(self, room: Room) -> None:
        if self._rooms.get(room.name) is room:
            del self._rooms[room.name]
        failed = room.failure is not None
        if self._room_events.forget(room):
            self.instruments.room_unloaded()
            self.hooks.emit(RoomUnloaded(room.name, failed))
        logger.info("room %r: %s", room.name, "failed" if failed else "unloaded")

    async def delete_room(self, name: str) -> None:
        """Close the room's connections (4404, which y-websocket does not reconnect after),
        unload it and delete it from the store. Connections to it meanwhile are refused.

        Raises:
            StoreError: the store could not delete it.
            UnsupportedOperationError: the server is part of a cluster; the other servers and
                the bus would keep the room (and bring it back), so it is refused.
        """
        if self.bus.shared:
            raise UnsupportedOperationError(
                "deleting a room is not supported in a cluster yet: the other servers and "
                "Redis would keep it"
            )
        self._deleting.add(name)
        try:
            room = self._rooms.get(name)
            if room is not None:
                for peer in tuple(room.peers):
                    peer.close(CloseCode.ROOM_DELETED, "the room was deleted")
                room.stop()
                await room.closed.wait()
            await self.store.delete(name)
            logger.info("room %r: deleted", name)
        finally:
            self._deleting.discard(name)


class _RoomEvents:
    """What rooms tell their server, passed on to the instruments and the hooks."""

    def __init__(self, server: RoomServer) -> None:
        self._server = server
        self._loaded: set[Room] = set()

    def loaded(self, room: Room, duration: float) -> None:
        self._loaded.add(room)
        self._server.instruments.room_loaded(duration)
        self._server.hooks.emit(RoomLoaded(room.name, duration))

    def forget(self, room: Room) -> bool:
        """Whether the room had loaded (it is forgotten now)."""
        if room not in self._loaded:
            return False
        self._loaded.discard(room)
        return True

    def committed(
        self, room: Room, updates: Sequence[bytes], origins: Sequence[str | None], duration: float
    ) -> None:
        self._server.instruments.committed(len(updates), sum(map(len, updates)), duration)
        hooks = self._server.hooks
        if hooks:
            for update, origin in zip(updates, origins, strict=True):
                hooks.emit(DocumentChanged(room.name, update, origin))

    def sent(self, kind: str, receivers: int, size: int) -> None:
        self._server.instruments.messages_sent(kind, receivers, size)

    def closed(self, room: Room) -> None:
        self._server._room_closed(room)


async def _discard(payload: bytes) -> None:
    """Ignores messages from a connection that is only being closed."""


async def shutdown_on_signals(
    server: RoomServer, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)
) -> None:
    """Wait for one of ``signals``, then shut ``server`` down gracefully (clients get 1001).

    Run it next to :meth:`RoomServer.serve`; without it, Ctrl+C interrupts trio with
    ``KeyboardInterrupt`` and connections are dropped without a closing handshake.
    """
    with trio.open_signal_receiver(*signals) as received:
        async for signum in received:
            logger.info("received %s", signal.Signals(signum).name)
            server.shutdown()
            return
