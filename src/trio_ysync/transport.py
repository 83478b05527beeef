"""WebSocket server connections driven by wsproto directly over trio streams.

The HTTP upgrade is parsed by h11 and wsproto; incoming frames by wsproto, behind a small guard
of our own that reads each frame header as it arrives, so a message that would pass the size
limit is refused when its header announces it, not after its bytes have been buffered.
Broadcast frames are encoded once (:class:`~trio_ysync.connection.OutgoingMessage`) and, when the
socket can take them at once, written without waking the writer task. Per-connection control
frames (pongs, pings, closes) come from the connection's wsproto object and go through the same
writer, so bytes never interleave.
"""

from __future__ import annotations

import base64
import logging
import socket
import struct
from typing import Any

import h11
import trio
from wsproto import ConnectionType
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, generate_accept_token, split_comma_header

from .connection import (
    ConnectionRequest,
    HTTPHandler,
    HTTPRequest,
    HTTPResponse,
    MessageHandler,
    OutgoingBuffer,
    OutgoingMessage,
    QueuedConnection,
    SendGathering,
    describe_address,
    encode_frame,
    gathering_sends,
)
from .errors import (
    CloseCode,
    FrameError,
    MessageTooBigError,
    ProtocolError,
    UnsupportedMessageError,
    YSyncError,
)
from .timers import Timer, Timers

__all__ = [
    "DEFAULT_MAX_FRAGMENTS",
    "CloseCode",
    "FrameGuard",
    "HTTPResponse",
    "OutgoingBuffer",
    "OutgoingMessage",
    "ServerWebSocket",
    "encode_frame",
    "stream_peer_address",
]

logger = logging.getLogger("trio_ysync.transport")

# CPython allocates the whole requested size for each read and shrinks it to what arrived. With
# 64 KiB requests for 100-byte messages, the shrunk blocks and the long-lived allocations made
# between them (documents, buffers) riddle the C heap with holes too small for the next 64 KiB
# request, so the heap grows although it is mostly free (the soak measured ~10 MB/min of RSS
# held that way). Reads therefore start small and grow only while they come back full, that is
# while a large message is streaming in.
_MIN_READ_SIZE = 4096
_MAX_READ_SIZE = 65536
# Reads from a socket go into one buffer per event loop and are copied out at their size, so
# they leave no shrunk block behind at all and need no adapting size (the sizes above are for
# streams that are not plain sockets).
_READ_BUFFER: trio.lowlevel.RunVar[memoryview] = trio.lowlevel.RunVar("trio_ysync.read_buffer")


def _read_buffer() -> memoryview:
    try:
        return _READ_BUFFER.get()
    except LookupError:
        buffer = memoryview(bytearray(_MAX_READ_SIZE))
        _READ_BUFFER.set(buffer)
        return buffer


#: How many frames one message may be split into.
DEFAULT_MAX_FRAGMENTS = 1024
# Every fragment costs bookkeeping whatever its payload, so each counts at least this much
# toward the message size limit.
_FRAGMENT_OVERHEAD = 16
_MAX_HTTP_HEAD = 16384
_EVENTS_PER_CHECKPOINT = 64

_OP_CONTINUATION, _OP_TEXT, _OP_BINARY = 0x0, 0x1, 0x2


