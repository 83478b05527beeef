"""The room bus interface, and the in-process bus that has no other servers to talk to."""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import trio

from ..errors import CloseCode, YSyncError
from ..store.base import Store, StoredRoom, check_room

__all__ = [
    "BusConfigError",
    "BusError",
    "BusListener",
    "BusUnavailableError",
    "BusTuning",
    "Catchup",
    "FoldOutcome",
    "FoldResult",
    "LocalBus",
    "RoomBus",
    "RoomChannel",
]


class BusError(YSyncError):
    """A room bus operation failed.

    Like every :class:`~trio_ysync.errors.YSyncError`, it carries the WebSocket close code
    (``close_code``) for the peers of a room that it stops.
    """


class BusUnavailableError(BusError):
    """Redis could not be reached (or refused) after the configured retries.

    Nothing that was being published is acknowledged. The room closes its peers with 1013
    ("try again later"); clients reconnect and the room is loaded again once Redis is back.
    """

    close_code = CloseCode.TRY_AGAIN_LATER
    http_status = 503


class BusConfigError(BusError):
    """The bus refuses to start: this server does not fit the cluster (a store that is not the
    cluster's, or one that cannot be shared). The message is one line for the operator."""


@dataclass(frozen=True)
class BusTuning:
    """The numbers of a Redis bus; the defaults suit most servers.

    Attributes:
        fold_after_entries: Fold a room's stream into the store once it holds this many
            unfolded entries...
        fold_interval: ...or once the oldest unfolded entry is this many seconds old. Also how
            long to wait before trying again when another server held the fold lock.
        fold_batch: The most stream entries one fold takes (bounded work per fold).
        compact_after_entries: After a fold, compact the room's stored log once it holds this
            many entries.
        lock_lease: Seconds a fold lock lives: a fold that takes longer records nothing.
        read_count: The most entries read from one stream at once (live reads and loads).
        read_block: Seconds one blocking read waits before it is issued again.
        attempts: How many times a command is tried before :class:`BusUnavailableError`.
        retry_delay: Seconds before the first retry; doubled after each.
        max_backoff: The longest wait between the reader's reconnection attempts.
        command_timeout: Seconds one Redis command may take before it counts as failed.
        load_attempts: How many times a load starts over because a fold overtook it.
        awareness_queue: How many outgoing awareness messages may wait; more are dropped.
    """

    fold_after_entries: int = 200
    fold_interval: float = 5.0
    fold_batch: int = 1000
    compact_after_entries: int = 64
    lock_lease: float = 30.0
    read_count: int = 500
    read_block: float = 10.0
    attempts: int = 4
    retry_delay: float = 0.1
    max_backoff: float = 2.0
    command_timeout: float = 5.0
    load_attempts: int = 10
    awareness_queue: int = 1000

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"BusTuning.{name} must be positive, not {value!r}")


class FoldOutcome(enum.Enum):
    """What a fold attempt did."""

    #: Entries were appended to the store, the position recorded and the stream trimmed.
    FOLDED = "folded"
    #: The stream held no unfolded update.
    NOTHING = "nothing"
    #: Another server holds the room's fold lock.
    LOCKED = "locked"
    #: The lock expired before the fold was recorded: the store got the entries (harmless
    #: duplicates), but neither the position nor the stream changed.
    STALE = "stale"
    #: Redis or the store failed.
    FAILED = "failed"


@dataclass(frozen=True)
class FoldResult:
    """The outcome of a fold, how many stream entries it folded, and the last one's ID."""

    outcome: FoldOutcome
    entries: int = 0
    through: str | None = None


class BusListener(Protocol):
    """What a room gives the bus: plain callbacks, called from the bus's reader task.

    They must not block or await; they may raise, in which case the bus logs the error and goes
    on with the other rooms.
    """

    def remote_updates(self, updates: list[bytes]) -> None:
        """Updates other servers published, in stream order: apply them and broadcast the
        result to local peers. They are already durable: do not publish or store them again."""

    def remote_awareness(self, payload: bytes) -> None:
        """An encoded awareness update (the body of an awareness message) from another server:
        apply it and broadcast the change to local peers, as if a peer had sent it."""

    def awareness_query(self) -> bytes | None:
        """Another server asks for this room's awareness states: return the encoded update of
        the states that this server's own peers control (not those learnt from other servers),
        or ``None`` when there are none. The bus publishes it."""

    def lost_position(self) -> None:
        """Updates of this room may have been missed (this server lagged behind a trim, or
        Redis lost its data). No more updates are delivered until the room calls
        :meth:`RoomChannel.load` again and applies its result to the document it holds."""


