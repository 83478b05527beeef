"""WebSocket server connections driven by wsproto directly over trio streams.

Server frames are never masked, so the frame of a broadcast message is the same bytes for every
receiver: :class:`OutgoingMessage` builds it once (with our own small RFC 6455 header encoder,
since wsproto's frame layer is not public API) and every connection writes those bytes.
Per-connection control frames (pongs, pings, closes) still come from the connection's wsproto
object and go through the same writer, so bytes never interleave.
"""

from __future__ import annotations

import enum
import logging
import os
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

__all__ = [
    "CloseCode",
    "HTTPResponse",
    "HandshakeRequest",
    "OutgoingBuffer",
    "OutgoingMessage",
    "ServerWebSocket",
    "encode_frame",
]

logger = logging.getLogger("trio_ysync.transport")

_OPCODE_BINARY = 0x2
_FIN = 0x80
# CPython allocates the whole requested size for each read and shrinks it to what arrived. With
# 64 KiB requests for 100-byte messages, the shrunk blocks and the long-lived allocations made
# between them (documents, buffers) riddle the C heap with holes too small for the next 64 KiB
# request, so the heap grows without bound although it is mostly free (the soak measured
# ~10 MB/min of RSS held that way). Reads therefore start small and grow only while they come
# back full, that is while a large message is streaming in.
_MIN_READ_SIZE = 4096
_MAX_READ_SIZE = 65536


class CloseCode(enum.IntEnum):
    """The WebSocket close codes this server sends."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


def encode_frame(payload: bytes, opcode: int = _OPCODE_BINARY) -> bytes:
    """One unmasked, final WebSocket frame carrying ``payload`` (RFC 6455, section 5.2)."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", _FIN | opcode, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", _FIN | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", _FIN | opcode, 127, length)
    return header + payload


class OutgoingMessage:
    """A binary message for one or many receivers; its frame is encoded at most once."""

    __slots__ = ("_frame", "payload")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self._frame: bytes | None = None

    @property
    def frame(self) -> bytes:
        """The complete WebSocket frame, shared by every receiver."""
        if self._frame is None:
            self._frame = encode_frame(self.payload)
        return self._frame

    def __len__(self) -> int:
        return len(self.payload)


