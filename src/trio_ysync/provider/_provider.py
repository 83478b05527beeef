"""The client provider: keep a local document in sync with a room over a WebSocket."""

from __future__ import annotations

import enum
import inspect
import logging
import os
import random
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from ..doc import Document, DocumentError, wrap_document
from ..protocol import (
    AwarenessUpdate,
    Message,
    PermissionDenied,
    ProtocolError,
    QueryAwareness,
    SyncSession,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    decode,
    encode,
)
from ..protocol.awareness import OUTDATED_TIMEOUT
from ._awareness import ProviderAwareness
from ._feed import Feed, Subscription

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "Backoff",
    "ConnectionStatus",
    "HeadersSource",
    "ParamsSource",
    "TokenSource",
    "PermanentDisconnect",
    "Provider",
    "ProviderError",
    "WebSocketFactory",
    "default_should_reconnect",
    "open_provider",
]

logger = logging.getLogger("trio_ysync.provider")

#: Query parameters: a mapping, or a function (plain or async) called before each connection
#: attempt that returns one (to refresh a token, for example).
ParamsSource: TypeAlias = (
    Mapping[str, str]
    | Callable[[], Mapping[str, str]]
    | Callable[[], Awaitable[Mapping[str, str]]]
    | None
)

_HeaderPairs: TypeAlias = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]

#: Extra HTTP headers of the WebSocket handshake: a mapping or a list of pairs, or a function
#: (plain or async) called before each connection attempt that returns one.
HeadersSource: TypeAlias = (
    _HeaderPairs | Callable[[], _HeaderPairs] | Callable[[], Awaitable[_HeaderPairs]] | None
)

#: An access token (sent as the ``token`` query parameter, as y-websocket's ``params`` would):
#: a string, or a function (plain or async) called before each connection attempt that returns
#: a fresh one.
TokenSource: TypeAlias = str | Callable[[], str] | Callable[[], Awaitable[str]] | None

#: HTTP statuses and close codes by which a server refuses access (Hocuspocus's convention).
_ACCESS_REFUSED_STATUSES = (401, 403)
_ACCESS_REFUSED_CODES = (4401, 4403)

#: Opens one WebSocket connection: called with the full URL and the handshake headers, returns
#: an async context manager yielding a trio-websocket connection (closed on exit). The default
#: connects over TCP (and TLS for ``wss://``); tests and unusual transports pass their own.
WebSocketFactory: TypeAlias = Callable[
    [str, list[tuple[bytes, bytes]]], AbstractAsyncContextManager[WebSocketConnection]
]

# How often the awareness states are checked (y-protocols: a tenth of the timeout).
_AWARENESS_CHECK_INTERVAL = OUTDATED_TIMEOUT / 10


def _find_merge_updates() -> Callable[..., bytes] | None:
    # Merge queued updates into one message when pycrdt is installed (its merge works on any
    # v1 update, so documents of y-py benefit too).
    try:
        from pycrdt import merge_updates
    except ImportError:  # pragma: no cover - y-py only installs
        return None
    return merge_updates  # type: ignore[no-any-return,unused-ignore]


_merge_updates = _find_merge_updates()


# What a failed connection attempt or a broken connection may raise: retried with back-off.
_TRANSPORT_ERRORS = (
    HandshakeError,
    ConnectionClosed,
    OSError,
    trio.BrokenResourceError,
    trio.TooSlowError,
)


class ConnectionStatus(enum.Enum):
    """The state of a provider's connection, as y-websocket's ``status`` event reports it."""

    #: Not connected: before the first attempt, between attempts, and after the provider stopped.
    DISCONNECTED = "disconnected"
    #: A connection attempt is under way.
    CONNECTING = "connecting"
    #: The WebSocket is open (see :attr:`Provider.synced` for the document).
    CONNECTED = "connected"


class ProviderError(Exception):
    """Base class of the provider's errors."""


class PermanentDisconnect(ProviderError):
    """The server closed the connection with a code that forbids reconnecting.

    By default these are the close codes 4400-4499 (the convention of y-websocket 3.1: a
    deliberate decision of the server, such as revoked permission or a deleted document).
    :meth:`Provider.run` raises it; reconnecting is left to the application.

    Attributes:
        code: the WebSocket close code.
        reason: the close reason sent by the server (may be empty).
        permission_denied: the reason of a permission-denied message received before the close,
            if any.
    """

    def __init__(self, code: int, reason: str, permission_denied: str | None = None) -> None:
        message = f"the server closed the connection with code {code}"
        if reason:
            message += f" ({reason})"
        if permission_denied is not None:
            message += f"; permission denied: {permission_denied}"
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.permission_denied = permission_denied


