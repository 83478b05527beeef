"""The store interface: an append-only log of Yjs updates per room, with compaction.

A room's log is a list of entries numbered by consecutive sequence numbers. :meth:`Store.append`
adds a batch of entries in one durable commit and returns the new last sequence number;
:meth:`Store.compact` replaces the entries up to a sequence number by one update (usually
:func:`~trio_ysync.store.merge_updates` of them), keeping the entries appended after it.
"""

from __future__ import annotations

import abc
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, TypeVar

import outcome
import trio

from ..errors import YSyncError

__all__ = ["Store", "StoreError", "StoredRoom"]

_T = TypeVar("_T")
_StoreT = TypeVar("_StoreT", bound="Store")


def _run_jobs(jobs: list[_Job]) -> None:
    for job in jobs:
        job.outcome = outcome.capture(job.fn)


class StoreError(YSyncError):
    """A store operation failed: what it was asked to write may not be stored.

    Raised for I/O and database errors (the original exception is chained as ``__cause__``), for
    operations on a closed store and for stored data that cannot be read back safely.
    """


@dataclass(frozen=True)
class StoredRoom:
    """What a store holds for one room.

    Attributes:
        updates: The log entries in order; entry ``i`` has sequence number ``first_seq + i``.
        last_seq: The sequence number of the last entry (0 for a room with no entries).
        size_bytes: The total length of ``updates`` in bytes (the payload, not the space the
            store uses on disk).
    """

    updates: list[bytes] = field(default_factory=list)
    last_seq: int = 0
    size_bytes: int = 0

    @property
    def first_seq(self) -> int:
        """The sequence number of the first entry (``last_seq + 1`` when there is none)."""
        return self.last_seq - len(self.updates) + 1


def path_problem(path: str, *, directory: bool) -> str | None:
    """Why ``path`` cannot be used as a store's file (or ``directory``), in an operator's words.

    Looks at the file system, since SQLite's own errors never say why a file could not be
    opened. ``None`` when nothing wrong is visible (the caller then reports the original error).
    """
    absolute = os.path.abspath(path)
    parent = os.path.dirname(absolute)
    try:
        if not stat.S_ISDIR(os.stat(parent).st_mode):
            return f"{parent} is not a directory"
    except FileNotFoundError:
        return f"the directory {parent} does not exist"
    except NotADirectoryError:
        return f"a part of {parent} is not a directory"
    except PermissionError:
        return f"permission denied: this user cannot reach {parent}"
    if os.path.isdir(absolute) != directory and os.path.exists(absolute):
        return f"{path} is a directory" if not directory else f"{path} is not a directory"
    wanted = os.R_OK | os.W_OK | (os.X_OK if directory else 0)
    if os.path.exists(absolute):
        if not os.access(absolute, wanted):
            return f"permission denied: this user cannot read and write {path}"
    elif not os.access(parent, os.W_OK | os.X_OK):
        return f"permission denied: this user cannot create files in {parent}"
    return None


def check_room(room: str) -> None:
    """Check that ``room`` can name a room in every store.

    Raises:
        TypeError: ``room`` is not a string.
        ValueError: ``room`` contains lone surrogates, so it is not valid Unicode text.
    """
    if not isinstance(room, str):
        raise TypeError(f"room names are strings, not {type(room).__name__}")
    try:
        room.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"room name {room!r} is not valid Unicode (lone surrogate)") from None


def check_updates(updates: Sequence[bytes]) -> list[bytes]:
    """The updates of a batch as a list of ``bytes``.

    Raises:
        TypeError: the batch is a single bytes object, or an update is not bytes-like.
    """
    if isinstance(updates, (bytes, bytearray, memoryview, str)):
        raise TypeError("append takes a sequence of updates, not a single update")
    result = []
    for update in updates:
        if not isinstance(update, (bytes, bytearray, memoryview)):
            raise TypeError(f"updates are bytes, not {type(update).__name__}")
        result.append(bytes(update))
    return result


def compaction_count(first_seq: int, last_seq: int, through_seq: int) -> int:
    """How many leading entries a compaction through ``through_seq`` replaces.

    Zero means the compaction changes nothing: ``through_seq`` is 0, or it lies before the first
    entry (a stale compaction: an earlier one already covered those entries).

    Raises:
        ValueError: ``through_seq`` is negative or beyond ``last_seq``.
    """
    if through_seq < 0 or through_seq > last_seq:
        raise ValueError(f"through_seq {through_seq} is outside the log (last_seq {last_seq})")
    if through_seq < first_seq:
        return 0
    return through_seq - first_seq + 1


