"""What every transport hands the server: the request, and the connection once accepted.

The built-in wsproto server, the trio-websocket handler and the ASGI app each build a
:class:`ConnectionRequest` from their own view of the upgrade request and wrap their socket in a
:class:`PendingConnection`; :meth:`RoomServer.serve_connection
<trio_ysync.server.RoomServer.serve_connection>` does the rest the same way for all three.
"""

from __future__ import annotations

import abc
import logging
import re
import struct
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qs, unquote

import trio

from .errors import CloseCode, ProtocolError
from .protocol import Message, encode, message_kind

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "MAX_ROOM_NAME_BYTES",
    "Connection",
    "ConnectionRequest",
    "HTTPHandler",
    "HTTPRequest",
    "HTTPResponse",
    "MessageHandler",
    "OutgoingBuffer",
    "OutgoingMessage",
    "PendingConnection",
    "QueuedConnection",
    "SendGathering",
    "close_reason",
    "describe_address",
    "encode_frame",
    "gathering_sends",
    "must_propagate",
    "room_from_path",
]

logger = logging.getLogger("trio_ysync.connection")

#: The longest room name accepted, in UTF-8 bytes.
MAX_ROOM_NAME_BYTES = 1024

_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def room_from_path(path: str) -> str:
    """The room a request path names: the path without its leading slash, percent-decoded.

    Raises:
        ProtocolError: the path is not a usable room name (invalid percent-encoding or UTF-8,
            control characters, empty or too long), so two different paths can never land in
            the same room. Maps to HTTP 400.
    """
    raw = path.partition("?")[0].removeprefix("/")
    if _BAD_PERCENT.search(raw):
        raise ProtocolError("invalid percent-encoding in the room path")
    try:
        room = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise ProtocolError("the room path is not valid UTF-8") from None
    if _CONTROL.search(room):
        raise ProtocolError("control characters in the room path")
    if not room:
        raise ProtocolError("no room in the path: connect to /<room>")
    if len(room.encode("utf-8")) > MAX_ROOM_NAME_BYTES:
        raise ProtocolError(f"the room name is longer than {MAX_ROOM_NAME_BYTES} bytes")
    return room


@dataclass(frozen=True, slots=True)
class ConnectionRequest:
    """A WebSocket upgrade request, as every transport describes it.

    Header names are lower case; values are decoded as Latin-1 (HTTP's own encoding).
    """

    #: The request target's path, exactly as received (percent-encoded).
    path: str
    #: The raw query string, without ``?``.
    query: str = ""
    headers: Sequence[tuple[str, str]] = ()
    #: The subprotocols the client offered.
    subprotocols: Sequence[str] = ()
    #: The client's address and port as the socket sees it (not proxy headers).
    client: tuple[str, int] | None = None
    #: The room the path names (see :func:`room_from_path`).
    room: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "room", room_from_path(self.path))

    @classmethod
    def from_target(
        cls,
        target: str,
        headers: Sequence[tuple[str | bytes, str | bytes]],
        *,
        subprotocols: Sequence[str] = (),
        client: tuple[str, int] | None = None,
    ) -> ConnectionRequest:
        """Build a request from an HTTP request target (``/path?query``) and raw headers.

        Raises:
            ProtocolError: the path does not name a room.
        """
        path, _, query = target.partition("?")
        return cls(
            path=path,
            query=query,
            headers=tuple((_text(name).lower(), _text(value)) for name, value in headers),
            subprotocols=tuple(subprotocols),
            client=client,
        )

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def origin(self) -> str | None:
        """The ``Origin`` header (browsers send it; other clients may not)."""
        return self.header("origin")

    def query_param(self, name: str) -> str | None:
        """The first value of query parameter ``name``, or ``None``."""
        values = parse_qs(self.query, keep_blank_values=True).get(name)
        return values[0] if values else None

    def describe_client(self) -> str:
        """The client's address for log lines."""
        return describe_address(self.client)


def describe_address(client: tuple[str, int] | None) -> str:
    """``host:port`` (``[host]:port`` for IPv6) for log lines."""
    if client is None:
        return "unknown client"
    host, port = client
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


