"""The room bus over Redis: one stream per room for updates, pub/sub for awareness.

Keys (``P`` is the key prefix, ``T`` a room's tag, see :func:`trio_ysync._redis.room_tag`)::

    P cluster:store        the identity of the store every server of the cluster uses
    P cluster:epoch        random, made by the first server: gone means Redis lost its data
    P server:<id>:wake     a one-entry stream that wakes this server's reader (expires)
    P room:{T}:updates     the room's stream of published updates and fold marks
    P room:{T}:folded      the last stream entry folded into the store
    P room:{T}:lock        the fold lock: a random token, with an expiry
    P room:{T}:awareness   the room's pub/sub channel

An update entry has the fields ``o`` (the origin server) and ``u`` (the batch of updates, each
a lib0 varUint8Array). A fold mark has ``o`` and ``t``: the entries up to ``t`` are in the
store and were trimmed. A server whose position is before the ``t`` of a mark it reads has
missed trimmed entries: it reloads, it never skips them silently.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import coredis
import trio
from coredis.response.types import StreamEntry
from coredis.retry import ExponentialBackoffRetryPolicy
from coredis.tokens import PureToken

from .._redis import check_prefix, new_client, redis_errors, room_tag
from ..doc import DocumentError
from ..protocol.lib0 import Decoder, Encoder, ProtocolError
from ..store.base import Store, StoreError, check_room
from ..store.merge import merge_updates
from ._base import (
    BusConfigError,
    BusListener,
    BusTuning,
    BusUnavailableError,
    Catchup,
    FoldOutcome,
    FoldResult,
    RoomBus,
    RoomChannel,
)

__all__ = ["RedisBus", "open_redis_bus"]

REDIS_ERRORS = redis_errors()
#: What a fold may raise.
FOLD_ERRORS: tuple[type[BaseException], ...] = (*REDIS_ERRORS, StoreError)
#: What the reader survives (the cluster check after a reconnection may give up).
READER_ERRORS: tuple[type[BaseException], ...] = (*REDIS_ERRORS, BusUnavailableError)

logger = logging.getLogger("trio_ysync.bus")

_T = TypeVar("_T")

#: A stream entry ID: milliseconds and sequence number.
StreamId = tuple[int, int]
_START: StreamId = (0, 0)

# The awareness message header: the origin server's ID, then one of these kinds.
_AWARENESS_UPDATE = b"u"
_AWARENESS_QUERY = b"q"
_SERVER_ID_BYTES = 8  # hex-encoded: 16 characters

_COMMIT_FOLD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('XADD', KEYS[3], '*', 'o', ARGV[3], 't', ARGV[2])
redis.call('XTRIM', KEYS[3], 'MINID', ARGV[4])
redis.call('DEL', KEYS[1])
return 1
"""

_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_WAKE = """
redis.call('XADD', KEYS[1], 'MAXLEN', '1', '*', 'w', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 0
"""

_WAKE_KEY_LIFETIME_MS = 3_600_000


def parse_id(raw: bytes | str) -> StreamId:
    """``b"1700000000000-3"`` as ``(1700000000000, 3)``."""
    text = raw.decode("ascii") if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


def encode_updates(updates: Sequence[bytes]) -> bytes:
    """A batch of updates as one value: each a lib0 varUint8Array."""
    encoder = Encoder()
    for update in updates:
        encoder.write_var_uint8_array(update)
    return encoder.to_bytes()


def decode_updates(payload: bytes) -> list[bytes]:
    """The inverse of :func:`encode_updates`.

    Raises:
        ProtocolError: ``payload`` is not a batch.
    """
    decoder = Decoder(payload)
    updates = []
    while not decoder.at_end():
        updates.append(decoder.read_var_uint8_array())
    return updates


def _field(entry: StreamEntry, name: bytes) -> bytes | None:
    value = entry.field_values.get(name)
    return value if isinstance(value, bytes) else None


@dataclass(frozen=True)
class _RoomKeys:
    stream: str
    folded: str
    lock: str
    awareness: str

    @classmethod
    def of(cls, prefix: str, room: str) -> _RoomKeys:
        base = f"{prefix}room:{{{room_tag(room)}}}:"
        return cls(base + "updates", base + "folded", base + "lock", base + "awareness")


