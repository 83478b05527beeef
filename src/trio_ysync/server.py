"""The room server: y-websocket rooms over WebSocket, one nursery per room.

.. code-block:: python

    async with RoomServer() as server:
        port = await nursery.start(server.serve, "127.0.0.1", 1234)

Each connection runs a reader and a writer task; one connection's errors close only that
connection. Rooms are loaded on the first connection to their path and unloaded after the last
peer has left and a grace period has passed.
"""

from __future__ import annotations

import logging
import signal
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from types import TracebackType
from typing import Any

import trio

from .demo import demo_response
from .doc import Backend, DocumentError
from .protocol import ProtocolError
from .room import Peer, Room, RoomClosedError, UnsupportedMessageError
from .store import MemoryStore, Store
from .transport import CloseCode, HTTPResponse, ServerWebSocket

__all__ = ["Room", "RoomServer", "shutdown_on_signals"]

logger = logging.getLogger("trio_ysync.server")

#: Runs a peer's connection, calling the given function with each incoming message.
PeerRunner = Callable[[Callable[[bytes], None]], Awaitable[None]]


class RoomServer:
    """Serves Yjs rooms to y-websocket clients.

    Args:
        store: where documents are kept (default: a :class:`~trio_ysync.store.MemoryStore`).
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
        demo: also answer plain HTTP requests under ``/demo/`` with the demo editor
            (:mod:`trio_ysync.demo`).
    """

    def __init__(
        self,
        store: Store | None = None,
        *,
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
        demo: bool = False,
    ) -> None:
        self.store: Store = MemoryStore() if store is None else store
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
        self.demo = demo
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
                self._rooms_nursery = nursery
                try:
                    yield
                finally:
                    self.shutdown()
                    with trio.CancelScope(shield=True):
                        await self._stop_rooms()
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
        async with self._run_rooms():
            listeners: list[Any] = list(await trio.open_tcp_listeners(port, host=host))
            bound_port = listeners[0].socket.getsockname()[1]
            if ssl_context is not None:
                listeners = [trio.SSLListener(listener, ssl_context) for listener in listeners]
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    await accepting.start(
                        partial(
                            trio.serve_listeners,
                            self.serve_stream,
                            listeners,
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
        ws = ServerWebSocket(
            stream,
            max_message_size=self.max_message_size,
            max_buffered_bytes=self.max_buffered_bytes,
            close_timeout=self.close_timeout,
            ping_interval=self.ping_interval,
        )
        try:
            request = None
            with trio.move_on_after(self.handshake_timeout):
                request = await ws.handshake(self._answer_http)
            if request is None:
                await trio.aclose_forcefully(stream)
                return
            async with self.open_room(request.room) as room:
                accepted = False
                with trio.move_on_after(self.handshake_timeout):
                    await ws.accept()
                    accepted = True
                if not accepted:
                    await trio.aclose_forcefully(stream)
                    return
                await self.serve_peer(room, ws, ws.run)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await trio.aclose_forcefully(stream)
        except RoomClosedError as exc:
            logger.info("refusing a connection: %s", exc)
            await trio.aclose_forcefully(stream)
        except Exception:
            logger.exception("connection handler failed")
            await trio.aclose_forcefully(stream)

    def _answer_http(self, method: str, target: str) -> HTTPResponse:
        if target.split("?", 1)[0] == self.health_path and method in ("GET", "HEAD"):
            return HTTPResponse(200, b"ok\n")
        if self.demo and (response := demo_response(method, target)) is not None:
            return response
        return HTTPResponse(426, b"this is a y-websocket server: connect with a WebSocket\n")

    @asynccontextmanager
    async def open_room(self, name: str) -> AsyncIterator[Room]:
        """The loaded room ``name`` (created and loaded if needed), kept loaded while the
        ``async with`` block runs, so a peer can finish its handshake before it joins.

        Raises:
            RoomClosedError: the server is shutting down or the room failed to load.
        """
        while True:
            if self._shutdown.is_set() or self._rooms_nursery is None:
                raise RoomClosedError("the server is shutting down")
            room = self._rooms.get(name)
            if room is None:
                room = Room(
                    name,
                    self.store,
                    backend=self.backend,
                    broadcast_before_commit=self.broadcast_before_commit,
                    compact_after_updates=self.compact_after_updates,
                    compact_after_bytes=self.compact_after_bytes,
                )
                self._rooms[name] = room
                self._rooms_nursery.start_soon(self._run_room, room)
            await room.ready.wait()
            if room.accepting:
                break
            if room.failure is not None and not room.closed.is_set():
                raise RoomClosedError(f"room {name!r} failed: {room.failure}")
            # The room is unloading: wait until it has flushed, then load it afresh.
            await room.closed.wait()
        with room.reserved():
            yield room

    async def _run_room(self, room: Room) -> None:
        logger.info("room %r: loading", room.name)
        try:
            await room.run(self.room_grace_period)
        except Exception:
            logger.exception("room %r failed", room.name)
        finally:
            if self._rooms.get(room.name) is room:
                del self._rooms[room.name]
            logger.info("room %r: unloaded", room.name)

    async def serve_peer(self, room: Room, peer: Peer, run: PeerRunner) -> None:
        """Join ``peer`` to ``room`` and feed it the messages ``run`` reads, until it returns.

        This is the part every transport shares (wsproto here, trio-websocket and ASGI in
        :mod:`trio_ysync.adapters`). Bad input closes only this peer, with a close code that
        says why.
        """
        room.join(peer)
        logger.info("room %r: peer joined (%d connected)", room.name, len(room.peers))
        try:
            await run(partial(self._receive, room, peer))
        finally:
            room.leave(peer)
            logger.info("room %r: peer left (%d connected)", room.name, len(room.peers))

    def _receive(self, room: Room, peer: Peer, payload: bytes) -> None:
        try:
            room.receive(peer, payload)
        except UnsupportedMessageError as exc:
            logger.warning("room %r: closing a peer: %s", room.name, exc)
            peer.close(CloseCode.UNSUPPORTED_DATA, str(exc)[:120])
        except (ProtocolError, DocumentError) as exc:
            logger.warning("room %r: closing a peer that sent bad data: %s", room.name, exc)
            peer.close(CloseCode.INVALID_DATA, "malformed message")
        except Exception:
            logger.exception("room %r: error handling a message", room.name)
            peer.close(CloseCode.INTERNAL_ERROR, "internal error")


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