#: Receives each complete incoming binary message.
MessageHandler = Callable[[bytes], Awaitable[None]]


class Connection(Protocol):
    """An accepted WebSocket as the server and its rooms use it."""

    #: The close code sent or received, once the connection is closing.
    close_code: int | None
    #: The reason that came with it.
    close_reason: str

    @property
    def closing(self) -> bool:
        """Whether the connection is closing (or already gone): send nothing more, do no more
        work."""
        ...

    @property
    def bytes_queued(self) -> int:
        """Bytes handed to :meth:`send` since the connection opened (a running total)."""
        ...

    @property
    def bytes_written(self) -> int:
        """Bytes of those already handed to the network (a running total)."""
        ...

    def send(self, message: OutgoingMessage) -> None:
        """Queue ``message`` without blocking; a receiver too slow to keep up is closed."""
        ...

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start closing: what is queued is still sent, within a deadline."""
        ...

    async def run(self, on_message: MessageHandler) -> None:
        """Read messages into ``on_message`` until the connection has closed.

        Text messages, oversized messages and framing errors close the connection with the
        matching code. ``on_message`` must not raise.
        """
        ...


class PendingConnection(Protocol):
    """A WebSocket upgrade request that has been neither accepted nor refused yet."""

    @property
    def request(self) -> ConnectionRequest:
        """What the client asked for."""
        ...

    async def accept(self) -> Connection:
        """Complete the upgrade."""
        ...

    async def refuse(self, status: int, reason: str) -> None:
        """Refuse the upgrade with an HTTP status and a short reason (or the closest thing the
        transport allows)."""
        ...


# -- outgoing messages -------------------------------------------------------------------------

_OPCODE_BINARY = 0x2
_FIN = 0x80


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
    """A binary message for one or many receivers; its frame is encoded at most once.

    Server frames are never masked, so a broadcast's frame is the same bytes for every receiver.
    """

    __slots__ = ("_frame", "kind", "payload")

    def __init__(self, payload: bytes, kind: str = "") -> None:
        self.payload = payload
        #: What the message is (see :func:`~trio_ysync.protocol.message_kind`), for metrics.
        self.kind = kind
        self._frame: bytes | None = None

    @classmethod
    def of(cls, message: Message) -> OutgoingMessage:
        """The encoded ``message``."""
        return cls(encode(message), message_kind(message))

    @property
    def frame(self) -> bytes:
        """The complete WebSocket frame, shared by every receiver."""
        if self._frame is None:
            self._frame = encode_frame(self.payload)
        return self._frame

    def __len__(self) -> int:
        return len(self.payload)


class OutgoingBuffer:
    """A bounded FIFO between the code that produces messages and a connection's writer.

    Producers never block: :meth:`put` refuses (returns ``False``) once more than ``limit``
    bytes are waiting, so a receiver that does not read is detected instead of growing memory.
    A single item larger than the limit is still accepted when nothing else is waiting, so one
    big document can reach a client that reads.
    """

    __slots__ = ("_items", "_size", "closed", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: list[bytes] = []
        self._size = 0
        #: Whether it accepts nothing more (what is queued is still taken).
        self.closed = False

    @property
    def size(self) -> int:
        """Bytes queued and not yet taken by the writer."""
        return self._size

    def put(self, item: bytes) -> bool:
        """Queue ``item``; ``False`` if it would pass the limit (the item is then dropped)."""
        if self.closed:
            return True
        if self._size and self._size + len(item) > self.limit:
            return False
        self._items.append(item)
        self._size += len(item)
        return True

    def take(self) -> list[bytes]:
        """Everything queued (``[]`` if nothing is)."""
        items, self._items, self._size = self._items, [], 0
        return items

    def clear(self) -> None:
        """Drop everything queued (a connection that is being torn down)."""
        self._items = []
        self._size = 0

    def close(self) -> None:
        """Accept nothing more; the writer sends what is queued and then stops."""
        self.closed = True


# -- the plumbing every transport shares ---------------------------------------------------------


class SendGathering:
    """The connections whose messages wait for the end of some work (see
    :func:`gathering_sends`)."""

    __slots__ = ("_connections", "open")

    def __init__(self) -> None:
        self._connections: list[QueuedConnection] = []
        #: Whether sends still gather (the block has not ended).
        self.open = True

    def add(self, connection: QueuedConnection) -> None:
        """Release ``connection``'s gathered messages with the others'."""
        self._connections.append(connection)

    def release(self) -> None:
        """Write what every connection gathered so far (one write each); gathering goes on
        while the block lasts."""
        connections, self._connections = self._connections, []
        for connection in connections:
            connection._release_gathered()


_gathering: ContextVar[SendGathering | None] = ContextVar("trio_ysync_gathering", default=None)


@contextmanager
def gathering_sends() -> Iterator[SendGathering]:
    """Within the block, messages sent by this task to a :class:`QueuedConnection` that could
    take them at once wait, and each connection writes what it gathered in one go when the
    block ends (or at :meth:`SendGathering.release`).

    A reader wraps the work of one read in it: the updates that arrived together then reach
    each receiver in one write instead of one write each (a system call per receiver and
    message was most of a fan-out's time). Nothing waits for more than that work: the block
    ends before the reader waits for the network again, and a reader that lets other tasks
    run in the middle of a long read releases first. Each connection's messages keep the
    order they were sent in, whoever sends them meanwhile.
    """
    gathering = SendGathering()
    token = _gathering.set(gathering)
    try:
        yield gathering
    finally:
        # Tasks started within the block inherit the variable; a closed gathering is ignored.
        gathering.open = False
        _gathering.reset(token)
        gathering.release()


def must_propagate(exc: BaseException) -> bool:
    """Whether ``exc`` must go through a connection's or a room's error boundary: cancellation
    and the interpreter's own exits do; anything else (a bug of ours, or a native library's
    ``BaseException``) is contained there."""
    if isinstance(exc, BaseExceptionGroup):
        return any(must_propagate(inner) for inner in exc.exceptions)
    return isinstance(exc, trio.Cancelled | KeyboardInterrupt | SystemExit | GeneratorExit)


#: A close frame's reason may hold at most 123 bytes of UTF-8.
MAX_CLOSE_REASON_BYTES = 123


def close_reason(text: str) -> str:
    """``text`` cut to what fits in a close frame, never in the middle of a character."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= MAX_CLOSE_REASON_BYTES:
        return text
    return data[:MAX_CLOSE_REASON_BYTES].decode("utf-8", errors="ignore")


