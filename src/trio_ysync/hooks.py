"""Server hooks: what happens to connections, rooms and documents, told to your code.

.. code-block:: python

    class Indexer(ServerHooks):
        async def document_changed(self, event: DocumentChanged) -> None:
            await search.reindex(event.room)

    RoomServer(store, hooks=[Indexer()])

A hook's methods are coroutines; each hook receives its events, in order, from a task of its own
fed by a bounded queue, so hooks never run inside a room's commit path and a slow or failing
hook never holds up a room, a connection or another hook: its exceptions and its lateness are
logged (a full queue drops events, counted and logged once a minute). Metrics
(:mod:`trio_ysync.metrics`) and webhooks (:mod:`trio_ysync.webhooks`) are hooks too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

__all__ = [
    "ConnectionClosed",
    "Instruments",
    "ConnectionOpened",
    "ConnectionRefused",
    "DocumentChanged",
    "Event",
    "HookRunner",
    "RoomLoaded",
    "RoomUnloaded",
    "ServerHooks",
]

logger = logging.getLogger("trio_ysync.hooks")


@dataclass(frozen=True, slots=True)
class ConnectionOpened:
    """A WebSocket connection joined a room."""

    room: str
    #: The client's address (from the socket, or the trusted proxy headers).
    client: str
    #: Who it is (the grant's identity, such as a token's subject), if known.
    identity: str | None
    #: Whether it may only read.
    read_only: bool
    #: A number that tells this connection from the others of the server's lifetime.
    connection_id: int
    #: The application's context from the grant (see :class:`~trio_ysync.auth.Grant`).
    context: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """A connection that had joined a room ended."""

    room: str
    client: str
    identity: str | None
    connection_id: int
    #: The WebSocket close code sent or received (1006 when the connection just broke).
    code: int
    reason: str
    #: Seconds it was open.
    duration: float


@dataclass(frozen=True, slots=True)
class ConnectionRefused:
    """A WebSocket upgrade was refused before it reached a room."""

    #: The room it asked for.
    room: str
    client: str
    #: The HTTP status it was answered with (401, 403, 429, 503, ...).
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class RoomLoaded:
    """A room was loaded from the store (its first connection arrived)."""

    room: str
    #: Seconds the load took.
    duration: float


@dataclass(frozen=True, slots=True)
class RoomUnloaded:
    """A room was unloaded (its grace period passed, the server stopped, or it failed)."""

    room: str
    #: Whether it failed (its peers were closed with 1011).
    failed: bool


@dataclass(frozen=True, slots=True)
class DocumentChanged:
    """An update was committed to a room's document (it is in the store)."""

    room: str
    #: The Yjs v1 update.
    update: bytes = field(repr=False)
    #: Who sent it: the identity of the connection, ``"http"`` for the HTTP API, or ``None``.
    origin: str | None


#: Any of the events above.
Event = (
    ConnectionOpened
    | ConnectionClosed
    | ConnectionRefused
    | RoomLoaded
    | RoomUnloaded
    | DocumentChanged
)


class ServerHooks:
    """Subclass and override the events you care about; the others do nothing."""

    async def connection_opened(self, event: ConnectionOpened) -> None:
        """A connection joined a room."""

    async def connection_closed(self, event: ConnectionClosed) -> None:
        """A connection left its room."""

    async def connection_refused(self, event: ConnectionRefused) -> None:
        """An upgrade request was refused."""

    async def room_loaded(self, event: RoomLoaded) -> None:
        """A room was loaded."""

    async def room_unloaded(self, event: RoomUnloaded) -> None:
        """A room was unloaded."""

    async def document_changed(self, event: DocumentChanged) -> None:
        """An update was committed."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run whatever the hook needs in the background while the server runs (a webhook's
        delivery task, say); the default needs nothing."""
        task_status.started()

    async def aclose(self) -> None:
        """Called once the server has stopped (flush what is queued, if worth it)."""