class ChannelState(enum.Enum):
    """Where a room's channel is. Allowed moves::

        ATTACHED -> LOADING            load()
        LOADING  -> LIVE | LOST        load() returns | fails
        LIVE     -> LOADING            load() again
        LIVE     -> LOST               the reader found a gap, or Redis lost its data
        LOST     -> LOADING            load()
        any      -> DETACHED           detach()

    The reader delivers updates to LIVE channels only.
    """

    ATTACHED = "attached"
    LOADING = "loading"
    LIVE = "live"
    LOST = "lost"
    DETACHED = "detached"


class _RedisChannel(RoomChannel):
    def __init__(self, bus: RedisBus, room: str, listener: BusListener) -> None:
        super().__init__(room)
        self._bus = bus
        self.listener = listener
        self.keys = _RoomKeys.of(bus.prefix, room)
        self.state = ChannelState.ATTACHED
        #: The last stream entry delivered (or skipped as our own, or read on load).
        self.position: StreamId = _START
        #: Bumped whenever the position is set from outside the reader, so that the reader
        #: ignores a reply to a read it started before.
        self.generation = 0
        #: The update entries read and not yet known to be folded: (ID, when read), in order.
        self._unfolded: collections.deque[tuple[StreamId, float]] = collections.deque()
        self.next_fold_at = -math.inf
        self._queried = False

    def __repr__(self) -> str:
        return f"<RedisChannel {self.room!r} {self.state.value}>"

    # -- loading ---------------------------------------------------------------------------

    async def load(self) -> Catchup:
        if self.state in (ChannelState.DETACHED, ChannelState.LOADING):
            raise RuntimeError(f"room {self.room!r} is {self.state.value}")
        self.state = ChannelState.LOADING
        self.generation += 1
        bus = self._bus
        try:
            for _ in range(bus.tuning.load_attempts):
                folded = await bus._retrying("load", lambda: bus._command.get(self.keys.folded))
                stored = await bus.store.load(self.room)
                start = _START if folded is None else parse_id(folded)
                caught_up = await self._read_after(start)
                if caught_up is not None:
                    break
                # A fold trimmed entries after `folded` before we read them: the store has them
                # now, and `folded` says so.
                logger.debug("room %r: folded during load, loading again", self.room)
            else:
                raise BusUnavailableError(
                    f"room {self.room!r}: folds kept overtaking the load "
                    f"({bus.tuning.load_attempts} attempts)"
                )
        except BaseException:
            if self.state is ChannelState.LOADING:
                self.state = ChannelState.LOST
            raise
        if self.state is not ChannelState.LOADING:
            raise RuntimeError(f"room {self.room!r} was detached while it loaded")
        updates, self.position, unfolded = caught_up
        self._unfolded.clear()
        self.state = ChannelState.LIVE
        self.generation += 1
        self._count_unfolded(unfolded)
        bus._want_wake()
        if not self._queried:
            self._queried = True
            self.query_awareness()
        # No checkpoint from here to the caller: it applies the result before the reader runs.
        return Catchup(stored=stored, updates=updates)

    async def _read_after(
        self, position: StreamId
    ) -> tuple[list[bytes], StreamId, list[StreamId]] | None:
        """The updates after ``position`` up to the stream's end, the last entry read and the
        IDs of the update entries; ``None`` if a fold mark says some were trimmed."""
        bus = self._bus
        page = bus.tuning.read_count
        xrange = partial(bus._command.xrange, self.keys.stream)
        updates: list[bytes] = []
        entry_ids: list[StreamId] = []
        while True:
            start = "-" if position == _START else "(" + format_id(position)
            entries = await bus._retrying("load", partial(xrange, start, "+", count=page))
            for entry in entries:
                through = _field(entry, b"t")
                if through is not None:
                    if position < parse_id(through):
                        return None
                else:
                    updates.extend(bus._updates_of(self.room, entry))
                    entry_ids.append(parse_id(entry.identifier))
                position = parse_id(entry.identifier)
            if len(entries) < page:
                return updates, position, entry_ids

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, updates: Sequence[bytes]) -> None:
        batch = [bytes(update) for update in updates]
        if self.state is ChannelState.DETACHED:
            raise RuntimeError(f"room {self.room!r} is detached")
        if not batch:
            await trio.lowlevel.checkpoint()
            return
        bus = self._bus
        fields: dict[str | bytes, bytes] = {b"o": bus._server_id_bytes, b"u": encode_updates(batch)}
        await bus._retrying("publish", lambda: bus._command.xadd(self.keys.stream, fields))

    def publish_awareness(self, payload: bytes) -> None:
        self._bus._send_awareness(self, _AWARENESS_UPDATE, payload)

    def query_awareness(self) -> None:
        self._bus._send_awareness(self, _AWARENESS_QUERY, b"")

    # -- detaching -------------------------------------------------------------------------

    async def detach(self) -> None:
        if self.state is ChannelState.DETACHED:
            await trio.lowlevel.checkpoint()
            return
        self.state = ChannelState.DETACHED
        self.generation += 1
        await self._bus._detach(self)

    # -- the reader's side -----------------------------------------------------------------

    @property
    def unfolded(self) -> int:
        """How many update entries this server read that no fold is known to cover."""
        return len(self._unfolded)

    def _count_unfolded(self, entry_ids: list[StreamId]) -> None:
        if not entry_ids:
            return
        if not self._unfolded:
            self._bus._fold_wanted.set()  # a new deadline
        now = trio.current_time()
        self._unfolded.extend((entry_id, now) for entry_id in entry_ids)
        if len(self._unfolded) >= self._bus.tuning.fold_after_entries:
            self._bus._fold_wanted.set()

    def _folded_through(self, through: StreamId) -> None:
        unfolded = self._unfolded
        while unfolded and unfolded[0][0] <= through:
            unfolded.popleft()

    def _fold_due(self, now: float) -> bool:
        return bool(self._unfolded) and now >= self._fold_deadline()

    def _fold_deadline(self) -> float:
        if not self._unfolded:
            return math.inf
        tuning = self._bus.tuning
        if len(self._unfolded) >= tuning.fold_after_entries:
            return self.next_fold_at
        return max(self.next_fold_at, self._unfolded[0][1] + tuning.fold_interval)

    def _lose(self) -> None:
        self.state = ChannelState.LOST
        self.generation += 1
        self._bus._call(self, self.listener.lost_position)