class OutgoingBuffer:
    """A bounded FIFO between the tasks that produce messages and one writer task.

    Producers never block: :meth:`put` refuses (returns ``False``) once more than ``limit``
    bytes are waiting, so a receiver that does not read is detected instead of growing memory.
    A single item larger than the limit is still accepted when nothing else is waiting, so one
    big document can reach a client that reads.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: list[bytes] = []
        self._size = 0
        self._closed = False
        self._wakeup = trio.Event()

    @property
    def size(self) -> int:
        """Bytes queued and not yet taken by the writer."""
        return self._size

    def put(self, item: bytes) -> bool:
        """Queue ``item``; ``False`` if it would pass the limit (the item is then dropped)."""
        if self._closed:
            return True
        if self._size and self._size + len(item) > self.limit:
            return False
        self._items.append(item)
        self._size += len(item)
        self._wakeup.set()
        return True

    def clear(self) -> None:
        """Drop everything queued (a connection that is being torn down)."""
        self._items = []
        self._size = 0

    def close(self) -> None:
        """Accept nothing more; the writer drains what is queued and then stops."""
        self._closed = True
        self._wakeup.set()

    async def take(self) -> list[bytes]:
        """Wait for queued items and take them all; ``[]`` once closed and drained."""
        while not self._items:
            if self._closed:
                return []
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        items, self._items, self._size = self._items, [], 0
        return items


@dataclass(frozen=True)
class HandshakeRequest:
    """What the client asked for in its upgrade request."""

    #: The percent-decoded path without its leading slash: the room name.
    room: str
    #: The raw query string (without ``?``), kept for authentication.
    query: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    subprotocols: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class HTTPResponse:
    """A plain HTTP answer to a request that is not a WebSocket upgrade."""

    status: int
    body: bytes = b""
    content_type: bytes = b"text/plain; charset=utf-8"


#: Answers plain HTTP requests: called with the method and the target.
HTTPHandler = Callable[[str, str], HTTPResponse]


class _Closed(Exception):
    """Internal: the connection has been closed and the reader should stop."""


class ServerWebSocket:
    """One server-side WebSocket over a trio stream.

    Args:
        stream: the accepted TCP (or TLS) stream.
        max_message_size: messages larger than this close the connection with 1009.
        max_buffered_bytes: outgoing bytes that may wait for a slow reader before the
            connection is closed with 1013.
        close_timeout: seconds to wait for the peer's closing handshake (or for a stuck write)
            before the TCP connection is dropped.
        ping_interval: seconds between pings; a connection that did not answer the previous
            ping by the next one is closed.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_message_size: int,
        max_buffered_bytes: int,
        close_timeout: float = 5.0,
        ping_interval: float = 30.0,
    ) -> None:
        self.stream = stream
        self.ping_interval = ping_interval
        self.max_message_size = max_message_size
        self.close_timeout = close_timeout
        self._ws = WSConnection(ConnectionType.SERVER)
        self._outgoing = OutgoingBuffer(max_buffered_bytes)
        self._cancel_scope = trio.CancelScope()
        self._awaiting_pong = False
        self._written = trio.Event()
        self._writing = False
        self._read_size = _MIN_READ_SIZE
        # Plain TCP sockets on POSIX can take a frame right away without waking the writer task
        # (one system call instead of a task switch and a send_all per receiver).
        self._fd: int | None = (
            stream.socket.fileno()
            if isinstance(stream, trio.SocketStream) and os.name == "posix"
            else None
        )
        #: The close code sent or received, once the connection is closing.
        self.close_code: int | None = None
        self.close_reason = ""

    # -- handshake -----------------------------------------------------------------------

    async def handshake(self, http_handler: HTTPHandler) -> HandshakeRequest | None:
        """Read the HTTP request; accept a WebSocket upgrade or answer plain HTTP.

        Returns the request for an upgrade (not yet accepted: call :meth:`accept`), or ``None``
        when a plain HTTP answer was sent or the request was unusable.
        """
        parser = h11.Connection(h11.SERVER)
        raw = bytearray()
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                await self._send_http(parser, HTTPResponse(400, b"bad request\n"))
                logger.info("bad HTTP request: %s", exc)
                return None
            if isinstance(event, h11.Request):
                break
            if event is h11.NEED_DATA:
                data = await self._receive()
                if not data:
                    return None
                raw += data
                parser.receive_data(bytes(data))
            else:
                return None
        headers = {name.lower(): value for name, value in event.headers}
        if headers.get(b"upgrade", b"").lower() != b"websocket":
            method, target = event.method.decode("ascii"), event.target.decode("ascii")
            await self._send_http(parser, http_handler(method, target))
            return None
        try:
            self._ws.receive_data(bytes(raw))
            request = next(
                (e for e in self._ws.events() if isinstance(e, Request)),
                None,
            )
        except RemoteProtocolError as exc:
            await self._send_http(parser, HTTPResponse(400, f"{exc}\n".encode()))
            return None
        if request is None:
            return None
        parts = urlsplit(request.target)
        return HandshakeRequest(
            room=unquote(parts.path.lstrip("/")),
            query=parts.query,
            headers=list(request.extra_headers),
            subprotocols=list(request.subprotocols),
        )

    async def _send_http(self, parser: h11.Connection, response: HTTPResponse) -> None:
        headers = [
            (b"content-type", response.content_type),
            (b"content-length", str(len(response.body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            data = parser.send(h11.Response(status_code=response.status, headers=headers))
            data = (data or b"") + (parser.send(h11.Data(data=response.body)) or b"")
            data += parser.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            data = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        await self.stream.send_all(data)

    async def accept(self, subprotocol: str | None = None) -> None:
        """Complete the upgrade. Extensions such as permessage-deflate are never negotiated:
        compression state is per connection, which would defeat encode-once broadcast."""
        await self.stream.send_all(self._ws.send(AcceptConnection(subprotocol=subprotocol)))

    # -- sending -------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether messages can still be sent."""
        return self.close_code is None

    @property
    def buffered_bytes(self) -> int:
        """Outgoing bytes waiting for the writer."""
        return self._outgoing.size

    def send(self, message: OutgoingMessage) -> None:
        """Send or queue a message without blocking; a reader too slow for the buffer is
        closed."""
        if self.close_code is not None:
            return
        frame = message.frame
        if self._fd is not None and not self._writing and not self._outgoing.size:
            frame = self._write_now(frame)
            if not frame:
                return
        if not self._outgoing.put(frame):
            # It does not read, so it would not read a close frame either: drop it now.
            self._outgoing.clear()
            logger.warning("dropping a slow consumer (%d bytes buffered)", self._outgoing.limit)
            self.close(CloseCode.TRY_AGAIN_LATER, "slow consumer")
            self._cancel_scope.cancel()

    def _write_now(self, frame: bytes) -> bytes:
        """Write what the socket takes without blocking; return the rest for the writer."""
        assert self._fd is not None
        try:
            written = os.write(self._fd, frame)
        except BlockingIOError:
            return frame
        except OSError:
            # A broken connection: let the writer task's send_all meet the error and close.
            return frame
        return frame[written:]

    def ping(self) -> bool:
        """Send a ping; ``False`` if the previous ping was never answered."""
        if self._awaiting_pong:
            return False
        if self.close_code is None:
            self._awaiting_pong = True
            self._outgoing.put(self._ws.send(Ping(b"")))
        return True

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start the closing handshake; the connection is dropped if it does not finish in
        ``close_timeout`` seconds."""
        if self.close_code is not None:
            return
        self.close_code = code
        self.close_reason = reason
        if self._ws.state is ConnectionState.OPEN:
            self._outgoing.put(self._ws.send(CloseConnection(code=code, reason=reason)))
        self._outgoing.close()
        self._cancel_scope.deadline = min(
            self._cancel_scope.deadline, trio.current_time() + self.close_timeout
        )

    # -- running -------------------------------------------------------------------------

    async def run(self, on_message: Callable[[bytes], Awaitable[None] | None]) -> None:
        """Read messages and pass each one to ``on_message`` until the connection closes.

        ``on_message`` may be a plain function (preferred: the room's work is synchronous) or a
        coroutine function. A text message closes the connection with 1003, an oversized one
        with 1009 and a malformed frame with 1002; exceptions from ``on_message`` propagate
        after the connection has been closed with 1011. The stream is closed on return.
        """
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_all)
                    nursery.start_soon(self._keep_alive)
                    try:
                        await self._read_all(on_message)
                    except BaseException:
                        self.close(CloseCode.INTERNAL_ERROR, "internal error")
                        raise
                    finally:
                        self.close(CloseCode.NORMAL)
                    # Let the writer send what is queued (bounded by the close deadline).
                    await self._written.wait()
                    nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(self.stream)

    async def _keep_alive(self) -> None:
        while self.close_code is None:
            await trio.sleep(self.ping_interval)
            if not self.ping():
                logger.info("closing a connection that did not answer a ping")
                self.close(CloseCode.GOING_AWAY, "ping timeout")

    async def _write_all(self) -> None:
        while chunks := await self._outgoing.take():
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._writing = True
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._outgoing.clear()
                self.close_code = self.close_code or CloseCode.GOING_AWAY
                self._cancel_scope.cancel()
                return
            finally:
                self._writing = False
        self._written.set()

    async def _read_all(self, on_message: Callable[[bytes], Awaitable[None] | None]) -> None:
        parts: list[bytes] = []
        size = 0
        while True:
            try:
                data = await self._receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                # The peer is gone: nothing queued can reach it any more.
                self.close_code = self.close_code or CloseCode.GOING_AWAY
                self._outgoing.clear()
                self._cancel_scope.cancel()
                return
            self._ws.receive_data(bytes(data))
            for event in self._ws.events():
                if isinstance(event, BytesMessage):
                    if self.close_code is not None:
                        continue
                    size += len(event.data)
                    if size > self.max_message_size:
                        parts = []
                        self.close(CloseCode.MESSAGE_TOO_BIG, "message too big")
                        continue
                    parts.append(bytes(event.data))
                    if event.message_finished:
                        message = parts[0] if len(parts) == 1 else b"".join(parts)
                        parts, size = [], 0
                        result = on_message(message)
                        if result is not None:
                            await result
                elif isinstance(event, Ping):
                    if self.close_code is None:
                        self._outgoing.put(self._ws.send(event.response()))
                elif isinstance(event, Pong):
                    self._awaiting_pong = False
                elif isinstance(event, CloseConnection):
                    self._on_close(event)
                elif isinstance(event, TextMessage):
                    self.close(CloseCode.UNSUPPORTED_DATA, "text messages are not supported")
            if self._ws.state is ConnectionState.CLOSED:
                return  # both close frames exchanged; the server closes the TCP connection

    async def _receive(self) -> bytes | bytearray:
        """Read what has arrived, asking for more only while reads come back full."""
        data = await self.stream.receive_some(self._read_size)
        if len(data) == self._read_size:
            self._read_size = min(self._read_size * 2, _MAX_READ_SIZE)
        else:
            self._read_size = _MIN_READ_SIZE
        return data

    def _on_close(self, event: CloseConnection) -> None:
        if self.close_code is None:
            self.close_code = event.code
            self.close_reason = event.reason or ""
            # Answer the peer's close (or wsproto's own after a protocol error) and finish.
            try:
                self._outgoing.put(self._ws.send(event.response()))
            except LocalProtocolError:
                pass
            self._outgoing.close()
            self._cancel_scope.deadline = min(
                self._cancel_scope.deadline, trio.current_time() + self.close_timeout
            )
        elif self._ws.state is ConnectionState.CLOSED:
            # The peer answered our close: the handshake is complete.
            self._outgoing.close()