class Instruments:
    """Counting at the server's busiest places, called synchronously and often: keep every
    method cheap and non-blocking (increment a counter). The defaults do nothing;
    :class:`~trio_ysync.metrics.Metrics` counts for Prometheus."""

    def message_received(self, kind: str, size: int) -> None:
        """A message of ``kind`` (see :func:`~trio_ysync.protocol.message_kind`) and ``size``
        bytes arrived from a client."""

    def messages_sent(self, kind: str, receivers: int, size: int) -> None:
        """A message of ``kind`` and ``size`` bytes was sent to ``receivers`` connections."""

    def connection_opened(self) -> None:
        """A connection joined a room."""

    def connection_closed(self, code: int, reason: str) -> None:
        """A connection that had joined a room ended with ``code``."""

    def connection_refused(self, status: int) -> None:
        """An upgrade was refused with HTTP ``status``."""

    def room_loaded(self, duration: float) -> None:
        """A room was loaded in ``duration`` seconds."""

    def room_unloaded(self) -> None:
        """A room was unloaded."""

    def committed(self, updates: int, size: int, duration: float) -> None:
        """A commit of ``updates`` updates (``size`` bytes) took ``duration`` seconds."""


_METHODS: dict[type[Any], str] = {
    ConnectionOpened: "connection_opened",
    ConnectionClosed: "connection_closed",
    ConnectionRefused: "connection_refused",
    RoomLoaded: "room_loaded",
    RoomUnloaded: "room_unloaded",
    DocumentChanged: "document_changed",
}


class _Lane:
    """One hook's queue and delivery task."""

    def __init__(self, hook: ServerHooks, queue_size: int, slow_after: float) -> None:
        self.hook = hook
        self.name = type(hook).__name__
        self.slow_after = slow_after
        self.send, self.receive = trio.open_memory_channel[Event](queue_size)
        self.dropped = 0
        self._next_report = -math.inf
        self.drained = trio.Event()

    def put(self, event: Event) -> None:
        try:
            self.send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
            now = trio.current_time()
            if now >= self._next_report:
                self._next_report = now + 60.0
                logger.warning(
                    "hook %s is too slow: %d events dropped so far", self.name, self.dropped
                )

    async def deliver(self) -> None:
        try:
            await self._deliver_all()
        finally:
            self.drained.set()

    async def _deliver_all(self) -> None:
        async for event in self.receive:
            method = getattr(self.hook, _METHODS[type(event)])
            started = trio.current_time()
            try:
                await method(event)
            except Exception:
                logger.exception("hook %s failed on %s", self.name, type(event).__name__)
            elapsed = trio.current_time() - started
            if elapsed > self.slow_after:
                logger.warning(
                    "hook %s took %.1f s on %s", self.name, elapsed, type(event).__name__
                )


class HookRunner:
    """Delivers the server's events to its hooks, each hook from a task of its own.

    Args:
        hooks: the hooks, in the order they were given.
        queue_size: events one hook may have waiting; more are dropped.
        slow_after: seconds after which one call of a hook is logged as slow.
        close_timeout: seconds each hook gets, when the server stops, to receive what is
            queued and close.
    """

    def __init__(
        self,
        hooks: Sequence[ServerHooks],
        *,
        queue_size: int = 10_000,
        slow_after: float = 5.0,
        close_timeout: float = 5.0,
    ) -> None:
        self._lanes = [_Lane(hook, queue_size, slow_after) for hook in hooks]
        self.close_timeout = close_timeout

    def __bool__(self) -> bool:
        return bool(self._lanes)

    def emit(self, event: Event) -> None:
        """Queue ``event`` for every hook; never blocks."""
        for lane in self._lanes:
            lane.put(event)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the hooks' own tasks and their deliveries until cancelled."""
        async with trio.open_nursery() as nursery:
            for lane in self._lanes:
                await nursery.start(lane.hook.run)
                nursery.start_soon(lane.deliver)
            task_status.started()

    async def aclose(self) -> None:
        """Deliver what is queued, then tell every hook the server stopped (each hook gets
        ``close_timeout`` seconds for both)."""
        for lane in self._lanes:
            lane.send.close()
        for lane in self._lanes:
            with trio.move_on_after(self.close_timeout):
                await lane.drained.wait()
                try:
                    await lane.hook.aclose()
                except Exception:
                    logger.exception("hook %s failed to close", lane.name)
