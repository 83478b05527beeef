"""A room: one shared document, its awareness, and the peers editing it.

The room does its document work once per update (apply, observe, encode) and hands the same
:class:`~trio_ysync.connection.OutgoingMessage` to every receiver. Incoming updates are written
ahead to the store and broadcast once committed; updates that arrive while a commit is in flight
go into the next commit together.

Nothing a peer sends can break a room: messages reach it decoded and validated (see
:meth:`RoomServer.serve_connection <trio_ysync.server.RoomServer.serve_connection>`), a refusal
by the document library closes only that peer, and a failure of the library, the store or our own
code fails the whole room at once: every peer is closed with 1011 (1013 when Redis is out of
reach), nothing uncommitted is stored, and the next connection loads the room afresh from its
last committed state.

A room reaches the other servers that hold it through its :mod:`bus <trio_ysync.bus>`: it loads
through it, commits to it when the bus persists (Redis: the write-ahead log of the cluster)
instead of to the store, and is the bus's listener for what the other servers accepted.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Protocol

import trio

from .bus import BusError, LocalBus, RoomBus, RoomChannel
from .connection import Connection, OutgoingMessage, gathering_sends, must_propagate
from .doc import Backend, Document, DocumentError, UpdateCallback, new_document
from .errors import (
    CloseCode,
    DocumentBrokenError,
    PolicyViolationError,
    RoomClosedError,
    UnsupportedMessageError,
    YSyncError,
)
from .protocol import (
    EMPTY_STATE_VECTOR,
    EMPTY_UPDATE,
    Awareness,
    AwarenessChange,
    AwarenessUpdate,
    Message,
    PermissionDenied,
    ProtocolError,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    UnknownMessage,
    UpdateInfo,
    decode_awareness_update,
    encode,
    encode_awareness_update,
    validate_state_vector,
    validate_update,
)
from .store import Store, StoreError
from .store.merge import with_pending
from .timers import Timer, Timers

__all__ = ["Peer", "Room", "RoomClosedError", "RoomState"]

logger = logging.getLogger("trio_ysync.room")

#: How many awareness client IDs one connection may speak for (a y-websocket client has one).
MAX_AWARENESS_CLIENTS_PER_PEER = 16

_EMPTY_STEP1 = encode(SyncStep1(EMPTY_STATE_VECTOR))


class RoomState(enum.Enum):
    """Where a room is in its life. The allowed transitions are in ``_TRANSITIONS``."""

    #: Reading the stored document; peers wait.
    LOADING = "loading"
    #: Serving peers.
    OPEN = "open"
    #: No peers for the grace period, or asked to stop: flushing the store, refusing peers.
    UNLOADING = "unloading"
    #: The document, the store or our code failed: every peer was closed.
    FAILED = "failed"
    #: Done; the room holds nothing any more.
    CLOSED = "closed"


# Any state but CLOSED may also go straight to CLOSED when its loading or unloading is cancelled.
_TRANSITIONS: dict[RoomState, frozenset[RoomState]] = {
    RoomState.LOADING: frozenset(
        {RoomState.OPEN, RoomState.UNLOADING, RoomState.FAILED, RoomState.CLOSED}
    ),
    RoomState.OPEN: frozenset({RoomState.UNLOADING, RoomState.FAILED, RoomState.CLOSED}),
    RoomState.UNLOADING: frozenset({RoomState.CLOSED, RoomState.FAILED}),
    RoomState.FAILED: frozenset({RoomState.CLOSED}),
    RoomState.CLOSED: frozenset(),
}


def _identity_of(origin: object) -> str | None:
    # Updates come from peers (their identity), from the HTTP API or another server (a name).
    if isinstance(origin, Peer):
        return origin.identity
    return origin if isinstance(origin, str) else None


class RoomEvents(Protocol):
    """What a room tells whoever runs it (the server: hooks and metrics). Called
    synchronously: must be quick and must not raise."""

    def loaded(self, room: Room, duration: float) -> None:
        """The room loaded its stored document in ``duration`` seconds."""

    def committed(
        self, room: Room, updates: Sequence[bytes], origins: Sequence[str | None], duration: float
    ) -> None:
        """``updates`` (sent by ``origins``: identities, or ``None``) were committed in
        ``duration`` seconds."""

    def sent(self, kind: str, receivers: int, size: int) -> None:
        """A message of ``kind`` and ``size`` bytes went to ``receivers`` peers."""

    def closed(self, room: Room) -> None:
        """The room has closed (unloaded, stopped or failed: see :attr:`Room.failure`)."""


class _NoEvents:
    def loaded(self, room: Room, duration: float) -> None:
        pass

    def committed(
        self, room: Room, updates: Sequence[bytes], origins: Sequence[str | None], duration: float
    ) -> None:
        pass

    def sent(self, kind: str, receivers: int, size: int) -> None:
        pass

    def closed(self, room: Room) -> None:
        pass


class Peer:
    """A connection inside a room, with what the room remembers about it.

    Replies whose cost is the whole room state (the document for a SyncStep1, every awareness
    state for a query) are limited to one in flight per peer: a request that arrives while the
    previous answer has not been written yet is covered by that answer (and by the updates that
    follow it).
    """

    __slots__ = (
        "__weakref__",
        "_answer_mark",
        "_answer_requested",
        "_awareness_mark",
        "_told_read_only",
        "connection",
        "identity",
        "opened_at",
        "presence",
        "read_only",
    )

    def __init__(
        self,
        connection: Connection,
        *,
        read_only: bool = False,
        presence: bool = True,
        identity: str | None = None,
    ) -> None:
        self.connection = connection
        #: Who it is (the grant's identity), for hooks and logs.
        self.identity = identity
        #: When it joined (trio's clock), for the server's logs.
        self.opened_at = 0.0
        #: Whether the peer may only read: its updates are never applied.
        self.read_only = read_only
        #: Whether the peer's awareness (presence) is accepted.
        self.presence = presence
        self._answer_mark = 0
        self._answer_requested = False
        self._awareness_mark = 0
        self._told_read_only = False

    @property
    def closing(self) -> bool:
        """Whether the connection is closing: the room does no more work for it."""
        return self.connection.closing

    def send(self, message: OutgoingMessage) -> None:
        """Queue ``message`` (a peer too slow to keep up closes itself)."""
        self.connection.send(message)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start closing the connection."""
        self.connection.close(code, reason)

    def _in_flight(self, mark: int) -> bool:
        return self.connection.bytes_written < mark


