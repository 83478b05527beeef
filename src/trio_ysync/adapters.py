"""Mount the rooms of a :class:`~trio_ysync.server.RoomServer` in servers you already run.

- :func:`trio_websocket_handler`: a handler for trio-websocket's ``serve_websocket``.
- :class:`ASGIApp`: an ASGI application, for hypercorn with its trio worker
  (``hypercorn --worker-class trio``).

Both share the room logic with the built-in server (:meth:`RoomServer.serve_peer`) and neither
lets one connection's exception escape: trio-websocket's ``serve_websocket`` would otherwise
crash the whole server.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any
from urllib.parse import unquote

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest

from .room import RoomClosedError
from .server import RoomServer
from .transport import CloseCode, OutgoingBuffer, OutgoingMessage

__all__ = ["ASGIApp", "MessagePeer", "trio_websocket_handler"]

logger = logging.getLogger("trio_ysync.adapters")

ASGIMessage = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[ASGIMessage]]
ASGISend = Callable[[ASGIMessage], Awaitable[None]]


class MessagePeer:
    """A peer over a message-oriented WebSocket API (trio-websocket, ASGI).

    Outgoing messages wait in a bounded buffer drained by one writer task; a peer that lets more
    than ``max_buffered_bytes`` pile up is closed with 1013.

    Args:
        send_message: sends one binary message.
        receive_message: returns the next message (``bytes``, or ``str`` for a text message),
            or ``None`` once the connection is closed.
        close_connection: closes the connection with a code and a reason.
        max_buffered_bytes: the outgoing buffer's limit.
        close_timeout: seconds allowed for closing.
    """

    def __init__(
        self,
        send_message: Callable[[bytes], Awaitable[None]],
        receive_message: Callable[[], Awaitable[bytes | str | None]],
        close_connection: Callable[[int, str], Awaitable[None]],
        *,
        max_buffered_bytes: int,
        close_timeout: float = 5.0,
    ) -> None:
        self._send_message = send_message
        self._receive_message = receive_message
        self._close_connection = close_connection
        self._outgoing = OutgoingBuffer(max_buffered_bytes)
        self._cancel_scope = trio.CancelScope()
        self.close_timeout = close_timeout
        self.close_code: int | None = None
        self.close_reason = ""
        self._disconnected = False

    def send(self, message: OutgoingMessage) -> None:
        """Queue ``message`` without blocking."""
        if self.close_code is None and not self._outgoing.put(message.payload):
            # It does not read, so it would not read a close frame either: drop it now.
            self._outgoing.clear()
            logger.warning("dropping a slow consumer")
            self.close(CloseCode.TRY_AGAIN_LATER, "slow consumer")
            self._cancel_scope.cancel()

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close after what is already queued has been sent (within ``close_timeout``)."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            self._outgoing.close()
            self._cancel_scope.deadline = trio.current_time() + self.close_timeout

    async def run(self, on_message: Callable[[bytes], None]) -> None:
        """Read messages into ``on_message`` until the connection closes."""
        with self._cancel_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_all)
                try:
                    while self.close_code is None:
                        message = await self._receive_message()
                        if message is None:
                            self._disconnected = True
                            self.close_code = CloseCode.GOING_AWAY
                        elif isinstance(message, str):
                            self.close(
                                CloseCode.UNSUPPORTED_DATA, "text messages are not supported"
                            )
                        else:
                            on_message(message)
                finally:
                    self.close()
                    self._outgoing.close()

    async def _write_all(self) -> None:
        try:
            while messages := await self._outgoing.take():
                for message in messages:
                    await self._send_message(message)
            if self.close_code is not None and not self._disconnected:
                await self._close_connection(self.close_code, self.close_reason)
        except (ConnectionClosed, OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._cancel_scope.cancel()


def trio_websocket_handler(
    server: RoomServer,
) -> Callable[[WebSocketRequest], Awaitable[None]]:
    """A handler for ``trio_websocket.serve_websocket`` that serves ``server``'s rooms.

    Run it inside the server's context so rooms have a nursery::

        async with RoomServer() as server:
            await serve_websocket(trio_websocket_handler(server), "127.0.0.1", 1234, None)
    """

    async def handle(request: WebSocketRequest) -> None:
        try:
            path, _, _ = request.path.partition("?")
            async with server.open_room(unquote(path.lstrip("/"))) as room:
                ws = await request.accept()

                async def receive() -> bytes | str | None:
                    try:
                        return await ws.get_message()
                    except ConnectionClosed:
                        return None

                peer = MessagePeer(
                    ws.send_message,
                    receive,
                    lambda code, reason: ws.aclose(code, reason),
                    max_buffered_bytes=server.max_buffered_bytes,
                    close_timeout=server.close_timeout,
                )
                await server.serve_peer(room, peer, peer.run)
        except RoomClosedError as exc:
            logger.info("refusing a connection: %s", exc)
        except Exception:
            logger.exception("trio-websocket connection failed")

    return handle


class ASGIApp:
    """An ASGI application serving ``server``'s rooms (WebSocket) and its health path (HTTP).

    It needs a trio-based ASGI server (hypercorn's trio worker) and runs the room server for the
    lifetime of the application through the ASGI lifespan protocol.
    """

    def __init__(self, server: RoomServer) -> None:
        self.server = server

    async def __call__(self, scope: ASGIMessage, receive: ASGIReceive, send: ASGISend) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "http":
            await self._http(scope, send)

    async def _lifespan(self, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()  # lifespan.startup
        if self.server.running:
            # The application runs the server itself (``async with server``).
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        else:
            async with self.server:
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})

    async def _http(self, scope: ASGIMessage, send: ASGISend) -> None:
        if scope["path"] == self.server.health_path:
            status, body = 200, b"ok\n"
        else:
            status, body = 426, b"this is a y-websocket server: connect with a WebSocket\n"
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _receive_message(receive: ASGIReceive) -> bytes | str | None:
        event = await receive()
        if event["type"] != "websocket.receive":
            return None
        data: bytes | str | None = event.get("bytes")
        return event.get("text") if data is None else data

    @staticmethod
    async def _send_bytes(send: ASGISend, data: bytes) -> None:
        await send({"type": "websocket.send", "bytes": data})

    @staticmethod
    async def _close(send: ASGISend, code: int, reason: str) -> None:
        await send({"type": "websocket.close", "code": code, "reason": reason})

    async def _websocket(self, scope: ASGIMessage, receive: ASGIReceive, send: ASGISend) -> None:
        try:
            if (await receive())["type"] != "websocket.connect":
                return
            async with self.server.open_room(scope["path"].lstrip("/")) as room:
                await send({"type": "websocket.accept"})
                peer = MessagePeer(
                    partial(self._send_bytes, send),
                    partial(self._receive_message, receive),
                    partial(self._close, send),
                    max_buffered_bytes=self.server.max_buffered_bytes,
                    close_timeout=self.server.close_timeout,
                )
                await self.server.serve_peer(room, peer, peer.run)
        except RoomClosedError as exc:
            logger.info("refusing a connection: %s", exc)
            await send({"type": "websocket.close", "code": CloseCode.GOING_AWAY})
        except Exception:
            logger.exception("ASGI connection failed")