class QueuedConnection(abc.ABC):
    """A :class:`Connection` whose outgoing messages wait in a bounded buffer for a writer task.

    This is written once for every transport: the slow-consumer rule (a receiver that lets more
    than ``max_buffered_bytes`` pile up is dropped with 1013), the closing deadline, the byte
    counters, and the guarantee that once :meth:`run` returns the connection is closed and
    nothing is written to it any more. Subclasses say how to read messages, how to write bytes
    and how to announce a close.

    The writer task exists only while there is something to write: an idle connection is one
    task (its reader), and a message the socket takes at once (see :meth:`_write_now`) starts
    no task at all.

    Args:
        max_buffered_bytes: the outgoing buffer's limit.
        close_timeout: seconds allowed for what is queued and the closing handshake.
        name: how log lines name the connection (its client address).
        nursery: where the writer task runs (a server's nursery of connections); by default
            :meth:`run` opens one of its own.
    """

    __slots__ = (
        "__weakref__",
        "_bytes_queued",
        "_bytes_written",
        "_flushed",
        "_gathered",
        "_nursery",
        "_outgoing",
        "_own_nursery",
        "_scope",
        "_writer_scope",
        "_writing",
        "close_code",
        "close_reason",
        "close_timeout",
        "name",
    )

    def __init__(
        self,
        *,
        max_buffered_bytes: int,
        close_timeout: float,
        name: str,
        nursery: trio.Nursery | None = None,
    ) -> None:
        self._outgoing = OutgoingBuffer(max_buffered_bytes)
        self._scope = trio.CancelScope()
        self.close_timeout = close_timeout
        self.name = name
        #: The close code sent or received, once the connection is closing.
        self.close_code: int | None = None
        self.close_reason = ""
        self._bytes_queued = 0
        self._bytes_written = 0
        self._own_nursery = nursery is None
        self._nursery: trio.Nursery | None = nursery
        self._writing = False
        self._writer_scope: trio.CancelScope | None = None
        self._flushed: trio.Event | None = None
        self._gathered: list[bytes] | None = None

    # -- Connection ----------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """Whether the connection is closing or closed."""
        return self.close_code is not None

    @property
    def bytes_queued(self) -> int:
        """Bytes handed to :meth:`send` so far."""
        return self._bytes_queued

    @property
    def bytes_written(self) -> int:
        """Bytes of those already handed to the network."""
        return self._bytes_written

    @property
    def buffered_bytes(self) -> int:
        """Outgoing bytes waiting for the writer."""
        return self._outgoing.size

    def send(self, message: OutgoingMessage) -> None:
        """Queue ``message`` without blocking; a receiver too slow to keep up is dropped."""
        if self.close_code is not None:
            return
        data = self._serialize(message)
        self._bytes_queued += len(data)
        if self._gathered is not None:
            self._gathered.append(data)
            return
        if not self._writing and not self._outgoing.size:
            gathering = _gathering.get()
            if gathering is not None and gathering.open:
                self._gathered = [data]
                gathering.add(self)
                return
        self._write_or_queue(data)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start closing: what is queued is still sent, then the close, within
        ``close_timeout`` seconds."""
        if self.close_code is not None:
            return
        self._release_gathered()
        reason = close_reason(reason)
        self.close_code = code
        self.close_reason = reason
        self._announce_close(code, reason)
        self._outgoing.close()
        self._start_writer()
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + self.close_timeout)

    async def run(self, on_message: MessageHandler) -> None:
        """Read messages into ``on_message`` until the connection has closed; the underlying
        socket is released on return, whatever happened."""
        self._flushed = trio.Event()
        try:
            with self._scope:
                if self._own_nursery:
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        await self._serve(on_message)
                        nursery.cancel_scope.cancel()
                else:
                    await self._serve(on_message)
        finally:
            if self._writer_scope is not None:
                self._writer_scope.cancel()
            if self._own_nursery:
                self._nursery = None
            self._mark_closed(CloseCode.GOING_AWAY)
            self._stop_helpers()
            with trio.CancelScope(shield=True):
                await self._release()

    async def _serve(self, on_message: MessageHandler) -> None:
        assert self._flushed is not None
        self._start_helpers()
        if self._outgoing.size or self._outgoing.closed:
            self._start_writer()
        try:
            await self._read_all(on_message)
        except BaseException:
            self.close(CloseCode.INTERNAL_ERROR, "internal error")
            raise
        finally:
            self.close()
        # Let the writer send what is queued (bounded by the close deadline).
        await self._flushed.wait()

    # -- shared internals ----------------------------------------------------------------

    def _release_gathered(self) -> None:
        """Write or queue the messages gathered (see :func:`gathering_sends`)."""
        gathered = self._gathered
        if gathered is None:
            return
        self._gathered = None
        self._write_or_queue(gathered[0] if len(gathered) == 1 else b"".join(gathered))

    def _write_or_queue(self, data: bytes) -> None:
        """Write ``data`` at once if nothing waits before it and the socket takes it; queue
        what it does not take."""
        if not self._writing and not self._outgoing.size:
            rest = self._write_now(data)
            self._bytes_written += len(data) - len(rest)
            data = rest
        if data:
            self._queue(data)

    def _queue(self, data: bytes) -> None:
        """Queue bytes for the writer (a message, or a control frame)."""
        if self._outgoing.put(data):
            self._start_writer()
        else:
            self._drop_slow_consumer()

    def _start_writer(self) -> None:
        if not self._writing and self._nursery is not None and self._flushed is not None:
            self._writing = True
            self._writer_scope = trio.CancelScope()
            self._nursery.start_soon(self._write_queued, self._writer_scope)

    def _mark_closed(self, code: int) -> None:
        """The network is gone or going: nothing queued can be delivered any more."""
        if self.close_code is None:
            self.close_code = code
        self._gathered = None
        self._outgoing.clear()
        self._outgoing.close()

    def _drop_slow_consumer(self) -> None:
        # It does not read, so it would not read a close frame either: drop it now.
        logger.warning(
            "%s: dropping a slow consumer (over %d bytes unread)", self.name, self._outgoing.limit
        )
        self.close_reason = "slow consumer"
        self._mark_closed(CloseCode.TRY_AGAIN_LATER)
        self._abort()

    def _abort(self) -> None:
        """Stop reading and writing at once (the connection is gone or must go)."""
        self._scope.cancel()
        if self._writer_scope is not None:
            self._writer_scope.cancel()

    async def _write_queued(self, scope: trio.CancelScope) -> None:
        # Runs while there is something to write; started again by the next message.
        try:
            with scope:
                while chunks := self._outgoing.take():
                    size = sum(map(len, chunks))
                    await self._write(chunks)
                    self._bytes_written += size
                if self._outgoing.closed:
                    await self._finish_close()
                    if self._flushed is not None:
                        self._flushed.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._mark_closed(CloseCode.GOING_AWAY)
            self._abort()
        finally:
            self._writing = False
            if self._writer_scope is scope:
                self._writer_scope = None

    def _refuse_input(self, exc: ProtocolError) -> None:
        """Close because of something the peer sent, with one log line."""
        logger.warning("%s: closing with %d: %s", self.name, exc.close_code, exc)
        self.close(exc.close_code, str(exc))

    # -- what each transport provides ----------------------------------------------------

    def _serialize(self, message: OutgoingMessage) -> bytes:
        """The bytes the writer hands to :meth:`_write` for ``message``."""
        return message.payload

    def _write_now(self, data: bytes) -> bytes:
        """Write what can be written without blocking; return the rest (default: nothing)."""
        return data

    def _start_helpers(self) -> None:  # noqa: B027 - optional hook
        """Start what runs beside the reader, such as keep-alive timers (default: nothing)."""

    def _stop_helpers(self) -> None:  # noqa: B027 - optional hook
        """Stop what :meth:`_start_helpers` started (default: nothing)."""

    @abc.abstractmethod
    def _announce_close(self, code: int, reason: str) -> None:
        """Queue what tells the peer we are closing (a close frame), if anything."""

    async def _finish_close(self) -> None:
        """Called by the writer once everything queued is written (default: nothing)."""
        await trio.lowlevel.checkpoint()

    @abc.abstractmethod
    async def _write(self, chunks: list[bytes]) -> None:
        """Write queued chunks to the network, in order."""

    @abc.abstractmethod
    async def _read_all(self, on_message: MessageHandler) -> None:
        """Read until the connection closes, passing each complete message to
        ``on_message``."""

    @abc.abstractmethod
    async def _release(self) -> None:
        """Release the network connection (called once, shielded from cancellation)."""


# -- plain HTTP ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HTTPRequest:
    """A plain HTTP request (not a WebSocket upgrade)."""

    method: str
    #: The request target: path and query, as received.
    target: str
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.partition("?")[0]


@dataclass(frozen=True, slots=True)
class HTTPResponse:
    """A plain HTTP answer: to a request that is not an upgrade, or refusing one."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Sequence[tuple[str, str]] = ()

    @classmethod
    def text(cls, status: int, text: str) -> HTTPResponse:
        """A short plain-text answer (a line ending is added)."""
        return cls(status, f"{text}\n".encode())

    def header_list(self) -> list[tuple[bytes, bytes]]:
        """Every header of the answer, as bytes, content type and length included."""
        return [
            (b"content-type", self.content_type.encode("latin-1")),
            (b"content-length", str(len(self.body)).encode()),
            *((name.encode("latin-1"), value.encode("latin-1")) for name, value in self.headers),
        ]


#: Answers a plain HTTP request.
HTTPHandler = Callable[[HTTPRequest], Awaitable[HTTPResponse]]