#: Seconds over which a room gathers awareness changes after sending one (see :class:`Room`):
#: a little over a display frame, so gathering is not seen, while 50 clients moving cursors
#: cost the server about 40 % less CPU than sending each change (`nox -s bench -- presence`).
DEFAULT_PRESENCE_INTERVAL = 0.02


class Room:
    """One document shared by the peers connected to the same room name.

    Rooms are created and unloaded by :class:`~trio_ysync.server.RoomServer`; run one yourself
    with ``await nursery.start(room.run)``.

    A loaded room has no task of its own: its work happens in its peers' tasks, and what it does
    in the background (commits, compactions, unloading) runs in a nursery it is given, each task
    only while it has work, so thousands of quiet rooms cost no tasks and no wakeups.

    Args:
        name: the room's name (the URL path).
        store: where updates are written ahead of their broadcast.
        bus: how the room reaches the other servers that hold it (default: a
            :class:`~trio_ysync.bus.LocalBus`, for a server alone). It must use ``store``.
        backend: the document library (default: pycrdt when installed).
        broadcast_before_commit: broadcast updates as soon as they are applied and write them in
            the background (lower latency; a crash may lose updates that peers already saw).
            Always the case for a store that is not durable (a memory store).
        compact_after_updates: compact the stored log once it holds this many entries and has
            grown by at least the size of the last snapshot.
        compact_after_bytes: compact the stored log once it has grown by this many bytes.
        store_retries: how many times a failed commit is retried before the room gives up.
        events: told about loads, commits and sends (see :class:`RoomEvents`).
        timers: the timers that expire awareness states and send coalesced presence (a
            server's, shared by all its rooms; by default the room runs its own).
        presence_interval: after an awareness change is sent, the changes of the next this
            many seconds are gathered into one message to every peer, sent when the interval
            ends (0: each change is sent at once). A change in a quiet room still goes out at
            once; with many clients moving cursors, N changes cost one message per peer per
            interval instead of N.
        echo_updates: send each update back to the peer it came from too (as the reference
            server does; y-websocket 4's ``sync-status`` relies on it to confirm local edits).
    """

    # Thousands of rooms may be open at once: no per-room attribute dictionary.
    __slots__ = (
        "__weakref__",
        "_after_commit",
        "_background",
        "_background_idle",
        "_batch_base",
        "_cached_clocks",
        "_cached_step1",
        "_cached_step2",
        "_channel",
        "_committing",
        "_compacting",
        "_expiry",
        "_flushed",
        "_held_answers",
        "_idle_timeout",
        "_idle_timer",
        "_log_bytes",
        "_log_entries",
        "_nursery",
        "_own_timers",
        "_pending_presence",
        "_pending_shared",
        "_presence_timer",
        "_receivers",
        "_reservations",
        "_snapshot_bytes",
        "_state",
        "_timers",
        "_uncommitted",
        "_uncommitted_origins",
        "_unobserve",
        "_write",
        "awareness",
        "backend",
        "broadcast_before_commit",
        "bus",
        "closed",
        "compact_after_bytes",
        "compact_after_updates",
        "document",
        "echo_updates",
        "events",
        "failure",
        "name",
        "peers",
        "presence_interval",
        "ready",
        "store",
        "store_retries",
    )

    def __init__(
        self,
        name: str,
        store: Store,
        *,
        bus: RoomBus | None = None,
        backend: Backend | None = None,
        broadcast_before_commit: bool = False,
        compact_after_updates: int = 500,
        compact_after_bytes: int = 4 * 1024 * 1024,
        store_retries: int = 5,
        events: RoomEvents | None = None,
        timers: Timers | None = None,
        presence_interval: float = DEFAULT_PRESENCE_INTERVAL,
        echo_updates: bool = False,
    ) -> None:
        self.name = name
        self.events: RoomEvents = _NoEvents() if events is None else events
        self.store = store
        self.bus = LocalBus(store) if bus is None else bus
        if self.bus.store is not store:
            raise ValueError("the room's bus must use the room's store")
        # Where a commit goes, chosen once: the store, or a bus that writes it ahead for every
        # server (and folds it into the store itself).
        self._write = self._publish if self.bus.persists else self._append
        self._channel: RoomChannel | None = None
        # SyncStep1 answers held while the room catches up again (see lost_position).
        self._held_answers: list[Callable[[], None]] | None = None
        self.backend = backend
        self.document: Document = new_document(backend)
        self.awareness = Awareness()
        self.broadcast_before_commit = broadcast_before_commit or not store.durable
        self.compact_after_updates = compact_after_updates
        self.compact_after_bytes = compact_after_bytes
        self.store_retries = store_retries
        #: Every connected peer.
        self.peers: set[Peer] = set()
        # Peers that have received the document and therefore get every later update.
        self._receivers: set[Peer] = set()
        # Write-ahead state: updates not yet committed, and what to do once they are.
        self._uncommitted: list[bytes] = []
        self._uncommitted_origins: list[str | None] = []
        # The state vector before the first uncommitted update.
        self._batch_base = b"\x00"
        self._after_commit: list[Callable[[], None]] = []
        self._committing = False
        # Set once nothing is left to commit; only made while someone waits for that.
        self._flushed: trio.Event | None = None
        # Where background work runs, once loaded; the cancel scope of each such task, and an
        # event for whoever waits until they are all gone.
        self._nursery: trio.Nursery | None = None
        self._background: set[trio.CancelScope] | None = None
        self._background_idle: trio.Event | None = None
        self._idle_timeout = math.inf
        self._idle_timer: Timer | None = None
        self._own_timers = timers is None
        self._timers = Timers() if timers is None else timers
        self._expiry: Timer | None = None
        self.presence_interval = presence_interval
        self.echo_updates = echo_updates
        # Client IDs whose awareness changed: to tell this server's peers, and (those of its
        # own peers) to tell the other servers; both go out when the presence window ends.
        self._pending_presence: dict[int, None] = {}
        self._pending_shared: dict[int, None] = {}
        # Answers that depend only on the document, encoded once until it changes.
        self._cached_step1: OutgoingMessage | None = None
        self._cached_clocks: Mapping[int, int] | None = None
        self._cached_step2: OutgoingMessage | None = None
        self._presence_timer: Timer | None = None
        self._log_entries = 0
        self._log_bytes = 0
        self._compacting = False
        self._snapshot_bytes = 0
        self._state = RoomState.LOADING
        #: Set once the room has left :attr:`RoomState.LOADING` (peers may try to join).
        self.ready = trio.Event()
        #: Set once the room has stopped (unloaded, shut down or failed).
        self.closed = trio.Event()
        #: Why the room failed, if it did.
        self.failure: BaseException | None = None
        self._reservations = 0
        self._unobserve = self.document.observe(self._on_document_update)

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def state(self) -> RoomState:
        """Where the room is in its life."""
        return self._state

    def _enter(self, state: RoomState) -> None:
        if state not in _TRANSITIONS[self._state]:
            raise RuntimeError(f"room {self.name!r}: {self._state.value} -> {state.value}")
        self._state = state

    @property
    def accepting(self) -> bool:
        """Whether new peers may join (the room is loaded and not stopping)."""
        return self._state is RoomState.OPEN

    async def run(
        self,
        idle_timeout: float = math.inf,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """:meth:`open` the room in a nursery of its own and return once it has closed: it has
        been without peers for ``idle_timeout`` seconds, :meth:`stop` was called or it failed.

        Raises:
            StoreError, BusError: loading failed (the room is closed).
        """
        async with trio.open_nursery() as nursery:
            if self._own_timers:
                await nursery.start(self._timers.run)
            await self.open(nursery, idle_timeout)
            task_status.started()
            await self.closed.wait()
            nursery.cancel_scope.cancel()  # the room's own timers

    async def open(self, nursery: trio.Nursery, idle_timeout: float = math.inf) -> None:
        """Load the stored document and open the room to peers; from then on the room's
        background work (commits, compactions, unloading) runs in ``nursery``. The room unloads
        (flushing the store) once it has been without peers for ``idle_timeout`` seconds, or
        when :meth:`stop` is called; it closes every peer when it fails. :attr:`closed` is set
        once it is done.

        Raises:
            StoreError, BusError: loading failed (the room is closed).
        """
        self._idle_timeout = idle_timeout
        try:
            started = trio.current_time()
            await self._load()
            self.events.loaded(self, trio.current_time() - started)
        except BaseException as exc:
            if not must_propagate(exc):
                self._fail_on_error(exc)
            with trio.CancelScope(shield=True):
                await self._finish()
            raise
        self._nursery = nursery
        if self._state is not RoomState.LOADING:
            nursery.start_soon(self._unload)  # stopped while loading
            return
        self._enter(RoomState.OPEN)
        self.ready.set()
        self._watch_idle()

    def stop(self) -> None:
        """Unload soon: stop accepting peers, flush the store, then close."""
        if self._state is RoomState.LOADING:
            self._enter(RoomState.UNLOADING)  # open() unloads once loaded
        elif self._state is RoomState.OPEN:
            self._enter(RoomState.UNLOADING)
            self._start_unload()

    def _start_unload(self) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._unload)

    async def _unload(self) -> None:
        """Flush and compact (unless the room failed), then close."""
        try:
            await self._flush()  # in a failed room: only the commit under way, if any
            await self._stop_background()
            if self._state is RoomState.UNLOADING:
                await self._compact_on_unload()
        except BaseException as exc:
            if must_propagate(exc):
                raise
            self._fail_on_error(exc)
        finally:
            with trio.CancelScope(shield=True):
                await self._finish()

    async def _finish(self) -> None:
        try:
            await self._detach()
        finally:
            self._release()
            self.events.closed(self)

    def _fail_on_error(self, exc: BaseException) -> None:
        """Log and fail for an error out of loading or unloading: the store's or the bus's
        (one line), or ours (with its traceback)."""
        if isinstance(exc, StoreError | BusError):
            logger.error("room %r: store failure: %s", self.name, exc)
            self._fail(exc, "storage failure")
        else:
            logger.error("room %r failed", self.name, exc_info=exc)
            self._fail(exc, "room failed")

    def _release(self) -> None:
        # Nothing may keep the room alive once it is done: the document's observer (held by
        # native code, out of reach of the garbage collector) is the last link.
        if self._state is not RoomState.CLOSED:
            self._enter(RoomState.CLOSED)
        for peer in tuple(self.peers):
            peer.close(CloseCode.GOING_AWAY, "room closed")
        self.peers.clear()
        self._receivers.clear()
        self._uncommitted.clear()
        self._uncommitted_origins.clear()
        self._after_commit.clear()
        self._nursery = None
        for timer in (self._expiry, self._presence_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._unobserve()
        self.document.close()
        self._set_flushed()
        self.ready.set()
        self.closed.set()

    def _fail(self, exc: BaseException, reason: str) -> None:
        """Close every peer and drop what is not committed: the next connection loads the room
        afresh from the store. Peers still hold their uncommitted edits and send them again
        when they reconnect.

        The close code is the error's own when it is no peer's fault (1013 for a Redis out of
        reach: try again later), else 1011.
        """
        if self._state in (RoomState.FAILED, RoomState.CLOSED):
            return
        unloading = self._state is RoomState.UNLOADING
        self._enter(RoomState.FAILED)
        self.failure = exc
        self._uncommitted.clear()
        self._uncommitted_origins.clear()
        self._after_commit.clear()
        self._held_answers = None
        self._set_flushed()
        code: int = CloseCode.INTERNAL_ERROR
        if isinstance(exc, YSyncError) and not exc.peer_fault:
            code = exc.close_code
        for peer in tuple(self.peers):
            peer.close(code, reason)
        if not unloading:  # an unload under way closes the room itself
            self._start_unload()

    def _fail_on_bug(self, exc: BaseException, what: str) -> None:
        logger.error("room %r failed while %s", self.name, what, exc_info=exc)
        self._fail(exc, "internal error")

    # -- background work -----------------------------------------------------------------

    def _spawn(self, work: Callable[[], Awaitable[None]], what: str) -> None:
        """Run ``work`` in the room's nursery; an error in it fails the room, never the nursery."""
        if self._nursery is not None:
            self._nursery.start_soon(self._run_background, work, what)

    async def _run_background(self, work: Callable[[], Awaitable[None]], what: str) -> None:
        with trio.CancelScope() as scope:
            if self._background is None:
                self._background = set()
            self._background.add(scope)
            try:
                await work()
            except BaseException as exc:
                if must_propagate(exc):
                    raise
                self._fail_on_bug(exc, what)
            finally:
                self._background.discard(scope)
                if not self._background:
                    self._background = None
                    if self._background_idle is not None:
                        self._background_idle.set()

    async def _stop_background(self) -> None:
        """Cancel the room's background work and wait until it is gone."""
        if not self._background:
            return
        self._background_idle = trio.Event()
        for scope in self._background:
            scope.cancel()
        with trio.CancelScope(shield=True):  # the work ends at its next checkpoint
            await self._background_idle.wait()
        self._background_idle = None

    # -- peers on their way in and out ---------------------------------------------------

    def reserve(self) -> None:
        """Keep the room loaded while a peer is on its way in, from before it is loaded until
        it has joined; :meth:`unreserve` once it has joined or given up.

        Raises:
            RoomClosedError: the room is unloading or closed.
        """
        if self._state not in (RoomState.LOADING, RoomState.OPEN):
            raise RoomClosedError(f"room {self.name!r} is not accepting peers")
        self._reservations += 1
        self._cancel_idle()

    def unreserve(self) -> None:
        """Release a :meth:`reserve`."""
        self._reservations -= 1
        self._watch_idle()

    @property
    def _in_use(self) -> bool:
        return bool(self.peers or self._reservations)

    def _watch_idle(self) -> None:
        # Unused from now on: unload after the idle timeout (a timer, not a task).
        if (
            self._idle_timer is None
            and self._state is RoomState.OPEN
            and not self._in_use
            and math.isfinite(self._idle_timeout)
        ):
            self._idle_timer = self._timers.call_later(self._idle_timeout, self._idle_expired)

    def _cancel_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle_expired(self) -> None:
        self._idle_timer = None
        if not self._in_use:
            self.stop()

    async def _load(self) -> None:
        channel = self._channel = await self.bus.attach(self.name, self)
        catchup = await channel.load()
        # No checkpoint before the catch-up is applied: the bus delivers what follows it.
        with self._observed_by(None):
            self._apply_accepted(catchup.all_updates())
        if not self.bus.persists:
            # The log the room writes; a bus that persists folds and compacts the log itself.
            self._log_entries = len(catchup.stored.updates)
            self._log_bytes = catchup.stored.size_bytes

    def _apply_accepted(self, updates: Iterable[bytes]) -> None:
        """Apply updates that were accepted before (stored, or published by a server).

        Raises:
            DocumentError: the document library refused one.
        """
        for update in updates:
            try:
                validate_update(update)
            except ProtocolError as exc:
                # Written before updates were validated, or corrupted: leave it out rather
                # than let the document library meet it.
                logger.error("room %r: skipping an invalid stored update: %s", self.name, exc)
                continue
            self.document.apply_update(update, origin=self.bus)

    @contextmanager
    def _observed_by(self, callback: UpdateCallback | None) -> Iterator[None]:
        """Inside the block, the document's updates go to ``callback`` (or nowhere) instead of
        the commit path."""
        self._unobserve()
        stop = self.document.observe(callback) if callback is not None else None
        try:
            yield
        finally:
            if stop is not None:
                stop()
            self._unobserve = self.document.observe(self._on_document_update)

    async def _detach(self) -> None:
        """Leave the bus: first tell the other servers that this server's clients are gone."""
        if self._channel is None:
            return
        with trio.CancelScope(shield=True):  # bounded by the bus
            self._share_awareness(self.awareness.remove(self._local_clients(), trio.current_time()))
            self._publish_shared_awareness()
            channel, self._channel = self._channel, None
            await channel.detach()

    # -- peers ---------------------------------------------------------------------------

    def join(
        self,
        connection: Connection,
        *,
        read_only: bool = False,
        presence: bool = True,
        identity: str | None = None,
    ) -> Peer:
        """Add a peer on ``connection``: send it our state vector and the current awareness.

        A ``read_only`` peer receives everything, but its updates are never applied (it is told
        once, with the protocol's permission-denied message); without ``presence`` its awareness
        is ignored.

        The peer receives updates only once it has asked for the document (its SyncStep1),
        so it never gets updates before the state they build on.

        Raises:
            RoomClosedError: the room is not accepting peers (or failed just now).
        """
        if not self.accepting:
            raise RoomClosedError(f"room {self.name!r} is not accepting peers")
        # Everything that can fail happens before the peer is added.
        try:
            greeting = [self._state_vector_message()]
            if len(self.awareness):
                greeting.append(OutgoingMessage.of(self.awareness.update_message()))
        except Exception as exc:
            self._fail_on_bug(exc, "greeting a peer")
            raise RoomClosedError(f"room {self.name!r} failed") from exc
        peer = Peer(connection, read_only=read_only, presence=presence, identity=identity)
        self.peers.add(peer)
        self._cancel_idle()
        for message in greeting:
            self._unicast(peer, message)
        return peer

    def leave(self, peer: Peer) -> None:
        """Remove ``peer`` and tell the others that the clients it controlled are gone.

        Safe to call at any time, more than once, and after the room closed.
        """
        self.peers.discard(peer)
        self._receivers.discard(peer)
        self._watch_idle()
        change = self.awareness.remove_controlled_by(peer, trio.current_time())
        if change:
            self._share_awareness(change)
            if self._state is RoomState.OPEN:
                self._broadcast_awareness(change)
                self._schedule_expiry()
            else:
                self._publish_shared_awareness()

    def handle(self, peer: Peer, message: Message) -> None:
        """Handle one decoded, validated message from ``peer``.

        Raises:
            ProtocolError: the message is of a kind the room does not take (the peer's fault).
            DocumentError: the document library refused the update (the peer's fault).
            PolicyViolationError: the peer exceeded a limit.

        A failure of the document library or of our own code fails the room instead (every
        peer is closed with 1011) and is not raised.
        """
        if peer.closing or self._state is not RoomState.OPEN:
            return
        if isinstance(message, SyncUpdate | SyncStep2):
            self._apply(peer, message.update, message.info)
        elif isinstance(message, SyncStep1):
            self._request_document(peer, message.state_vector)
        elif isinstance(message, AwarenessUpdate):
            if peer.presence:
                self._apply_awareness(peer, message)
        elif isinstance(message, QueryAwareness):
            if not peer._in_flight(peer._awareness_mark):
                self._unicast(peer, OutgoingMessage.of(self.awareness.update_message()))
                peer._awareness_mark = peer.connection.bytes_queued
        elif isinstance(message, PermissionDenied):
            pass  # only servers send it
        elif isinstance(message, UnknownMessage):
            raise UnsupportedMessageError(f"unsupported message type {message.message_type}")

    def _apply(self, peer: Peer, update: bytes, info: UpdateInfo | None = None) -> None:
        if peer.read_only:
            # y-websocket clients send their (usually empty) SyncStep2 on every connect: only
            # an update that would change something is worth a refusal.
            if update != EMPTY_UPDATE and not peer._told_read_only:
                peer._told_read_only = True
                self._unicast(peer, OutgoingMessage.of(PermissionDenied("read-only access")))
            return
        if self._leaves_a_gap(update, info):
            # yrs would hold such structs as pending until the clocks before them arrive, and
            # pending structs are where a crafted sequence corrupted its memory
            # (tests/test_yrs_known_crash.py). An honest client sends a gap only in corner
            # cases (typing during its handshake after a lost commit); asked for everything
            # from the room's state vector, it answers with the same edits and no gap.
            logger.debug("room %r: an update with a clock gap: asking for a diff", self.name)
            self._unicast(peer, self._state_vector_message())
            return
        self._apply_update(update, peer)

    def _leaves_a_gap(self, update: bytes, info: UpdateInfo | None) -> bool:
        """Whether the update needs clocks that neither the room nor the update holds
        (``info``: what validating it learnt; without it, it is validated here)."""
        if info is None:
            info = validate_update(update)
        if self._cached_clocks is None:
            self._cached_clocks = validate_state_vector(self.document.state_vector())
        return info.needs_more_than(self._cached_clocks)

    def _apply_update(self, update: bytes, origin: object) -> bool:
        """Apply ``update`` to the document; ``False`` if that failed the room.

        Raises:
            DocumentError: the document library refused the update (the sender's fault).
        """
        if not self._uncommitted:
            self._batch_base = self.document.state_vector()
        try:
            self.document.apply_update(update, origin=origin)
        except DocumentBrokenError as exc:
            self._fail_on_bug(exc, "applying an update")
            return False
        except DocumentError:
            raise
        except BaseException as exc:
            if must_propagate(exc):
                raise
            self._fail_on_bug(exc, "applying an update")
            return False
        return True

    async def submit(self, update: bytes, origin: str, info: UpdateInfo | None = None) -> None:
        """Apply a validated update from outside the room's peers (the HTTP API), as if a peer
        had sent it: it is committed and broadcast to every peer. Returns once it is committed.

        Args:
            update: a v1 update (validate it first: :func:`~trio_ysync.protocol.validate_update`).
            origin: who sent it, for hooks (an identity, or ``"http"``).
            info: what :func:`~trio_ysync.protocol.validate_update` returned for it.

        Raises:
            DocumentError: the document library refused the update, or it needs changes the
                room does not have (the same rule as for peers; there is no one to ask for
                them, so it is refused).
            RoomClosedError: the room is not open, or failed.
        """
        if self.accepting and self._leaves_a_gap(update, info):
            raise DocumentError(
                "the update builds on changes the room does not have: send them with it"
            )
        if not self.accepting or not self._apply_update(update, origin):
            raise RoomClosedError(f"room {self.name!r} is not accepting updates")
        await self._flush()
        if self.failure is not None:
            raise RoomClosedError(f"room {self.name!r} failed")

    def _request_document(self, peer: Peer, state_vector: bytes) -> None:
        if peer._answer_requested or peer._in_flight(peer._answer_mark):
            return  # the answer on its way covers this request too
        peer._answer_requested = True
        if self._after_commit or (self._committing and not self.broadcast_before_commit):
            # Answer once what the document holds now is durable.
            self._after_commit.append(lambda: self._answer(peer, state_vector))
        else:
            self._answer(peer, state_vector)

    def _answer(self, peer: Peer, state_vector: bytes) -> None:
        if self._held_answers is not None:
            self._held_answers.append(lambda: self._answer(peer, state_vector))
            return
        peer._answer_requested = False
        if peer.closing or peer not in self.peers:
            return
        try:
            if state_vector == EMPTY_STATE_VECTOR:
                # A newcomer with nothing: every such answer is the same, encoded once.
                answer = self._whole_state()
            else:
                answer = OutgoingMessage.of(SyncStep2(self.document.diff(state_vector)))
        except DocumentBrokenError as exc:
            self._fail_on_bug(exc, "encoding a diff")
            return
        except DocumentError as exc:
            logger.warning(
                "room %r: closing a peer whose state vector was refused: %s", self.name, exc
            )
            peer.close(exc.close_code, "invalid state vector")
            return
        self._unicast(peer, answer)
        peer._answer_mark = peer.connection.bytes_queued
        self._receivers.add(peer)

    def _state_vector_message(self) -> OutgoingMessage:
        """The SyncStep1 every newcomer is greeted with (the same until the document changes)."""
        if self._cached_step1 is None:
            self._cached_step1 = OutgoingMessage.of(SyncStep1(self.document.state_vector()))
        return self._cached_step1

    def _whole_state(self) -> OutgoingMessage:
        """The SyncStep2 with the whole document (the same until the document changes)."""
        if self._cached_step2 is None:
            if self._state_vector_message().payload == _EMPTY_STEP1:
                update = EMPTY_UPDATE  # nothing to encode
            else:
                update = self.document.diff(EMPTY_STATE_VECTOR)
            self._cached_step2 = OutgoingMessage.of(SyncStep2(update))
        return self._cached_step2

    def _apply_awareness(self, peer: Peer, message: AwarenessUpdate) -> None:
        controlled = self.awareness.controlled_by(peer)
        claimed = {entry.client_id for entry in message.entries if entry.state is not None}
        if len(controlled | claimed) > MAX_AWARENESS_CLIENTS_PER_PEER:
            raise PolicyViolationError(
                f"awareness for more than {MAX_AWARENESS_CLIENTS_PER_PEER} clients"
            )
        change = self.awareness.apply(message.entries, trio.current_time(), origin=peer)
        if change:
            self._share_awareness(change)
            self._broadcast_awareness(change)
            self._schedule_expiry()

    # -- document updates ----------------------------------------------------------------

    def _on_document_update(self, update: bytes, origin: object) -> None:
        self._cached_step1 = self._cached_step2 = self._cached_clocks = None
        message = OutgoingMessage.of(SyncUpdate(update))
        self._uncommitted.append(update)
        self._uncommitted_origins.append(_identity_of(origin))
        exclude = None if self.echo_updates else origin
        if self.broadcast_before_commit:
            self._broadcast(message, exclude=exclude)
        else:
            self._after_commit.append(lambda: self._broadcast(message, exclude=exclude))
        self._request_commit()

    def _broadcast(self, message: OutgoingMessage, exclude: object = None) -> None:
        receivers = tuple(self._receivers)
        for peer in receivers:
            if peer is not exclude:
                peer.send(message)
        count = len(receivers) - (exclude in self._receivers)
        self.events.sent(message.kind, count, len(message))

    def _broadcast_awareness(self, change: AwarenessChange) -> None:
        self._pending_presence.update(dict.fromkeys(change.client_ids))
        if self._presence_timer is None:  # else the window's end sends it
            self._open_presence_window()

    def _open_presence_window(self) -> None:
        # A change in a quiet room goes out at once; those that follow within the interval
        # wait for its end and go out together, to this server's peers and to the others.
        self._send_presence()
        self._publish_shared_awareness()
        if self.presence_interval > 0:
            self._presence_timer = self._timers.call_later(
                self.presence_interval, self._end_presence_window
            )

    def _end_presence_window(self) -> None:
        self._presence_timer = None
        if self._pending_presence or self._pending_shared:
            self._open_presence_window()

    def _send_presence(self) -> None:
        # Everyone, the sender too: the echo of a client's 15 s renewal is what keeps
        # y-websocket's 30 s receive watchdog quiet in an idle room. Each client's entry says
        # its latest state and clock, so changes gathered over the interval lose nothing.
        client_ids, self._pending_presence = list(self._pending_presence), {}
        if not client_ids or self._state is not RoomState.OPEN:
            return
        message = OutgoingMessage.of(self.awareness.update_message(client_ids))
        peers = tuple(self.peers)
        for peer in peers:
            peer.send(message)
        self.events.sent(message.kind, len(peers), len(message))

    def _schedule_expiry(self) -> None:
        # One timer per room, due when the earliest state can expire; rescheduled when it fires.
        due = self.awareness.next_check()
        if due is None or (self._expiry is not None and self._expiry.deadline <= due):
            return
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = self._timers.call_at(due, self._expire_awareness)

    def _expire_awareness(self) -> None:
        self._expiry = None
        if self._state is not RoomState.OPEN:
            return
        _, expired = self.awareness.check(trio.current_time())
        if expired:
            self._broadcast_awareness(expired)
        self._schedule_expiry()

    def _unicast(self, peer: Peer, message: OutgoingMessage) -> None:
        peer.send(message)
        self.events.sent(message.kind, 1, len(message))

    # -- other servers (the room is the bus's listener) ----------------------------------

    def _share_awareness(self, change: AwarenessChange) -> None:
        """Note what this server's peers changed, for the other servers (see
        :meth:`_publish_shared_awareness`)."""
        if self.bus.shared and self._channel is not None:
            self._pending_shared.update(dict.fromkeys(change.client_ids))

    def _publish_shared_awareness(self) -> None:
        """Tell the other servers the latest states of the clients noted since last time."""
        client_ids, self._pending_shared = list(self._pending_shared), {}
        if client_ids and self._channel is not None:
            entries = self.awareness.entries(client_ids)
            self._channel.publish_awareness(encode_awareness_update(entries))

    def _local_clients(self) -> set[int]:
        return {client for peer in self.peers for client in self.awareness.controlled_by(peer)}

    def remote_updates(self, updates: list[bytes]) -> None:
        """Apply updates that other servers committed and broadcast what they change here (they
        are committed already: never written again)."""
        if self._state is not RoomState.OPEN:
            return
        # What one read from the bus brought reaches each peer in one write.
        with gathering_sends(), self._observed_by(self._on_remote_update):
            for update in updates:
                try:
                    self._apply_accepted([update])
                except DocumentBrokenError as exc:
                    self._fail_on_bug(exc, "applying an update from another server")
                    return
                except DocumentError as exc:
                    logger.error("room %r: an update from another server: %s", self.name, exc)

    def _on_remote_update(self, update: bytes, origin: object) -> None:
        self._cached_step1 = self._cached_step2 = self._cached_clocks = None
        self._broadcast(OutgoingMessage.of(SyncUpdate(update)))

    def remote_awareness(self, payload: bytes) -> None:
        """Apply awareness that another server's peers changed, as states that no peer of this
        server controls, and broadcast the change to this server's peers."""
        if self._state is not RoomState.OPEN:
            return
        try:
            entries = decode_awareness_update(payload)
        except ProtocolError as exc:
            logger.error("room %r: invalid awareness from another server: %s", self.name, exc)
            return
        change = self.awareness.apply(entries, trio.current_time())
        if change:
            self._broadcast_awareness(change)
            self._schedule_expiry()

    def awareness_query(self) -> bytes | None:
        """The awareness states of this server's own peers' clients, encoded for the bus."""
        clients = self._local_clients()
        if not clients:
            return None
        return encode_awareness_update(self.awareness.entries(clients))

    def lost_position(self) -> None:
        """The bus may have missed updates: load again and apply what the document lacks."""
        if self._state is RoomState.OPEN and self._nursery is not None:
            self._held_answers = []
            self._spawn(self._catch_up, "catching up")

    async def _catch_up(self) -> None:
        assert self._channel is not None, "a loaded room is attached"
        try:
            catchup = await self._channel.load()
        except (StoreError, BusError) as exc:
            logger.error("room %r: catching up failed: %s", self.name, exc)
            self._fail(exc, "storage failure")
            return
        # The room may have failed or unloaded meanwhile: then it has nobody to tell.
        if self._state is RoomState.OPEN:
            self.remote_updates(catchup.all_updates())
        held, self._held_answers = self._held_answers or [], None
        for answer in held:
            answer()

    # -- store ---------------------------------------------------------------------------

    def _request_commit(self) -> None:
        if not self._committing and self._nursery is not None:
            self._committing = True
            # Not one of the cancellable tasks (a commit is bounded by the store's and the
            # bus's retries, and a room flushes before it closes): a task per burst of updates
            # is what a busy room with a memory store spends most on, so it stays bare.
            self._nursery.start_soon(self._commit_queued)

    async def _commit_queued(self) -> None:
        # Commits whatever was queued, in batches, until nothing is left; started again by the
        # next update. A quiet room has no commit task.
        try:
            while self._uncommitted or self._after_commit:
                updates, self._uncommitted = self._uncommitted, []
                origins, self._uncommitted_origins = self._uncommitted_origins, []
                actions, self._after_commit = self._after_commit, []
                if updates:
                    started = trio.current_time()
                    if not (self._document_sound() and await self._write(updates)):
                        return
                    self.events.committed(self, updates, origins, trio.current_time() - started)
                try:
                    with gathering_sends():  # one write per receiver for the whole batch
                        for action in actions:
                            action()
                except Exception as exc:
                    self._fail_on_bug(exc, "acting on a commit")
                    return
                if not self._compacting and self._compaction_due() and self._nursery is not None:
                    # In the background: commits go on while the log is merged.
                    self._compacting = True
                    self._spawn(self._compact, "compacting")
        except BaseException as exc:
            if must_propagate(exc):
                raise
            self._fail_on_bug(exc, "committing")
        finally:
            self._committing = False
            self._set_flushed()

    def _document_sound(self) -> bool:
        # Some updates apply cleanly and only make a later encoding fail. Encoding what the
        # batch added (a diff against the state before it) before the batch is committed means
        # such an update fails the room here, before it reaches the store, rather than at every
        # later load.
        try:
            self.document.diff(self._batch_base)
        except DocumentError as exc:
            self._fail_on_bug(exc, "checking the document before a commit")
            return False
        return True

    def _compaction_due(self) -> bool:
        # Encoding the snapshot costs its size, so wait until the log holds at least that much
        # again: compaction then costs a bounded amount per stored byte, whatever the document.
        grown = self._log_bytes - self._snapshot_bytes
        return grown >= self.compact_after_bytes or (
            self._log_entries >= self.compact_after_updates and grown >= self._snapshot_bytes
        )

    async def _publish(self, updates: list[bytes]) -> bool:
        assert self._channel is not None, "a loaded room is attached"
        try:
            await self._channel.publish(updates)  # retried by the bus
        except BusError as exc:
            logger.error("room %r: cannot publish: %s", self.name, exc)
            self._fail(exc, "storage failure")
            return False
        return True

    async def _append(self, updates: list[bytes]) -> bool:
        delay = 0.05
        for attempt in range(self.store_retries + 1):
            try:
                await self.store.append(self.name, updates)
            except StoreError as exc:
                if attempt == self.store_retries:
                    logger.error("room %r: giving up writing to the store: %s", self.name, exc)
                    self._fail(exc, "storage failure")
                    return False
                logger.warning("room %r: store write failed, retrying: %s", self.name, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, 2.0)
            else:
                self._log_entries += len(updates)
                self._log_bytes += sum(map(len, updates))
                return True
        return False  # pragma: no cover - the loop always returns

    async def _compact(self) -> None:
        # The live document's state replaces the log; the log is still read, because a
        # document leaves out pending updates (whose dependencies have not arrived) and those
        # must survive. The document may already hold updates that are not yet committed:
        # the snapshot then covers them too, which is harmless (updates are idempotent).
        try:
            stored = await self.store.load(self.name)
            if len(stored.updates) < 2:
                return
            try:
                state = self.document.diff()
            except DocumentError as exc:
                self._fail_on_bug(exc, "encoding the document")
                return
            # A failure here is the stored log's, not the live document's: try again later.
            snapshot = await trio.to_thread.run_sync(with_pending, state, stored.updates)
            await self.store.compact(self.name, snapshot, stored.last_seq)
        except (StoreError, DocumentError) as exc:
            logger.warning("room %r: compaction failed (will retry later): %s", self.name, exc)
            return
        finally:
            self._compacting = False
        self._log_entries -= len(stored.updates) - 1
        self._log_bytes -= stored.size_bytes - len(snapshot)
        self._snapshot_bytes = len(snapshot)

    async def _flush(self) -> None:
        """Return once everything applied so far is committed and no commit is under way (or
        the room failed)."""
        if self._uncommitted or self._after_commit:
            self._request_commit()
        if not self._committing:
            return
        if self._flushed is None:
            self._flushed = trio.Event()
        await self._flushed.wait()

    def _set_flushed(self) -> None:
        if self._flushed is not None:
            self._flushed.set()
            self._flushed = None

    async def _compact_on_unload(self) -> None:
        if self._log_entries > 1:
            with trio.CancelScope(shield=True):
                await self._compact()