class FrameGuard:
    """Reads the headers of a client's frames as the bytes arrive and enforces the limits of a
    message: its total size (each fragment counted at least ``_FRAGMENT_OVERHEAD`` bytes) and its
    number of fragments.

    It only looks at headers and skips payloads; wsproto still parses everything.
    """

    __slots__ = ("_fragments", "_header", "_message_size", "_skip", "max_fragments", "max_size")

    def __init__(self, max_size: int, max_fragments: int = DEFAULT_MAX_FRAGMENTS) -> None:
        self.max_size = max_size
        self.max_fragments = max_fragments
        self._header = b""
        self._skip = 0
        self._message_size = 0
        self._fragments = 0

    def feed(self, data: bytes | bytearray) -> None:
        """Account for ``data``, the next bytes from the client.

        Raises:
            MessageTooBigError: a frame header announced more than the limits allow.
        """
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            header = self._header + data[pos : pos + 14]
            if len(header) < 2:
                self._header = header
                return
            second = header[1]
            length = second & 0x7F
            size = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 * (second >> 7))
            if len(header) < size:
                self._header = header
                return
            pos += size - len(self._header)
            self._header = b""
            if length == 126:
                (length,) = struct.unpack_from("!H", header, 2)
            elif length == 127:
                (length,) = struct.unpack_from("!Q", header, 2)
            self._account(header[0], length)
            self._skip = length

    def _account(self, first: int, length: int) -> None:
        opcode = first & 0x0F
        if opcode > _OP_BINARY:
            return  # a control frame: wsproto limits those to 125 bytes
        if opcode != _OP_CONTINUATION:
            self._message_size = 0
            self._fragments = 0
        self._fragments += 1
        self._message_size += max(length, _FRAGMENT_OVERHEAD)
        if self._message_size > self.max_size:
            raise MessageTooBigError(f"message larger than {self.max_size} bytes")
        if self._fragments > self.max_fragments:
            raise MessageTooBigError(f"message split into more than {self.max_fragments} frames")
        if first & 0x80:
            self._message_size = 0
            self._fragments = 0


