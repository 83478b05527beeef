"""Mount the rooms of a :class:`~trio_ysync.server.RoomServer` in servers you already run.

- :func:`trio_websocket_handler`: a handler for trio-websocket's ``serve_websocket``.
- :class:`ASGIApp`: an ASGI application, for hypercorn with its trio worker
  (``hypercorn --worker-class trio``).

Both only translate their library's view of a request and a connection into the server's
(:class:`~trio_ysync.connection.ConnectionRequest`, :class:`MessagePeer`) and hand it to
:meth:`RoomServer.serve_connection <trio_ysync.server.RoomServer.serve_connection>`, the path the
built-in server takes too; neither lets one connection's exception escape (trio-websocket's
``serve_websocket`` would otherwise crash the whole server).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any
from urllib.parse import quote

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

from .connection import (
    ConnectionRequest,
    HTTPRequest,
    HTTPResponse,
    MessageHandler,
    QueuedConnection,
    describe_address,
)
from .errors import CloseCode, MessageTooBigError, UnsupportedMessageError, YSyncError
from .server import RoomServer

__all__ = ["ASGIApp", "MessagePeer", "refusal_close_code", "trio_websocket_handler"]

logger = logging.getLogger("trio_ysync.adapters")

ASGIMessage = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[ASGIMessage]]
ASGISend = Callable[[ASGIMessage], Awaitable[None]]


def refusal_close_code(status: int) -> int:
    """The close code that stands for HTTP ``status`` when a transport can only refuse by
    accepting and closing: 4000 + the status for client errors (4401, 4403, 4429, as
    Hocuspocus does), 1013 for 503 and 1011 for other server errors."""
    if 400 <= status < 500:
        return 4000 + status
    if status == 503:
        return CloseCode.TRY_AGAIN_LATER
    return CloseCode.INTERNAL_ERROR


class MessagePeer(QueuedConnection):
    """A connection over a message-oriented WebSocket API (trio-websocket, ASGI).

    Args:
        send_message: sends one binary message.
        receive_message: returns the next message (``bytes``, or ``str`` for a text message),
            or ``None`` once the connection is closed.
        close_connection: closes the connection with a code and a reason.
        max_message_size: longer messages close the connection with 1009.
        max_buffered_bytes: the outgoing buffer's limit (see
            :class:`~trio_ysync.connection.QueuedConnection`).
        close_timeout: seconds allowed for closing.
        name: how log lines name the connection.
    """

    __slots__ = (
        "_close_connection",
        "_disconnected",
        "_receive_message",
        "_send_message",
        "max_message_size",
    )

    def __init__(
        self,
        send_message: Callable[[bytes], Awaitable[None]],
        receive_message: Callable[[], Awaitable[bytes | str | None]],
        close_connection: Callable[[int, str], Awaitable[None]],
        *,
        max_message_size: int,
        max_buffered_bytes: int,
        close_timeout: float = 5.0,
        name: str = "client",
    ) -> None:
        super().__init__(
            max_buffered_bytes=max_buffered_bytes, close_timeout=close_timeout, name=name
        )
        self._send_message = send_message
        self._receive_message = receive_message
        self._close_connection = close_connection
        self.max_message_size = max_message_size
        self._disconnected = False

    def _announce_close(self, code: int, reason: str) -> None:
        pass  # sent by _finish_close once the queue is drained

    async def _finish_close(self) -> None:
        if not self._disconnected and self.close_code is not None:
            try:
                await self._close_connection(self.close_code, self.close_reason)
            except Exception as exc:
                raise trio.BrokenResourceError from exc

    async def _write(self, chunks: list[bytes]) -> None:
        # Each library reports a connection that went away its own way.
        try:
            for chunk in chunks:
                await self._send_message(chunk)
        except Exception as exc:
            raise trio.BrokenResourceError from exc

    async def _release(self) -> None:
        await trio.lowlevel.checkpoint()

    async def _read_all(self, on_message: MessageHandler) -> None:
        while self.close_code is None:
            message = await self._receive_message()
            if message is None:
                self._disconnected = True
                self._mark_closed(CloseCode.GOING_AWAY)
            elif isinstance(message, str):
                self._refuse_input(UnsupportedMessageError("text messages are not supported"))
            elif len(message) > self.max_message_size:
                self._refuse_input(
                    MessageTooBigError(f"message larger than {self.max_message_size} bytes")
                )
            else:
                await on_message(message)


# -- trio-websocket ------------------------------------------------------------------------------


def trio_websocket_handler(
    server: RoomServer,
) -> Callable[[WebSocketRequest], Awaitable[None]]:
    """A handler for ``trio_websocket.serve_websocket`` that serves ``server``'s rooms.

    Run it inside the server's context so rooms have a nursery::

        async with RoomServer() as server:
            await serve_websocket(trio_websocket_handler(server), "127.0.0.1", 1234, None)

    Give ``serve_websocket`` a ``max_message_size`` at least as large as the server's.
    """

    async def handle(request: WebSocketRequest) -> None:
        try:
            pending = _TrioWebsocketPending(server, request)
        except YSyncError as exc:
            logger.info("refusing a request: %s", exc)
            await request.reject(exc.http_status, body=f"{exc}\n".encode())
            return
        await server.serve_connection(pending)

    return handle


class _TrioWebsocketPending:
    def __init__(self, server: RoomServer, request: WebSocketRequest) -> None:
        self._server = server
        self._websocket_request = request
        remote = request.remote
        client = None if isinstance(remote, str) else (str(remote.address), int(remote.port))
        self._request = ConnectionRequest.from_target(
            request.path,
            list(request.headers),
            subprotocols=list(request.proposed_subprotocols),
            client=client,
        )

    @property
    def request(self) -> ConnectionRequest:
        return self._request

    async def accept(self) -> MessagePeer:
        websocket = await self._websocket_request.accept()
        return MessagePeer(
            websocket.send_message,
            partial(_next_trio_websocket_message, websocket),
            websocket.aclose,
            max_message_size=self._server.max_message_size,
            max_buffered_bytes=self._server.max_buffered_bytes,
            close_timeout=self._server.close_timeout,
            name=self._request.describe_client(),
        )

    async def refuse(self, status: int, reason: str) -> None:
        await self._websocket_request.reject(status, body=f"{reason}\n".encode())


async def _next_trio_websocket_message(websocket: WebSocketConnection) -> bytes | str | None:
    try:
        return await websocket.get_message()
    except ConnectionClosed:
        return None


# -- ASGI ----------------------------------------------------------------------------------------


class ASGIApp:
    """An ASGI application serving ``server``'s rooms (WebSocket) and its plain HTTP answers.

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
            await self._http(scope, receive, send)

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

    async def _http(self, scope: ASGIMessage, receive: ASGIReceive, send: ASGISend) -> None:
        body = bytearray()
        while True:
            event = await receive()
            if event["type"] != "http.request":
                return  # the client went away
            body += event.get("body", b"")
            if len(body) > self.server.max_message_size:
                response = HTTPResponse.text(413, "request body too large")
                break
            if not event.get("more_body", False):
                request = HTTPRequest(
                    method=scope["method"],
                    target=_asgi_target(scope),
                    headers=[
                        (n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"]
                    ],
                    body=bytes(body),
                )
                response = await self.server.answer_http(request)
                break
        await _send_asgi_response(send, "http.response", response)

    async def _websocket(self, scope: ASGIMessage, receive: ASGIReceive, send: ASGISend) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            pending = _ASGIPending(self.server, scope, receive, send)
        except YSyncError as exc:
            logger.info("refusing a request: %s", exc)
            await _refuse_asgi(scope, send, exc.http_status, str(exc))
            return
        await self.server.serve_connection(pending)


def _asgi_target(scope: ASGIMessage) -> str:
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else quote(scope["path"])
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{query}" if query else path


async def _send_asgi_response(send: ASGISend, prefix: str, response: HTTPResponse) -> None:
    headers = response.header_list()
    await send({"type": f"{prefix}.start", "status": response.status, "headers": headers})
    await send({"type": f"{prefix}.body", "body": response.body})


async def _refuse_asgi(scope: ASGIMessage, send: ASGISend, status: int, reason: str) -> None:
    if "websocket.http.response" in scope.get("extensions", {}):
        await _send_asgi_response(
            send, "websocket.http.response", HTTPResponse.text(status, reason)
        )
    else:
        await send({"type": "websocket.close", "code": refusal_close_code(status)})


class _ASGIPending:
    def __init__(
        self, server: RoomServer, scope: ASGIMessage, receive: ASGIReceive, send: ASGISend
    ) -> None:
        self._server = server
        self._scope = scope
        self._receive = receive
        self._send = send
        client = scope.get("client")
        self._request = ConnectionRequest.from_target(
            _asgi_target(scope),
            list(scope.get("headers", [])),
            subprotocols=list(scope.get("subprotocols", [])),
            client=(str(client[0]), int(client[1])) if client else None,
        )

    @property
    def request(self) -> ConnectionRequest:
        return self._request

    async def accept(self) -> MessagePeer:
        await self._send({"type": "websocket.accept"})
        return MessagePeer(
            self._send_bytes,
            self._next_message,
            self._close,
            max_message_size=self._server.max_message_size,
            max_buffered_bytes=self._server.max_buffered_bytes,
            close_timeout=self._server.close_timeout,
            name=describe_address(self._request.client),
        )

    async def refuse(self, status: int, reason: str) -> None:
        await _refuse_asgi(self._scope, self._send, status, reason)

    async def _send_bytes(self, data: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": data})

    async def _next_message(self) -> bytes | str | None:
        event = await self._receive()
        if event["type"] != "websocket.receive":
            return None
        data: bytes | str | None = event.get("bytes")
        return event.get("text") if data is None else data

    async def _close(self, code: int, reason: str) -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})