def default_should_reconnect(code: int, reason: str) -> bool:
    """y-websocket's rule: every close code but 4400-4499 is worth reconnecting after."""
    return not 4400 <= code < 4500


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off with jitter between connection attempts.

    The n-th consecutive failed attempt waits ``min(maximum, initial * factor ** (n - 1))``
    seconds, shortened by up to ``jitter`` of itself at random. The count restarts once a
    connection synced. The defaults follow y-websocket (100 ms doubling up to 2.5 s).

    Args:
        initial: the delay after the first failure, in seconds.
        maximum: the longest delay, in seconds.
        factor: how much the delay grows per failure.
        jitter: the fraction (0 to 1) of a delay that may be taken off at random, so clients
            dropped together do not all come back at once.
    """

    initial: float = 0.1
    maximum: float = 2.5
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (0 <= self.initial <= self.maximum and self.factor >= 1 and 0 <= self.jitter <= 1):
            raise ValueError(f"invalid back-off bounds: {self!r}")

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """The delay before the next attempt after ``failures`` consecutive failures."""
        if failures <= 0:
            return 0.0
        exponent = min(failures - 1, 64)  # large enough to reach any maximum, no overflow
        base = min(self.maximum, self.initial * self.factor**exponent)
        draw = (rng or random).random()
        return base * (1.0 - self.jitter * draw)


async def _resolve(source: Any) -> Any:
    value = source() if callable(source) else source
    if inspect.isawaitable(value):
        value = await value
    return value


def _to_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def _header_list(headers: _HeaderPairs | None) -> list[tuple[bytes, bytes]]:
    if headers is None:
        return []
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return [(_to_bytes(name), _to_bytes(value)) for name, value in pairs]


def _build_url(base: str, room: str | None, params: Mapping[str, str] | None) -> str:
    parts = urlsplit(base)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a ws:// or wss:// URL: {base!r}")
    path = parts.path
    if room is not None:
        path = path.rstrip("/") + "/" + quote(room, safe="/:@!$&'()*+,;=~")
    query = parts.query
    if params:
        pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in params]
        pairs += [(str(k), str(v)) for k, v in params.items()]
        query = urlencode(pairs)
    return urlunsplit((parts.scheme, parts.netloc, path, query, parts.fragment))


class _WatchedStream(trio.abc.Stream):
    """A stream that reports its end (EOF or a broken connection) to ``on_end``."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self.on_end: Callable[[], object] | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._ended()
            raise
        if not data:
            self._ended()
        return data

    def _ended(self) -> None:
        if self.on_end is not None:
            self.on_end()

    async def aclose(self) -> None:
        await self._stream.aclose()


class _Connection:
    """Everything about one open WebSocket connection."""

    def __init__(self, ws: WebSocketConnection, session: SyncSession, flushed_sv: bytes) -> None:
        self.ws = ws
        self.session = session
        self.cancel_scope = trio.CancelScope()
        # Local updates waiting for the writer, their size, and whether they overflowed (then
        # the writer sends the diff against ``flushed_sv`` instead).
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.overflow = False
        #: The document's state vector when the writer last took the pending updates.
        self.flushed_sv = flushed_sv
        self.awareness_dirty = False
        self.resync = False
        self.wakeup = trio.Event()
        self.last_received = trio.current_time()
        self.pinging = False
        self.closed_locally = False
        self.sending = 0
        self.reader_done = False
        self.writer_done = False

    def wake(self) -> None:
        self.wakeup.set()