@dataclass(frozen=True)
class Catchup:
    """What a room applies when it loads: the stored snapshot, then the newer updates.

    Attributes:
        stored: What the store held.
        updates: The updates published after the part of the stream the store covers, by all
            servers (this one's included), in stream order. Some may also be in ``stored``
            (folding appends before it moves its position): applying an update twice is
            harmless.
    """

    stored: StoredRoom = field(default_factory=StoredRoom)
    updates: list[bytes] = field(default_factory=list)

    def all_updates(self) -> list[bytes]:
        """The stored updates, then the stream's."""
        return [*self.stored.updates, *self.updates]


class RoomChannel(abc.ABC):
    """A room's connection to the other servers that hold it (one per room and server).

    Lifecycle: :meth:`RoomBus.attach` → :meth:`load` → live (:meth:`publish`, callbacks) →
    :meth:`detach`. After ``lost_position``, :meth:`load` again.
    """

    def __init__(self, room: str) -> None:
        self.room = room

    @abc.abstractmethod
    async def load(self) -> Catchup:
        """Catch up: read the store and the updates published since, then go live.

        Once this returns, the listener receives every later update of other servers, in
        order, starting right after the last update in the result; callbacks start at the next
        checkpoint, so apply the result before awaiting anything. Answer a SyncStep1 only
        after applying it. Calling it again (after ``lost_position``) catches up again.

        Raises:
            BusUnavailableError: Redis could not be reached.
            StoreError: the store could not be read.
        """

    @abc.abstractmethod
    async def publish(self, updates: Sequence[bytes]) -> None:
        """Write ahead: return once ``updates`` are durable in the order of every server.

        Acknowledge (broadcast) them only after this returns. An empty batch does nothing.

        Raises:
            BusUnavailableError: they could not be written after the configured retries (the
                room closes its peers with :attr:`BusError.close_code`). They may still have
                been written: other servers then apply them, which is harmless.
        """

    @abc.abstractmethod
    def publish_awareness(self, payload: bytes) -> None:
        """Send an encoded awareness update to the other servers (without waiting; awareness
        is ephemeral, so it is dropped rather than queued without bound)."""

    @abc.abstractmethod
    def query_awareness(self) -> None:
        """Ask the other servers for their awareness states of the room (they answer through
        ``remote_awareness``). :meth:`load` asks once by itself."""

    @abc.abstractmethod
    async def detach(self) -> None:
        """Stop receiving for this room (when it unloads); never raises for Redis errors.

        Publish the removal of this server's awareness states before: the room knows which
        clients it had. Detaching twice is harmless.
        """


class RoomBus(abc.ABC):
    """The connection of one server process to the other servers of its cluster.

    Open one with :func:`~trio_ysync.bus.open_bus`.

    Attributes:
        store: The store rooms load from (and, when :attr:`persists`, the bus writes to).
        server_id: This server's identity on the bus (random, new for every start).
    """

    #: Whether other servers hold the same rooms. When false (a server alone), a room skips
    #: the work of telling them anything: it neither encodes nor publishes awareness.
    shared: ClassVar[bool]
    #: Whether the bus writes published updates to the store itself. When true, a room commits
    #: by :meth:`RoomChannel.publish` and must neither append to nor compact the store: the bus
    #: folds what every server published into it (a room's document may lack updates that
    #: other servers folded already, so a compaction from it could drop them). When false, a
    #: room appends to the store itself and never publishes.
    persists: ClassVar[bool]

    def __init__(self, store: Store, server_id: str) -> None:
        self.store = store
        self.server_id = server_id

    @abc.abstractmethod
    async def attach(self, room: str, listener: BusListener) -> RoomChannel:
        """Connect ``room`` to the bus; call :meth:`RoomChannel.load` next.

        Raises:
            BusUnavailableError: Redis could not be reached.
            RuntimeError: the room is attached already.
        """


class _LocalChannel(RoomChannel):
    def __init__(self, bus: LocalBus, room: str) -> None:
        super().__init__(room)
        self._bus = bus

    async def load(self) -> Catchup:
        return Catchup(stored=await self._bus.store.load(self.room))

    async def publish(self, updates: Sequence[bytes]) -> None:
        await trio.lowlevel.checkpoint()

    def publish_awareness(self, payload: bytes) -> None:
        pass

    def query_awareness(self) -> None:
        pass

    async def detach(self) -> None:
        if self._bus._channels.get(self.room) is self:
            del self._bus._channels[self.room]
        await trio.lowlevel.checkpoint()


class LocalBus(RoomBus):
    """The bus of a server alone: there is nobody to tell.

    :meth:`RoomChannel.load` reads the store, :meth:`RoomChannel.publish` does nothing (the
    room writes to the store itself), and no callback is ever called.
    """

    shared = False
    persists = False

    def __init__(self, store: Store) -> None:
        super().__init__(store, "local")
        self._channels: dict[str, _LocalChannel] = {}

    async def attach(self, room: str, listener: BusListener) -> RoomChannel:
        check_room(room)
        await trio.lowlevel.checkpoint()
        if room in self._channels:
            raise RuntimeError(f"room {room!r} is attached already")
        channel = self._channels[room] = _LocalChannel(self, room)
        return channel
