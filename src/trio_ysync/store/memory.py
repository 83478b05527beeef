"""A store that keeps everything in memory (tests, ephemeral servers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from .base import Store, StoredRoom, StoreError, check_room, check_updates, compaction_count

__all__ = ["MemoryStore"]


@dataclass
class _Log:
    first_seq: int = 1
    entries: list[bytes] = field(default_factory=list)

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.entries) - 1


class MemoryStore(Store):
    """A :class:`~trio_ysync.store.Store` in memory: nothing survives the process.

    It follows the same contract as the durable stores (sequence numbers, compaction, errors
    after :meth:`aclose`), so tests written against it hold for them.
    """

    durable = False

    def __init__(self) -> None:
        self._rooms: dict[str, _Log] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryStore(<{len(self._rooms)} rooms>)"

    async def _enter(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise StoreError(f"{self!r} is closed")

    async def load(self, room: str) -> StoredRoom:
        check_room(room)
        await self._enter()
        log = self._rooms.get(room)
        if log is None:
            return StoredRoom()
        return StoredRoom(
            updates=list(log.entries),
            last_seq=log.last_seq,
            size_bytes=sum(map(len, log.entries)),
        )

    async def append(self, room: str, updates: Sequence[bytes]) -> int:
        check_room(room)
        batch = check_updates(updates)
        await self._enter()
        log = self._rooms.get(room)
        if not batch:
            return 0 if log is None else log.last_seq
        if log is None:
            log = self._rooms[room] = _Log()
        log.entries.extend(batch)
        return log.last_seq

    async def compact(self, room: str, update: bytes, through_seq: int) -> None:
        check_room(room)
        (update,) = check_updates([update])
        await self._enter()
        log = self._rooms.get(room, _Log())
        count = compaction_count(log.first_seq, log.last_seq, through_seq)
        if count:
            log.entries[:count] = [update]
            log.first_seq = through_seq

    async def delete(self, room: str) -> None:
        check_room(room)
        await self._enter()
        self._rooms.pop(room, None)

    async def list_rooms(self) -> list[str]:
        await self._enter()
        return sorted(self._rooms)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self._closed = True
        self._rooms.clear()