class Provider:
    """Keeps a local Yjs document in sync with a room of a y-websocket compatible server.

    Run it with :func:`open_provider` (``async with``), or start :meth:`run` in a nursery of your
    own and stop it with :meth:`aclose`. While it runs, the provider connects (reconnecting with
    back-off after failures), sends SyncStep1, answers the server's SyncStep1 with what the server
    lacks (so edits made offline reach the room on every reconnect), sends local edits as they
    happen, applies the room's updates (with the provider as the transaction origin, never echoed
    back), and keeps the awareness state announced.

    Args:
        url: the server's ``ws://`` or ``wss://`` URL; with ``room`` it is the base URL and the
            room name is appended as a path segment (as y-websocket does), without it the URL is
            used as it is.
        doc: a ``y_py.YDoc``, a ``pycrdt.Doc`` or a :class:`trio_ysync.doc.Document`.
        room: the room (document) name to append to ``url``.
        params: query parameters to add to the URL, or a function (plain or async) returning
            them, called before every connection attempt (to refresh an access token).
        token: an access token for servers that require one (``trio-ysync serve
            --auth-secret-file``, Hocuspocus-style ``token`` parameters), or a function (plain
            or async) returning a fresh one, called before every connection attempt. When the
            server refuses access (HTTP 401/403 at the upgrade, close codes 4401/4403 later),
            the provider stops with :exc:`PermanentDisconnect`, unless its credentials can be
            refreshed (``token``, ``params`` or ``headers`` is a function): then it fetches
            them again and retries with back-off.
        headers: extra HTTP headers for the WebSocket handshake, or a function (plain or async)
            returning them, called before every connection attempt.
        subprotocols: WebSocket subprotocols to offer.
        ssl_context: the TLS context for ``wss://`` URLs (default: the system's trust store).
        backoff: the delays between connection attempts.
        watchdog_timeout: reconnect when nothing was received for this many seconds (as
            y-websocket does after 30 s); ``None`` disables the watchdog.
        keepalive: when nothing was received for half the watchdog timeout, send a WebSocket
            ping; its pong counts as received, so a quiet but healthy connection is kept.
        resync_interval: if set, send SyncStep1 again every this many seconds while connected
            (y-websocket's ``resyncInterval``).
        connect_timeout: seconds allowed for the TCP, TLS and WebSocket handshakes.
        close_timeout: seconds allowed for a clean close (awareness removal and close handshake).
        max_message_size: the largest WebSocket message accepted from the server, in bytes.
        max_pending_bytes: local updates queued beyond this while the connection is slow are
            replaced by one diff computed when they can be sent, so memory stays bounded.
        should_reconnect: ``should_reconnect(code, reason)`` decides whether to reconnect after
            the server closed the connection (default: :func:`default_should_reconnect`).
        websocket_factory: opens the WebSocket connection (see :data:`WebSocketFactory`).
        rng: the random source of the back-off jitter.
    """

    def __init__(
        self,
        url: str,
        doc: Any,
        *,
        room: str | None = None,
        params: ParamsSource = None,
        token: TokenSource = None,
        headers: HeadersSource = None,
        subprotocols: Sequence[str] = (),
        ssl_context: ssl.SSLContext | None = None,
        backoff: Backoff | None = None,
        watchdog_timeout: float | None = 30.0,
        keepalive: bool = True,
        resync_interval: float | None = None,
        connect_timeout: float = 10.0,
        close_timeout: float = 5.0,
        max_message_size: int = 64 * 1024 * 1024,
        max_pending_bytes: int = 1024 * 1024,
        should_reconnect: Callable[[int, str], bool] = default_should_reconnect,
        websocket_factory: WebSocketFactory | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if urlsplit(_build_url(url, room, None)).scheme == "ws" and ssl_context is not None:
            raise ValueError("an ssl_context needs a wss:// URL")
        if watchdog_timeout is not None and watchdog_timeout <= 0:
            raise ValueError("watchdog_timeout must be positive or None")
        if resync_interval is not None and resync_interval <= 0:
            raise ValueError("resync_interval must be positive or None")
        self.url = url
        self.room = room
        #: The document kept in sync (the adapter around the document passed in).
        self.document: Document = wrap_document(doc)
        # An adapter made here is ours to close: it would keep observing the native document.
        self._owns_adapter = self.document is not doc
        #: Awareness (presence): this client's state and the room's.
        self.awareness = ProviderAwareness(self.document.client_id, self._on_local_awareness)
        self.params = params
        self.token = token
        self.headers = headers
        self.subprotocols = tuple(subprotocols)
        self.ssl_context = ssl_context
        self.backoff = backoff or Backoff()
        self.watchdog_timeout = watchdog_timeout
        self.keepalive = keepalive
        self.resync_interval = resync_interval
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self.max_message_size = max_message_size
        self.max_pending_bytes = max_pending_bytes
        self.should_reconnect = should_reconnect
        self._websocket_factory = websocket_factory or self._open_websocket
        self._rng = rng
        #: The reason of the last permission-denied message from the server, if any.
        self.permission_denied: str | None = None
        #: The close code and reason of the last connection the server closed, if any.
        self.last_close: tuple[int, str] | None = None
        #: Why the last connection attempt failed (``"connection refused"``, ...), or ``None``
        #: once a connection opened. Each failure is also logged (see :meth:`wait_synced`).
        self.last_error: str | None = None
        #: Why the provider stopped for good (the :exc:`PermanentDisconnect` it raised, for
        #: example access refused), or ``None`` while it runs or after a clean close. Read it
        #: when :meth:`status_changes` ends.
        self.stop_reason: BaseException | None = None
        self._status = ConnectionStatus.DISCONNECTED
        self._status_feed: Feed[ConnectionStatus] = Feed(maxlen=32)
        self._synced = False
        self._changed = trio.Event()
        self._started = False
        self._stopped = False
        self._failure: BaseException | None = None
        self._closing = False
        self._closing_event = trio.Event()
        self._finished = trio.Event()
        self._conn: _Connection | None = None
        self._attempt_scope: trio.CancelScope | None = None
        self._failures = 0

    # -- public state ----------------------------------------------------------------------

    @property
    def status(self) -> ConnectionStatus:
        """The current connection status."""
        return self._status

    @property
    def synced(self) -> bool:
        """Whether the server's SyncStep2 arrived on the current connection."""
        return self._synced

    @property
    def closed(self) -> bool:
        """Whether the provider has stopped (closed, cancelled or failed)."""
        return self._stopped

    def status_changes(self) -> Subscription[ConnectionStatus]:
        """An async iterator over the status: the current one first, then every change.

        A consumer that falls more than 32 changes behind loses the oldest ones. The iterator
        ends when the provider stops.

        Example::

            async for status in provider.status_changes():
                print("now", status.value)
        """
        return self._status_feed.subscribe(self._status)

    async def wait_synced(self) -> None:
        """Return once the document is synced with the server on the current connection.

        Returns at once if it already is; otherwise waits for the server's SyncStep2, across
        reconnects, for as long as it takes: a provider keeps trying while the server is down.
        Bound the wait the trio way, and say why it failed with :attr:`last_error`::

            with trio.move_on_after(10):
                await provider.wait_synced()
            if not provider.synced:
                raise SystemExit(f"cannot reach the server: {provider.last_error}")

        Every failed connection attempt is also logged on the ``trio_ysync.provider`` logger
        (a WARNING when a failure starts or its reason changes, INFO while it repeats), so a
        program without logging set up shows why it waits on standard error.

        Raises:
            trio.ClosedResourceError: the provider stopped before it synced.
        """
        while not self._synced:
            if self._stopped:
                raise trio.ClosedResourceError("the provider has stopped") from self._failure
            await self._changed.wait()
        await trio.lowlevel.checkpoint()

    def resync(self) -> None:
        """Send SyncStep1 again now (if connected), asking the server for anything missing."""
        conn = self._conn
        if conn is not None:
            conn.resync = True
            conn.wake()

    # -- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect and keep the document in sync until :meth:`aclose` or cancellation.

        Meant for ``await nursery.start(provider.run)``: it reports started as soon as it
        observes the document (before connecting; use :meth:`wait_synced` to wait for the
        room's content). A provider runs once.

        Raises:
            PermanentDisconnect: the server closed the connection with a code that forbids
                reconnecting (see ``should_reconnect``).
            RuntimeError: the provider was already started.
        """
        if self._started:
            raise RuntimeError("a Provider can only be run once")
        self._started = True
        if self._closing:  # closed before it ever ran
            self._stop()
            task_status.started()
            return
        unobserve = self.document.observe(self._on_update)
        failure: PermanentDisconnect | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._awareness_timer)
                task_status.started()
                try:
                    await self._connection_loop()
                except PermanentDisconnect as exc:
                    failure = exc
                nursery.cancel_scope.cancel()
        finally:
            unobserve()
            if self._owns_adapter:
                self.document.close()
            self._failure = failure
            self.stop_reason = failure
            self._stop()
        if failure is not None:
            raise failure

    async def aclose(self) -> None:
        """Stop the provider cleanly and wait until it has stopped.

        If connected, local edits still queued are sent, then an awareness entry removing this
        client (so peers see it leave at once), then the WebSocket is closed, all within
        ``close_timeout`` seconds. Calling it again, or on a stopped provider, does nothing.
        """
        if not self._closing:
            self._closing = True
            self._closing_event.set()
            conn = self._conn
            scope = self._attempt_scope
            if conn is not None:
                conn.wake()  # the writer flushes, says goodbye and closes
                if scope is not None:
                    scope.deadline = min(scope.deadline, trio.current_time() + self.close_timeout)
            elif scope is not None:
                scope.cancel()  # connecting or about to: nothing to say goodbye to
        if self._started:
            await self._finished.wait()
        else:
            self._stop()
            await trio.lowlevel.checkpoint()

    # -- internals: state ------------------------------------------------------------------

    def _notify(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    def _set_status(self, status: ConnectionStatus) -> None:
        if status is not self._status:
            self._status = status
            logger.debug("provider %s: %s", self.url, status.value)
            self._status_feed.publish(status)
            self._notify()

    def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._closing = True
        self._synced = False
        self._set_status(ConnectionStatus.DISCONNECTED)
        self._status_feed.close()
        self.awareness._close()
        self._finished.set()
        self._notify()

    # -- internals: hooks called synchronously ---------------------------------------------

    def _on_update(self, update: bytes, origin: object) -> None:
        # Runs inside the document's transaction callback: never block, never raise.
        conn = self._conn
        if conn is None or origin is self:
            # Offline edits need no queue: the next handshake sends the server what it lacks.
            return
        if conn.overflow:
            return
        conn.pending.append(update)
        conn.pending_bytes += len(update)
        if conn.pending_bytes > self.max_pending_bytes:
            conn.pending.clear()
            conn.pending_bytes = 0
            conn.overflow = True
        conn.wake()

    def _on_local_awareness(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.awareness_dirty = True
            conn.wake()

    # -- internals: tasks ------------------------------------------------------------------

    async def _awareness_timer(self) -> None:
        while True:
            await trio.sleep(_AWARENESS_CHECK_INTERVAL)
            if self.awareness._check(trio.current_time()):
                self._on_local_awareness()

    async def _connection_loop(self) -> None:
        while not self._closing:
            await self._attempt()
            if self._closing:
                return
            self._failures += 1
            delay = self.backoff.delay(self._failures, self._rng)
            logger.debug("provider %s: reconnecting in %.3f s", self.url, delay)
            with trio.move_on_after(delay):
                await self._closing_event.wait()

    async def _target(self) -> tuple[str, list[tuple[bytes, bytes]]]:
        params = await _resolve(self.params)
        token = await _resolve(self.token)
        if token is not None:
            params = {**(params or {}), "token": str(token)}
        headers = await _resolve(self.headers)
        return _build_url(self.url, self.room, params), _header_list(headers)

    @property
    def _refreshable(self) -> bool:
        """Whether each attempt fetches its credentials anew (so a refusal may not last)."""
        return any(callable(source) for source in (self.token, self.params, self.headers))

    def _refused(self, exc: BaseException) -> PermanentDisconnect | None:
        """The permanent stop an access refusal at the upgrade means, if it means one."""
        if not isinstance(exc, ConnectionRejected) or self._refreshable:
            return None
        if exc.status_code not in _ACCESS_REFUSED_STATUSES:
            return None
        body = (exc.body or b"").decode("utf-8", errors="replace").strip()
        return PermanentDisconnect(4000 + exc.status_code, f"HTTP {exc.status_code}: {body}")

    @asynccontextmanager
    async def _open_websocket(
        self, url: str, headers: list[tuple[bytes, bytes]]
    ) -> AsyncIterator[WebSocketConnection]:
        # Like trio_websocket.open_websocket_url, but this side owns the TCP stream: it is
        # closed on exit even when the server closed the WebSocket first (trio-websocket leaves
        # a client's socket open then), and a TLS handshake failure surfaces at once.
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        tls = parts.scheme == "wss"
        port = parts.port or (443 if tls else 80)
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = parts.netloc.rpartition("@")[2]
        deadline = trio.current_time() + self.connect_timeout
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
        with trio.fail_at(deadline):
            stream = await trio.open_tcp_stream(parts.hostname, port)
        try:
            if tls:
                context = self.ssl_context or ssl.create_default_context()
                stream = trio.SSLStream(
                    stream, context, server_hostname=parts.hostname, https_compatible=True
                )
                with trio.fail_at(deadline):
                    await stream.do_handshake()
            watched = _WatchedStream(stream)
            async with trio.open_nursery() as nursery:
                # trio-websocket keeps waiting for the handshake if the server closes the
                # connection first: notice it and fail the attempt at once.
                with trio.fail_at(deadline), trio.CancelScope() as handshake:
                    watched.on_end = handshake.cancel
                    ws = await wrap_client_stream(
                        nursery,
                        watched,  # type: ignore[arg-type]  # any trio stream works
                        host_header,
                        resource,
                        subprotocols=self.subprotocols or None,
                        extra_headers=headers,
                        max_message_size=self.max_message_size,
                    )
                watched.on_end = None
                if handshake.cancelled_caught:
                    raise HandshakeError("the server closed the connection during the handshake")
                try:
                    yield ws
                finally:
                    with trio.move_on_after(self.close_timeout):
                        await ws.aclose()
                    nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)

    async def _attempt(self) -> None:
        """One connection attempt: connect, sync until the connection ends."""
        self._set_status(ConnectionStatus.CONNECTING)
        close: tuple[int, str] | None = None
        failure: BaseException | None = None
        opened = False
        with trio.CancelScope() as scope:
            self._attempt_scope = scope
            try:
                try:
                    url, headers = await self._target()
                except Exception:  # a token refresh failed: try again later
                    logger.warning("provider %s: params/headers failed", self.url, exc_info=True)
                    return
                async with self._websocket_factory(url, headers) as ws:
                    opened = True
                    self._connection_opened()
                    close = await self._connected(ws)
            except _TRANSPORT_ERRORS as exc:
                failure = exc
            except BaseExceptionGroup as group:
                # Errors of trio-websocket's reader task (a rejected handshake) come in a group.
                matched, rest = group.split(_TRANSPORT_ERRORS)
                if rest is not None or matched is None:
                    raise
                failure = _first_leaf(matched)
            finally:
                self._attempt_scope = None
                self._disconnected()
        if failure is not None:
            self._connection_failed(failure, opened)
            refusal = self._refused(failure)
            if refusal is not None:
                raise refusal
        if close is not None:
            code, reason = close
            self.last_close = close
            if self._closing:
                return
            if code in _ACCESS_REFUSED_CODES and self._refreshable:
                logger.info(
                    "provider %s: access refused (%d), fetching new credentials", self.url, code
                )
                return
            if not self.should_reconnect(code, reason):
                raise PermanentDisconnect(code, reason, self.permission_denied)

    def _connection_opened(self) -> None:
        if self.last_error is not None:
            logger.info("provider %s: connected after %d failed attempts", self.url, self._failures)
        self.last_error = None

    def _connection_failed(self, exc: BaseException, opened: bool) -> None:
        """Log why an attempt failed (one line, no traceback) and remember it."""
        reason = describe_connection_error(exc)
        if opened:
            logger.info("provider %s: connection lost: %s", self.url, reason)
            return
        # WARNING when a failure starts or changes; INFO while the same one repeats.
        level = logging.INFO if reason == self.last_error else logging.WARNING
        self.last_error = reason
        logger.log(
            level,
            "provider %s: cannot connect (attempt %d, retrying): %s",
            _build_url(self.url, self.room, None),
            self._failures + 1,
            reason,
        )

    def _disconnected(self) -> None:
        self._conn = None
        self._synced = False
        self._set_status(ConnectionStatus.DISCONNECTED)
        self.awareness._drop_remote()
        self._notify()

    async def _connected(self, ws: WebSocketConnection) -> tuple[int, str] | None:
        """Run one open connection; returns the server's close code and reason, if it closed
        the connection."""
        conn = _Connection(
            ws, SyncSession(self.document, origin=self), self.document.state_vector()
        )
        self._conn = conn
        self._set_status(ConnectionStatus.CONNECTED)
        try:
            with conn.cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, conn)
                    nursery.start_soon(self._reader, conn)
                    if self.watchdog_timeout is not None:
                        nursery.start_soon(self._watchdog, conn, nursery)
                    if self.resync_interval is not None:
                        nursery.start_soon(self._resync_timer, conn, self.resync_interval)
        finally:
            self._conn = None
            if ws.closed is None:
                await self._goodbye_when_cancelled(conn)
        reason = ws.closed
        if reason is None or conn.closed_locally:
            return None
        return reason.code, reason.reason or ""

    async def _goodbye_when_cancelled(self, conn: _Connection) -> None:
        # Cancelled from outside: trio-websocket's reader is cancelled too, so no close
        # handshake can complete. Send the awareness removal (shielded, bounded) unless a send
        # was cut half-way, then close the stream without waiting.
        if conn.sending == 0:
            with trio.CancelScope(shield=True), trio.move_on_after(self.close_timeout):
                try:
                    await self._send(conn, self._removal())
                except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        conn.closed_locally = True
        with trio.CancelScope() as scope:
            scope.cancel()
            await conn.ws.aclose()  # cancelled: closes the TCP stream at once

    async def _send(self, conn: _Connection, message: Message) -> None:
        conn.sending += 1
        try:
            await conn.ws.send_message(encode(message))
        finally:
            conn.sending -= 1

    def _removal(self) -> AwarenessUpdate:
        return AwarenessUpdate(self.awareness._removal_entries())

    async def _abort(self, conn: _Connection, code: int, reason: str) -> None:
        """Close the connection from our side without waiting long for the server."""
        conn.closed_locally = True
        with trio.move_on_after(min(1.0, self.close_timeout)):
            await conn.ws.aclose(code, reason)
        conn.cancel_scope.cancel()

    def _end_half(self, conn: _Connection) -> None:
        # The session ends when the reader saw the connection close and the writer has nothing
        # left to do (during a clean close the writer still sends its goodbye).
        if conn.reader_done and (conn.writer_done or not self._closing):
            conn.cancel_scope.cancel()

    async def _reader(self, conn: _Connection) -> None:
        try:
            while True:
                data = await conn.ws.get_message()
                conn.last_received = trio.current_time()
                if isinstance(data, str):
                    logger.debug("provider %s: ignoring a text message", self.url)
                    continue
                try:
                    messages = decode(data)
                except ProtocolError as exc:
                    # Validated like the server validates clients: nothing malformed reaches
                    # the application's document.
                    logger.warning("provider %s: malformed message: %s", self.url, exc)
                    await self._abort(conn, exc.close_code, "malformed message")
                    return
                for message in messages:
                    try:
                        await self._handle(conn, message)
                    except DocumentError as exc:
                        logger.warning("provider %s: cannot apply update: %s", self.url, exc)
                        await self._abort(conn, 1007, "invalid update")
                        return
        except ConnectionClosed:
            pass
        finally:
            conn.reader_done = True
            self._end_half(conn)

    async def _handle(self, conn: _Connection, message: Message) -> None:
        if isinstance(message, (SyncStep1, SyncStep2, SyncUpdate)):
            for reply in conn.session.receive(message):
                await self._send(conn, reply)
            if isinstance(message, SyncStep2) and not self._synced:
                self._synced = True
                self._failures = 0  # a connection that synced did useful work
                logger.debug("provider %s: synced", self.url)
                self._notify()
        elif isinstance(message, AwarenessUpdate):
            if self.awareness._apply_remote(message.entries):
                self._on_local_awareness()
        elif isinstance(message, QueryAwareness):
            await self._send(conn, AwarenessUpdate(self.awareness._all_entries()))
        elif isinstance(message, PermissionDenied):
            self.permission_denied = message.reason
            logger.warning("provider %s: permission denied: %s", self.url, message.reason)
        else:
            logger.debug("provider %s: ignoring %r", self.url, message)

    async def _writer(self, conn: _Connection) -> None:
        try:
            # Always SyncStep1 first, then our presence (stamped anew, so that peers which saw
            # our previous connection's removal at the same clock accept it).
            await self._send(conn, SyncStep1(self.document.state_vector()))
            if self.awareness.local_state is not None:
                self.awareness._stamp_for_announce()
                conn.awareness_dirty = True
            while True:
                conn.wakeup = trio.Event()
                await self._flush(conn)
                if self._closing:
                    await self._send(conn, self._removal())
                    conn.closed_locally = True
                    await conn.ws.aclose()
                    return
                await conn.wakeup.wait()
        except ConnectionClosed:
            pass
        finally:
            conn.writer_done = True
            self._end_half(conn)

    async def _flush(self, conn: _Connection) -> None:
        if conn.resync:
            conn.resync = False
            await self._send(conn, SyncStep1(self.document.state_vector()))
        if conn.pending or conn.overflow:
            updates = [self.document.diff(conn.flushed_sv)] if conn.overflow else conn.pending
            conn.pending = []
            conn.pending_bytes = 0
            conn.overflow = False
            conn.flushed_sv = self.document.state_vector()
            if len(updates) > 1 and _merge_updates is not None:
                updates = [bytes(_merge_updates(*updates))]
            for update in updates:
                await self._send(conn, SyncUpdate(update))
        if conn.awareness_dirty and not self._closing:
            conn.awareness_dirty = False
            await self._send(conn, AwarenessUpdate(self.awareness._local_entries()))

    async def _watchdog(self, conn: _Connection, nursery: trio.Nursery) -> None:
        timeout = self.watchdog_timeout
        assert timeout is not None
        while True:
            silent = trio.current_time() - conn.last_received
            if silent >= timeout:
                logger.info("provider %s: nothing received for %.0f s", self.url, silent)
                await self._abort(conn, 4000, "no message received")
                return
            if self.keepalive and not conn.pinging and silent >= timeout / 2:
                conn.pinging = True
                nursery.start_soon(self._ping, conn)
            if self.keepalive and not conn.pinging:
                wake = conn.last_received + timeout / 2
            else:
                wake = conn.last_received + timeout
            await trio.sleep_until(wake)

    async def _ping(self, conn: _Connection) -> None:
        try:
            await conn.ws.ping()
        except (ConnectionClosed, trio.BrokenResourceError):
            return
        finally:
            conn.pinging = False
        conn.last_received = trio.current_time()

    async def _resync_timer(self, conn: _Connection, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            conn.resync = True
            conn.wake()


def describe_connection_error(exc: BaseException) -> str:
    """Why a connection attempt failed, in a few words (:attr:`Provider.last_error`)."""
    if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        return describe_connection_error(exc.__cause__)  # a TLS error, for example
    if isinstance(exc, trio.TooSlowError):
        return "timed out (connect_timeout)"
    if isinstance(exc, ConnectionRejected):
        return f"the server refused the WebSocket upgrade (HTTP {exc.status_code})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, OSError):
        if exc.errno is not None and exc.errno > 0:
            text = os.strerror(exc.errno)
            return text[0].lower() + text[1:]
        # trio.open_tcp_stream raises one OSError for all the addresses it tried.
        causes = {describe_connection_error(cause) for cause in _causes(exc)}
        if len(causes) == 1:
            return causes.pop()
    return str(exc) or type(exc).__name__


def _causes(exc: BaseException) -> list[BaseException]:
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        return list(cause.exceptions)
    return [cause] if cause is not None else []


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception of a group from our own nursery, if it holds exactly one."""
    if len(group.exceptions) == 1:
        exc: BaseException = group.exceptions[0]
        return exc
    return None


@asynccontextmanager
async def open_provider(url: str, doc: Any, **options: Any) -> AsyncIterator[Provider]:
    """Run a :class:`Provider` for the duration of an ``async with`` block.

    The provider starts connecting at once; on exit it is closed cleanly (queued edits sent,
    awareness removal sent, socket closed). If the provider fails (see
    :exc:`PermanentDisconnect`), the block is cancelled and the error is raised from the
    ``async with``.

    Args:
        url: the server URL (see :class:`Provider`).
        doc: a ``y_py.YDoc``, a ``pycrdt.Doc`` or a :class:`trio_ysync.doc.Document`.
        **options: keyword arguments of :class:`Provider`.

    Example::

        async with open_provider("ws://localhost:1234", doc, room="my-room") as provider:
            await provider.wait_synced()
            ...
    """
    provider = Provider(url, doc, **options)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(provider.run)
            try:
                yield provider
            finally:
                await provider.aclose()
    except BaseExceptionGroup as group:
        # Only our provider task and the body live in this nursery: unwrap a lone error so
        # callers can catch PermanentDisconnect (or their own exception) directly.
        exc = _single(group)
        if exc is None:
            raise
        context = exc.__context__
        try:
            raise exc
        finally:
            exc.__context__ = context
            del exc, context