class RedisBus(RoomBus):
    """A :class:`~trio_ysync.bus.RoomBus` over Redis; open it with
    :func:`~trio_ysync.bus.open_bus`.

    One server process holds one bus: three Redis connections (commands, the stream reader,
    the pub/sub subscriber) and five tasks, whatever the number of rooms.
    """

    shared = True
    persists = True

    def __init__(
        self,
        store: Store,
        server_id: str,
        command: coredis.Redis[bytes],
        reader: coredis.Redis[bytes],
        *,
        prefix: str,
        tuning: BusTuning,
    ) -> None:
        super().__init__(store, server_id)
        self.prefix = prefix
        self.tuning = tuning
        self._command = command
        self._reader = reader
        self._server_id_bytes = server_id.encode("ascii")
        self._channels: dict[str, _RedisChannel] = {}
        self._by_awareness_channel: dict[bytes, _RedisChannel] = {}
        self._wake_key = f"{prefix}server:{server_id}:wake"
        self._wake_pending = False
        self._wake_wanted = trio.Event()
        self._fold_wanted = trio.Event()
        self._epoch: bytes | None = None
        self._pubsub: Any = None
        self._awareness_send, self._awareness_receive = trio.open_memory_channel[
            tuple[bytes, bytes]
        ](tuning.awareness_queue)
        self._awareness_dropped = 0
        self._commit_fold = command.register_script(_COMMIT_FOLD)
        self._release_lock = command.register_script(_RELEASE_LOCK)
        self._wake = command.register_script(_WAKE)

    def __repr__(self) -> str:
        return f"<RedisBus {self.server_id} prefix={self.prefix!r} rooms={len(self._channels)}>"

    # -- rooms -----------------------------------------------------------------------------

    async def attach(self, room: str, listener: BusListener) -> RoomChannel:
        check_room(room)
        if room in self._channels:
            raise RuntimeError(f"room {room!r} is attached already")
        channel = self._channels[room] = _RedisChannel(self, room, listener)
        name = channel.keys.awareness.encode()
        self._by_awareness_channel[name] = channel
        try:
            await self._retrying("subscribe", partial(self._pubsub.subscribe, name))
        except BusUnavailableError:
            self._forget(channel)
            raise
        return channel

    def _forget(self, channel: _RedisChannel) -> None:
        if self._channels.get(channel.room) is channel:
            del self._channels[channel.room]
        name = channel.keys.awareness.encode()
        if self._by_awareness_channel.get(name) is channel:
            del self._by_awareness_channel[name]

    async def _detach(self, channel: _RedisChannel) -> None:
        self._forget(channel)
        with trio.move_on_after(self.tuning.command_timeout) as scope:
            scope.shield = True
            try:
                await self._pubsub.unsubscribe(channel.keys.awareness.encode())
            except REDIS_ERRORS as exc:
                logger.debug("room %r: unsubscribe failed: %r", channel.room, exc)
        # Fold what is left, whether or not the reader has seen it yet: this server may be
        # the last to hold the room.
        with trio.move_on_after(self.tuning.lock_lease) as scope:
            scope.shield = True
            try:
                while (await self.fold(channel.room)).outcome is FoldOutcome.FOLDED:
                    pass
            except FOLD_ERRORS as exc:
                logger.warning("room %r: fold on detach failed: %r", channel.room, exc)

    # -- commands with retries -------------------------------------------------------------

    async def _retrying(self, what: str, request: Callable[[], Awaitable[_T]]) -> _T:
        """``request()``, tried ``tuning.attempts`` times; only for what is safe to repeat
        (reads, and XADD: an update applied twice changes nothing)."""
        tuning = self.tuning
        delay = tuning.retry_delay
        for attempt in range(1, tuning.attempts + 1):
            try:
                with trio.fail_after(tuning.command_timeout):
                    return await request()
            except REDIS_ERRORS as exc:
                if attempt == tuning.attempts:
                    raise BusUnavailableError(
                        f"Redis: {what} failed {attempt} times, last: {exc!r}"
                    ) from exc
                logger.debug("Redis: %s failed (%r), retrying in %.2fs", what, exc, delay)
                await trio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    # -- joining the cluster -----------------------------------------------------------------

    async def _join(self) -> None:
        """Record (or check) the cluster's store and epoch."""
        identity = _shared_identity(self.store)
        recorded = await self._record(self.prefix + "cluster:store", identity.encode())
        if recorded != identity.encode():
            key = self.prefix + "cluster:store"
            raise BusConfigError(
                f"this server's store is {identity!r} but the cluster's is "
                f"{recorded.decode(errors='replace')!r} (Redis key {key!r}); every server of a "
                "cluster must use the same store (delete that key, with no server running, "
                "to move the cluster to another store)"
            )
        self._epoch = await self._record(self.prefix + "cluster:epoch", secrets.token_bytes(16))

    async def _record(self, key: str, value: bytes) -> bytes:
        """Set ``key`` to ``value`` unless it is set; return what it holds."""
        command = self._command
        await self._retrying("join", lambda: command.set(key, value, condition=PureToken.NX))
        recorded = await self._retrying("join", lambda: command.get(key))
        if recorded is None:  # pragma: no cover - deleted in between
            raise BusUnavailableError(f"Redis key {key!r} vanished while it was being set")
        return recorded

    async def _check_epoch(self) -> None:
        """After a reconnection: if Redis lost its data, every room may have lost updates."""
        epoch = await self._command.get(self.prefix + "cluster:epoch")
        if epoch == self._epoch:
            return
        logger.error(
            "Redis lost its data (the cluster epoch changed): reloading every room; updates "
            "that Redis had not persisted are lost for servers that did not hold them"
        )
        await self._join()
        for channel in list(self._channels.values()):
            if channel.state is ChannelState.LIVE:
                channel._lose()

    # -- the reader ----------------------------------------------------------------------------

    def _want_wake(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            self._wake_wanted.set()

    async def _wake_forever(self) -> None:
        """Wakes the reader's blocked XREAD when the set of rooms to read changed."""
        while True:
            await self._wake_wanted.wait()
            self._wake_wanted = trio.Event()
            try:
                with trio.fail_after(self.tuning.command_timeout):
                    await self._wake(keys=(self._wake_key,), args=(_WAKE_KEY_LIFETIME_MS,))
            except REDIS_ERRORS as exc:
                # The reader cannot read either; it rereads the rooms when it reconnects.
                logger.debug("wake failed: %r", exc)
                self._wake_pending = False

    async def _read_forever(self, *, task_status: trio.TaskStatus[None]) -> None:
        """One blocking XREAD over the streams of every live room, and the wake stream."""
        tuning = self.tuning
        wake_position = _START
        wake_key = self._wake_key.encode()
        failures = 0
        task_status.started()
        while True:
            try:
                if failures:
                    with trio.fail_after(tuning.command_timeout):
                        await self._check_epoch()
                self._wake_pending = False
                reads = {
                    channel.keys.stream.encode(): (channel, channel.generation)
                    for channel in self._channels.values()
                    if channel.state is ChannelState.LIVE
                }
                streams: dict[Any, str] = {self._wake_key: format_id(wake_position)}
                for channel, _ in reads.values():
                    streams[channel.keys.stream] = format_id(channel.position)
                block_ms = max(1, int(tuning.read_block * 1000))
                with trio.fail_after(tuning.read_block + tuning.command_timeout):
                    reply = await self._reader.xread(
                        streams, count=tuning.read_count, block=block_ms
                    )
            except READER_ERRORS as exc:
                failures += 1
                delay = min(tuning.retry_delay * 2 ** min(failures - 1, 16), tuning.max_backoff)
                log = logger.warning if failures == 1 else logger.debug
                log("Redis reader: %r; reconnecting in %.2fs", exc, delay)
                await trio.sleep(delay)
                continue
            if failures:
                logger.warning("Redis reader: reconnected after %d failed attempts", failures)
                failures = 0
            for key, entries in (reply or {}).items():
                if key == wake_key:
                    wake_position = parse_id(entries[-1].identifier)
                    continue
                channel, generation = reads[key]
                if channel.state is ChannelState.LIVE and channel.generation == generation:
                    self._deliver(channel, entries)

    def _deliver(self, channel: _RedisChannel, entries: tuple[StreamEntry, ...]) -> None:
        updates: list[bytes] = []
        counted: list[StreamId] = []
        lost = False
        for entry in entries:
            entry_id = parse_id(entry.identifier)
            through = _field(entry, b"t")
            if through is not None:
                folded = parse_id(through)
                if channel.position < folded:
                    lost = True
                    break
                channel._folded_through(folded)
                counted = [read for read in counted if read > folded]
            else:
                counted.append(entry_id)
                if _field(entry, b"o") != self._server_id_bytes:
                    updates.extend(self._updates_of(channel.room, entry))
            channel.position = entry_id
        if updates:
            self._call(channel, channel.listener.remote_updates, updates)
        if lost:
            logger.warning("room %r: entries were trimmed before this server read them", channel)
            channel._lose()
        elif counted:
            channel._count_unfolded(counted)

    def _updates_of(self, room: str, entry: StreamEntry) -> list[bytes]:
        try:
            return decode_updates(_field(entry, b"u") or b"")
        except ProtocolError as exc:
            # Only servers write there; skip rather than stop every server on it.
            logger.error("room %r: malformed stream entry %r skipped: %s", room, entry, exc)
            return []

    def _call(self, channel: _RedisChannel, callback: Callable[..., _T], *args: Any) -> _T | None:
        try:
            return callback(*args)
        except Exception:
            logger.exception("room %r: %s failed", channel.room, callback.__name__)
            return None

    # -- folding -------------------------------------------------------------------------------

    async def _fold_forever(self) -> None:
        """Folds the rooms whose streams hold enough (or old enough) unfolded entries."""
        while True:
            deadline = min(
                (channel._fold_deadline() for channel in self._channels.values()),
                default=math.inf,
            )
            with trio.move_on_at(deadline):
                await self._fold_wanted.wait()
            self._fold_wanted = trio.Event()
            now = trio.current_time()
            for channel in list(self._channels.values()):
                if channel.state is not ChannelState.DETACHED and channel._fold_due(now):
                    result = FoldResult(FoldOutcome.FAILED)
                    # Bounded: a Redis that hangs must not hold the other rooms' folds.
                    with trio.move_on_after(self.tuning.lock_lease):
                        try:
                            result = await self.fold(channel.room)
                        except FOLD_ERRORS as exc:
                            logger.warning("room %r: fold failed: %r", channel.room, exc)
                    if result.outcome is FoldOutcome.FOLDED and result.through is not None:
                        # Before the reader reaches the fold mark: not the same entries again.
                        channel._folded_through(parse_id(result.through))
                    else:
                        # Someone else folds, or it failed: look again later.
                        channel.next_fold_at = trio.current_time() + self.tuning.fold_interval

    async def fold(self, room: str) -> FoldResult:
        """Fold the room's stream into the store now (at most ``tuning.fold_batch`` entries),
        if no other server is folding it.

        Under the room's lock: append the entries after the folded position to the store,
        compact the store once its log is long, then (only if the lock is still ours) record
        the new position, add a fold mark and trim the stream behind it, in one script.

        Raises:
            StoreError: the store failed (nothing was recorded in Redis).
            Exception: one of coredis's errors: Redis failed.
        """
        check_room(room)
        keys = _RoomKeys.of(self.prefix, room)
        command = self._command
        token = secrets.token_hex(8)
        lease_ms = max(1, int(self.tuning.lock_lease * 1000))
        if not await command.set(keys.lock, token, condition=PureToken.NX, px=lease_ms):
            return FoldResult(FoldOutcome.LOCKED)
        committed = False
        try:
            folded = await command.get(keys.folded)
            start = "-" if folded is None else "(" + folded.decode("ascii")
            entries = await command.xrange(keys.stream, start, "+", count=self.tuning.fold_batch)
            updates: list[bytes] = []
            data_entries = 0
            for entry in entries:
                if b"t" not in entry.field_values:
                    data_entries += 1
                    updates.extend(self._updates_of(room, entry))
            if not data_entries:
                return FoldResult(FoldOutcome.NOTHING)
            if updates:
                await self.store.append(room, updates)
                await self._compact_store(room)
            last = parse_id(entries[-1].identifier)
            args = (token, format_id(last), self.server_id, format_id((last[0], last[1] + 1)))
            committed = bool(
                await self._commit_fold(keys=(keys.lock, keys.folded, keys.stream), args=args)
            )
        finally:
            if not committed:
                with trio.move_on_after(self.tuning.command_timeout) as scope:
                    scope.shield = True
                    try:
                        await self._release_lock(keys=(keys.lock,), args=(token,))
                    except REDIS_ERRORS:
                        pass  # it expires
        if not committed:
            logger.warning("room %r: the fold lock expired before the fold was recorded", room)
            return FoldResult(FoldOutcome.STALE)
        return FoldResult(FoldOutcome.FOLDED, data_entries, format_id(last))

    async def _compact_store(self, room: str) -> None:
        stored = await self.store.load(room)
        if len(stored.updates) < self.tuning.compact_after_entries:
            return
        try:
            merged = await trio.to_thread.run_sync(merge_updates, stored.updates)
        except (ProtocolError, DocumentError) as exc:
            logger.warning("room %r: cannot compact the store: %s", room, exc)
            return
        await self.store.compact(room, merged, stored.last_seq)

    # -- awareness -----------------------------------------------------------------------------

    def _send_awareness(self, channel: _RedisChannel, kind: bytes, payload: bytes) -> None:
        if channel.state is ChannelState.DETACHED:
            return
        message = self._server_id_bytes + kind + payload
        try:
            self._awareness_send.send_nowait((channel.keys.awareness.encode(), message))
        except trio.WouldBlock:
            self._awareness_dropped += 1
            if self._awareness_dropped in (1, 10, 100) or not self._awareness_dropped % 1000:
                logger.warning(
                    "awareness: %d messages dropped (Redis too slow)", self._awareness_dropped
                )

    async def _send_awareness_forever(self) -> None:
        async with self._awareness_receive:
            async for name, message in self._awareness_receive:
                try:
                    with trio.fail_after(self.tuning.command_timeout):
                        await self._command.publish(name, message)
                except REDIS_ERRORS as exc:
                    logger.debug("awareness: publish failed: %r", exc)

    async def _receive_awareness_forever(self) -> None:
        header = 2 * _SERVER_ID_BYTES
        while True:
            message = await self._pubsub.get_message()
            if message is None or message["type"] != "message":
                continue
            channel = self._by_awareness_channel.get(message["channel"])
            data = message["data"]
            if channel is None or not isinstance(data, bytes) or len(data) <= header:
                continue
            origin, kind, payload = data[:header], data[header : header + 1], data[header + 1 :]
            if origin == self._server_id_bytes:
                continue
            if kind == _AWARENESS_UPDATE:
                self._call(channel, channel.listener.remote_awareness, payload)
            elif kind == _AWARENESS_QUERY:
                answer = self._call(channel, channel.listener.awareness_query)
                if answer:
                    self._send_awareness(channel, _AWARENESS_UPDATE, answer)

    # -- closing -------------------------------------------------------------------------------

    async def _close(self) -> None:
        for channel in list(self._channels.values()):
            await channel.detach()
        # Let the last awareness messages (the removals of this server's clients) go out.
        await self._awareness_send.aclose()
        with trio.move_on_after(self.tuning.command_timeout) as scope:
            scope.shield = True
            try:
                await self._command.delete([self._wake_key])
            except REDIS_ERRORS:
                pass


def _shared_identity(store: Store) -> str:
    identity = store.shared_identity()
    if identity is None:
        raise BusConfigError(
            f"{store!r} cannot be shared between servers; a cluster needs one store for all: "
            "a SQLite file (servers on one host) or a Redis store"
        )
    return identity


@asynccontextmanager
async def open_redis_bus(
    url: str, store: Store, *, prefix: str, tuning: BusTuning
) -> AsyncIterator[RedisBus]:
    """The Redis bus of this server; see :func:`trio_ysync.bus.open_bus`."""
    check_prefix(prefix)
    _shared_identity(store)  # before any connection: closing an unused client takes a second
    server_id = secrets.token_hex(_SERVER_ID_BYTES)
    command = new_client(url, name=f"{prefix}{server_id}")
    reader = new_client(url, name=f"{prefix}{server_id}:reader")
    async with command, reader:
        bus = RedisBus(store, server_id, command, reader, prefix=prefix, tuning=tuning)
        await bus._join()  # fails fast if Redis is down (the subscriber would retry forever)
        # coredis's subscriber does not stop while it waits to reconnect: cancel it from here.
        with trio.CancelScope() as subscriber_scope:
            # It reconnects as quickly as the reader, and forever (coredis gives up on timeouts).
            retry = ExponentialBackoffRetryPolicy(
                (*REDIS_ERRORS,), retries=None, base_delay=0.05, max_delay=tuning.max_backoff
            )
            async with command.pubsub(ignore_subscribe_messages=True, retry_policy=retry) as pubsub:
                bus._pubsub = pubsub
                async with trio.open_nursery() as nursery:
                    await nursery.start(bus._read_forever)
                    nursery.start_soon(bus._wake_forever)
                    nursery.start_soon(bus._fold_forever)
                    nursery.start_soon(bus._receive_awareness_forever)
                    sender_done = trio.Event()

                    async def send_awareness() -> None:
                        try:
                            await bus._send_awareness_forever()
                        finally:
                            sender_done.set()

                    nursery.start_soon(send_awareness)
                    try:
                        yield bus
                    finally:
                        await bus._close()
                        with trio.move_on_after(tuning.command_timeout) as scope:
                            scope.shield = True
                            await sender_done.wait()
                        subscriber_scope.cancel()