class Store(abc.ABC):
    """Durable storage for the update logs of rooms.

    Every method may be called from several tasks at once; each operation is atomic. Use the
    store as an async context manager, or call :meth:`aclose` when done.
    """

    #: Whether a commit survives the process: rooms write ahead of broadcasting only to
    #: durable stores (for the others it would add latency and protect nothing).
    durable: ClassVar[bool] = True

    def shared_identity(self) -> str | None:
        """What names this store's data for servers that share it, or ``None`` if it cannot be
        shared between processes.

        Servers of one cluster (see :mod:`trio_ysync.bus`) must use one store: each records
        this string in Redis and refuses to start if it differs from the one recorded. The
        default, ``None``, is for stores that one process holds alone (memory, files).
        """
        return None

    @abc.abstractmethod
    async def load(self, room: str) -> StoredRoom:
        """Everything stored for ``room`` (an empty :class:`StoredRoom` for an unknown room).

        Raises:
            StoreError: the store is closed or could not be read.
        """

    @abc.abstractmethod
    async def append(self, room: str, updates: Sequence[bytes]) -> int:
        """Append ``updates`` to the room's log in one durable commit.

        When this returns, the batch survives the process being killed (and power loss when the
        store was opened with ``fsync=True``). An empty batch writes nothing.

        Args:
            room: The room name.
            updates: The updates, in order.

        Returns:
            The room's new last sequence number.

        Raises:
            StoreError: nothing was committed (the store is closed, or a write failed).
        """

    @abc.abstractmethod
    async def compact(self, room: str, update: bytes, through_seq: int) -> None:
        """Atomically replace the entries with ``seq <= through_seq`` by ``update``.

        ``update`` becomes the entry ``through_seq``; the entries appended after
        ``through_seq`` stay after it, so ``last_seq`` does not change. If an earlier compaction
        already covered ``through_seq`` (or it is 0), nothing changes.

        Args:
            room: The room name.
            update: An update equivalent to the entries it replaces.
            through_seq: The last sequence number that ``update`` covers.

        Raises:
            ValueError: ``through_seq`` is beyond the room's last sequence number.
            StoreError: nothing was changed (the store is closed, or a write failed).
        """

    @abc.abstractmethod
    async def delete(self, room: str) -> None:
        """Remove the room and its log (nothing happens for an unknown room).

        Raises:
            StoreError: the store is closed or the room could not be removed.
        """

    @abc.abstractmethod
    async def list_rooms(self) -> list[str]:
        """The names of the stored rooms, sorted.

        Raises:
            StoreError: the store is closed or could not be read.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Wait for running operations, then release the store's files.

        Later operations raise :class:`StoreError`. Closing twice is harmless.
        """

    async def _open(self) -> None:
        """Open files now rather than on first use (called by ``async with``)."""
        await trio.lowlevel.checkpoint()

    async def __aenter__(self: _StoreT) -> _StoreT:
        try:
            await self._open()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _Job:
    """One operation waiting for, or done by, the worker thread."""

    __slots__ = ("fn", "lead", "outcome", "wake")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.outcome: outcome.Outcome[Any] | None = None
        self.lead = False
        self.wake = trio.Event()


class ThreadedStore(Store):
    """Base of stores whose blocking work runs in a worker thread, one operation at a time.

    Subclasses implement ``_open_sync`` and ``_close_sync`` and run their blocking operations
    with :meth:`_run`; the errors listed in ``_wrapped_errors`` become :class:`StoreError`.
    Operations that arrive while the thread is busy are run together in its next trip, in the
    order they arrived (a reconnect storm loads thousands of rooms: one thread round trip each
    would dominate). Because a ``trio.CapacityLimiter(1)`` admits one trip at a time, the
    subclass's files and connections are only ever used by one thread at a time.
    """

    _wrapped_errors: ClassVar[tuple[type[Exception], ...]] = (OSError,)

    def __init__(self) -> None:
        self._limiter = trio.CapacityLimiter(1)
        self._opened = False
        self._closed = False
        self._waiting: list[_Job] = []
        self._leading = False

    @abc.abstractmethod
    def _open_sync(self) -> None:
        """Open files and connections (in the worker thread)."""

    @abc.abstractmethod
    def _close_sync(self) -> None:
        """Close files and connections (in the worker thread)."""

    def _closed_error(self) -> StoreError:
        return StoreError(f"{self!r} is closed")

    async def _run(self, operation: str, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` in the worker thread once the store is open.

        The thread is never abandoned: if the calling task is cancelled meanwhile, the operation
        still completes (or fails) before the cancellation is delivered, so a commit is never
        left half done and the next operation never overlaps it.
        """
        if self._closed:
            raise self._closed_error()

        def work() -> _T:
            if self._closed:
                raise self._closed_error()
            try:
                if not self._opened:
                    self._open_sync()
                    self._opened = True
                return fn()
            except self._wrapped_errors as exc:
                raise StoreError(f"{self!r}: {operation} failed: {exc}") from exc

        job = _Job(work)
        self._waiting.append(job)
        if not self._leading:
            self._leading = True
            job.lead = True
        # Shielded: once queued, the operation happens; a cancellation waits for it.
        with trio.CancelScope(shield=True):
            while job.outcome is None:
                if job.lead:
                    job.lead = False
                    await self._run_waiting()
                else:
                    await job.wake.wait()
                    job.wake = trio.Event()
        done = job.outcome
        assert done is not None
        result: _T = done.unwrap()
        await trio.lowlevel.checkpoint_if_cancelled()
        return result

    async def _run_waiting(self) -> None:
        # The caller whose job leads takes every waiting job to the thread in one trip, then
        # hands the lead to the first job that arrived meanwhile.
        batch, self._waiting = self._waiting, []
        try:
            await trio.to_thread.run_sync(_run_jobs, batch, limiter=self._limiter)
        finally:
            for job in batch:
                if job.outcome is None:
                    job.outcome = outcome.Error(self._closed_error())
                job.wake.set()
            if self._waiting:
                following = self._waiting[0]
                following.lead = True
                following.wake.set()
            else:
                self._leading = False

    async def _open(self) -> None:
        await self._run("open", lambda: None)

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            async with self._limiter:
                if self._opened:
                    self._opened = False
                    try:
                        await trio.to_thread.run_sync(self._close_sync)
                    except self._wrapped_errors as exc:
                        raise StoreError(f"{self!r}: close failed: {exc}") from exc
