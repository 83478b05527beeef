"""A room: one shared document, its awareness, and the peers editing it.

The room does its document work once per update (apply, observe, encode) and hands the same
:class:`~trio_ysync.transport.OutgoingMessage` to every receiver. Incoming updates are
written ahead to the store and broadcast once committed; updates that arrive while a commit is in
flight go into the next commit together.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import trio

from .doc import Backend, Document, DocumentError, new_document
from .protocol import (
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
    decode,
    encode,
)
from .store import Store, StoreError
from .store.merge import with_pending
from .transport import CloseCode, OutgoingMessage

__all__ = ["Peer", "Room", "RoomClosedError", "UnsupportedMessageError"]

logger = logging.getLogger("trio_ysync.room")

#: How often awareness states are checked for expiry (y-protocols checks every tenth of the
#: 30 s timeout).
AWARENESS_CHECK_INTERVAL = 3.0


class Peer(Protocol):
    """A connection as a room sees it: something to send messages to, and to close."""

    def send(self, message: OutgoingMessage) -> None:
        """Queue ``message`` without blocking (a slow peer closes itself)."""
        ...

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start closing the connection."""
        ...

    def __hash__(self) -> int: ...


class UnsupportedMessageError(ProtocolError):
    """A peer sent a message type the room does not handle."""


class RoomClosedError(Exception):
    """The room failed or closed before a peer could join it."""