def stream_peer_address(stream: trio.abc.Stream) -> tuple[str, int] | None:
    """The remote address of a TCP stream (or of the TCP stream under TLS), if it has one."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        try:
            address: Any = stream.socket.getpeername()
        except OSError:
            return None
        if isinstance(address, tuple) and len(address) >= 2:
            return str(address[0]), int(address[1])
    return None


def _check_upgrade(method: bytes, fields: dict[bytes, bytes]) -> bytes:
    """The ``Sec-WebSocket-Key`` of a valid upgrade request (RFC 6455, section 4.2.1).

    Raises:
        ProtocolError: it is not a valid WebSocket upgrade (HTTP 400).
    """
    if method != b"GET":
        raise ProtocolError("a WebSocket upgrade must be a GET request")
    if "upgrade" not in (t.lower() for t in split_comma_header(fields.get(b"connection", b""))):
        raise ProtocolError("missing 'Connection: Upgrade'")
    if fields.get(b"sec-websocket-version") != b"13":
        raise ProtocolError("unsupported WebSocket version (this server speaks version 13)")
    key = fields.get(b"sec-websocket-key", b"")
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid = False
    if not valid:
        raise ProtocolError("missing or invalid Sec-WebSocket-Key")
    return key


class ServerWebSocket(QueuedConnection):
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
        max_fragments: how many frames one message may be split into.
        timers: the server's timers, which send the pings (no timers, no pings).
        sock: the plain socket under ``stream``, when there is one: reads and writes that do
            not block go to it directly (see :mod:`trio_ysync.accept`).
        nursery: where the writer task runs (see
            :class:`~trio_ysync.connection.QueuedConnection`).
    """

    __slots__ = (
        "_awaiting_pong",
        "_guard",
        "_http",
        "_key",
        "_ping_timer",
        "_read_size",
        "_sock",
        "_timers",
        "_trailing",
        "_ws",
        "client",
        "max_message_size",
        "ping_interval",
        "stream",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_message_size: int,
        max_buffered_bytes: int,
        close_timeout: float = 5.0,
        ping_interval: float = 30.0,
        max_fragments: int = DEFAULT_MAX_FRAGMENTS,
        timers: Timers | None = None,
        sock: socket.socket | None = None,
        nursery: trio.Nursery | None = None,
    ) -> None:
        self.client = stream_peer_address(stream)
        super().__init__(
            max_buffered_bytes=max_buffered_bytes,
            close_timeout=close_timeout,
            name=describe_address(self.client),
            nursery=nursery,
        )
        self.stream = stream
        self.ping_interval = ping_interval
        self.max_message_size = max_message_size
        self._guard = FrameGuard(max_message_size, max_fragments)
        # The frame layer of wsproto, created when the upgrade is accepted.
        self._ws: WSConnection | None = None
        self._key: bytes | None = None
        self._trailing = b""
        self._http: h11.Connection | None = h11.Connection(
            h11.SERVER, max_incomplete_event_size=_MAX_HTTP_HEAD
        )
        self._awaiting_pong = False
        self._timers = timers
        self._ping_timer: Timer | None = None
        self._read_size = _MIN_READ_SIZE
        # A plain socket can take a frame at once, without waking the writer task (one system
        # call instead of a task switch and a send_all per receiver). The socket object is
        # kept, never its file descriptor number: once it is closed, a send raises instead of
        # writing to a number the kernel may have given to another connection.
        self._sock = sock

    # -- handshake -----------------------------------------------------------------------

    async def handshake(self, http_handler: HTTPHandler) -> ConnectionRequest | None:
        """Read the HTTP request; return an upgrade request, or answer plain HTTP.

        Returns the request of a WebSocket upgrade (neither accepted nor refused yet: call
        :meth:`accept` or :meth:`refuse`), or ``None`` when the request was answered over plain
        HTTP (``http_handler``, or 400 for a malformed request) or the client went away.
        """
        parser = self._http
        assert parser is not None, "handshake() runs once"
        raw = bytearray()
        try:
            event = await self._next_http_event(parser, raw)
            if not isinstance(event, h11.Request):
                return None
            headers = [(name.lower(), value) for name, value in event.headers]
            fields = dict(headers)
            if fields.get(b"upgrade", b"").lower() != b"websocket":
                request = HTTPRequest(
                    method=event.method.decode("ascii"),
                    target=event.target.decode("ascii"),
                    headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers],
                    body=await self._read_body(parser, raw),
                )
                await self._send_http(parser, await http_handler(request))
                return None
            self._key = _check_upgrade(event.method, fields)
            self._trailing = parser.trailing_data[0]
            return ConnectionRequest.from_target(
                event.target.decode("ascii"),
                headers,
                subprotocols=[
                    protocol
                    for value in (v for n, v in headers if n == b"sec-websocket-protocol")
                    for protocol in split_comma_header(value)
                ],
                client=self.client,
            )
        except (h11.RemoteProtocolError, YSyncError) as exc:
            status = exc.http_status if isinstance(exc, YSyncError) else 400
            logger.info("%s: refusing a bad HTTP request: %s", self.name, exc)
            await self._send_http(parser, HTTPResponse.text(status, str(exc)))
            return None

    async def _next_http_event(self, parser: h11.Connection, raw: bytearray) -> Any:
        while True:
            event = parser.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self._receive()
            if not data:
                return None
            raw += data
            parser.receive_data(bytes(data))

    async def _read_body(self, parser: h11.Connection, raw: bytearray) -> bytes:
        body = bytearray()
        while True:
            event = await self._next_http_event(parser, raw)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.max_message_size:
                    raise MessageTooBigError(f"body larger than {self.max_message_size} bytes")
            else:
                return bytes(body)

    async def _send_http(self, parser: h11.Connection, response: HTTPResponse) -> None:
        headers = [*response.header_list(), (b"connection", b"close")]
        try:
            data = parser.send(h11.Response(status_code=response.status, headers=headers)) or b""
            data += parser.send(h11.Data(data=response.body)) or b""
            data += parser.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            data = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def accept(self, subprotocol: str | None = None) -> ServerWebSocket:
        """Complete the upgrade. Extensions such as permessage-deflate are never negotiated:
        compression state is per connection, which would defeat encode-once broadcast."""
        assert self._key is not None, "accept() follows a handshake() that returned a request"
        # The answer is fixed but for two headers: written here rather than through a second
        # HTTP state machine (wsproto's handshake layer), which cost a sixth of a connect storm.
        response = [
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
            b"Sec-WebSocket-Accept: " + generate_accept_token(self._key) + b"\r\n",
        ]
        if subprotocol is not None:
            response.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode("ascii") + b"\r\n")
        await self._send_bytes(b"".join(response) + b"\r\n")
        self._ws = WSConnection(ConnectionType.SERVER, trailing_data=self._trailing)
        self._http = None  # done with HTTP: an idle connection should not keep a parser
        self._key = None
        return self

    async def refuse(self, status: int, reason: str) -> None:
        """Refuse the upgrade with a plain HTTP answer."""
        if self._http is not None:
            await self._send_http(self._http, HTTPResponse.text(status, reason))

    # -- sending -------------------------------------------------------------------------

    def _serialize(self, message: OutgoingMessage) -> bytes:
        return message.frame

    async def _send_bytes(self, data: bytes) -> None:
        """Send bytes that are not a message (the upgrade's answer), at once if possible."""
        sock = self._sock
        if sock is not None:
            try:
                data = data[sock.send(data) :]
            except OSError:
                pass  # would block, or broken: send_all meets either
        if data:
            await self.stream.send_all(data)
        else:
            await trio.lowlevel.checkpoint()

    def _write_now(self, data: bytes) -> bytes:
        sock = self._sock
        if sock is None:
            return data
        try:
            written = sock.send(data)
        except OSError:
            # Would block, or the connection broke: the writer task meets either.
            return data
        return data[written:]

    def _queue_control(self, frame: bytes) -> None:
        self._bytes_queued += len(frame)
        self._queue(frame)

    def ping(self) -> bool:
        """Send a ping; ``False`` if the previous ping was never answered."""
        if self._awaiting_pong:
            return False
        if self.close_code is None:
            self._awaiting_pong = True
            assert self._ws is not None, "pings start once the upgrade is accepted"
            self._queue_control(self._ws.send(Ping(b"")))
        return True

    def _announce_close(self, code: int, reason: str) -> None:
        if self._ws is not None and self._ws.state is ConnectionState.OPEN:
            self._queue_control(self._ws.send(CloseConnection(code=code, reason=reason)))

    async def _write(self, chunks: list[bytes]) -> None:
        await self.stream.send_all(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    async def _release(self) -> None:
        await trio.aclose_forcefully(self.stream)

    # -- running -------------------------------------------------------------------------

    def _start_helpers(self) -> None:
        if self._timers is not None:
            self._ping_timer = self._timers.call_later(self.ping_interval, self._ping_due)

    def _stop_helpers(self) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None

    def _ping_due(self) -> None:
        self._ping_timer = None
        if self.close_code is not None or self._timers is None:
            return
        if not self.ping():
            logger.info("%s: closing a connection that did not answer a ping", self.name)
            self.close(CloseCode.GOING_AWAY, "ping timeout")
            return
        self._ping_timer = self._timers.call_later(self.ping_interval, self._ping_due)

    async def _read_all(self, on_message: MessageHandler) -> None:
        frames = self._ws
        assert frames is not None, "run() follows accept()"
        parts: list[bytes | bytearray] = []
        while True:
            try:
                data = await self._receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                # The peer is gone: nothing queued can reach it any more.
                self._mark_closed(CloseCode.GOING_AWAY)
                self._abort()
                return
            if self.close_code is None:
                try:
                    self._guard.feed(data)
                except ProtocolError as exc:
                    self._refuse_input(exc)
                    await self._discard_input()
                    return
            frames.receive_data(bytes(data))
            # What one read brought is answered and relayed in one write per receiver.
            with gathering_sends() as gathering:
                if not await self._dispatch(frames, parts, on_message, gathering):
                    return
            if frames.state is ConnectionState.CLOSED:
                return  # both close frames exchanged; the server closes the TCP connection

    async def _dispatch(
        self,
        frames: WSConnection,
        parts: list[bytes | bytearray],
        on_message: MessageHandler,
        gathering: SendGathering,
    ) -> bool:
        """Act on the events of what was read; ``False`` once reading must stop."""
        for count, event in enumerate(frames.events(), 1):
            if not count % _EVENTS_PER_CHECKPOINT:
                # One read can hold thousands of tiny frames: send what is ready for the
                # receivers, then let other connections in.
                gathering.release()
                await trio.lowlevel.checkpoint()
            if isinstance(event, BytesMessage):
                if self.close_code is not None:
                    continue
                parts.append(event.data)
                if event.message_finished:
                    message = parts[0] if len(parts) == 1 else b"".join(parts)
                    parts.clear()
                    await on_message(bytes(message))
            elif isinstance(event, Ping):
                if self.close_code is None:
                    self._queue_control(frames.send(event.response()))
            elif isinstance(event, Pong):
                self._awaiting_pong = False
            elif isinstance(event, CloseConnection):
                if frames.state is ConnectionState.OPEN:
                    # wsproto could not parse a frame: it reports that as a close event.
                    self._refuse_input(FrameError(event.reason or "invalid frame"))
                    return False
                self._on_close(event)
            elif isinstance(event, TextMessage) and self.close_code is None:
                self._refuse_input(UnsupportedMessageError("text messages are not supported"))
        return True

    async def _receive(self) -> bytes | bytearray:
        """Read what has arrived, asking for more only while reads come back full."""
        if self._sock is not None:
            return await self._receive_from(self._sock)
        data = await self.stream.receive_some(self._read_size)
        if len(data) == self._read_size:
            self._read_size = min(self._read_size * 2, _MAX_READ_SIZE)
        else:
            self._read_size = _MIN_READ_SIZE
        return data

    async def _receive_from(self, sock: socket.socket) -> bytes:
        # What trio's SocketStream.receive_some does, without its per-call machinery: try the
        # socket, wait for it only when it has nothing, and yield to the others either way.
        # The buffer is shared: copy out before the next checkpoint.
        buffer = _read_buffer()
        try:
            size = sock.recv_into(buffer)
        except BlockingIOError:
            pass
        except OSError as exc:
            if sock.fileno() < 0:
                raise trio.ClosedResourceError("the connection was closed") from exc
            return b""  # reset by the peer: the connection is gone
        else:
            data = buffer[:size].tobytes()
            await trio.lowlevel.checkpoint()
            return data
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                size = sock.recv_into(buffer)
            except BlockingIOError:
                continue
            except OSError:
                return b""
            return buffer[:size].tobytes()

    async def _discard_input(self) -> None:
        # The client may still be sending what it announced. Read and drop it rather than
        # close the socket under it (which would reset the connection before the client could
        # read our close frame), until it hangs up or the close deadline passes.
        try:
            while await self.stream.receive_some(_MAX_READ_SIZE):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _on_close(self, event: CloseConnection) -> None:
        assert self._ws is not None
        if self.close_code is None:
            self.close_code = event.code
            self.close_reason = event.reason or ""
            # Answer the peer's close and finish.
            try:
                self._queue_control(self._ws.send(event.response()))
            except LocalProtocolError:
                pass
            self._outgoing.close()
            self._scope.deadline = min(
                self._scope.deadline, trio.current_time() + self.close_timeout
            )
        elif self._ws.state is ConnectionState.CLOSED:
            # The peer answered our close: the handshake is complete.
            self._outgoing.close()


class WsprotoPendingConnection:
    """A :class:`~trio_ysync.connection.PendingConnection` over a :class:`ServerWebSocket`
    whose handshake has been read."""

    __slots__ = ("_request", "websocket")

    def __init__(self, websocket: ServerWebSocket, request: ConnectionRequest) -> None:
        self.websocket = websocket
        self._request = request

    @property
    def request(self) -> ConnectionRequest:
        """What the client asked for."""
        return self._request

    async def accept(self) -> ServerWebSocket:
        """Complete the upgrade."""
        return await self.websocket.accept()

    async def refuse(self, status: int, reason: str) -> None:
        """Answer with an HTTP error instead of the upgrade, and close."""
        await self.websocket.refuse(status, reason)
        await trio.aclose_forcefully(self.websocket.stream)