class Room:
    """One document shared by the peers connected to the same room name.

    Rooms are created and unloaded by :class:`~trio_ysync.server.RoomServer`; run one yourself
    with ``await nursery.start(room.run)``.

    Args:
        name: the room's name (the URL path).
        store: where updates are written ahead of their broadcast.
        backend: the document library (default: pycrdt when installed).
        broadcast_before_commit: broadcast updates as soon as they are applied and write them in
            the background (lower latency; a crash may lose updates that peers already saw).
            Always the case for a store that is not durable (a memory store).
        compact_after_updates: compact the stored log once it holds this many entries and has
            grown by at least the size of the last snapshot.
        compact_after_bytes: compact the stored log once it has grown by this many bytes.
        store_retries: how many times a failed commit is retried before the room gives up.
    """

    def __init__(
        self,
        name: str,
        store: Store,
        *,
        backend: Backend | None = None,
        broadcast_before_commit: bool = False,
        compact_after_updates: int = 500,
        compact_after_bytes: int = 4 * 1024 * 1024,
        store_retries: int = 5,
    ) -> None:
        self.name = name
        self.store = store
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
        self._after_commit: list[Callable[[], None]] = []
        self._commit_wanted = trio.Event()
        self._committed_idle = trio.Event()
        self._committed_idle.set()
        self._log_entries = 0
        self._log_bytes = 0
        self._compacting = False
        self._snapshot_bytes = 0
        self._loading = True
        #: Set once the stored document is loaded and peers may join.
        self.ready = trio.Event()
        #: Set once the room has stopped (unloaded, shut down or failed).
        self.closed = trio.Event()
        self.failure: BaseException | None = None
        self._stopping = False
        self._idle_changed = trio.Event()
        self._reservations = 0
        self.document.observe(self._on_document_update)

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """Whether new peers may join (the room is loaded and not stopping)."""
        return self.ready.is_set() and not self._stopping and self.failure is None

    async def run(
        self,
        idle_timeout: float = math.inf,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Load the stored document, then serve peers until the room has been without peers
        for ``idle_timeout`` seconds or :meth:`stop` is called; flush the store on the way out.
        """
        try:
            await self._load()
            self.ready.set()
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._commit_forever, nursery)
                nursery.start_soon(self._expire_awareness_forever)
                await self._wait_until_idle(idle_timeout)
                self._stopping = True
                await self._flush()
                nursery.cancel_scope.cancel()
            await self._compact_on_unload()
        except BaseException as exc:
            self.failure = exc
            raise
        finally:
            self._stopping = True
            self.ready.set()
            self.closed.set()

    def stop(self) -> None:
        """Unload now: stop accepting peers, flush the store and return from :meth:`run`."""
        self._stopping = True
        self._idle_changed.set()

    @contextmanager
    def reserved(self) -> Iterator[None]:
        """Keep the room loaded while a peer is on its way in (between loading and joining)."""
        if not self.accepting:
            raise RoomClosedError(f"room {self.name!r} is not accepting peers")
        self._reservations += 1
        try:
            yield
        finally:
            self._reservations -= 1
            self._idle_changed.set()

    @property
    def _in_use(self) -> bool:
        return bool(self.peers or self._reservations)

    async def _wait_until_idle(self, idle_timeout: float) -> None:
        while not self._stopping:
            self._idle_changed = trio.Event()
            if self._in_use:
                await self._idle_changed.wait()
                continue
            with trio.move_on_after(idle_timeout):
                await self._idle_changed.wait()
                continue
            if not self._in_use:
                return

    async def _load(self) -> None:
        stored = await self.store.load(self.name)
        for update in stored.updates:
            self.document.apply_update(update, origin=self.store)
        self._log_entries = len(stored.updates)
        self._log_bytes = stored.size_bytes
        self._loading = False

    # -- peers ---------------------------------------------------------------------------

    def join(self, peer: Peer) -> None:
        """Add ``peer``: send it our state vector and the current awareness states.

        The peer receives updates only once it has asked for the document (its SyncStep1),
        so it never gets updates before the state they build on.
        """
        if not self.accepting:
            raise RoomClosedError(f"room {self.name!r} is not accepting peers")
        self.peers.add(peer)
        self._idle_changed.set()
        peer.send(OutgoingMessage(encode(SyncStep1(self.document.state_vector()))))
        if len(self.awareness):
            peer.send(OutgoingMessage(encode(self.awareness.update_message())))

    def leave(self, peer: Peer) -> None:
        """Remove ``peer`` and tell the others that the clients it controlled are gone."""
        self.peers.discard(peer)
        self._receivers.discard(peer)
        self._idle_changed.set()
        change = self.awareness.remove_controlled_by(peer, trio.current_time())
        if change:
            self._broadcast_awareness(change)

    def receive(self, peer: Peer, payload: bytes) -> None:
        """Handle one WebSocket message from ``peer``.

        Raises:
            ProtocolError: the message is malformed or of an unsupported type.
            DocumentError: an update could not be applied.
        """
        for message in decode(payload):
            self._handle(peer, message)

    def _handle(self, peer: Peer, message: Message) -> None:
        if isinstance(message, SyncUpdate | SyncStep2):
            self.document.apply_update(message.update, origin=peer)
        elif isinstance(message, SyncStep1):
            if self._after_commit:
                # Answer once what the document holds now is durable.
                self._after_commit.append(lambda: self._answer(peer, message.state_vector))
            else:
                self._answer(peer, message.state_vector)
        elif isinstance(message, AwarenessUpdate):
            change = self.awareness.apply(message.entries, trio.current_time(), origin=peer)
            if change:
                self._broadcast_awareness(change)
        elif isinstance(message, QueryAwareness):
            peer.send(OutgoingMessage(encode(self.awareness.update_message())))
        elif isinstance(message, PermissionDenied):
            pass  # only servers send it
        elif isinstance(message, UnknownMessage):
            raise UnsupportedMessageError(f"unsupported message type {message.message_type}")

    def _answer(self, peer: Peer, state_vector: bytes) -> None:
        if peer not in self.peers:
            return
        peer.send(OutgoingMessage(encode(SyncStep2(self.document.diff(state_vector)))))
        self._receivers.add(peer)

    # -- document updates ----------------------------------------------------------------

    def _on_document_update(self, update: bytes, origin: object) -> None:
        if self._loading:
            return
        message = OutgoingMessage(encode(SyncUpdate(update)))
        self._uncommitted.append(update)
        if self.broadcast_before_commit:
            self._broadcast(message, exclude=origin)
        else:
            self._after_commit.append(lambda: self._broadcast(message, exclude=origin))
        self._committed_idle = trio.Event()
        self._commit_wanted.set()

    def _broadcast(self, message: OutgoingMessage, exclude: object = None) -> None:
        for peer in tuple(self._receivers):
            if peer is not exclude:
                peer.send(message)

    def _broadcast_awareness(self, change: AwarenessChange) -> None:
        # Everyone, the sender too: the echo of a client's 15 s renewal is what keeps
        # y-websocket's 30 s receive watchdog quiet in an idle room.
        message = OutgoingMessage(encode(self.awareness.update_message(change.client_ids)))
        for peer in tuple(self.peers):
            peer.send(message)

    # -- store ---------------------------------------------------------------------------

    async def _commit_forever(self, nursery: trio.Nursery) -> None:
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted = trio.Event()
            updates, self._uncommitted = self._uncommitted, []
            actions, self._after_commit = self._after_commit, []
            if updates:
                await self._append(updates)
            for action in actions:
                action()
            if not self._uncommitted:
                self._committed_idle.set()
            if not self._compacting and self._compaction_due():
                # In the background: commits go on while the log is merged.
                self._compacting = True
                nursery.start_soon(self._compact)

    def _compaction_due(self) -> bool:
        # Encoding the snapshot costs its size, so wait until the log holds at least that much
        # again: compaction then costs a bounded amount per stored byte, whatever the document.
        grown = self._log_bytes - self._snapshot_bytes
        return grown >= self.compact_after_bytes or (
            self._log_entries >= self.compact_after_updates and grown >= self._snapshot_bytes
        )

    async def _append(self, updates: list[bytes]) -> None:
        delay = 0.05
        for attempt in range(self.store_retries + 1):
            try:
                await self.store.append(self.name, updates)
            except StoreError as exc:
                if attempt == self.store_retries:
                    logger.error("room %r: giving up writing to the store: %s", self.name, exc)
                    self._fail(exc)
                    raise
                logger.warning("room %r: store write failed, retrying: %s", self.name, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, 2.0)
            else:
                self._log_entries += len(updates)
                self._log_bytes += sum(map(len, updates))
                return

    def _fail(self, exc: BaseException) -> None:
        # Nothing uncommitted was broadcast; peers still hold those edits and resend them when
        # they reconnect to a fresh room.
        self.failure = exc
        self._uncommitted.clear()
        self._after_commit.clear()
        for peer in tuple(self.peers):
            peer.close(CloseCode.INTERNAL_ERROR, "storage failure")

    async def _compact(self) -> None:
        # The live document's state replaces the log; the log is still read, because a
        # document leaves out pending updates (whose dependencies have not arrived) and those
        # must survive. The document may already hold updates that are not yet committed:
        # the snapshot then covers them too, which is harmless (updates are idempotent).
        try:
            stored = await self.store.load(self.name)
            if len(stored.updates) < 2:
                return
            snapshot = await trio.to_thread.run_sync(
                with_pending, self.document.diff(), stored.updates
            )
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
        self._commit_wanted.set()
        await self._committed_idle.wait()

    async def _compact_on_unload(self) -> None:
        if self.failure is None and self._log_entries > 1:
            with trio.CancelScope(shield=True):
                await self._compact()

    async def _expire_awareness_forever(self) -> None:
        while True:
            await trio.sleep(AWARENESS_CHECK_INTERVAL)
            _, expired = self.awareness.check(trio.current_time())
            if expired:
                self._broadcast_awareness(expired)
